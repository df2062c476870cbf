"""`manifest.json` is untrusted input: every field the runtime uses is checked for type and range
here, before anything reads it, and every path it names is confined to the bundle directory.

A bundle is copied onto a device from somewhere else. A manifest that names `../../etc/passwd`, an
absolute path, a symlink out of the bundle or a FIFO must be refused without opening the file; a
`resize_shortest_edge` of 100000 or a NaN logit scale must be refused before an allocation or a
silently wrong answer. Each refusal is one `BundleError` that names the field.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path, PurePosixPath

from edge_tune.errors import BundleError

FORMAT = "edge-tune-bundle"
FORMAT_VERSION = 1
REEXPORT = "re-export it with `edge-tune export MODEL --out DIR`"
NOT_A_BUNDLE = "pass a directory made by `edge-tune export MODEL --out DIR`"
REQUIRED_GRAPHS = ("text", "image")
#: Files the runtime reads besides the graphs; each must be listed (and so hashed) under `files`.
REQUIRED_FILES = ("token_embedding.npy", "tokenizer.json")
#: Pillow resampling filters a manifest may name (edge_tune.preprocess maps them).
RESAMPLE_RULES = ("bicubic", "bilinear", "nearest", "lanczos")
#: Sane bounds: far above any CLIP (ViT-L/14@336: width 1024, 336 px, context 77, vocab 49,408),
#: far below what would exhaust a device's memory before an error could be raised.
MAX_WIDTH = 16384
MAX_IMAGE_SIZE = 4096
MAX_CONTEXT = 4096
MAX_VOCAB = 10_000_000
#: CLIP clamps its learned logit scale at 100; a bundle outside (0, 1000] is corrupt.
MAX_LOGIT_SCALE = 1000.0


def parse_manifest(raw: bytes, path: Path) -> dict:
    """The manifest as a dict whose every used field has been checked (or BundleError)."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise BundleError(
            f"manifest.json is not valid JSON ({err})", path=path, hint=REEXPORT
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(
            f"not an edge-tune bundle manifest (format is not {FORMAT!r})",
            path=path,
            hint=NOT_A_BUNDLE,
        )
    version = manifest.get("format_version")
    if not _is_int(version) or version < 1:
        raise BundleError(f"invalid format_version {version!r}", path=path, hint=REEXPORT)
    if version > FORMAT_VERSION:
        raise BundleError(
            f"bundle format_version {version} is newer than this edge-tune reads "
            f"({FORMAT_VERSION})",
            path=path,
            hint="upgrade edge-tune on this device (pip install -U edge-tune)",
        )
    for key in ("model", "dims", "tokens", "preprocess", "graphs", "files"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(
                f"manifest.json lacks a valid {key!r} entry", path=path, hint=REEXPORT
            )
    check = _Checker(path)
    check.text("model.name", manifest["model"].get("name"))
    dims = manifest["dims"]
    check.integer("dims.text_width", dims.get("text_width"), 1, MAX_WIDTH)
    check.integer("dims.projection_dim", dims.get("projection_dim"), 1, MAX_WIDTH)
    check.integer("dims.context_length", dims.get("context_length"), 2, MAX_CONTEXT)
    check.integer("dims.vocab_size", dims.get("vocab_size"), 2, MAX_VOCAB)
    check.integer("dims.image_size", dims.get("image_size"), 1, MAX_IMAGE_SIZE)
    tokens = manifest["tokens"]
    for key in ("sot_id", "eot_id"):
        check.integer(f"tokens.{key}", tokens.get(key), 0, dims["vocab_size"] - 1)
    if "pad_id" in tokens:
        check.integer("tokens.pad_id", tokens["pad_id"], 0, dims["vocab_size"] - 1)
    scale = manifest.get("logit_scale")
    check.number("logit_scale", scale, 0.0, MAX_LOGIT_SCALE, open_low=True)
    _check_preprocess(manifest["preprocess"], check)
    _check_files(manifest, check)
    return manifest


def _check_preprocess(pre: dict, check: _Checker) -> None:
    check.integer(
        "preprocess.resize_shortest_edge", pre.get("resize_shortest_edge"), 1, MAX_IMAGE_SIZE
    )
    check.integer("preprocess.crop_size", pre.get("crop_size"), 1, MAX_IMAGE_SIZE)
    if pre["crop_size"] > pre["resize_shortest_edge"]:
        check.fail(
            "preprocess.crop_size",
            f"{pre['crop_size']} is larger than resize_shortest_edge {pre['resize_shortest_edge']}",
        )
    if "rescale_factor" in pre:
        check.number("preprocess.rescale_factor", pre["rescale_factor"], 0.0, 1.0, open_low=True)
    if "resample" in pre and str(pre["resample"]).lower() not in RESAMPLE_RULES:
        check.fail(
            "preprocess.resample", f"{pre['resample']!r} is not one of {', '.join(RESAMPLE_RULES)}"
        )
    if "convert_rgb" in pre and not isinstance(pre["convert_rgb"], bool):
        check.fail("preprocess.convert_rgb", f"{pre['convert_rgb']!r} is not true or false")
    for key, low in (("mean", -10.0), ("std", 0.0)):
        values = pre.get(key)
        if not isinstance(values, list) or len(values) != 3:
            check.fail(f"preprocess.{key}", f"{values!r} is not a list of 3 numbers")
        for i, value in enumerate(values):
            check.number(f"preprocess.{key}[{i}]", value, low, 10.0, open_low=key == "std")


def _check_files(manifest: dict, check: _Checker) -> None:
    files = manifest["files"]
    for name, entry in files.items():
        check.relative_name(f"files[{name!r}]", name)
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            check.fail(f"files[{name!r}]", "has no sha256")
        if "bytes" in entry:
            check.integer(f"files[{name!r}].bytes", entry["bytes"], 0, 2**50)
    graphs = manifest["graphs"]
    for role in REQUIRED_GRAPHS:
        if not isinstance(graphs.get(role), dict):
            check.fail("graphs", f"names no {role} graph")
    for role, graph in graphs.items():
        if not isinstance(graph, dict):
            check.fail(f"graphs.{role}", "is not an object")
        if graph.get("file") not in files:
            check.fail(f"graphs.{role}.file", f"{graph.get('file')!r} is not listed under 'files'")
    for name in REQUIRED_FILES:
        if name not in files:
            check.fail("files", f"does not list {name} (every file the runtime reads is hashed)")


class _Checker:
    """Type and range checks that name the field in the one-line error."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, why: str):
        raise BundleError(f"manifest.json {field} {why}", path=self.path, hint=REEXPORT)

    def text(self, field: str, value) -> None:
        if not isinstance(value, str) or not value.strip():
            self.fail(field, f"{value!r} is not a name")

    def integer(self, field: str, value, low: int, high: int) -> None:
        if not _is_int(value):
            self.fail(field, f"{value!r} is not an integer")
        if not low <= value <= high:
            self.fail(field, f"{value} is outside {low}..{high}")

    def number(self, field: str, value, low: float, high: float, *, open_low: bool = False) -> None:
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            self.fail(field, f"{value!r} is not a finite number")
        if value > high or value < low or (open_low and value == low):
            self.fail(field, f"{value:g} is outside {'(' if open_low else '['}{low:g}, {high:g}]")

    def relative_name(self, field: str, name) -> None:
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if (
            not parts
            or name.startswith(("/", "\\"))
            or "\\" in name
            or ":" in name
            or any(part in ("..", ".") for part in parts)
        ):
            self.fail(field, "is not a plain relative path inside the bundle")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bundle_file(root: Path, name: str) -> Path:
    """`root/name` if it resolves (symlinks followed) to a regular file inside `root`, else
    BundleError — without opening it: a FIFO, a device or a link to /proc is refused by `stat`."""
    path = root / name
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise BundleError(
            "missing bundle file (listed in manifest.json)",
            path=path,
            hint=f"copy the whole bundle again, or {REEXPORT}",
        ) from None
    except (OSError, RuntimeError) as err:  # a symlink loop, a permission problem
        raise BundleError(
            f"cannot resolve the bundle file ({err})",
            path=path,
            hint=f"copy the whole bundle again, or {REEXPORT}",
        ) from None
    if not real.is_relative_to(root.resolve()):
        raise BundleError(
            f"bundle file leads outside the bundle (to {real})",
            path=path,
            hint="a bundle's files must live inside its directory; " + REEXPORT,
        )
    mode = os.stat(real).st_mode
    if not stat.S_ISREG(mode):
        raise BundleError(
            "bundle file is not a regular file",
            path=path,
            hint=f"copy the whole bundle again, or {REEXPORT}",
        )
    return real
