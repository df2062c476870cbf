"""Shared by the fit/predict/resume tests: a small learnable shots folder and CLI helpers.

Even a random tiny CLIP maps distinctly coloured images to distinct image features, so a prompt
that moves the class text features towards them can beat the zero-shot prompt: a task where tuning
is real, made on the fly (nothing downloaded, nothing shipped).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {
    "red": (210, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 60, 210),
    "yellow": (220, 210, 40),
}


def make_colour_shots(root: Path, *, per_class: int = 8, seed: int = 0, size: int = 36) -> Path:
    """`root/<colour>/<i>.png`: a noisy patch of the class colour with a random stripe pattern."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.array(colour, dtype=np.float64) + rng.normal(0, 25, size=(size, size, 3))
            period = int(rng.integers(4, 10))
            pixels[:, ::period] *= 0.7  # stripes: images of one class are not all alike
            pixels *= rng.uniform(0.8, 1.1)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def other_bundle(bundle: Path, where: Path) -> Path:
    """A valid bundle with another hash: the same files under a renamed manifest."""
    copy = where / "other-bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["name"] = manifest["model"]["name"] + "-renamed"
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


def cli_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `edge-tune ARGS` in this process: (exit code, stdout, stderr)."""
    from edge_tune.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err
