"""Distribution shifts of Fashion-MNIST images and the few-shot task folders built from them.

Shifts are pure numpy on float images in [0, 1] (`[N, 28, 28]`), seeded through a `Generator`, so the
pretraining augmentations and the task images come from the same code. A task is an ordinary
`shots/<class>/*.png` + `eval/<class>/*.png` pair of folders that `edge-tune fit` reads like user data.

    python -m edge_tune_export.miniworld.tasks --out /tmp/miniworld/tasks
    python -m edge_tune_export.miniworld.tasks --out models/miniworld/demo --only low_contrast --eval-per-class 50
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edge_tune_export.miniworld.fashion import CLASSNAMES, FOLDER_NAMES, load_split

Shift = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with reflected borders (radius 3·sigma)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(x, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    h, w = x.shape[1:]
    rows = sum(k * padded[:, i : i + h, :] for i, k in enumerate(kernel))
    return sum(k * rows[:, :, i : i + w] for i, k in enumerate(kernel)).astype(np.float32)


def pixelate(x: np.ndarray, factor: int) -> np.ndarray:
    """Down-sample by block averaging (28 -> 28/factor) and up-sample back by repetition."""
    n, h, w = x.shape
    small = x.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    return np.repeat(np.repeat(small, factor, axis=1), factor, axis=2).astype(np.float32)


def low_contrast(x: np.ndarray, contrast: float) -> np.ndarray:
    """Squeeze intensities towards mid-grey: 0.5 + contrast·(x − 0.5)."""
    return (0.5 + contrast * (x - 0.5)).astype(np.float32)


def add_noise(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, clipped back to [0, 1]."""
    return np.clip(x + rng.normal(0.0, sigma, x.shape), 0.0, 1.0).astype(np.float32)


# The task shifts: fixed, heavy settings. Pretraining draws milder/wider ranges (see pretrain.STYLES).
SHIFTS: dict[str, Shift] = {
    "clean": lambda x, rng: x,
    "inverted": lambda x, rng: 1.0 - x,
    "upside_down": lambda x, rng: x[:, ::-1, :].copy(),
    "rot90": lambda x, rng: np.rot90(x, 1, axes=(1, 2)).copy(),
    "noise": lambda x, rng: add_noise(x, 0.6, rng),
    "blur": lambda x, rng: gaussian_blur(x, 2.0),
    "pixelate": lambda x, rng: pixelate(x, 7),
    "low_contrast": lambda x, rng: low_contrast(x, 0.12),
    "noise_low_contrast": lambda x, rng: add_noise(low_contrast(x, 0.3), 0.25, rng),
    "blur_inverted": lambda x, rng: 1.0 - gaussian_blur(x, 1.5),
}


@dataclass(frozen=True)
class TaskSplit:
    """Indices into the test split: `shots` (per class, in class order) and `eval`."""

    shots: np.ndarray
    eval: np.ndarray


def split_indices(
    labels: np.ndarray, shots: int, eval_per_class: int | None, seed: int
) -> TaskSplit:
    """Seeded per-class choice of `shots` training and `eval_per_class` (None: all the rest) eval images."""
    rng = np.random.default_rng(seed)
    shot_idx, eval_idx = [], []
    for c in range(int(labels.max()) + 1):
        idx = rng.permutation(np.flatnonzero(labels == c))
        shot_idx.append(idx[:shots])
        rest = idx[shots:]
        eval_idx.append(rest if eval_per_class is None else rest[:eval_per_class])
    return TaskSplit(np.concatenate(shot_idx), np.concatenate(eval_idx))


def shifted(images: np.ndarray, shift: str, seed: int) -> np.ndarray:
    """uint8 images under a named shift, deterministic for a given seed."""
    x = images.astype(np.float32) / 255.0
    y = SHIFTS[shift](x, np.random.default_rng(seed))
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> None:
    for name in FOLDER_NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for img, lab, i in zip(images, labels, ids):
        Image.fromarray(img, mode="L").save(
            root / FOLDER_NAMES[lab] / f"{i:05d}.png", optimize=True
        )
    names = dict(zip(FOLDER_NAMES, CLASSNAMES))
    (root / "classnames.json").write_text(json.dumps(names, indent=1) + "\n", encoding="utf-8")


def write_task(
    out: Path,
    shift: str,
    *,
    shots: int = 16,
    eval_per_class: int | None = None,
    seed: int = 0,
    images: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> Path:
    """Write `out/shots/<class>/*.png`, `out/eval/<class>/*.png`, `out/task.json`; atomic (temp dir + rename)."""
    if images is None or labels is None:
        images, labels = load_split("test")
    split = split_indices(labels, shots, eval_per_class, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the task is ordinary data
    try:
        for part, idx in (("shots", split.shots), ("eval", split.eval)):
            # Each part gets its own noise stream so shots and eval never share a draw.
            sub_seed = seed * 1000 + (1 if part == "shots" else 2)
            _write_folder(tmp / part, shifted(images[idx], shift, sub_seed), labels[idx], idx)
        meta = {
            "shift": shift,
            "seed": seed,
            "shots_per_class": shots,
            "eval_images": int(len(split.eval)),
            "source": "Fashion-MNIST test split (t10k)",
            "classnames": list(CLASSNAMES),
        }
        (tmp / "task.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out", type=Path, required=True, help="parent folder (one sub-folder per task)"
    )
    p.add_argument(
        "--only", nargs="*", choices=sorted(SHIFTS), help="shifts to write (default: all)"
    )
    p.add_argument("--shots", type=int, default=16)
    p.add_argument(
        "--eval-per-class", type=int, default=None, help="default: the rest of the test split"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flat", action="store_true", help="write a single task directly into --out")
    a = p.parse_args(argv)
    images, labels = load_split("test")
    names = a.only or [s for s in SHIFTS if s != "clean"]
    if a.flat and len(names) != 1:
        p.error("--flat needs exactly one shift in --only")
    for name in names:
        dest = a.out if a.flat else a.out / name
        write_task(
            dest,
            name,
            shots=a.shots,
            eval_per_class=a.eval_per_class,
            seed=a.seed,
            images=images,
            labels=labels,
        )
        print(f"{name}: {dest}")


if __name__ == "__main__":
    main()
