"""What the deploy and app tests share: paths and generated photo folders (the bundle is conftest's)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EDGE_TUNE = BIN / "edge-tune"
MINIWORLD_BUNDLE = REPO / "edge_tune" / "bundles" / "miniworld"
MINIWORLD_DEMO = REPO / "models" / "miniworld" / "demo"


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
