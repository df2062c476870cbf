"""What the deploy and app tests share: a tiny bundle made by the real exporter, and photo folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EDGE_TUNE = BIN / "edge-tune"
MINIWORLD_BUNDLE = REPO / "models" / "miniworld" / "bundle"
MINIWORLD_DEMO = REPO / "models" / "miniworld" / "demo"


def export_tiny_bundle(out: Path) -> Path:
    """`edge-tune export tiny-random --out OUT`, the same command a user runs."""
    subprocess.run([str(EDGE_TUNE), "export", "tiny-random", "--out", str(out)], check=True,
                   capture_output=True, text=True, timeout=600)
    return out


def write_photos(root: Path, classes: dict[str, int], *, seed: int = 0, size: int = 40) -> Path:
    """`root/<class>/NN.png`: each class a noisy image around its own colour, like a few shots."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(classes.items()):
        base = np.array([(70 * c) % 256, (150 + 50 * c) % 256, (230 - 60 * c) % 256], np.float64)
        for i in range(count):
            pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            path = root / name / f"{name}-{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
