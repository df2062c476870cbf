"""numpy's BLAS at one thread while the tuning loop runs.

The loop's numpy work is small matrices between ORT runs (CMA-ES's d×d update and `eigh`, the
loss GEMM). BLAS threads woken between ORT runs compete with ORT's own pool: on 2 cores a
[40,512]×[512,256] product took 60–100 ms instead of 0.9 ms and `eigh` at d = 512 4 s instead of
0.1 s (scripts/query_cost.py, docs/bench.md). The CLI sets OPENBLAS_NUM_THREADS=1 before numpy
loads; an app has usually imported numpy already, so the library limits the loaded BLAS at run
time with threadpoolctl (pure Python, 18 kB) instead.
"""

from __future__ import annotations

import contextlib
import os

#: The BLAS thread variables numpy's BLAS reads when it loads (OpenBLAS, MKL).
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Setting any of these is how a user chooses BLAS threads; the loop then leaves BLAS alone.
USER_CHOICE = (*BLAS_THREAD_VARS, "OMP_NUM_THREADS")


def pin_blas_env(threads: int = 1) -> None:
    """Before numpy loads: one BLAS thread unless the user chose a count (the CLI's default)."""
    for name in BLAS_THREAD_VARS:
        os.environ.setdefault(name, str(threads))


def limit_blas_threads(threads: int = 1):
    """A context manager that holds every loaded BLAS at `threads` (a no-op without threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def loop_blas_threads():
    """One BLAS thread around the tuning loop, unless the user set a BLAS thread count."""
    if any(name in os.environ for name in USER_CHOICE):
        return contextlib.nullcontext()
    return limit_blas_threads(1)
