"""Run-directory checkpoints that survive a kill at any moment and a full disk.

A checkpoint is a directory `RUN/state/ckpt-<step>/` holding the optimiser state (written by
`edge_tune.optim.save_state`), the tuner's arrays (`tuner.npz`) and its record (`tuner.json`:
counters, best-so-far, metrics offset, config, hashes). `RUN/state/LATEST` names the current one.
A new checkpoint is written into a temporary directory, fsynced, renamed, and only then does LATEST
move (atomically) and the old one go; so a kill or a failed write (ENOSPC) leaves the previous good
checkpoint in place. Also home to the small atomic-write helpers every run artifact uses.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from edge_tune.errors import CheckpointError

STATE_DIR = "state"
LATEST = "LATEST"
CHECKPOINT_FORMAT = 1


# --- atomic writes ----------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through `write(file)` via a temp file in the same directory, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | Path, obj: object) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An `.npz` archive with fixed zip timestamps, so equal arrays give byte-identical files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            array = np.asarray(arrays[name])
            if array.dtype == object:
                raise TypeError(f"{name}: object arrays would need pickle")
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def atomic_save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    return atomic_write_bytes(path, npz_bytes(arrays))


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` without pickle."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What `read_checkpoint` gives: its path, the tuner record and arrays, the optimiser state."""

    path: Path
    record: dict
    arrays: dict[str, np.ndarray]
    optimizer_state: object


def checkpoint_dir(run_dir: str | Path) -> Path | None:
    """The current checkpoint directory of a run, or None when it has none."""
    state = Path(run_dir) / STATE_DIR
    try:
        name = (state / LATEST).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CheckpointError(
            f"cannot read the checkpoint pointer ({err.strerror})",
            path=state / LATEST,
            hint="Check the run directory's permissions",
        )
    if not name.startswith("ckpt-") or "/" in name or not (state / name).is_dir():
        raise CheckpointError(
            "the checkpoint pointer names no checkpoint",
            path=state / LATEST,
            hint="The run directory was altered; start a new run with --out",
        )
    return state / name


def write_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    record: Mapping[str, object],
    arrays: Mapping[str, np.ndarray],
    optimizer_state: object,
) -> Path:
    """Write a complete checkpoint and make it the current one; keep the old one on failure."""
    from edge_tune.optim import save_state

    state = Path(run_dir) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    previous = checkpoint_dir(run_dir)
    name = f"ckpt-{step:09d}-{uuid.uuid4().hex[:8]}"  # unique, so it never collides with LATEST's
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=state))
    final = state / name
    try:
        save_state(tmp / "optimizer.npz", optimizer_state)
        _fsync_file(tmp / "optimizer.npz")
        atomic_save_npz(tmp / "tuner.npz", arrays)
        atomic_write_json(tmp / "tuner.json", {"checkpoint_format": CHECKPOINT_FORMAT, **record})
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(state)
        atomic_write_bytes(state / LATEST, (final.name + "\n").encode())
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)
        kept = (
            f"the previous checkpoint {previous.name} is kept" if previous else "no checkpoint kept"
        )
        raise CheckpointError(
            f"cannot write a checkpoint ({err.strerror or err}); {kept}",
            path=state,
            hint="Free disk space, then continue with --resume",
        ) from err
    for old in state.iterdir():
        if old.name.startswith(("ckpt-", ".ckpt-")) and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def read_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Load the current checkpoint of a run (CheckpointError naming the file when it cannot)."""
    from edge_tune.optim import load_state

    path = checkpoint_dir(run_dir)
    if path is None:
        raise CheckpointError(
            "no checkpoint to resume from",
            path=Path(run_dir) / STATE_DIR,
            hint="Pass a run directory written by `edge-tune fit`, or start anew with --out",
        )
    try:
        record = json.loads((path / "tuner.json").read_text(encoding="utf-8"))
        arrays = load_npz(path / "tuner.npz")
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"unreadable checkpoint ({err})",
            path=path,
            hint="The run directory was altered; start a new run with --out",
        ) from err
    if record.get("checkpoint_format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint format {record.get('checkpoint_format')} is not " f"{CHECKPOINT_FORMAT}",
            path=path / "tuner.json",
            hint="Resume it with the edge-tune version that wrote it",
        )
    optimizer_state = load_state(path / "optimizer.npz")
    return Checkpoint(path=path, record=record, arrays=arrays, optimizer_state=optimizer_state)
