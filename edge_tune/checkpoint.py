"""Run-directory checkpoints that survive a kill at any moment and a full disk.

A checkpoint is a directory `RUN/state/ckpt-<step>/` holding the optimiser state (written by
`edge_tune.optim.save_state`), the tuner's arrays (`tuner.npz`) and its record (`tuner.json`:
counters, best-so-far, metrics offset, config, hashes). `RUN/state/LATEST` names the current one.
A new checkpoint is written into a temporary directory, fsynced, renamed, and only then does LATEST
move (atomically) and the old one go; so a kill or a failed write (ENOSPC) leaves the previous good
checkpoint in place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_tune.atomic import (
    UMASK,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    fsync_file,
)
from edge_tune.bundle import sha256_file
from edge_tune.errors import CheckpointError

STATE_DIR = "state"
LATEST = "LATEST"
CHECKPOINT_FORMAT = 3  # 3: the record carries its checksum and its files'


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an `.npz` without pickle; a truncated or corrupt archive is a ValueError."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ValueError(f"not a complete .npz archive: {err}") from None


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """What `read_checkpoint` gives: its path, the tuner record and arrays, the optimiser states."""

    path: Path
    record: dict
    arrays: dict[str, np.ndarray]
    optimizer_states: list


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
        ) from None
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
    optimizer_states: list,
) -> Path:
    """Write a complete checkpoint and make it the current one; keep the old one on failure."""
    from edge_tune.optim import save_state

    state = Path(run_dir) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    previous = checkpoint_dir(run_dir)
    name = f"ckpt-{step:09d}-{uuid.uuid4().hex[:8]}"  # unique, so it never collides with LATEST's
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=state))
    os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp makes 0700; the run's group may read it
    final = state / name
    try:
        for index, optimizer_state in enumerate(optimizer_states):
            save_state(tmp / f"optimizer-{index}.npz", optimizer_state)
            fsync_file(tmp / f"optimizer-{index}.npz")
        atomic_save_npz(tmp / "tuner.npz", arrays)
        full = {
            "checkpoint_format": CHECKPOINT_FORMAT,
            "optimizer_states": len(optimizer_states),
            **record,
            "file_sha256": {f.name: sha256_file(f) for f in sorted(tmp.glob("*.npz"))},
        }
        atomic_write_json(tmp / "tuner.json", {**full, "record_sha256": record_digest(full)})
        fsync_dir(tmp)
        os.replace(tmp, final)
        fsync_dir(state)
        atomic_write_bytes(state / LATEST, (final.name + "\n").encode())
    except BaseException as err:  # a full disk, or Ctrl-C mid-write: no half checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        if _pointer(state) != final.name:  # interrupted after LATEST moved: `final` is the run's
            shutil.rmtree(final, ignore_errors=True)
        if not isinstance(err, OSError):
            raise
        if previous is not None:
            kept, then = (
                f"the previous checkpoint {previous.name} is kept",
                f"continue with --resume {Path(run_dir)}",
            )
        else:
            kept, then = "the run has no checkpoint yet", "run the same command again"
        raise CheckpointError(
            f"cannot write a checkpoint ({err.strerror or err}); {kept}",
            path=state,
            hint=f"Free disk space, then {then}",
        ) from err
    for old in state.iterdir():
        if old.name.startswith(("ckpt-", ".ckpt-")) and old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _pointer(state: Path) -> str | None:
    try:
        return (state / LATEST).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def record_digest(record: Mapping[str, object]) -> str:
    """sha256 of a checkpoint record in canonical JSON (what `read_checkpoint` checks)."""
    text = json.dumps(record, sort_keys=True, allow_nan=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _files_match(path: Path, digests) -> bool:
    if not isinstance(digests, dict):
        return False
    try:
        return all(sha256_file(path / name) == digest for name, digest in digests.items())
    except OSError:
        return False


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
            f"checkpoint format {record.get('checkpoint_format')} is not {CHECKPOINT_FORMAT}",
            path=path / "tuner.json",
            hint="Resume it with the edge-tune version that wrote it",
        )
    stored = record.pop("record_sha256", None) if isinstance(record, dict) else None
    if stored != record_digest(record) or not _files_match(path, record.get("file_sha256")):
        raise CheckpointError(
            "the checkpoint does not match its checksum (edited or corrupted)",
            path=path / "tuner.json",
            hint="Resume an unaltered run, or start a new run with --out",
        )
    states = [
        load_state(path / f"optimizer-{i}.npz") for i in range(int(record["optimizer_states"]))
    ]
    return Checkpoint(path=path, record=record, arrays=arrays, optimizer_states=states)
