"""Each measurement in a fresh interpreter, and what a process may read about its own memory.

A fresh process per measurement keeps one case's arena, imported libraries or thread pools from
inflating or slowing another's. `run_child(kind, args)` runs `python -m edge_tune_bench.process
KIND JSON`, whose last stdout line is the JSON result (or `{"error": ...}` for an EdgeTuneError).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge_tune.blas import USER_CHOICE
from edge_tune.errors import EdgeTuneError
from edge_tune.memory import current_rss_mib

#: The status of a measurement whose library (torch) is not installed.
NOT_INSTALLED = "not installed"

#: What a child can run: kind -> (module, function), imported in the child only.
CHILD_KINDS = {
    "speed": ("edge_tune_bench.speed", "run_speed"),
    "reference": ("edge_tune_bench.speed", "reference_speed"),
    "memory": ("edge_tune_bench.memory", "memory_case"),
    "streaming": ("edge_tune_bench.streaming", "streaming_case"),
}


def child_env(threads: int | None) -> dict[str, str]:
    """The child's environment: BLAS/OpenMP threads pinned to `threads`, so numpy's GEMM probe and
    torch get the same cores as ORT (the loop's own numpy runs at one BLAS thread inside, as in a
    fit: `edge_tune.blas`)."""
    env = dict(os.environ)
    if threads:
        for name in USER_CHOICE:
            env[name] = str(threads)
    return env


def run_child(
    kind: str, args: dict[str, Any], *, threads: int | None, timeout: float
) -> dict[str, Any]:
    """The JSON result of measurement `kind` (a key of CHILD_KINDS) run on `args` in a fresh
    interpreter; a timeout, a kill or a failure is an EdgeTuneError naming the case."""
    command = [sys.executable, "-m", "edge_tune_bench.process", kind, json.dumps(args)]
    case = args.get("case", "")
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=child_env(threads),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise EdgeTuneError(
            f"the {kind} measurement {case} ran longer than {timeout:.0f}s",
            hint="lower --population or --classes",
        ) from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        result = json.loads(lines[-1])
        if "error" in result:
            raise EdgeTuneError(result["error"])
        if done.returncode == 0:
            return result
    if done.returncode in (-9, 137):
        raise EdgeTuneError(
            f"the {kind} measurement {case} was killed (out of memory?)",
            hint="lower --population or --classes",
        )
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise EdgeTuneError(f"the {kind} measurement {case} failed: {tail}")


def reset_peak_rss() -> bool:
    """Restart VmHWM from the current RSS (Linux >= 4.0), so a phase's own peak can be read;
    False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def available_memory_bytes() -> int | None:
    """What a new allocation may use, in bytes: MemAvailable, capped by RLIMIT_AS when one is set
    (None when neither is known)."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            limits.append(max(0, soft - int(current_rss_mib() * 2**20)))
    except (ImportError, ValueError):
        pass
    return min(limits) if limits else None


def child_main(argv: list[str]) -> int:
    """The child's side of `run_child`: run KIND on the JSON keyword arguments, print the result
    as one JSON line; returns the exit status (1 after an EdgeTuneError, printed as JSON too)."""
    kind, args = argv[0], json.loads(argv[1])
    try:
        if kind not in CHILD_KINDS:
            raise EdgeTuneError(
                f"unknown benchmark {kind!r}", hint=f"use one of {', '.join(CHILD_KINDS)}"
            )
        module, function = CHILD_KINDS[kind]
        result = getattr(importlib.import_module(module), function)(**args)
    except EdgeTuneError as err:
        print(json.dumps({"error": str(err)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
