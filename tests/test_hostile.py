"""Hostile input, case by case: each one exact line on stderr, exit code 1, no traceback, no hang,
nothing read outside the bundle and nothing of the user's changed.

Every case builds its own bad input from the session's tiny bundle and runs the real CLI in a fresh
process with a time limit. Outside targets are FIFOs: opening one blocks, so a case that reads
outside the bundle fails by its time limit instead of passing silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli_subprocess

REPO = Path(__file__).resolve().parent.parent
REEXPORT = "Re-export it with `edge-tune export MODEL --out DIR`"
COPY_AGAIN = "Copy the whole bundle again, or re-export it with `edge-tune export MODEL --out DIR`"
NOT_A_BUNDLE = "Pass a directory made by `edge-tune export MODEL --out DIR`"
LIMIT_S = 60


def edge_tune(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, under a time limit (a hang fails the test, never blocks it)."""
    return cli_subprocess(*args, env=env, timeout=LIMIT_S)


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr == f"Error: {expected}\n", done.stderr
    assert done.stdout == ""


def tree_digest(root: Path) -> dict[str, str]:
    """What every regular file under `root` holds (symlinks and FIFOs by what they are)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path)] = "link:" + os.readlink(path)
        elif path.is_fifo():
            out[str(path)] = "fifo"
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def rewrite_manifest(root: Path, change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def rehash(root: Path, name: str) -> None:
    data = (root / name).read_bytes()
    rewrite_manifest(
        root,
        lambda m: m["files"].update(
            {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
        ),
    )


def setting(path: str, value):
    """A change that sets manifest field `a.b.c` (a missing `value` sentinel deletes it)."""
    keys = path.split(".")

    def change(m):
        node = m
        for key in keys[:-1]:
            node = node[key]
        if value is DELETE:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return change


DELETE = object()
M = "{b}/manifest.json: manifest.json"

# (case, manifest change, expected line after "Error: "; {b} is the bundle)
MANIFEST_CASES = [
    (
        "files-parent",
        lambda m: m["files"].update({"../outside.bin": {"sha256": "0" * 64}}),
        f"{M} files['../outside.bin'] is not a plain relative path inside the bundle. {REEXPORT}",
    ),
    (
        "files-absolute",
        lambda m: m["files"].update({"/etc/passwd": {"sha256": "0" * 64}}),
        f"{M} files['/etc/passwd'] is not a plain relative path inside the bundle. {REEXPORT}",
    ),
    (
        "files-backslash",
        lambda m: m["files"].update({"..\\x": {"sha256": "0" * 64}}),
        f"{M} files['..\\\\x'] is not a plain relative path inside the bundle. {REEXPORT}",
    ),
    (
        "files-no-sha",
        lambda m: m["files"].update({"text.onnx": {"bytes": 1}}),
        f"{M} files['text.onnx'] has no sha256. {REEXPORT}",
    ),
    (
        "graph-file-unlisted",
        setting("graphs.text.file", "/etc/passwd"),
        f"{M} graphs.text.file '/etc/passwd' is not listed under 'files'. {REEXPORT}",
    ),
    (
        "graph-missing",
        setting("graphs.image", DELETE),
        f"{M} graphs names no image graph. {REEXPORT}",
    ),
    (
        "token-table-unlisted",
        lambda m: m["files"].pop("token_embedding.npy"),
        f"{M} files does not list token_embedding.npy (every file the runtime reads is hashed). {REEXPORT}",
    ),
    (
        "tokenizer-unlisted",
        lambda m: m["files"].pop("tokenizer.json"),
        f"{M} files does not list tokenizer.json (every file the runtime reads is hashed). {REEXPORT}",
    ),
    (
        "resize-huge",
        setting("preprocess.resize_shortest_edge", 100000),
        f"{M} preprocess.resize_shortest_edge 100000 is outside 1..4096. {REEXPORT}",
    ),
    (
        "crop-zero",
        setting("preprocess.crop_size", 0),
        f"{M} preprocess.crop_size 0 is outside 1..4096. {REEXPORT}",
    ),
    (
        "crop-above-resize",
        setting("preprocess.crop_size", 64),
        f"{M} preprocess.crop_size 64 is larger than resize_shortest_edge 32. {REEXPORT}",
    ),
    (
        "crop-string",
        setting("preprocess.crop_size", "32"),
        f"{M} preprocess.crop_size '32' is not an integer. {REEXPORT}",
    ),
    (
        "mean-short",
        setting("preprocess.mean", [0.5, 0.5]),
        f"{M} preprocess.mean [0.5, 0.5] is not a list of 3 numbers. {REEXPORT}",
    ),
    (
        "std-zero",
        setting("preprocess.std", [0.2, 0.0, 0.2]),
        f"{M} preprocess.std[1] 0 is outside (0, 10]. {REEXPORT}",
    ),
    (
        "std-negative",
        setting("preprocess.std", [-1.0, 0.2, 0.2]),
        f"{M} preprocess.std[0] -1 is outside (0, 10]. {REEXPORT}",
    ),
    (
        "mean-nan",
        setting("preprocess.mean", [float("nan"), 0.5, 0.5]),
        f"{M} preprocess.mean[0] nan is not a finite number. {REEXPORT}",
    ),
    (
        "rescale-zero",
        setting("preprocess.rescale_factor", 0),
        f"{M} preprocess.rescale_factor 0 is outside (0, 1]. {REEXPORT}",
    ),
    (
        "resample-unknown",
        setting("preprocess.resample", "sinc"),
        f"{M} preprocess.resample 'sinc' is not one of bicubic, bilinear, nearest, lanczos. {REEXPORT}",
    ),
    (
        "convert-rgb-string",
        setting("preprocess.convert_rgb", "yes"),
        f"{M} preprocess.convert_rgb 'yes' is not true or false. {REEXPORT}",
    ),
    (
        "logit-scale-nan",
        setting("logit_scale", float("nan")),
        f"{M} logit_scale nan is not a finite number. {REEXPORT}",
    ),
    (
        "logit-scale-huge",
        setting("logit_scale", 1e308),
        f"{M} logit_scale 1e+308 is outside (0, 1000]. {REEXPORT}",
    ),
    (
        "logit-scale-zero",
        setting("logit_scale", 0),
        f"{M} logit_scale 0 is outside (0, 1000]. {REEXPORT}",
    ),
    (
        "logit-scale-bool",
        setting("logit_scale", True),
        f"{M} logit_scale True is not a finite number. {REEXPORT}",
    ),
    (
        "model-name-missing",
        setting("model.name", DELETE),
        f"{M} model.name None is not a name. {REEXPORT}",
    ),
    ("model-name-number", setting("model.name", 7), f"{M} model.name 7 is not a name. {REEXPORT}"),
    (
        "width-string",
        setting("dims.text_width", "64"),
        f"{M} dims.text_width '64' is not an integer. {REEXPORT}",
    ),
    (
        "width-zero",
        setting("dims.text_width", 0),
        f"{M} dims.text_width 0 is outside 1..16384. {REEXPORT}",
    ),
    (
        "image-size-huge",
        setting("dims.image_size", 10**6),
        f"{M} dims.image_size 1000000 is outside 1..4096. {REEXPORT}",
    ),
    (
        "sot-outside-vocab",
        setting("tokens.sot_id", 10**6),
        f"{M} tokens.sot_id 1000000 is outside 0..49407. {REEXPORT}",
    ),
    (
        "eot-negative",
        setting("tokens.eot_id", -1),
        f"{M} tokens.eot_id -1 is outside 0..49407. {REEXPORT}",
    ),
    (
        "format-version-string",
        setting("format_version", "1"),
        f"{{b}}/manifest.json: invalid format_version '1'. {REEXPORT}",
    ),
    ("dims-not-object", setting("dims", [128]), f"{M} lacks a valid 'dims' entry. {REEXPORT}"),
    (
        "pad-outside-vocab",
        setting("tokens.pad_id", 49408),
        f"{M} tokens.pad_id 49408 is outside 0..49407. {REEXPORT}",
    ),
    (
        "file-bytes-negative",
        lambda m: m["files"]["text.onnx"].update(bytes=-5),
        f"{M} files['text.onnx'].bytes -5 is outside 0..1125899906842624. {REEXPORT}",
    ),
    (
        "graph-not-object",
        setting("graphs.text_shared", "text_shared.onnx"),
        f"{M} graphs.text_shared is not an object. {REEXPORT}",
    ),
    (
        "vocab-bool",
        setting("dims.vocab_size", True),
        f"{M} dims.vocab_size True is not an integer. {REEXPORT}",
    ),
    (
        "context-one",
        setting("dims.context_length", 1),
        f"{M} dims.context_length 1 is outside 2..4096. {REEXPORT}",
    ),
    (
        "wrong-format",
        setting("format", "onnx-bundle"),
        "{b}/manifest.json: not an edge-tune bundle manifest (format is not 'edge-tune-bundle'). "
        f"{NOT_A_BUNDLE}",
    ),
]


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


@pytest.mark.parametrize(
    "case, change, expected", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES]
)
def test_a_bad_manifest_field_is_named(bundle_copy, case, change, expected):
    rewrite_manifest(bundle_copy, change)
    before = tree_digest(bundle_copy)
    done = edge_tune("info", bundle_copy)
    assert_one_line_error(done, expected.format(b=bundle_copy))
    assert tree_digest(bundle_copy) == before


def outside_fifo(tmp_path: Path) -> Path:
    fifo = tmp_path / "outside.fifo"
    os.mkfifo(fifo)
    return fifo


def test_a_symlink_out_of_the_bundle_is_refused_without_reading(bundle_copy, tmp_path):
    (bundle_copy / "tokenizer.json").unlink()
    fifo = outside_fifo(tmp_path)
    (bundle_copy / "tokenizer.json").symlink_to(fifo)
    assert_one_line_error(
        edge_tune("info", bundle_copy),
        f"{bundle_copy}/tokenizer.json: bundle file leads outside the bundle "
        f"(to {fifo}). A bundle's files must live inside its directory; "
        "re-export it with `edge-tune export MODEL --out DIR`",
    )


def test_a_link_to_proc_is_refused_without_reading(bundle_copy):
    (bundle_copy / "text.onnx").unlink()
    (bundle_copy / "text.onnx").symlink_to("/proc/self/pagemap")
    done = edge_tune("info", bundle_copy)
    assert done.returncode == 1 and "bundle file leads outside the bundle (to /proc/" in done.stderr


def test_a_fifo_inside_the_bundle_is_refused_without_opening(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    os.mkfifo(bundle_copy / "tokenizer.json")
    assert_one_line_error(
        edge_tune("info", bundle_copy),
        f"{bundle_copy}/tokenizer.json: bundle file is not a regular file. {COPY_AGAIN}",
    )


def test_a_symlink_loop_is_refused(bundle_copy):
    (bundle_copy / "text.onnx").unlink()
    (bundle_copy / "text.onnx").symlink_to(bundle_copy / "text.onnx")
    done = edge_tune("info", bundle_copy)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        f"Error: {bundle_copy}/text.onnx: cannot resolve the bundle file ("
    )


def test_a_manifest_symlinked_out_of_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle_copy / "manifest.json", outside)
    (bundle_copy / "manifest.json").symlink_to(outside)
    done = edge_tune("info", bundle_copy)
    assert_one_line_error(
        done,
        f"{bundle_copy}/manifest.json: bundle file leads outside the bundle "
        f"(to {outside}). A bundle's files must live inside its directory; "
        "re-export it with `edge-tune export MODEL --out DIR`",
    )


def test_a_corrupt_npy_header_is_one_line(bundle_copy):
    path = bundle_copy / "token_embedding.npy"
    data = bytearray(path.read_bytes())
    data[10:60] = b"{'descr': '<f4', 'fortran_order': False, 'shape': (" + b"\x00" * 3
    path.write_bytes(bytes(data))
    rehash(bundle_copy, "token_embedding.npy")
    done = edge_tune("info", bundle_copy)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"Error: {path}: cannot read the token table (")
    assert done.stderr.endswith(f"). {REEXPORT}\n")


def test_a_token_table_of_the_wrong_shape_is_refused(bundle_copy):
    table = np.load(bundle_copy / "token_embedding.npy")
    np.save(bundle_copy / "token_embedding.npy", table[:100])
    rehash(bundle_copy, "token_embedding.npy")
    assert_one_line_error(
        edge_tune("info", bundle_copy),
        f"{bundle_copy}/token_embedding.npy: token table has shape "
        f"[100, {table.shape[1]}], expected [{table.shape[0]}, {table.shape[1]}]. "
        f"{REEXPORT}",
    )


def test_a_replaced_unlisted_file_cannot_hide(bundle_copy):
    """A token table swapped after export is caught by its hash (it is listed, so hashed)."""
    path = bundle_copy / "token_embedding.npy"
    table = np.load(path)
    np.save(path, table[::-1].copy())
    assert_one_line_error(
        edge_tune("info", bundle_copy),
        f"{path}: sha256 does not match manifest.json (file altered or corrupted). {COPY_AGAIN}",
    )


def test_a_bundle_path_that_is_a_file(tmp_path):
    path = tmp_path / "bundle.zip"
    path.write_bytes(b"PK")
    assert_one_line_error(
        edge_tune("info", path), f"{path}: is a file, not a bundle directory. {NOT_A_BUNDLE}"
    )


# --- shots and images ------------------------------------------------------------------------


@pytest.fixture
def shots(tmp_path) -> Path:
    from fit_support import make_colour_shots

    return make_colour_shots(tmp_path / "shots", per_class=4, seed=0)


def evaluate(bundle, data, tmp_path, *extra) -> subprocess.CompletedProcess:
    return edge_tune(
        "eval",
        "--bundle",
        bundle,
        "--data",
        data,
        "--threads",
        1,
        *extra,
        env={"EDGE_TUNE_CACHE": str(tmp_path / "cache")},
    )


def test_a_fifo_among_the_shots_is_skipped_without_opening(tiny_bundle, shots, tmp_path):
    os.mkfifo(shots / "red" / "x.png")
    before = tree_digest(shots)
    done = evaluate(tiny_bundle, shots, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[0] == (
        "skipped 1 unreadable image (x.png: not a regular file (a FIFO, socket or device); "
        "skipped without opening it)"
    )
    assert "(16/16 images" in done.stdout or "/16 images" in done.stdout
    assert tree_digest(shots) == before


def test_an_extreme_aspect_ratio_is_skipped_not_fatal(tiny_bundle, shots, tmp_path):
    from PIL import Image

    Image.new("RGB", (2000, 10), (200, 40, 40)).save(shots / "red" / "strip.png")
    done = evaluate(tiny_bundle, shots, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (
        "skipped 1 unreadable image (strip.png: image is 2000x10 pixels, an aspect ratio above 64:1)"
    )


def test_a_gif_is_read_by_eval_as_by_predict(tiny_bundle, shots, tmp_path):
    from PIL import Image

    Image.new("RGB", (36, 36), (210, 40, 40)).save(shots / "red" / "extra.gif")
    done = evaluate(tiny_bundle, shots, tmp_path, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["images"] == 17


def test_identical_images_in_two_classes_are_warned_about(tiny_bundle, shots, tmp_path):
    shutil.copy(shots / "red" / "0.png", shots / "blue" / "copy.png")
    done = evaluate(tiny_bundle, shots, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "warning: the same image is in classes 'blue' (copy.png) and 'red' (0.png); a photo "
        "belongs to one class"
    ) in done.stderr


def test_a_class_folder_linked_to_another_is_warned_about(tiny_bundle, shots, tmp_path):
    (shots / "crimson").symlink_to(shots / "red", target_is_directory=True)
    done = evaluate(tiny_bundle, shots, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "warning: class 'red' is the same folder as 'crimson' (a link); both hold the same photos"
        in done.stderr
    )


def test_sixteen_bit_grey_is_scaled_not_clipped():
    from PIL import Image

    from edge_tune.preprocess import to_rgb

    wide = Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16))
    assert wide.mode.startswith("I")
    assert np.asarray(to_rgb(wide))[0, 0].tolist() == [117, 117, 117]  # 30000 / 257 = 116.7


def test_a_sixteen_bit_png_reads_as_its_grey(tmp_path):
    from PIL import Image

    from edge_tune.preprocess import open_image, to_rgb

    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert np.asarray(to_rgb(open_image(tmp_path / "grey16.png")))[0, 0].tolist() == [117, 117, 117]


# --- options ---------------------------------------------------------------------------------

TEMPLATE_CASES = ["a {} of {kind}", "{} {", "a photo", "{}{}", "a }{ photo {}"]


@pytest.mark.parametrize("template", TEMPLATE_CASES)
def test_a_template_with_other_braces_is_one_line(tiny_bundle, shots, tmp_path, template):
    done = evaluate(tiny_bundle, shots, tmp_path, "--template", template)
    assert_one_line_error(
        done,
        f"template {template!r} must contain '{{}}' exactly once and no "
        'other braces. Use e.g. --template "a photo of a {}."',
    )
    assert not (tmp_path / "cache").exists()  # refused before any image was encoded


@pytest.mark.parametrize("seed", ["-1", str(2**32), "1e3"])
def test_a_seed_outside_its_range_is_a_usage_error(tiny_bundle, shots, seed):
    done = edge_tune("fit", "--data", shots, "--bundle", tiny_bundle, "--seed", seed)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "Invalid value for '--seed'" in done.stderr


def test_budget_time_alone_says_the_query_cap_is_lifted(tiny_bundle, shots, tmp_path):
    done = edge_tune(
        "fit",
        "--data",
        shots,
        "--bundle",
        tiny_bundle,
        "--budget-time",
        "2s",
        "--folds",
        2,
        "--head",
        "none",
        "--threads",
        1,
        "--out",
        tmp_path / "run",
        env={"EDGE_TUNE_CACHE": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr
    assert (
        "budget: 2.0s of tuning and no query cap (--budget-time alone lifts the default 2000 "
        "queries)"
    ) in done.stderr.splitlines()


# --- predict ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tiny_bundle, tmp_path_factory) -> Path:
    from fit_support import make_colour_shots

    root = tmp_path_factory.mktemp("hostile-run")
    shots = make_colour_shots(root / "shots", per_class=4, seed=0)
    done = edge_tune(
        "fit",
        "--data",
        shots,
        "--bundle",
        tiny_bundle,
        "--budget-queries",
        40,
        "--folds",
        2,
        "--head",
        "ncm",
        "--threads",
        1,
        "--out",
        root / "run",
        env={"EDGE_TUNE_CACHE": str(root / "cache")},
    )
    assert done.returncode == 0, done.stderr
    return root / "run"


def run_copy(fitted: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fitted, tmp_path / "run"))


def test_predict_on_a_truncated_classifier_is_one_line(fitted, tmp_path):
    run = run_copy(fitted, tmp_path)
    data = (run / "classifier.npz").read_bytes()
    (run / "classifier.npz").write_bytes(data[: len(data) // 2])
    done = edge_tune("predict", run, fitted.parent / "shots" / "red")
    assert "Traceback" not in done.stderr and done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: {run}/classifier.npz: unreadable classifier (")
    assert done.stderr.endswith("). Re-run `edge-tune fit` to write it again\n")


def test_predict_on_a_classifier_of_junk_is_one_line(fitted, tmp_path):
    run = run_copy(fitted, tmp_path)
    (run / "classifier.npz").write_bytes(b"PK\x03\x04" + os.urandom(200))
    done = edge_tune("predict", run, fitted.parent / "shots" / "red")
    assert "Traceback" not in done.stderr and done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"Error: {run}/classifier.npz: unreadable classifier (")


def test_predict_after_the_bundle_moved_names_bundle(fitted, tmp_path, tiny_bundle):
    run = run_copy(fitted, tmp_path)
    result = json.loads((run / "result.json").read_text())
    result["bundle"]["path"] = str(tmp_path / "moved-away")
    (run / "result.json").write_text(json.dumps(result))
    done = edge_tune("predict", run, fitted.parent / "shots" / "red")
    assert_one_line_error(
        done,
        f"{tmp_path / 'moved-away'}: the bundle this run was tuned with is "
        "no longer here. Pass --bundle DIR with that bundle where it is now",
    )
    ok = edge_tune("predict", run, fitted.parent / "shots" / "red", "--bundle", tiny_bundle)
    assert ok.returncode == 0, ok.stderr


def test_predict_skips_a_fifo_and_a_missing_file(fitted, tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    red = sorted((fitted.parent / "shots" / "red").glob("*.png"))[0]
    done = edge_tune("predict", fitted, fifo, tmp_path / "gone.jpg", red)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"skipped {fifo}: not a regular file (a FIFO, socket or device); skipped without opening it",
        f"skipped {tmp_path / 'gone.jpg'}: cannot be read (No such file or directory)",
    ]
    assert done.stdout.startswith(f"{red}: ")


def test_predict_with_nothing_readable_is_one_line(fitted, tmp_path):
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)
    done = edge_tune("predict", fitted, fifo)
    assert done.returncode == 1 and done.stderr.splitlines()[-1] == (
        "Error: no images to classify among the given paths. Pass image files (jpg, png, webp, bmp) "
        "or folders holding them"
    )


def test_a_manifest_that_is_not_utf8_is_one_line(bundle_copy):
    (bundle_copy / "manifest.json").write_bytes(b"\xff\xfe{}")
    done = edge_tune("info", bundle_copy)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(
        f"Error: {bundle_copy}/manifest.json: manifest.json is not valid JSON ("
    )


def test_a_manifest_that_is_a_list_is_one_line(bundle_copy):
    (bundle_copy / "manifest.json").write_text("[1, 2]")
    assert_one_line_error(
        edge_tune("info", bundle_copy),
        f"{bundle_copy}/manifest.json: not an edge-tune bundle manifest (format is "
        f"not 'edge-tune-bundle'). {NOT_A_BUNDLE}",
    )


# --- run directories: nothing of the user's is touched ----------------------------------------


def fit_args(tiny_bundle, shots, out, *extra):
    return ("fit", "--data", shots, "--bundle", tiny_bundle, "--budget-queries", 40, "--folds", 2,
            "--head", "ncm", "--threads", 1, "--out", out, *extra)  # fmt: skip


def cache_env(tmp_path):
    return {"EDGE_TUNE_CACHE": str(tmp_path / "cache")}


def test_out_that_is_a_file_fails_before_encoding(tiny_bundle, shots, tmp_path):
    out = tmp_path / "result.txt"
    out.write_text("mine")
    done = edge_tune(*fit_args(tiny_bundle, shots, out), env=cache_env(tmp_path))
    assert_one_line_error(done, f"{out}: is a file, not a run directory. Choose another --out (a "
                                "folder that does not exist yet)")  # fmt: skip
    assert out.read_text() == "mine" and not (tmp_path / "cache").exists()


def test_out_inside_the_data_is_refused(tiny_bundle, shots, tmp_path):
    before = tree_digest(shots)
    done = edge_tune(*fit_args(tiny_bundle, shots, shots / "run"), env=cache_env(tmp_path))
    assert_one_line_error(done, f"{shots / 'run'}: the run directory is inside the data folder. "
                                f"Choose an --out outside {shots}")  # fmt: skip
    assert tree_digest(shots) == before and not (shots / "run").exists()


def test_a_folder_with_the_users_metrics_is_left_alone(tiny_bundle, shots, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"my": "numbers"}\n')
    before = tree_digest(out)
    done = edge_tune(*fit_args(tiny_bundle, shots, out), env=cache_env(tmp_path))
    assert_one_line_error(done, f"{out}: the folder is not empty and is not an edge-tune run; "
                                "nothing in it was changed. Choose another --out (a folder that "
                                "does not exist yet)")  # fmt: skip
    assert tree_digest(out) == before


def test_out_that_cannot_be_created_fails_before_encoding(tiny_bundle, shots, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = edge_tune(*fit_args(tiny_bundle, shots, blocker / "run"), env=cache_env(tmp_path))
    assert_one_line_error(done, f"{blocker / 'run'}: cannot create the run directory (Not a "
                                "directory). Choose an --out where you can write")  # fmt: skip
    assert not (tmp_path / "cache").exists()


def test_a_run_in_use_is_refused_with_the_process_id(tiny_bundle, shots, tmp_path):
    out = tmp_path / "run"
    first = edge_tune(*fit_args(tiny_bundle, shots, out), env=cache_env(tmp_path))
    assert first.returncode == 0, first.stderr
    hold = ("import time; from pathlib import Path; from edge_tune.rundir import RunLock; "
            f"lock = RunLock(Path({str(out)!r})); print('held', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True,
                              cwd=REPO)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        done = edge_tune("fit", "--resume", out, "--budget-queries", 80, env=cache_env(tmp_path))
        assert_one_line_error(done, f"{out}: the run is in use by process {holder.pid}. Wait for "
                                    "that fit to end (Ctrl-C there saves a checkpoint), or use "
                                    "another --out")  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    again = edge_tune("fit", "--resume", out, "--budget-queries", 80, env=cache_env(tmp_path))
    assert again.returncode == 0, again.stderr  # free again once the holder is gone


def test_a_fit_that_fails_before_its_first_step_blocks_nothing(tiny_bundle, shots, tmp_path):
    out = tmp_path / "run"
    args = fit_args(tiny_bundle, shots, out)
    done = edge_tune(*args, "--budget-queries", 3, env=cache_env(tmp_path))
    assert done.returncode == 1 and "is smaller than one step" in done.stderr
    again = edge_tune(*args, env=cache_env(tmp_path))
    assert again.returncode == 0, again.stderr
    assert (out / "classifier.npz").is_file()


def test_a_hand_edited_checkpoint_is_detected(tiny_bundle, shots, tmp_path):
    from edge_tune.checkpoint import checkpoint_dir

    out = tmp_path / "run"
    assert edge_tune(*fit_args(tiny_bundle, shots, out), env=cache_env(tmp_path)).returncode == 0
    record_path = checkpoint_dir(out) / "tuner.json"
    record = json.loads(record_path.read_text())
    record["run_state"]["queries"] = 0
    record_path.write_text(json.dumps(record))
    done = edge_tune("fit", "--resume", out, "--budget-queries", 80, env=cache_env(tmp_path))
    assert_one_line_error(done, f"{record_path}: the checkpoint does not match its checksum "
                                "(edited or corrupted). Resume an unaltered run, or start a new "
                                "run with --out")  # fmt: skip


def test_a_short_metrics_log_is_repaired_to_whole_lines(tiny_bundle, shots, tmp_path):
    out = tmp_path / "run"
    assert edge_tune(*fit_args(tiny_bundle, shots, out), env=cache_env(tmp_path)).returncode == 0
    log = out / "metrics.jsonl"
    data = log.read_bytes()
    log.write_bytes(data[: len(data) - 7])  # a lost write: shorter than the checkpoint recorded
    done = edge_tune("fit", "--resume", out, "--budget-queries", 80, env=cache_env(tmp_path))
    assert done.returncode == 0, done.stderr
    text = log.read_bytes()
    assert b"\x00" not in text and text.endswith(b"\n")
    assert all(json.loads(line) for line in text.decode().splitlines())


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_run_artifacts_honour_the_umask(tiny_bundle, shots, tmp_path, umask, mode):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "edge_tune", *map(str, fit_args(tiny_bundle, shots, out))],
        capture_output=True, text=True, timeout=LIMIT_S, cwd=REPO,
        env={**os.environ, **cache_env(tmp_path)}, preexec_fn=lambda: os.umask(umask),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("classifier.npz", "prompt.npz", "result.json"):
        assert (out / name).stat().st_mode & 0o777 == mode, name


def test_a_kill_while_images_are_encoded_says_run_the_same_command(tiny_bundle, tmp_path):
    import signal
    import time

    from fit_support import make_colour_shots

    shots = make_colour_shots(tmp_path / "shots", per_class=80, seed=3)
    cache = tmp_path / "cache"
    args = fit_args(tiny_bundle, shots, tmp_path / "run")
    env = {**os.environ, "EDGE_TUNE_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-m", "edge_tune", *map(str, args)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + LIMIT_S
    while not any(cache.rglob("*.npy")) and time.monotonic() < deadline:  # encoding has begun
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=LIMIT_S)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "Stopped before tuning began (SIGTERM); the images encoded so far are cached: run the "
        "same command again to go on."
    )
    again = edge_tune(*args, env={"EDGE_TUNE_CACHE": str(cache)})
    assert again.returncode == 0, again.stderr  # the stillborn run folder does not block it


def test_errors_under_json_are_one_json_object_on_stderr(tiny_bundle, tmp_path):
    plain = evaluate(tiny_bundle, tmp_path / "nowhere", tmp_path)
    done = evaluate(tiny_bundle, tmp_path / "nowhere", tmp_path, "--json")
    assert done.returncode == plain.returncode == 1 and done.stdout == ""
    error = json.loads(done.stderr)
    assert plain.stderr.strip() == f"Error: {error['error']}"  # the same words
    assert error == {
        "error": error["error"],
        "message": "data folder does not exist",
        "path": str(tmp_path / "nowhere"),
        "hint": "Pass a folder holding one sub-folder of photos per class",
    }
    usage = edge_tune("predict", "--json", env={})
    assert usage.returncode == 2
    assert json.loads(usage.stderr) == {
        "error": "Missing argument '[RUN] IMAGES...'.",
        "usage": True,
    }
