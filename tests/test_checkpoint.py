"""Checkpoints: atomic, bit-exact, and the previous one survives a failed write (full disk)."""

from __future__ import annotations

import contextlib
import resource
import signal

import numpy as np
import pytest

from edge_tune.atomic import atomic_save_npz, atomic_write_bytes, npz_bytes
from edge_tune.checkpoint import (
    LATEST,
    STATE_DIR,
    checkpoint_dir,
    load_npz,
    read_checkpoint,
    write_checkpoint,
)
from edge_tune.errors import CheckpointError
from edge_tune.optim import make_optimizer


def _advanced_cma_state(steps: int = 3):
    optimizer = make_optimizer("cma", 6, seed=3)
    state = optimizer.init(np.zeros(6))
    for _ in range(steps):
        candidates = optimizer.ask(state)
        state, _ = optimizer.tell(state, np.sum((candidates - 1.0) ** 2, axis=1))
    return optimizer, state


def _assert_same_state(a, b) -> None:
    assert type(a) is type(b)
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            _assert_same_state(x, y)
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        else:
            assert x == y


@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """A real write failure: the kernel refuses to grow any file past `nbytes` (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_npz_bytes_are_reproducible_and_load_without_pickle(tmp_path):
    arrays = {"w": np.arange(5, dtype=np.float64), "names": np.array(["cat", "dög"])}
    assert npz_bytes(arrays) == npz_bytes(dict(reversed(list(arrays.items()))))
    atomic_save_npz(tmp_path / "a.npz", arrays)
    loaded = load_npz(tmp_path / "a.npz")
    assert np.array_equal(loaded["w"], arrays["w"]) and list(loaded["names"]) == ["cat", "dög"]
    with pytest.raises(TypeError, match="pickle"):
        npz_bytes({"bad": np.array([{"a": 1}], dtype=object)})


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_bytes(target, b"old")

    def explode(handle):
        handle.write(b"half")
        raise OSError(28, "No space left on device")

    from edge_tune.atomic import atomic_write

    with pytest.raises(OSError):
        atomic_write(target, explode)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    optimizer, state = _advanced_cma_state()
    _, other = _advanced_cma_state(1)
    best = np.random.default_rng(0).normal(size=6)
    write_checkpoint(
        tmp_path,
        step=3,
        record={"step": 3, "queries": 42},
        arrays={"best_w": best},
        optimizer_states=[state, other],  # one per cross-validation fold
    )
    loaded = read_checkpoint(tmp_path)
    assert loaded.record["queries"] == 42
    assert np.array_equal(loaded.arrays["best_w"], best)
    assert len(loaded.optimizer_states) == 2
    _assert_same_state(loaded.optimizer_states[0], state)
    _assert_same_state(loaded.optimizer_states[1], other)
    # the reloaded state continues exactly like the original
    assert np.array_equal(optimizer.ask(loaded.optimizer_states[0]), optimizer.ask(state))


def test_newer_checkpoint_replaces_older_and_old_one_is_removed(tmp_path):
    _, state = _advanced_cma_state(1)
    first = write_checkpoint(
        tmp_path, step=1, record={"step": 1}, arrays={}, optimizer_states=[state]
    )
    second = write_checkpoint(
        tmp_path, step=2, record={"step": 2}, arrays={}, optimizer_states=[state]
    )
    assert checkpoint_dir(tmp_path) == second and not first.exists()
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == [LATEST, second.name]


def test_full_disk_keeps_previous_checkpoint(tmp_path):
    _, state = _advanced_cma_state()
    good = write_checkpoint(
        tmp_path,
        step=3,
        record={"step": 3},
        arrays={"best_w": np.zeros(6)},
        optimizer_states=[state],
    )
    big = {"best_w": np.zeros(100_000)}  # 800 kB: more than the limit below lets a file grow
    with _file_size_limit(50_000), pytest.raises(CheckpointError) as err:
        write_checkpoint(tmp_path, step=4, record={"step": 4}, arrays=big, optimizer_states=[state])
    assert str(err.value) == (
        f"{tmp_path / STATE_DIR}: cannot write a checkpoint (File too large); "
        f"the previous checkpoint {good.name} is kept. "
        f"Free disk space, then continue with --resume {tmp_path}"
    )
    assert checkpoint_dir(tmp_path) == good
    assert read_checkpoint(tmp_path).record["step"] == 3
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == [LATEST, good.name]


def test_missing_and_altered_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / STATE_DIR}: no checkpoint to resume from. Pass a run "
        "directory written by `edge-tune fit`, or start anew with --out"
    )
    (tmp_path / STATE_DIR).mkdir()
    (tmp_path / STATE_DIR / LATEST).write_text("ckpt-missing\n")
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / STATE_DIR / LATEST}: the checkpoint pointer names no "
        "checkpoint. The run directory was altered; start a new run with --out"
    )


def test_full_disk_before_the_first_checkpoint_says_run_the_command_again(tmp_path):
    with _file_size_limit(20_000), pytest.raises(CheckpointError) as err:
        write_checkpoint(tmp_path, step=0, record={}, arrays={"x": np.zeros(100_000)},
                         optimizer_states=[])  # fmt: skip
    assert str(err.value) == (
        f"{tmp_path / STATE_DIR}: cannot write a checkpoint (File too large); the run has no "
        "checkpoint yet. Free disk space, then run the same command again"
    )
    assert checkpoint_dir(tmp_path) is None
