"""Assemble a bundle directory atomically: temp dir beside the target, fsync, rename.

A failed export (parity, exporter crash, Ctrl-C) leaves nothing at `--out`. An `--out` that already
holds a bundle of another model is refused; re-exporting the same model replaces it in one rename.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from edge_tune.atomic import fsync_dir, fsync_file
from edge_tune.bundle import MANIFEST, sha256_file
from edge_tune.errors import ExportError

BUNDLE_FILES = ("image.onnx", "text.onnx", "token_embedding.npy", "tokenizer.json")
OPTIONAL_FILES = ("text_shared.onnx",)  # `edge-tune export --shared-prefix`


def check_target(out: Path, identity: dict) -> None:
    """Refuse an --out that holds something other than (a bundle of) the same model."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ExportError(
            "--out exists and is not a directory", path=out, hint="choose another --out"
        )
    if not any(out.iterdir()):
        return
    try:
        old = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ExportError(
            "--out is a non-empty directory that is not an edge-tune bundle",
            path=out,
            hint="choose an empty or new --out",
        ) from None
    if bundle_identity(old) != identity:
        raise ExportError(
            f"--out already holds a different bundle ({old.get('model', {}).get('name')!r} "
            f"from {old.get('model', {}).get('source')!r})",
            path=out,
            hint="choose another --out or delete that bundle first",
        )


def bundle_identity(manifest: dict) -> dict:
    """What makes two exports 'the same bundle': model name and source, dims, format version."""
    return {
        "model": manifest.get("model"),
        "dims": manifest.get("dims"),
        "format_version": manifest.get("format_version"),
    }


def scratch_dir(out: Path, kind: str) -> Path:
    """A hidden work dir in --out's parent (so the final rename stays on one filesystem), named
    `.OUT.KIND-PID-XXXX`. An export killed beyond Python's reach (SIGKILL, power loss) leaves one;
    the next export beside it removes those whose process is gone (`remove_stale`)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))


def remove_stale(out: Path) -> list[Path]:
    """Remove the work dirs of exports to `out` whose process has ended; returns what went."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.[a-z0-9]+-(\d+)-[^/]+$")
    removed = []
    for path in out.parent.glob(f".{out.name}.*"):
        match = pattern.match(path.name)
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def make_staging_dir(out: Path) -> Path:
    """The directory a bundle is assembled in; readable by all as a bundle is meant to be."""
    staging = scratch_dir(out, "partial")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes 0700; a bundle is meant to be shared
    return staging


def finish_bundle(staging: Path, out: Path, manifest: dict) -> Path:
    """Hash every file into the manifest, fsync, and rename `staging` to `out`."""
    names = [*BUNDLE_FILES, *(name for name in OPTIONAL_FILES if (staging / name).is_file())]
    manifest["files"] = {
        name: {"sha256": sha256_file(staging / name), "bytes": (staging / name).stat().st_size}
        for name in names
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    for name in (*names, MANIFEST):
        fsync_file(staging / name)
    check_target(out, bundle_identity(manifest))
    old = None
    if out.exists():
        old = scratch_dir(out, "old")
        os.replace(out, old / "bundle")
    os.replace(staging, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


__all__ = [
    "BUNDLE_FILES",
    "OPTIONAL_FILES",
    "check_target",
    "finish_bundle",
    "make_staging_dir",
    "remove_stale",
    "scratch_dir",
    "sha256_file",
]
