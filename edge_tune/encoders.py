"""Text encoders: candidate prompt vectors W[n, d] → class text features f32[n, K, P], one per graph.

`PlainEncoder` runs text.onnx on the n·K prompt sequences; `SharedPrefixEncoder` runs
text_shared.onnx, which computes each candidate's prefix (SOT + context) once for all its class
suffixes — the same features from fewer token rows (docs/bench.md). `text_encoder` picks one, once,
from what the bundle holds, and how many worker threads run its graph runs.

A call is cut into runs by `edge_tune.runplan`: classes grouped by prompt length, each group's
prompts cut to its longest, runs sized in token rows by a memory cap, padded with copies to a fixed
shape. On a CPU with several cores, the runs go to that many Python threads sharing one ORT session
of one intra-op thread each (ORT releases the GIL): 1.16× ORT's own two-thread mode at 40 × 10 on
ViT-B/16 shapes, 1.12× at 40 × 100 (docs/bench.md, "Run plan"). A prompt's features do not depend
on which run it lands in, so batched equals one-by-one and one worker equals two, bit for bit
(tested). The loss's scoring runs on the same threads (`map_runs`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edge_tune.prompts import PromptSpace
from edge_tune.runplan import (
    DEFAULT_MAX_PROMPTS,
    DEFAULT_MEMORY_CAP,
    ClassGroup,
    chunk_plan,
    length_groups,
    pad_rows,
    run_rows,
    split_rows,
)


@dataclass(frozen=True)
class PromptPlan:
    """text.onnx: one class group's n·k prompts in `runs` runs of `prompts` (the last padded)."""

    group: ClassGroup
    prompts: int
    runs: int


@dataclass(frozen=True)
class GroupPlan:
    """text_shared.onnx: one class group's runs in a call, `candidate_runs` × `class_runs` of
    them, each of `candidates` candidates (padded) × `classes` classes of the group (padded)."""

    group: ClassGroup
    candidates: int
    candidate_runs: int
    classes: int
    class_runs: int

    @property
    def runs(self) -> int:
        return self.candidate_runs * self.class_runs


class _Encoder:
    """What both encoders share: the session, the prompt space, the worker threads and the counters."""

    graph = ""

    def __init__(
        self,
        session,
        space: PromptSpace,
        *,
        workers: int = 1,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        max_prompts: int = DEFAULT_MAX_PROMPTS,
        group_lengths: bool = True,
    ):
        """`group_lengths=False` runs every class at the longest class's length, in one group
        (the plan before length groups, kept for the speed benchmark's comparison)."""
        self.session = session
        self.space = space
        self.workers = max(1, int(workers))
        self.memory_cap = int(memory_cap)
        self.max_prompts = int(max_prompts)
        lengths = self.lengths()
        self.groups = (
            length_groups(lengths, self.prefix_rows)
            if group_lengths
            else (ClassGroup(np.arange(len(lengths)), int(lengths.max())),)
        )
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self._plans: dict[int, tuple] = {}  # n -> PromptPlan or GroupPlan per group
        self.text_runs = 0  # text-graph runs
        self.prompts_run = 0  # prompt sequences sent to the graph, padding included

    prefix_rows = 0  # token rows a run computes once for each candidate in it

    def lengths(self) -> np.ndarray:
        """i64[K] each class's token rows per prompt (after any shared prefix)."""
        raise NotImplementedError

    def plan(self, n: int) -> tuple:
        """Each group's runs in a call with n candidates (memoised: a pure function of n, the
        shapes, the cap and the worker count)."""
        if n not in self._plans:
            total = n * sum(self.prefix_rows + len(g.classes) * g.length for g in self.groups)
            self._plans[n] = tuple(self._group_plan(g, n, total) for g in self.groups)
        return self._plans[n]

    def _group_plan(self, group: ClassGroup, n: int, total: int):
        raise NotImplementedError

    def token_rows(self, n: int) -> int:
        """Token rows a call with n candidates computes, padding included."""
        raise NotImplementedError

    def largest_run(self, n: int) -> int:
        """Token rows of the largest run in a call with n candidates."""
        raise NotImplementedError

    def map_runs(self, fn, items):
        """`map(fn, items)` on this encoder's worker threads (in order; plain `map` with one)."""
        return self._pool.map(fn, items) if self._pool else map(fn, items)

    def features(self, W: np.ndarray) -> np.ndarray:
        """f32[n, K, P] normalised class text features of every candidate."""
        W = self.space.candidates(W)
        tasks = self._tasks(W)
        results = self.map_runs(_call, tasks)
        out = None
        for (candidates, classes, prompts, _), result in zip(tasks, results):
            result = np.asarray(result)
            if out is None:
                out = np.empty((len(W), self.space.num_classes, result.shape[-1]), np.float32)
            self._place(out, candidates, classes, result)
            self.text_runs += 1
            self.prompts_run += prompts
        return out

    def _tasks(self, W: np.ndarray) -> list:
        """[(candidates, classes, prompts, run)]: where each run's result goes, its padded prompt
        count and a zero-argument callable that builds its inputs and runs the graph."""
        raise NotImplementedError

    def _place(self, out, candidates, classes, result) -> None:
        raise NotImplementedError

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(feeds)


