"""Wall-clock helpers, and a session wrapper that splits the time inside ORT from the rest."""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_REPEATS = 5


class TimedSession:
    """A text session that adds up the wall seconds during which ORT was running, to split Python
    overhead from it.

    Put it between an encoder and its session (`encoder.session = TimedSession(encoder.session)`);
    `seconds` and `runs` count from construction or from the last reset of `seconds`. Runs from
    several worker threads overlap: a second counts once while any run is in flight (the union of
    their intervals), so `seconds` never exceeds the wall time.
    """

    def __init__(self, session: Any):
        self.session = session
        self.seconds = 0.0
        self.runs = 0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._since = 0.0

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self._lock:
            if self._in_flight == 0:
                self._since = time.perf_counter()
            self._in_flight += 1
        try:
            return self.session.run(feeds)
        finally:
            with self._lock:
                self._in_flight -= 1
                self.runs += 1
                if self._in_flight == 0:
                    self.seconds += time.perf_counter() - self._since


#: Seconds to wait before a timed call that follows another engine's work. Thread pools spin after a
#: run (ORT's intra-op pool, OpenBLAS) for 20-100 ms; a call inside that window lost up to 3x of
#: its GEMM rate to the spinning threads on a 2-core machine (350-row probe after a 2-thread ORT
#: run: 113 GFLOP/s with no pause, 123 after 20 ms, 352 after 100 ms).
SETTLE_S = 0.25


def seconds(fn: Callable[[], Any], *, settle: float = 0.0) -> float:
    """Wall time of one call of `fn`, in seconds, after `settle` seconds of sleep (untimed)."""
    if settle:
        time.sleep(settle)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], Any], repeats: int, *, warmup: int = 1) -> float:
    """Median wall time of `fn` over `repeats` runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(seconds(fn) for _ in range(repeats))


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): every report prints it."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
