"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package: idx reader, class names, captions."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from edge_tune.errors import DataError

DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
INSTALL_HINT = (
    "Install it with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), "
    "or point FASHION_MNIST_DIR at a folder holding the four idx files"
)
# Official names, in label order; lowercased by the CLIP tokenizer.
CLASSNAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Folder-safe names for `shots/<class>/` (the real names go into classnames.json).
FOLDER_NAMES = tuple(n.lower().replace("/", "_").replace(" ", "_") for n in CLASSNAMES)
# Synonyms used in pretraining captions; the official name comes first and is drawn most often.
SYNONYMS = (
    ("t-shirt/top", "t-shirt", "top", "tee"),
    ("trouser", "trousers", "pants", "jeans"),
    ("pullover", "sweater", "jumper"),
    ("dress", "gown", "frock"),
    ("coat", "jacket", "overcoat"),
    ("sandal", "sandals", "flip-flop"),
    ("shirt", "blouse", "button-up shirt"),
    ("sneaker", "sneakers", "trainer", "running shoe"),
    ("bag", "handbag", "purse"),
    ("ankle boot", "boot", "boots"),
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (plain or .gz): magic 0x0000TTNN, NN big-endian int32 dims, then the data."""
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path, hint=INSTALL_HINT)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            "not an idx file (bad magic number)",
            path=path,
            hint="Reinstall dataset-fashion-mnist or replace the file",
        )
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    start = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - start != expected:
        raise DataError(
            f"idx payload is {len(raw) - start} bytes, header says {expected}",
            path=path,
            hint="The file is truncated or corrupt; reinstall dataset-fashion-mnist",
        )
    return np.frombuffer(raw, dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def load_split(split: str, data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8[N,28,28] and labels int64[N] of the `train` (60,000) or `test` (10,000) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    if not root.is_dir():
        raise DataError("Fashion-MNIST folder not found", path=root, hint=INSTALL_HINT)
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images.shape[0]} images but {labels.shape[0]} labels",
            path=root,
            hint="Reinstall dataset-fashion-mnist",
        )
    return images, labels
