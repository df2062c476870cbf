"""How the text encoders cut a call into graph runs: classes grouped by prompt length, runs sized in
token rows, enough runs to keep every worker thread busy.

Cost is linear in token rows computed (docs/bench.md), and a prompt's rows after its EOT are padding
that the causal mask makes irrelevant: so classes are grouped by their own length (`length_groups`)
and each group's prompts are cut to the group's longest, instead of every prompt running at the
longest class name's length. Runs are sized by a memory cap in bytes per token row (`run_rows`):
small enough to stay in cache and to give each worker thread one, large enough that the weight GEMMs
run at full speed. Everything here is a pure function of shapes, the cap and the worker count,
never of timing; on fp32 CPU bundles a prompt's features do not depend on the run it lands in
(tested bit for bit), so neither the grouping nor the worker count changes a loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Working memory one text-graph run may use (input + a rough activation estimate). DEVIATION from
#: the 32 MiB before issue 19: measured on ViT-B/16 text shapes at one thread (issue 19's notes),
#: runs of ~350 token rows compute a row 7 % faster than runs of 1,400 (0.42 vs 0.45 ms) and as
#: fast as any size between; 12 MiB gives 358 rows there (D = 512), so each of two worker threads
#: gets a run at the usual population.
DEFAULT_MEMORY_CAP = 12 * 2**20
#: Hard ceiling on prompts per run, whatever the cap allows.
DEFAULT_MAX_PROMPTS = 4096
#: What one more class group costs beyond its prefix rows, in token rows per candidate: a run's
#: fixed cost (~5 ms on ViT-B/16, about 10 rows) shared by the ~10 candidates of a run.
GROUP_COST_ROWS = 1
#: Runs are not split below this many token rows to feed more workers (the fixed cost would win).
MIN_SPLIT_ROWS = 16


def bytes_per_token(attended: int, width: int) -> int:
    """Rough peak working memory of one token row in the text graph (float32): the widest
    activations alive at once in a CLIP block (residual, QKV, 4·D MLP hidden, ≈ 16·D floats) plus
    the input row and its attention scores over `attended` positions (heads ≈ D/64)."""
    return 4 * (width * 17 + attended * max(1, width // 64))


def bytes_per_prompt(length: int, width: int) -> int:
    """Rough peak working memory of one full prompt of `length` tokens."""
    return length * bytes_per_token(length, width)


def rows_per_run(
    length: int,
    width: int,
    *,
    memory_cap: int = DEFAULT_MEMORY_CAP,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
) -> int:
    """The most prompts of `length` tokens one run may hold (at least one)."""
    return max(1, min(int(max_prompts), int(memory_cap) // bytes_per_prompt(length, width)))


def run_rows(attended: int, width: int, memory_cap: int = DEFAULT_MEMORY_CAP) -> int:
    """The most token rows one run may hold when its rows attend to `attended` positions."""
    return max(1, int(memory_cap) // bytes_per_token(attended, width))


def chunk_plan(total: int, most: int) -> tuple[int, int]:
    """(size, runs): equal runs of at most `most` covering `total`, the last one padded."""
    runs = max(1, math.ceil(total / max(1, most)))
    return math.ceil(total / runs), runs


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with copies of its last row appended up to `size` rows (a fixed run shape)."""
    missing = size - len(array)
    return (
        array if missing <= 0 else np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])
    )


@dataclass(frozen=True)
class ClassGroup:
    """Classes whose prompts run together, cut to `length` positions (after any shared prefix)."""

    classes: np.ndarray  # i64[k], ascending class index
    length: int


def length_groups(lengths: np.ndarray, prefix: int) -> tuple[ClassGroup, ...]:
    """Classes partitioned into groups of neighbouring lengths with the fewest token rows per
    candidate: each group costs `prefix` + GROUP_COST_ROWS rows once and its longest length per
    class. Exact over partitions into runs of sorted distinct lengths (dynamic programming)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    distinct, counts = np.unique(lengths, return_counts=True)
    before = np.concatenate([[0], np.cumsum(counts)])  # classes shorter than distinct[j]
    best, cut = [0.0], [0]
    for j in range(1, len(distinct) + 1):
        options = [
            best[i] + prefix + GROUP_COST_ROWS + (before[j] - before[i]) * distinct[j - 1]
            for i in range(j)
        ]
        i = int(np.argmin(options))
        best.append(options[i])
        cut.append(i)
    groups, j = [], len(distinct)
    while j > 0:
        i = cut[j]
        members = np.flatnonzero(
            (lengths > (distinct[i - 1] if i else -1)) & (lengths <= distinct[j - 1])
        )
        groups.append(ClassGroup(classes=members, length=int(distinct[j - 1])))
        j = i
    return tuple(reversed(groups))


def split_rows(total_rows: int, most: int, workers: int, prefix: int = 0) -> int:
    """Token rows per run for a call of `total_rows`: at most `most`, and small enough that the
    call makes at least `workers` runs (each also recomputes `prefix` rows) unless that would
    make runs under MIN_SPLIT_ROWS."""
    if workers <= 1:
        return most
    share = math.ceil(total_rows / workers) + prefix
    return max(1, min(most, max(share, MIN_SPLIT_ROWS)))
