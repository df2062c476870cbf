"""Shots folders, hold-out splits and Dassl split sampling, including every kind of bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tune.data import (
    Sample,
    class_name_from_folder,
    load_dassl_split,
    load_eval,
    load_shots,
)
from edge_tune.errors import DataError


def write_image(path: Path, colour=(120, 30, 200), size=(8, 6), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path


def make_shots(root: Path, classes: dict[str, int]) -> Path:
    for c, (folder, n) in enumerate(classes.items()):
        for i in range(n):
            write_image(root / folder / f"img{i:02d}.png", colour=(10 * c, 5 * i, 100))
    return root


def test_classes_from_sorted_folders_with_readable_names(tmp_path):
    make_shots(tmp_path, {"golden_retriever": 2, "Tabby-cat": 3, "éclair, au chocolat!": 1})
    (tmp_path / "Tabby-cat" / "extra.JPEG").write_bytes(
        (tmp_path / "Tabby-cat" / "img00.png").read_bytes()
    )
    ds = load_shots(tmp_path)
    assert ds.classnames == ["Tabby cat", "golden retriever", "éclair, au chocolat!"]
    assert ds.counts() == [4, 2, 1]
    assert [s.path.name for s in ds.samples[:4]] == [
        "extra.JPEG",
        "img00.png",
        "img01.png",
        "img02.png",
    ]
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert ds.report() is None
    assert class_name_from_folder("a__b--c") == "a b c"


def test_classnames_json_overrides_folder_names(tmp_path):
    make_shots(tmp_path, {"n01": 1, "n02": 1})
    (tmp_path / "classnames.json").write_text(json.dumps({"n02": "sea  lion"}))
    assert load_shots(tmp_path).classnames == ["n01", "sea lion"]
    (tmp_path / "classnames.json").write_text(json.dumps(["dog", "cat"]))
    assert load_shots(tmp_path).classnames == ["dog", "cat"]
    (tmp_path / "classnames.json").write_text(json.dumps({"n03": "x"}))
    with pytest.raises(
        DataError, match=r"classnames\.json: names folder\(s\) that do not exist: 'n03'"
    ):
        load_shots(tmp_path)


def test_non_images_are_reported_and_corrupt_images_listed(tmp_path):
    make_shots(tmp_path, {"a": 2, "b": 2})
    for name in ("notes.txt", "labels.csv", "README", "thumbs.db"):
        (tmp_path / "a" / name).write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "cut.png")
    good = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "b" / "cut.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(noise).save(tmp_path / "cut.jpg", quality=90)
    jpeg = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "b" / "cut.jpg").write_bytes(
        jpeg[: len(jpeg) - 50]
    )  # a JPEG missing its last bytes
    ds = load_shots(tmp_path)
    assert ds.counts() == [2, 2]
    report = ds.report()
    assert report.startswith(
        "skipped 4 non-image files (README, labels.csv, notes.txt, …) and "
        "2 unreadable images (cut.jpg: image is corrupt or truncated (image file is "
        "truncated"
    )
    assert "; cut.png: image is corrupt or truncated (" in report
    with pytest.raises(
        DataError, match=r"cut\.jpg: image is corrupt or truncated .*without --strict"
    ):
        load_shots(tmp_path, strict=True)


def test_unusable_folders_raise_one_line_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing: data folder does not exist\. Pass a folder"):
        load_shots(tmp_path / "missing")
    make_shots(tmp_path / "one", {"only": 2})
    with pytest.raises(
        DataError, match=r"only one class \('only'\); a classifier needs at least 2"
    ):
        load_shots(tmp_path / "one")
    make_shots(tmp_path / "empty", {"a": 1, "b": 0})
    (tmp_path / "empty" / "b").mkdir()
    (tmp_path / "empty" / "b" / "x.txt").write_text("x")
    with pytest.raises(
        DataError, match=r"empty/b: class folder 'b' holds no readable images\. Add"
    ):
        load_shots(tmp_path / "empty")
    make_shots(tmp_path / "dup", {"sea_lion": 1, "sea-lion": 1})
    with pytest.raises(DataError, match="give the same class name 'sea lion'"):
        load_shots(tmp_path / "dup")


def test_one_pixel_and_bomb_images(tmp_path):
    write_image(tmp_path / "a" / "dot.bmp", size=(1, 1), fmt="BMP")
    write_image(tmp_path / "b" / "ok.webp", fmt="WEBP")
    Image.new("1", (20000, 20000)).save(tmp_path / "b" / "huge.png")
    ds = load_shots(tmp_path)
    assert [s.path.name for s in ds.samples] == ["dot.bmp", "ok.webp"]
    assert "huge.png: image has 400,000,000 pixels, above the" in ds.report()


def test_eval_folder_must_have_the_same_classes(tmp_path):
    train = load_shots(make_shots(tmp_path / "train", {"a": 1, "b": 1, "c": 1}))
    (tmp_path / "eval" / "classnames.json").parent.mkdir()
    make_shots(tmp_path / "eval", {"x": 1, "y": 1, "z": 1})
    (tmp_path / "eval" / "classnames.json").write_text(json.dumps({"x": "c", "y": "b", "z": "a"}))
    ev = load_eval(tmp_path / "eval", train)
    assert ev.classnames == train.classnames
    assert [(s.path.parent.name, s.label) for s in ev.samples] == [("x", 2), ("y", 1), ("z", 0)]
    make_shots(tmp_path / "bad", {"a": 1, "b": 1, "d": 1})
    with pytest.raises(
        DataError,
        match=r"bad: evaluation classes differ from the training classes: "
        r"missing 'c'; not in the training data 'd'\. Use the same",
    ):
        load_eval(tmp_path / "bad", train)


def make_dassl(tmp_path: Path, per_class=(20, 20, 10)) -> Path:
    rows = {"train": [], "val": [], "test": []}
    for label, n in enumerate(per_class):
        for part, count in (("train", n), ("val", 6), ("test", 3)):
            for i in range(count):
                rel = f"class{label}/{part}_{i}.jpg"
                rows[part].append([rel, label, f"class {label}"])
                (tmp_path / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp_path / "images" / rel).write_bytes(b"")
    path = tmp_path / "split_zhou_Toy.json"
    path.write_text(json.dumps(rows))
    return path


def test_dassl_sampling_is_reproducible_and_follows_dassl(tmp_path):
    split = make_dassl(tmp_path)
    train, val, test = load_dassl_split(split, tmp_path / "images", shots=16, seed=1)
    assert train.classnames == ["class 0", "class 1", "class 2"]
    assert (
        train.counts() == [16, 16, 10] and val.counts() == [4, 4, 4] and test.counts() == [3, 3, 3]
    )
    assert "class 'class 2' has only 10 of 16 shots" in train.report()
    again = load_dassl_split(split, tmp_path / "images", shots=16, seed=1)[0]
    assert again.samples == train.samples
    assert (
        load_dassl_split(split, tmp_path / "images", shots=16, seed=2)[0].samples != train.samples
    )
    # Dassl: random.seed(seed); per class in order of appearance random.sample(items, k); then val.
    rows = json.loads(split.read_text())
    random.seed(1)
    expected = []
    for label in range(3):
        items = [r for r in rows["train"] if r[1] == label]
        expected += random.sample(items, 16) if len(items) >= 16 else items
    assert [s.path for s in train.samples] == [tmp_path / "images" / r[0] for r in expected]


def test_dassl_bad_inputs(tmp_path):
    split = make_dassl(tmp_path)
    with pytest.raises(DataError, match=r"nope\.json: split file not found"):
        load_dassl_split(tmp_path / "nope.json", tmp_path / "images")
    with pytest.raises(
        DataError, match=r"image root is not a folder\. Pass the dataset's image folder"
    ):
        load_dassl_split(split, tmp_path / "elsewhere")
    (tmp_path / "other").mkdir()
    with pytest.raises(
        DataError, match=r"other/class0/train_\d+\.jpg: image listed in the split is missing"
    ):
        load_dassl_split(split, tmp_path / "other")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": [["a.jpg", "0", "x"]], "val": [], "test": []}))
    with pytest.raises(
        DataError, match=r"lacks a valid 'train' list of \[path, label, classname\]"
    ):
        load_dassl_split(bad, tmp_path / "images")


def test_sample_is_hashable_and_ordered_by_path():
    assert len({Sample(Path("a"), 0), Sample(Path("a"), 0)}) == 1
    assert np.array_equal(np.array([0, 1]), np.array([Sample(Path("a"), 0).label, 1]))


def test_nested_class_folders_are_read_recursively_as_predict_reads_them(tmp_path):
    from edge_tune.classifier import collect_images

    write_image(tmp_path / "cat" / "indoor" / "a.png", colour=(1, 2, 3))
    write_image(tmp_path / "cat" / "outdoor" / "deep" / "b.png", colour=(4, 5, 6))
    write_image(tmp_path / "cat" / "c.png", colour=(7, 8, 9))
    write_image(tmp_path / "cat" / ".thumbnails" / "hidden.png", colour=(9, 9, 9))
    write_image(tmp_path / "dog" / "2024" / "d.png", colour=(10, 11, 12))
    ds = load_shots(tmp_path)
    assert [(s.path.relative_to(tmp_path).as_posix(), s.label) for s in ds.samples] == [
        ("cat/c.png", 0),
        ("cat/indoor/a.png", 0),
        ("cat/outdoor/deep/b.png", 0),
        ("dog/2024/d.png", 1),
    ]
    assert collect_images([tmp_path / "cat"]) == [s.path for s in ds.samples[:3]]


def test_wordnet_folders_take_their_names_from_classnames_txt(tmp_path):
    make_shots(tmp_path, {"n01440764": 1, "n01443537": 1})
    ids = load_shots(tmp_path)
    assert ids.classnames == ["n01440764", "n01443537"]
    assert ids.report() == (
        "warning: 2 class name(s) look like WordNet ids ('n01440764'); CLIP reads words: add "
        f"{tmp_path / 'classnames.txt'} with lines like 'n01440764 tench'"
    )
    (tmp_path / "classnames.txt").write_text(
        "# CoOp's ImageNet list, more classes than this folder holds\n"
        "n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n"
    )
    named = load_shots(tmp_path)
    assert named.classnames == ["tench", "goldfish"] and named.report() is None
    (tmp_path / "classnames.txt").write_text("n01440764 tench\nn01443537\n")
    with pytest.raises(DataError) as err:
        load_shots(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'classnames.txt'}: line 2 names folder 'n01443537' but no class. Write "
        "each line as '<folder> <class name>', e.g. 'n01440764 tench'"
    )


def test_caltech_background_folder_is_flagged(tmp_path):
    make_shots(tmp_path, {"BACKGROUND_Google": 1, "accordion": 1, "airplanes": 1})
    ds = load_shots(tmp_path)
    assert ds.classnames[0] == "BACKGROUND Google"
    assert ds.report() == (
        "warning: class 'BACKGROUND Google' looks like Caltech's background folder, which CoOp "
        "leaves out; remove it unless it is a class you mean"
    )
