"""Text encoders: candidate prompt vectors W[n, d] → class text features f32[n, K, P], one per graph.

`PlainEncoder` runs text.onnx on the n·K full prompt sequences; `SharedPrefixEncoder` runs
text_shared.onnx, which computes each candidate's prefix (SOT + context) once for all its K class
suffixes — the same features from fewer token rows (docs/bench.md). `text_encoder` picks one, once,
from what the bundle holds. Both send fixed-shape runs whose size is a pure function of the shapes
and a memory cap (never of timing), padding the last run with copies, so a candidate's features do
not depend on which other candidates share its call: batched equals one-by-one (tested).
"""

from __future__ import annotations

import math

import numpy as np

from edge_tune.prompts import PromptSpace

#: Working memory one text-graph run may use (input + a rough activation estimate). ORT's arena
#: grows to the largest run, so this caps the loop's peak: 32 MiB is ~100 prompts of ViT-B/16
#: at L = 8 (800 token rows, GEMMs still large enough for full speed; 256 MiB held 170 MiB more
#: for no measurable gain, docs/bench.md).
DEFAULT_MEMORY_CAP = 32 * 2**20
#: Hard ceiling on prompts per run, whatever the cap allows.
DEFAULT_MAX_PROMPTS = 4096


def bytes_per_prompt(length: int, width: int) -> int:
    """Rough peak working memory of one prompt sequence in the text graph (float32).

    Input L·D, plus the widest activations alive at once in a CLIP block (residual, QKV, 4·D MLP
    hidden, attention scores L·L per head with heads ≈ D/64): about 16·L·D + L²·D/64 floats.
    """
    return 4 * (length * width * 17 + length * length * max(1, width // 64))


def rows_per_run(
    length: int,
    width: int,
    *,
    memory_cap: int = DEFAULT_MEMORY_CAP,
    max_prompts: int = DEFAULT_MAX_PROMPTS,
) -> int:
    """The largest run the cap allows (at least one prompt)."""
    return max(1, min(int(max_prompts), int(memory_cap) // bytes_per_prompt(length, width)))


def chunk_plan(total_rows: int, max_rows: int) -> tuple[int, int]:
    """(rows per run, number of runs): equal runs covering `total_rows`, the last one padded."""
    runs = max(1, math.ceil(total_rows / max_rows))
    return math.ceil(total_rows / runs), runs


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with copies of its last row appended up to `size` rows (a fixed run shape)."""
    missing = size - len(array)
    return (
        array if missing <= 0 else np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])
    )


class _Encoder:
    """What both encoders share: the session, the prompt space, the run size and the counters."""

    graph = ""

    def __init__(
        self,
        session,
        space: PromptSpace,
        *,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        max_prompts: int = DEFAULT_MAX_PROMPTS,
    ):
        self.session = session
        self.space = space
        self.max_rows = rows_per_run(
            space.length, space.text_width, memory_cap=memory_cap, max_prompts=max_prompts
        )
        self.text_runs = 0  # text-graph runs
        self.prompts_run = 0  # prompt sequences sent to the graph, padding included

    def features(self, W: np.ndarray) -> np.ndarray:
        """f32[n, K, P] normalised class text features of every candidate."""
        raise NotImplementedError

    def _run(self, feeds: dict[str, np.ndarray], prompts: int) -> np.ndarray:
        self.text_runs += 1
        self.prompts_run += prompts
        return np.asarray(self.session.run(feeds))


class PlainEncoder(_Encoder):
    """text.onnx: the n·K prompts [SOT, ctx(w), class tokens, EOT] in equal runs of `max_rows`."""

    graph = "text"

    def features(self, W: np.ndarray) -> np.ndarray:
        W = self.space.candidates(W)
        K = self.space.num_classes
        total = len(W) * K
        size, runs = chunk_plan(total, self.max_rows)
        eot = self.space.eot_rows(len(W))
        out = []
        for run in range(runs):
            start, stop = run * size, min((run + 1) * size, total)
            embeds = pad_rows(self.space.prompt_rows(W, start, stop), size)
            index = pad_rows(eot[start:stop], size)
            result = self._run({"prompt_embeds": embeds, "eot_index": index}, size)
            out.append(result[: stop - start])
        return np.concatenate(out).reshape(len(W), K, -1).astype(np.float32, copy=False)


class SharedPrefixEncoder(_Encoder):
    """text_shared.onnx: runs of c candidates x k classes (c·k <= max_rows, `plan`); each
    candidate's prefix is sent once per run, the class suffixes are fixed inputs built once."""

    graph = "text_shared"

    def __init__(self, session, space: PromptSpace, **caps):
        super().__init__(session, space, **caps)
        self._suffix_inputs: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def plan(self, n: int) -> tuple[int, int, int, int]:
        """(class block size, class blocks, candidates per run, candidate runs) for n candidates.
        Classes are split into equal blocks only when K alone exceeds a run; candidates fill the rest."""
        class_size, class_runs = chunk_plan(self.space.num_classes, self.max_rows)
        cand_size, cand_runs = chunk_plan(n, max(1, self.max_rows // class_size))
        return class_size, class_runs, cand_size, cand_runs

    def features(self, W: np.ndarray) -> np.ndarray:
        W = self.space.candidates(W)
        K = self.space.num_classes
        class_size, class_runs, cand_size, cand_runs = self.plan(len(W))
        prefixes = self.space.prefixes(W)
        blocks = []
        for c in range(cand_runs):
            start, stop = c * cand_size, min((c + 1) * cand_size, len(W))
            prefix = pad_rows(prefixes[start:stop], cand_size)
            per_class = []
            for k in range(class_runs):
                first, last = k * class_size, min((k + 1) * class_size, K)
                suffix, eot = self._suffix_block(cand_size, first, class_size)
                feeds = {"prefix_embeds": prefix, "suffix_embeds": suffix, "eot_in_suffix": eot}
                result = self._run(feeds, cand_size * class_size)
                per_class.append(result[: stop - start, : last - first])
            blocks.append(np.concatenate(per_class, axis=1))
        return np.concatenate(blocks).astype(np.float32, copy=False)

    def _suffix_block(
        self, candidates: int, first: int, size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(f32[c, size, S, D], i64[c, size]) for classes first.. (padded with the last class),
        repeated for c candidates; built once per shape and reused (the same every call)."""
        key = (candidates, first, size)
        if key not in self._suffix_inputs:
            suffix, eot = self.space.suffixes()
            index = np.minimum(np.arange(first, first + size), self.space.num_classes - 1)
            shape = (candidates, size, *suffix.shape[1:])
            self._suffix_inputs[key] = (
                np.ascontiguousarray(np.broadcast_to(suffix[index], shape)),
                np.ascontiguousarray(np.broadcast_to(eot[index], (candidates, size))),
            )
        return self._suffix_inputs[key]


def text_encoder(
    bundle,
    space: PromptSpace,
    *,
    provider: str = "auto",
    threads: int | None = None,
    shared_prefix: bool | None = None,
    **caps,
) -> PlainEncoder | SharedPrefixEncoder:
    """The encoder `fit` scores candidates with: text_shared.onnx when the bundle has it (unless
    `shared_prefix=False`), else text.onnx."""
    if shared_prefix is None:
        shared_prefix = bundle.has_graph("text_shared")
    kind = SharedPrefixEncoder if shared_prefix else PlainEncoder
    return kind(bundle.session(kind.graph, provider, threads), space, **caps)
