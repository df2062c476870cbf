"""The benchmarks' synthetic inputs: class names, image features and shots folders, all seeded.

Speed and memory do not depend on what the photos show, only on the shapes: realistic class names
(so the truncated length L is what a user sees), random unit features, noise images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Realistic class names (CIFAR-10/100 style) so that the truncated length L is what a user sees.
# Split on spaces, so "lawn mower" gives two names, as in every published figure (docs/bench.md).
CLASSNAMES = (
    "airplane automobile bird cat deer dog frog horse ship truck apple aquarium fish baby bear "
    "beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur "
    "dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn mower "
    "leopard lion lizard lobster man maple tree motorcycle mountain mouse mushroom oak tree orange "
    "orchid otter palm tree pear pickup truck pine tree plain plate poppy porcupine possum rabbit "
    "raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider "
    "squirrel streetcar sunflower sweet pepper table tank telephone television tiger tractor "
    "train trout tulip turtle wardrobe whale willow tree wolf woman worm"
).split(" ")


def benchmark_classnames(count: int) -> list[str]:
    """`count` distinct class names; beyond the list, numbered variants keep them distinct."""
    n = len(CLASSNAMES)
    return [CLASSNAMES[i] if i < n else f"{CLASSNAMES[i % n]} {i // n}" for i in range(count)]


def random_features(
    count: int, width: int, classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(f32[count, width] unit-norm stand-ins for cached image features, i64[count] labels
    cycling through `classes`)."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((count, width)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features, np.arange(count, dtype=np.int64) % classes


def make_synthetic_shots(
    root: Path, classes: int, per_class: int, size: int, seed: int = 0
) -> Path:
    """`root`, filled as a shots folder (one subfolder per class) of seeded noise PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in benchmark_classnames(classes):
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root