def _call(task) -> np.ndarray:
    return task[-1]()


class PlainEncoder(_Encoder):
    """text.onnx: each group's n·k prompts [SOT, ctx(w), class tokens, EOT], cut to the group's
    longest, candidate-major in equal runs."""

    graph = "text"

    def __init__(self, session, space: PromptSpace, **options):
        super().__init__(session, space, **options)
        self._buffers = threading.local()  # per worker thread: {(prompts, length): f32 buffer}

    def lengths(self) -> np.ndarray:
        return self.space.eot_index.astype(np.int64) + 1

    def _group_plan(self, group: ClassGroup, n: int, total: int) -> PromptPlan:
        most = run_rows(group.length, self.space.text_width, self.memory_cap)
        rows = split_rows(total, most, self.workers)
        per_run = max(1, min(rows // group.length, self.max_prompts))
        return PromptPlan(group, *chunk_plan(n * len(group.classes), per_run))

    def token_rows(self, n: int) -> int:
        return sum(p.prompts * p.runs * p.group.length for p in self.plan(n))

    def largest_run(self, n: int) -> int:
        return max(p.prompts * p.group.length for p in self.plan(n))

    def _tasks(self, W: np.ndarray) -> list:
        context = self.space.context32(W)
        tasks = []
        for plan in self.plan(len(W)):
            classes, length, size = plan.group.classes, plan.group.length, plan.prompts
            k = len(classes)
            for run in range(plan.runs):
                rows = np.arange(run * size, min((run + 1) * size, len(W) * k))
                candidate, klass = rows // k, classes[rows % k]
                tasks.append(
                    (
                        candidate,
                        klass,
                        size,
                        lambda c=candidate, k_=klass, n=size, L=length: self._run(
                            {
                                "prompt_embeds": self._prompt_rows(context, c, k_, n, L),
                                "eot_index": pad_rows(self.space.eot_index[k_].astype(np.int64), n),
                            }
                        ),
                    )
                )
        return tasks

    def _prompt_rows(self, context, candidate, klass, size: int, length: int) -> np.ndarray:
        """f32[size, length, D] a run's prompts, padded with copies of the last, written into a
        buffer this worker thread keeps for the run shape (a run's inputs are not reallocated
        on every call; each thread finishes its run before it builds the next)."""
        buffers = self._buffers.__dict__.setdefault("by_shape", {})
        if (size, length) not in buffers:
            buffers[size, length] = np.empty((size, length, self.space.text_width), np.float32)
        out = buffers[size, length]
        self.space.assemble(context, candidate, klass, length, out=out)
        out[len(klass) :] = out[len(klass) - 1]
        return out

    def _place(self, out, candidates, classes, result) -> None:
        out[candidates, classes] = result[: len(candidates)]


class SharedPrefixEncoder(_Encoder):
    """text_shared.onnx: runs of c candidates × k classes of one group; each candidate's prefix is
    sent once per run, the class suffixes (cut to the group's longest) are fixed inputs built once."""

    graph = "text_shared"

    def __init__(self, session, space: PromptSpace, **options):
        self.prefix_rows = space.prefix_length
        super().__init__(session, space, **options)
        self._suffix_inputs: dict[tuple[int, int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def lengths(self) -> np.ndarray:
        return self.space.eot_index.astype(np.int64) + 1 - self.space.prefix_length

    def _group_plan(self, group: ClassGroup, n: int, total: int) -> GroupPlan:
        p, s, k = self.prefix_rows, group.length, len(group.classes)
        most = run_rows(p + s, self.space.text_width, self.memory_cap)
        rows = split_rows(total, most, self.workers, p)
        if p + k * s <= rows:  # whole candidates per run
            per_run = min(rows // (p + k * s), max(1, self.max_prompts // k))
            return GroupPlan(group, *chunk_plan(n, per_run), k, 1)
        size, class_runs = chunk_plan(k, min(max(1, (rows - p) // s), self.max_prompts))
        return GroupPlan(group, 1, n, size, class_runs)

    def token_rows(self, n: int) -> int:
        return sum(p.runs * self._run_rows(p) for p in self.plan(n))

    def largest_run(self, n: int) -> int:
        return max(self._run_rows(p) for p in self.plan(n))

    def _run_rows(self, plan: GroupPlan) -> int:
        return plan.candidates * (self.prefix_rows + plan.classes * plan.group.length)

    def _tasks(self, W: np.ndarray) -> list:
        prefixes = self.space.prefixes(W)
        tasks = []
        for index, plan in enumerate(self.plan(len(W))):
            classes = plan.group.classes
            for c in range(plan.candidate_runs):
                start, stop = c * plan.candidates, min((c + 1) * plan.candidates, len(W))
                prefix = pad_rows(prefixes[start:stop], plan.candidates)
                for b in range(plan.class_runs):
                    first = b * plan.classes
                    block = classes[first : first + plan.classes]
                    suffix, eot = self._suffix_block(index, plan, first)
                    feeds = {"prefix_embeds": prefix, "suffix_embeds": suffix, "eot_in_suffix": eot}
                    tasks.append(
                        (
                            slice(start, stop),
                            block,
                            plan.candidates * plan.classes,
                            lambda f=feeds: self._run(f),
                        )
                    )
        return tasks

    def _place(self, out, candidates, classes, result) -> None:
        rows = candidates.stop - candidates.start
        out[candidates, classes] = result[:rows, : len(classes)]

    def _suffix_block(
        self, index: int, plan: GroupPlan, first: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(f32[c, size, S, D], i64[c, size]) for the group's classes first.. (padded with its
        last), cut to the group's length, repeated for c candidates; built once per shape."""
        key = (index, plan.candidates, plan.classes, first)
        if key not in self._suffix_inputs:
            suffix, eot = self.space.suffixes()
            classes = plan.group.classes
            picked = classes[np.minimum(np.arange(first, first + plan.classes), len(classes) - 1)]
            block = suffix[picked, : plan.group.length]
            shape = (plan.candidates, plan.classes, *block.shape[1:])
            self._suffix_inputs[key] = (
                np.ascontiguousarray(np.broadcast_to(block, shape)),
                np.ascontiguousarray(np.broadcast_to(eot[picked], shape[:2])),
            )
        return self._suffix_inputs[key]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


#: Workers when `threads` is not given: every usable core up to this many. Measured only on 2
#: cores (docs/bench.md); more workers also cut a call into smaller runs, so a many-core machine
#: gets this many by default and more only when asked (`--threads`).
DEFAULT_MAX_WORKERS = 8


def run_threads(bundle, provider: str, threads: int | None) -> tuple[int, int | None]:
    """(worker threads, ORT intra-op threads) for the text graph.

    On CPU with an fp32 bundle: one worker per core (`threads`, else every usable core up to
    DEFAULT_MAX_WORKERS), each running whole graph runs on a one-thread session. Elsewhere one
    worker and ORT's own threads: a GPU runs one stream, and int8 bundles (dynamic quantisation,
    no prepacking) give results that depend on the run's batch, so their plan must not change
    with the core count."""
    from edge_tune.providers import resolve_provider

    int8 = (bundle.manifest.get("quantization") or {}).get("mode") == "int8"
    if resolve_provider(provider) != "cpu" or int8:
        return 1, threads
    cores = int(threads) if threads is not None else min(usable_cores(), DEFAULT_MAX_WORKERS)
    return (cores, 1) if cores > 1 else (1, threads)


def text_encoder(
    bundle,
    space: PromptSpace,
    *,
    provider: str = "auto",
    threads: int | None = None,
    shared_prefix: bool | None = None,
    workers: int | None = None,
    **options,
) -> PlainEncoder | SharedPrefixEncoder:
    """The encoder `fit` scores candidates with: text_shared.onnx when the bundle has it (unless
    `shared_prefix=False`), else text.onnx; its runs on `run_threads` workers (`workers=1`: one,
    on ORT's own `threads`)."""
    if shared_prefix is None:
        shared_prefix = bundle.has_graph("text_shared")
    kind = SharedPrefixEncoder if shared_prefix else PlainEncoder
    if workers is None:
        workers, intra = run_threads(bundle, provider, threads)
    else:
        intra = threads if workers == 1 else 1
    session = bundle.session(kind.graph, provider, intra)
    return kind(session, space, workers=workers, **options)
