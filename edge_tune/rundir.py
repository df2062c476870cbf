"""Run directories: which folders are edge-tune's, and who is using one.

A folder is an edge-tune run only if it holds the marker `.edge-tune-run`, which edge-tune writes
when it creates the run; nothing in a folder without it is ever replaced or deleted (a user's own
`metrics.jsonl` stays theirs). A run in use holds an exclusive lock on `.edge-tune.lock` (released
by the kernel when the process ends, however it ends), so a second `fit` or `--resume` on it is
refused with the process id instead of racing the first for its files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edge_tune.atomic import atomic_write_json
from edge_tune.errors import CheckpointError

MARKER = ".edge-tune-run"
LOCK = ".edge-tune.lock"
MARKER_RECORD = {"format": "edge-tune-run", "format_version": 1}
#: What edge-tune itself writes into a run before its first checkpoint: a run killed then may be
#: started again in the same folder, and these (only these) are cleared.
STILLBORN_ENTRIES = {MARKER, LOCK, "metrics.jsonl", "state"}


def is_run(run_dir: Path) -> bool:
    try:
        record = json.loads((run_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == MARKER_RECORD["format"]


def _check_outside(run_dir: Path, inputs: list[Path]) -> None:
    """A run directory inside a data folder would become a class of its own (its curve.png an image)."""
    target = run_dir.resolve()
    for root in inputs:
        if target == root.resolve() or target.is_relative_to(root.resolve()):
            raise CheckpointError(
                "the run directory is inside the data folder",
                path=run_dir,
                hint=f"Choose an --out outside {root}",
            )


def claim_fresh(run_dir: Path, *, inputs: list[Path]) -> RunLock:
    """Create (or reuse a stillborn) run directory for a new run, mark it and lock it; refused
    when it lies inside one of the `inputs` (the data folders)."""
    from edge_tune.checkpoint import checkpoint_dir

    _check_outside(run_dir, inputs)
    has_checkpoint = run_dir.is_dir() and checkpoint_dir(run_dir) is not None
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(
            "is a file, not a run directory",
            path=run_dir,
            hint="Choose another --out (a folder that does not exist yet)",
        )
    if run_dir.is_dir():
        entries = {entry.name for entry in run_dir.iterdir()}
        if entries and not is_run(run_dir):
            raise CheckpointError(
                "the folder is not empty and is not an edge-tune run; nothing in it was changed",
                path=run_dir,
                hint="Choose another --out (a folder that does not exist yet)",
            )
        if entries and has_checkpoint:
            raise CheckpointError(
                "the folder holds an edge-tune run",
                path=run_dir,
                hint=f"Continue it with --resume {run_dir}, or choose another --out",
            )
        if not entries <= STILLBORN_ENTRIES:
            raise CheckpointError(
                "the folder holds a finished edge-tune run",
                path=run_dir,
                hint="Choose another --out",
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"cannot create the run directory ({err.strerror or err})",
            path=run_dir,
            hint="Choose an --out where you can write",
        ) from None
    lock = RunLock(run_dir)
    try:  # a run killed before its first checkpoint: only what edge-tune wrote, under our lock
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "state", ignore_errors=True)
        atomic_write_json(run_dir / MARKER, MARKER_RECORD)
    except OSError as err:
        lock.release()
        raise CheckpointError(
            f"cannot write to the run directory ({err.strerror or err})",
            path=run_dir,
            hint="Choose an --out where you can write",
        ) from None
    return lock


class RunLock:
    """An exclusive `flock` on RUN/.edge-tune.lock, holding this process's id.

    Shared within a process (a library that resumes a run while the first Tuner object still
    exists holds it twice); another process is refused."""

    _held: dict[Path, list] = {}  # resolved run dir -> [fd, holders], this process's locks

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK
        self._key = run_dir.resolve()
        self._holding = False
        held = self._held.get(self._key)
        if held is not None:
            held[1] += 1
            self._holding = True
            return
        fd = self._lock(run_dir)
        self._held[self._key] = [fd, 1]
        self._holding = True

    def _lock(self, run_dir: Path) -> int:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise CheckpointError(
                f"cannot open the run's lock file ({err.strerror or err})",
                path=self.path,
                hint="Check the run directory's permissions",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(
                f"the run is in use by process {holder}",
                path=run_dir,
                hint="Wait for that fit to end (Ctrl-C there saves a checkpoint), "
                "or use another --out",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def release(self) -> None:
        if not self._holding:
            return
        self._holding = False
        held = self._held[self._key]
        held[1] -= 1
        if held[1] == 0:
            del self._held[self._key]
            os.close(held[0])  # closing drops the flock

    __del__ = release  # a Tuner dropped without finish() frees its run
