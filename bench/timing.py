"""Wall-clock helpers, and a session wrapper that splits the time inside ORT from the rest."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

DEFAULT_REPEATS = 5


class TimedSession:
    """A text session that adds up the seconds spent inside ORT, to split Python overhead from it.

    Put it between an encoder and its session (`encoder.session = TimedSession(encoder.session)`);
    `seconds` and `runs` count from construction or from the last reset of `seconds`.
    """

    def __init__(self, session: Any):
        self.session = session
        self.seconds = 0.0
        self.runs = 0

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        out = self.session.run(feeds)
        self.seconds += time.perf_counter() - start
        self.runs += 1
        return out


def seconds(fn: Callable[[], Any]) -> float:
    """Wall time of one call of `fn`, in seconds."""
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
