"""The run plan (edge_tune.runplan) and the encoders that follow it: fewest token rows, and features
that do not depend on how a call is cut into runs or on how many workers run them, bit for bit."""

from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from edge_tune.bundle import open_bundle
from edge_tune.encoders import (
    DEFAULT_MAX_WORKERS,
    PlainEncoder,
    SharedPrefixEncoder,
    run_threads,
    text_encoder,
    usable_cores,
)
from edge_tune.prompts import PromptSpace
from edge_tune.runplan import GROUP_COST_ROWS, MIN_SPLIT_ROWS, length_groups, split_rows
from edge_tune_bench.probe import cpu_description
from edge_tune_bench.timing import TimedSession

#: Class names of very different token lengths, so that the plan makes several length groups.
NAMES = [
    "dog",
    "cat",
    "a very long and winding name of a rare orchid",
    "fox",
    "red panda",
    "great crested grebe on a misty lake",
    "owl",
    "sea lion",
]


def rows_of(groups, lengths, prefix: int) -> int:
    """Token rows per candidate of a partition into groups, as length_groups counts them."""
    return sum(prefix + GROUP_COST_ROWS + len(g.classes) * g.length for g in groups)


def brute_force_rows(lengths: np.ndarray, prefix: int) -> int:
    """The fewest rows over every partition of the sorted distinct lengths into neighbouring runs."""
    distinct = np.unique(lengths)
    best = None
    for cuts in itertools.product([False, True], repeat=len(distinct) - 1):
        total, start = 0, 0
        for j, cut in enumerate([*cuts, True]):
            if cut:
                members = (lengths >= distinct[start]) & (lengths <= distinct[j])
                total += prefix + GROUP_COST_ROWS + int(members.sum()) * int(distinct[j])
                start = j + 1
        best = total if best is None else min(best, total)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_length_groups_is_the_fewest_rows_partition(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, size=int(rng.integers(1, 30)))
    prefix = int(rng.integers(0, 20))
    groups = length_groups(lengths, prefix)
    members = np.concatenate([g.classes for g in groups])
    assert sorted(members.tolist()) == list(range(len(lengths)))  # a partition
    for g in groups:
        assert g.length == lengths[g.classes].max()
        assert np.all(np.diff(g.classes) > 0)  # ascending class index
    assert rows_of(groups, lengths, prefix) == brute_force_rows(lengths, prefix)


def test_length_groups_merges_when_a_group_would_cost_more_than_it_saves():
    # a long prefix makes one group cheapest; no prefix separates every length
    assert len(length_groups(np.array([3, 4, 5]), prefix=50)) == 1
    assert [g.length for g in length_groups(np.array([3, 9, 3, 9]), prefix=0)] == [3, 9]


def test_split_rows_feeds_every_worker_but_not_below_the_floor():
    assert split_rows(1000, 500, workers=1) == 500
    assert split_rows(1000, 800, workers=2) == 500
    assert split_rows(1000, 800, workers=2, prefix=5) == 505
    assert split_rows(1000, 300, workers=2) == 300  # the cap still holds
    assert split_rows(10, 300, workers=4) == MIN_SPLIT_ROWS


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return open_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def space(bundle):
    return PromptSpace.build(bundle, NAMES, seed=0)


@pytest.mark.parametrize("kind", [PlainEncoder, SharedPrefixEncoder])
def test_features_do_not_depend_on_groups_runs_or_workers(bundle, space, kind):
    session = bundle.session(kind.graph, "cpu", 1)
    W = np.random.default_rng(0).standard_normal((9, space.dim)) * 0.05
    fit_plan = kind(session, space)
    assert len(fit_plan.groups) > 1  # the names really make several length groups
    reference = fit_plan.features(W)
    variants = {
        "one group": kind(session, space, group_lengths=False),
        "two workers": kind(session, space, workers=2),
        "small runs": kind(session, space, memory_cap=2**16),
        "small runs, three workers": kind(session, space, memory_cap=2**16, workers=3),
    }
    for name, encoder in variants.items():
        np.testing.assert_array_equal(encoder.features(W), reference, err_msg=name)
    one_by_one = np.concatenate([fit_plan.features(w[None]) for w in W])
    np.testing.assert_array_equal(one_by_one, reference)
    small = variants["small runs"]
    assert small.text_runs > fit_plan.text_runs  # the small cap really cut the call finer


def test_length_groups_compute_fewer_rows(bundle, space):
    for kind in (PlainEncoder, SharedPrefixEncoder):
        session = bundle.session(kind.graph, "cpu", 1)
        grouped, single = kind(session, space), kind(session, space, group_lengths=False)
        assert grouped.token_rows(40) < single.token_rows(40)


def test_shared_prefix_splits_classes_into_blocks_when_a_candidate_exceeds_a_run(bundle):
    space = PromptSpace.build(bundle, [f"class {i}" for i in range(40)], seed=0)
    encoder = SharedPrefixEncoder(bundle.session("text_shared", "cpu", 1), space, memory_cap=2**16)
    assert any(p.class_runs > 1 for p in encoder.plan(3))
    W = np.random.default_rng(1).standard_normal((3, space.dim)) * 0.05
    whole = SharedPrefixEncoder(bundle.session("text_shared", "cpu", 1), space)
    np.testing.assert_array_equal(encoder.features(W), whole.features(W))


def test_text_encoder_runs_workers_on_fp32_cpu_only(bundle, space):
    fp32 = SimpleNamespace(manifest={})
    int8 = SimpleNamespace(manifest={"quantization": {"mode": "int8"}})
    assert run_threads(fp32, "cpu", 2) == (2, 1)
    assert run_threads(fp32, "cpu", 1) == (1, 1)
    assert run_threads(int8, "cpu", 2) == (1, 2)  # int8 results depend on the batch
    cores = min(usable_cores(), DEFAULT_MAX_WORKERS)  # no --threads: every core, at most 8
    assert run_threads(fp32, "cpu", None) == ((cores, 1) if cores > 1 else (1, None))
    assert run_threads(fp32, "cpu", 12) == (12, 1)  # asked for: more than the default cap
    encoder = text_encoder(bundle, space, provider="cpu", threads=2)
    assert encoder.workers == 2
    assert text_encoder(bundle, space, provider="cpu", threads=2, workers=1).workers == 1


ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7R13 Processor
flags\t\t: fpu sse4_2 avx fma avx2 bmi2
"""
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""


def test_cpu_description_names_the_real_instruction_set():
    assert cpu_description(ZEN3)["isa"] == "AVX2/FMA"
    assert cpu_description(ZEN3)["model"] == "AMD EPYC 7R13 Processor"
    assert cpu_description(ZEN3.replace("avx2", "avx2 avx512f"))["isa"] == "AVX-512"
    assert cpu_description(PI5)["isa"] == "NEON (ASIMD)"
    assert cpu_description("")["isa"] == "unknown"


class SleepySession:
    def run(self, feeds):
        time.sleep(0.05)
        return feeds


def test_timed_session_counts_overlapping_runs_once():
    timed = TimedSession(SleepySession())
    start = time.perf_counter()
    threads = [threading.Thread(target=timed.run, args=({},)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert timed.runs == 4
    assert 0.05 <= timed.seconds <= wall < 4 * 0.05
