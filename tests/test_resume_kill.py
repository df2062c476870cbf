"""A real `kill -9` (and a Ctrl-C) at a random moment, then `--resume`: identical artifacts."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fit_support import make_colour_shots

BUDGET = "1200"  # long enough that most random moments fall inside the tuning loop
ARTIFACTS = ("prompt.npz", "classifier.npz")


@pytest.fixture(scope="module")
def task(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("kill")
    make_colour_shots(root / "shots")
    make_colour_shots(root / "eval", seed=1)
    env = {**os.environ, "EDGE_TUNE_CACHE": str(root / "cache"), "PYTHONUNBUFFERED": "1"}
    return root, Path(tiny_bundle), env


def _fit(root: Path, bundle: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edge_tune",
        "fit",
        "--data",
        str(root / "shots"),
        "--eval",
        str(root / "eval"),
        "--bundle",
        str(bundle),
        "--budget-queries",
        BUDGET,
        "--threads",
        "1",
        "--checkpoint-every",
        "0.2s",
        "--eval-every",
        "5",
        "--out",
        str(run),
        *extra,
    ]


def _resume(run: Path) -> list[str]:
    return [sys.executable, "-m", "edge_tune", "fit", "--resume", str(run), "--threads", "1"]


@pytest.fixture(scope="module")
def reference(task):
    """The uninterrupted run, and how long it took."""
    root, bundle, env = task
    started = time.monotonic()
    done = subprocess.run(
        _fit(root, bundle, root / "reference"), env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return root / "reference", time.monotonic() - started


def _start_and_wait_for_a_checkpoint(command, run: Path, env) -> subprocess.Popen:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not (run / "state" / "LATEST").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return process


def _interrupt_mid_run(task, seconds: float, sig: int, name: str) -> tuple[Path, str, float]:
    """Start a fit, send `sig` at a random moment after its first checkpoint, before it finishes.

    An attempt whose signal lands after the artifacts were written proves nothing, so it is tried
    again with a shorter window (at most 6 attempts; each one is a fresh run directory).
    """
    root, bundle, env = task
    chooser = random.Random()
    window = 0.8 * seconds
    for attempt in range(6):
        run = root / f"{name}-{attempt}"
        process = _start_and_wait_for_a_checkpoint(_fit(root, bundle, run), run, env)
        delay = chooser.uniform(0.0, window)
        time.sleep(delay)
        if process.poll() is None and not (run / "classifier.npz").exists():
            process.send_signal(sig)
            _, err = process.communicate()
            if not (run / "classifier.npz").exists():
                expected = -sig if sig == signal.SIGKILL else 128 + sig
                assert process.returncode == expected, err
                return run, err, delay
        process.communicate()
        window /= 2
    pytest.fail(f"every {name} attempt landed after the run had finished")


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_is_bit_identical(task, reference):
    root, bundle, env = task
    reference_run, seconds = reference
    run, _, delay = _interrupt_mid_run(task, seconds, signal.SIGKILL, "killed")

    done = subprocess.run(_resume(run), env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"resume after kill at +{delay:.2f}s failed: {done.stderr}"
    for name in ARTIFACTS:
        assert (run / name).read_bytes() == (reference_run / name).read_bytes(), (
            f"{name} differs after a kill at +{delay:.2f}s"
        )
    resumed, straight = (json.loads((r / "result.json").read_text()) for r in (run, reference_run))
    assert resumed["queries"] == straight["queries"]
    assert (
        resumed["candidates"] == straight["candidates"]
        and resumed["shipped"] == straight["shipped"]
    )


@pytest.mark.slow
def test_ctrl_c_saves_hints_resume_and_resume_is_bit_identical(task, reference):
    root, bundle, env = task
    reference_run, seconds = reference
    run, err, _ = _interrupt_mid_run(task, seconds, signal.SIGINT, "interrupted")
    assert err.splitlines()[-1].endswith(
        f"checkpoint saved in {run}. Continue with: edge-tune fit --resume {run}"
    ), err
    done = subprocess.run(_resume(run), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ARTIFACTS:
        assert (run / name).read_bytes() == (reference_run / name).read_bytes()
