"""The forward-only objective: candidates W[n, d] → mean cross-entropy over cached image features.

All n·K prompts of a call go through the text graph in as few runs as a memory cap allows. The run
size is a pure function of the shapes and the cap (never of timing), the rows are split into equal
chunks and the last one is padded, so a candidate's loss does not depend on which other candidates
share its call: batched equals one-by-one (tested) on fp32 and fp16 bundles. An int8 bundle is the
exception: dynamic quantisation picks each run's activation scale from the whole run, so its values
agree with one-by-one only to ~2e-2 in the features (manifest `quantization.batch_dependence`).
Everything is float64 except the text-graph input, cast to float32 at the ORT boundary
(`PromptSpace.prompt_rows`).
"""

from __future__ import annotations

import math

import numpy as np

from edge_tune.errors import DataError
from edge_tune.prompts import PromptSpace

#: Working memory one text-graph run may use (input + a rough activation estimate). ORT's arena
#: grows to the largest run, so this caps the loop's peak: 32 MiB is ~100 prompts of ViT-B/16
#: at L = 8 (800 token rows, GEMMs still large enough for full speed; 256 MiB held 170 MiB more
#: for no measurable gain, docs/bench.md).
DEFAULT_MEMORY_CAP = 32 * 2**20
#: Hard ceiling on prompts per run, whatever the cap allows.
DEFAULT_MAX_PROMPTS = 4096
DEFAULT_TEMPLATE = "a photo of a {}."


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


