"""This process's resident memory, read one way for `fit`'s result and the benchmarks (stdlib
only: no numpy, nothing to install)."""

from __future__ import annotations

import sys
from pathlib import Path


def _status_mib(field: str) -> float | None:
    """`field` of /proc/self/status (kB there) in MiB, or None where that file is not readable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident set of this process so far, in MiB: VmHWM on Linux (which
    `/proc/self/clear_refs` can restart), else getrusage's ru_maxrss."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def current_rss_mib() -> float:
    """Resident set of this process now, in MiB (VmRSS); NaN where /proc is not available."""
    current = _status_mib("VmRSS")
    return float("nan") if current is None else current
