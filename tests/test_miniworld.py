"""The mini-world's data plumbing: idx reader, deterministic shifts and task folders, pretraining captions."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
from PIL import Image

from edge_tune.errors import DataError
from edge_tune_export.miniworld import fashion, tasks


def write_idx(path, array: np.ndarray, type_code: int = 0x08, compress: bool = True) -> None:
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_round_trips_images(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / ("x.idx3.gz" if compress else "x.idx3")
    write_idx(path, images, compress=compress)
    assert np.array_equal(fashion.read_idx(path), images)


def test_idx_reader_handles_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "v.gz", values, type_code=0x0C)
    out = fashion.read_idx(tmp_path / "v.gz")
    assert out.tolist() == [1, -2, 70000] and out.dtype == np.dtype("int32")


def test_idx_reader_rejects_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad.gz"
    gzip.open(bad, "wb").write(b"\x08\x03\x00\x00")
    with pytest.raises(
        DataError, match=r"bad\.gz: not an idx file \(bad magic number\)\. Reinstall"
    ):
        fashion.read_idx(bad)
    short = tmp_path / "short.gz"
    write_idx(short, np.zeros((2, 3), np.uint8))
    payload = gzip.open(short).read()
    gzip.open(short, "wb").write(payload[:-1])
    with pytest.raises(DataError, match="idx payload is 5 bytes, header says 6"):
        fashion.read_idx(short)


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(DataError) as err:
        fashion.load_split("test", tmp_path / "absent")
    assert str(err.value) == (
        f"{tmp_path / 'absent'}: Fashion-MNIST folder not found. "
        "Install it with `apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), "
        "or point FASHION_MNIST_DIR at a folder holding the four idx files"
    )


@pytest.mark.skipif(not fashion.DATA_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_test_split_has_1000_images_per_class():
    images, labels = fashion.load_split("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


def fake_split(per_class: int = 30):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), per_class)
    return rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8), labels


@pytest.mark.parametrize("shift", sorted(tasks.SHIFTS))
def test_every_shift_is_deterministic_per_seed(shift):
    images, _ = fake_split(2)
    a, b = tasks.shifted(images, shift, seed=3), tasks.shifted(images, shift, seed=3)
    assert a.dtype == np.uint8 and a.shape == images.shape and np.array_equal(a, b)


def test_noise_depends_on_the_seed_and_clean_is_identity():
    images, _ = fake_split(2)
    assert not np.array_equal(tasks.shifted(images, "noise", 1), tasks.shifted(images, "noise", 2))
    assert np.array_equal(tasks.shifted(images, "clean", 1), images)
    assert np.array_equal(tasks.shifted(images, "inverted", 0), 255 - images)


def test_blur_keeps_flat_images_and_pixelate_makes_blocks():
    flat = np.full((1, 28, 28), 0.3, np.float32)
    assert np.allclose(tasks.gaussian_blur(flat, 2.0), 0.3, atol=1e-6)
    x = np.random.default_rng(0).random((1, 28, 28)).astype(np.float32)
    p = tasks.pixelate(x, 7)
    assert np.allclose(p[0, :7, :7], x[0, :7, :7].mean()) and len(np.unique(p)) == 16


def test_split_is_seeded_per_class_and_disjoint():
    _, labels = fake_split(30)
    a, b = tasks.split_indices(labels, 16, 5, seed=0), tasks.split_indices(labels, 16, 5, seed=0)
    assert np.array_equal(a.shots, b.shots) and np.array_equal(a.eval, b.eval)
    assert np.bincount(labels[a.shots]).tolist() == [16] * 10
    assert np.bincount(labels[a.eval]).tolist() == [5] * 10
    assert not set(a.shots) & set(a.eval)
    assert not np.array_equal(a.shots, tasks.split_indices(labels, 16, 5, seed=1).shots)
    assert len(tasks.split_indices(labels, 16, None, seed=0).eval) == 10 * 14


def test_write_task_makes_class_folders_with_real_names(tmp_path):
    images, labels = fake_split(20)
    out = tasks.write_task(
        tmp_path / "inv",
        "inverted",
        shots=4,
        eval_per_class=3,
        seed=0,
        images=images,
        labels=labels,
    )
    assert sorted(p.name for p in out.iterdir()) == ["eval", "shots", "task.json"]
    names = json.loads((out / "shots" / "classnames.json").read_text())
    assert names["t-shirt_top"] == "T-shirt/top" and names["ankle_boot"] == "Ankle boot"
    assert len(names) == 10 and list(names) == list(fashion.FOLDER_NAMES)
    assert all(len(list((out / "shots" / f).glob("*.png"))) == 4 for f in names)
    assert all(len(list((out / "eval" / f).glob("*.png"))) == 3 for f in names)
    # The PNGs hold exactly the shifted pixels (lossless), so a re-run reproduces the task.
    png = sorted((out / "shots" / "bag").glob("*.png"))[0]
    idx = int(png.stem)
    assert np.array_equal(np.asarray(Image.open(png)), 255 - images[idx])
    assert not list(tmp_path.glob(".inv.*")), "the temporary folder was left behind"


def test_captions_name_class_and_style_and_fit_the_context():
    pretrain = pytest.importorskip("edge_tune_export.miniworld.pretrain")
    texts, classes, styles, weights = pretrain.caption_table()
    assert "a photo of a coat." in texts and "a blurry photo of a coat." in texts
    assert "an inverted photo of a ankle boot." in texts
    for s, style in enumerate(pretrain.STYLES, start=1):
        assert all(any(w in t for w in style.words) for t in np.array(texts)[styles == s])
    # The official name (weight n = len(synonyms)) outweighs the n - 1 others together (weight 1 each).
    for c, syns in enumerate(fashion.SYNONYMS):
        pool = (classes == c) & (styles == 0)
        official_texts = {tpl.format(syns[0]) for tpl, _ in pretrain.CLEAN_TEMPLATES}
        official = np.array([t in official_texts for t in texts]) & pool
        n = len(syns)
        assert weights[official].sum() / weights[pool].sum() == pytest.approx(n / (2 * n - 1))
    ids, eot = pretrain.tokenize_all(texts)
    assert ids.shape[1] <= 77 and (ids[np.arange(len(ids)), eot] == pretrain.EOT).all()
    assert (ids[:, 0] == pretrain.SOT).all()