def score(
    features: np.ndarray,
    labels: np.ndarray,
    class_features: np.ndarray,
    logit_scale: float,
    *,
    offset: np.ndarray | None = None,
    memory_cap: int = DEFAULT_MEMORY_CAP,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean cross-entropy f64[n], accuracy f64[n]) for class features [K, P] or [n, K, P].

    `offset` f64[N, K], when given, is added to every candidate's logits: a fixed image head's
    logits, so that candidates are scored as the hybrid classifier they would become.

    Candidates' logits come from GEMMs `F @ T.reshape(g·K, P)ᵀ` over groups of g candidates whose
    float64 logits fit in `memory_cap` (one BLAS call for a typical population, bounded memory at
    ImageNet's K = 1000); each logit is still the same P-term dot product of the same float64
    inputs, so a candidate's loss equals its one-by-one value up to the BLAS summation order.
    """
    F = np.asarray(features, dtype=np.float64)
    T = np.asarray(class_features, dtype=np.float64)
    if T.ndim == 2:
        T = T[None]
    n, K, P = T.shape
    labels = np.asarray(labels, dtype=np.int64)
    group = max(1, int(memory_cap) // (len(F) * K * 8))
    losses = np.empty(n)
    accuracies = np.empty(n)
    for start in range(0, n, group):
        block = T[start : start + group]
        g = len(block)
        logits = (F @ block.reshape(g * K, P).T).reshape(len(F), g, K)
        logits *= float(logit_scale)
        if offset is not None:
            logits += offset[:, None, :]
        peak = logits.max(axis=2, keepdims=True)
        log_norm = peak[..., 0] + np.log(np.exp(logits - peak).sum(axis=2))  # [N, g]
        true = np.take_along_axis(logits, labels[:, None, None], axis=2)[..., 0]  # [N, g]
        losses[start : start + g] = np.mean(log_norm - true, axis=0)
        accuracies[start : start + g] = np.mean(np.argmax(logits, axis=2) == labels[:, None], axis=0)
    return losses, accuracies


class PromptObjective:
    """Loss (and accuracy) of candidate prompt vectors, counted in queries."""

    def __init__(
        self,
        bundle_or_session,
        space: PromptSpace,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        logit_scale: float | None = None,
        offset: np.ndarray | None = None,
        max_prompts_per_run: int = DEFAULT_MAX_PROMPTS,
        memory_cap: int = DEFAULT_MEMORY_CAP,
        provider: str = "auto",
        threads: int | None = None,
    ):
        if hasattr(bundle_or_session, "text_session"):
            self.session = bundle_or_session.objective_session(provider, threads)
            logit_scale = bundle_or_session.logit_scale if logit_scale is None else logit_scale
        else:
            self.session = bundle_or_session
        if logit_scale is None:
            raise ValueError("logit_scale is required when a session (not a bundle) is given")
        features = np.asarray(features, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if features.ndim != 2 or len(features) != len(labels) or len(labels) == 0:
            raise DataError(
                f"features {list(features.shape)} and labels {list(labels.shape)} do not match",
                hint="Pass one label per image feature row",
            )
        if labels.min() < 0 or labels.max() >= space.num_classes:
            raise DataError(
                f"labels run {labels.min()}..{labels.max()} but the prompt space has "
                f"{space.num_classes} classes",
                hint="Build the prompts from the data's classnames",
            )
        self.space = space
        self.features = features
        self.labels = labels
        self.logit_scale = float(logit_scale)
        self.offset = None if offset is None else np.asarray(offset, dtype=np.float64)
        self.max_rows = rows_per_run(
            space.length, space.text_width, memory_cap=memory_cap, max_prompts=max_prompts_per_run
        )
        # text_shared.onnx (in bundles unless exported with --no-shared-prefix): same features, the
        # prefix computed once per candidate; runs hold candidates x class blocks (`shared_plan`)
        self.shared_prefix = getattr(self.session, "role", "text") == "text_shared"
        self._suffix_inputs: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.queries = 0  # candidates evaluated by __call__/evaluate
        self.text_runs = 0  # text-graph runs
        self.prompts_run = 0  # prompt rows sent to the text graph, padding included

    def __call__(self, W: np.ndarray) -> np.ndarray:
        """f64[n] mean cross-entropy of each candidate; n queries."""
        return self.evaluate(W)[0]

    def evaluate(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f64[n] losses, f64[n] training accuracies); n queries."""
        W = self.space._check(W)
        text = self.text_features(W)
        self.queries += len(W)
        return score(self.features, self.labels, text, self.logit_scale, offset=self.offset)

    def class_features(self, w: np.ndarray) -> np.ndarray:
        """f32[K, P] normalised class text features of one prompt vector (not a query)."""
        return self.text_features(np.asarray(w, dtype=np.float64).reshape(1, -1))[0]

    def text_features(self, W: np.ndarray) -> np.ndarray:
        """f32[n, K, P] text features for all candidates, in equal fixed-size runs."""
        W = self.space._check(W)
        if self.shared_prefix:
            return self._shared_text_features(W)
        K = self.space.num_classes
        total = len(W) * K
        size, runs = chunk_plan(total, self.max_rows)
        eot = self.space.eot_rows(len(W))
        out = []
        for run in range(runs):
            start, stop = run * size, min((run + 1) * size, total)
            embeds = self.space.prompt_rows(W, start, stop)
            index = eot[start:stop]
            embeds, index = pad_rows(embeds, size), pad_rows(index, size)  # same shape every run
            result = np.asarray(self.session.run({"prompt_embeds": embeds, "eot_index": index}))
            self.text_runs += 1
            self.prompts_run += size
            out.append(result[: stop - start])
        return np.concatenate(out).reshape(len(W), K, -1).astype(np.float32, copy=False)

    def shared_plan(self, n: int) -> tuple[int, int, int, int]:
        """(class block size, class blocks, candidates per run, candidate runs) of text_shared.onnx
        for n candidates: c candidates x k classes per run, c·k <= max_rows. Classes are split into
        equal blocks only when K alone exceeds a run; candidates fill the rest."""
        class_size, class_runs = chunk_plan(self.space.num_classes, self.max_rows)
        cand_size, cand_runs = chunk_plan(n, max(1, self.max_rows // class_size))
        return class_size, class_runs, cand_size, cand_runs

    def _shared_text_features(self, W: np.ndarray) -> np.ndarray:
        """`text_features` through text_shared.onnx, in the runs of `shared_plan`; short last blocks
        are padded with copies, so every run has the same shape."""
        K = self.space.num_classes
        class_size, class_runs, cand_size, cand_runs = self.shared_plan(len(W))
        prefixes = self.space.prefixes(W)
        blocks = []
        for c in range(cand_runs):
            start, stop = c * cand_size, min((c + 1) * cand_size, len(W))
            prefix = pad_rows(prefixes[start:stop], cand_size)
            per_class = []
            for k in range(class_runs):
                first, last = k * class_size, min((k + 1) * class_size, K)
                suffix, eot = self._suffix_block(cand_size, first, class_size)
                result = np.asarray(self.session.run(
                    {"prefix_embeds": prefix, "suffix_embeds": suffix, "eot_in_suffix": eot}))
                self.text_runs += 1
                self.prompts_run += cand_size * class_size
                per_class.append(result[: stop - start, : last - first])
            blocks.append(np.concatenate(per_class, axis=1))
        return np.concatenate(blocks).astype(np.float32, copy=False)

    def _suffix_block(self, candidates: int, first: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(f32[c, size, S, D], i64[c, size]) for classes first.. (padded with the last class),
        repeated for c candidates; built once per shape and reused (the same every call)."""
        key = (candidates, first, size)
        if key not in self._suffix_inputs:
            suffix, eot = self.space.suffixes()
            index = np.minimum(np.arange(first, first + size), self.space.num_classes - 1)
            self._suffix_inputs[key] = (
                np.ascontiguousarray(np.broadcast_to(suffix[index], (candidates, size, *suffix.shape[1:]))),
                np.ascontiguousarray(np.broadcast_to(eot[index], (candidates, size))),
            )
        return self._suffix_inputs[key]


def ensemble(class_features) -> np.ndarray:
    """f64[K, P]: the fold prompts' class features [K, P] each, averaged and re-normalised."""
    mean = np.mean(np.stack([np.asarray(t, np.float64) for t in class_features]), axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
    """`array` with copies of its last row appended up to `size` rows (a fixed run shape)."""
    missing = size - len(array)
    return array if missing <= 0 else np.concatenate([array, np.repeat(array[-1:], missing, axis=0)])


def template_class_features(
    bundle,
    session,
    classnames,
    template: str = DEFAULT_TEMPLATE,
    *,
    memory_cap: int = DEFAULT_MEMORY_CAP,
) -> np.ndarray:
    """f32[K, P] class features of a hand-written template (zero-shot CLIP), in capped runs."""
    from edge_tune.prompts import template_prompts

    embeds, eot_index = template_prompts(bundle, classnames, template)
    size = rows_per_run(embeds.shape[1], embeds.shape[2], memory_cap=memory_cap)
    parts = [
        session.run({"prompt_embeds": embeds[i : i + size], "eot_index": eot_index[i : i + size]})
        for i in range(0, len(embeds), size)
    ]
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])


def evaluate_dataset(
    bundle,
    dataset,
    *,
    template: str = DEFAULT_TEMPLATE,
    prompt=None,
    run=None,
    cache_dir=None,
    provider: str = "auto",
    threads: int | None = None,
    progress=None,
) -> dict:
    """Accuracy and loss of a template (zero-shot), a tuned prompt or a run's shipped classifier on
    a labelled image set.

    Image features come through the cache, so evaluating again, or after a fit on the same photos,
    runs the image graph zero times. `prompt`: a run folder or `prompt.npz` from `edge-tune fit`
    (the fold prompts' ensemble, text alone); `run`: a run folder or its `classifier.npz` (what
    `fit` shipped and `predict` applies).
    """
    from edge_tune.classifier import Classifier
    from edge_tune.features import image_features
    from edge_tune.prompts import PromptSpace, load_prompt
    from edge_tune.select import loss_and_accuracy

    # check the prompt or classifier before spending time on images
    if prompt is not None:
        W, spec, trained_classes = load_prompt(prompt, bundle)
        what = {"prompt": str(prompt)}
    elif run is not None:
        classifier = Classifier.load(run, bundle=bundle)
        trained_classes = classifier.classnames
        what = {"run": str(run), "shipped": classifier.name}
    if (prompt is not None or run is not None) and list(trained_classes) != list(dataset.classnames):
        raise DataError(
            f"the run was tuned for classes {trained_classes[:5]}, the data has "
            f"{list(dataset.classnames)[:5]}",
            path=dataset.root,
            hint="Evaluate on a folder with the classes the run was tuned for",
        )
    features, labels = image_features(
        bundle, dataset, cache_dir=cache_dir, provider=provider, threads=threads, progress=progress
    )
    if run is not None:
        logits = classifier.logits(features)
    else:
        if prompt is None:
            session = bundle.text_session(provider, threads)
            class_features = template_class_features(bundle, session, dataset.classnames, template)
            what = {"template": template}
        else:  # scored as `fit` scored it (text_shared.onnx when the bundle has it)
            space = PromptSpace.from_spec(bundle, dataset.classnames, spec)
            objective = PromptObjective(
                bundle.objective_session(provider, threads), space, features, labels,
                logit_scale=bundle.logit_scale,
            )
            class_features = ensemble([objective.class_features(w) for w in W])
        logits = bundle.logit_scale * (
            features.astype(np.float64) @ np.asarray(class_features, np.float64).T
        )
    loss, accuracy = loss_and_accuracy(logits, labels)
    predicted = np.argmax(logits, axis=1)
    per_class = {
        name: float(np.mean(predicted[labels == k] == k)) if np.any(labels == k) else None
        for k, name in enumerate(dataset.classnames)
    }
    return {
        **what,
        "accuracy": accuracy,
        "loss": loss,
        "correct": int(np.sum(predicted == labels)),
        "images": int(len(labels)),
        "classes": len(dataset.classnames),
        "per_class_accuracy": per_class,
        "bundle": str(bundle.path),
        "bundle_hash": bundle.bundle_hash,
    }
