"""Shared fixtures: one tiny bundle made by the real exporter per test session, and a CLI runner.

`tiny_bundle` exports `tiny-random` once (in a subprocess, so the test process itself stays free of
torch) or uses `$EDGE_TUNE_TEST_BUNDLE` when set, e.g. to reuse a bundle across runs:
    EDGE_TUNE_TEST_BUNDLE=/tmp/tiny .venv/bin/python -m pytest tests -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_tune.blas import pin_blas_env

pin_blas_env()  # as the CLI does; before any test module imports numpy

REPO = Path(__file__).resolve().parent.parent


def export_in_subprocess(
    model: str, out: Path, *extra: str, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`edge-tune export MODEL --out OUT ...` exactly as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "edge_tune", "export", model, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Path of a `tiny-random` bundle (exported once per session, or $EDGE_TUNE_TEST_BUNDLE)."""
    preset = os.environ.get("EDGE_TUNE_TEST_BUNDLE")
    if preset:
        return Path(preset)
    out = tmp_path_factory.mktemp("tiny") / "bundle"
    done = export_in_subprocess("tiny-random", out)
    if done.returncode != 0:
        pytest.fail(f"exporting tiny-random failed:\n{done.stdout}\n{done.stderr}")
    return out


def cli_subprocess(
    *args, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m edge_tune ARGS` in a fresh process (text, captured), under a time limit."""
    return subprocess.run(
        [sys.executable, "-m", "edge_tune", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def run_cli():
    """run_cli("info", BUNDLE, "--json") -> CompletedProcess of `python -m edge_tune ...`."""
    return cli_subprocess
