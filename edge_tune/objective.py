"""The forward-only objective: candidates W[n, d] → mean cross-entropy over cached image features.

The objective is a text encoder (`edge_tune.encoders`: W → class text features, in fixed-size runs,
so batched equals one-by-one on fp32 and fp16 bundles) and `score` (features × text → loss). An int8
bundle is the exception to batch independence: dynamic quantisation picks each run's activation
scale from the whole run, so its values agree with one-by-one only to ~2e-2 in the features
(manifest `quantization.batch_dependence`). Everything is float64 except the text-graph input, cast
to float32 at the ORT boundary (`PromptSpace.context32`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_tune.errors import DataError
from edge_tune.prompts import DEFAULT_TEMPLATE
from edge_tune.runplan import DEFAULT_MEMORY_CAP, rows_per_run

#: float64 logits one scoring GEMM may hold (`score`): one BLAS call for a typical population.
LOGITS_MEMORY_CAP = 32 * 2**20


def score(
    features: np.ndarray,
    labels: np.ndarray,
    class_features: np.ndarray,
    logit_scale: float,
    *,
    offset: np.ndarray | None = None,
    memory_cap: int = LOGITS_MEMORY_CAP,
    map_groups=map,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean cross-entropy f64[n], accuracy f64[n]) for class features [K, P] or [n, K, P].

    `offset` f64[N, K], when given, is added to every candidate's logits: a fixed image head's
    logits, so that candidates are scored as the hybrid classifier they would become.

    Candidates' logits come from GEMMs `F @ T.reshape(g·K, P)ᵀ` over groups of g candidates whose
    float64 logits fit in `memory_cap` (one BLAS call for a typical population, bounded memory at
    ImageNet's K = 1000); each logit is still the same P-term dot product of the same float64
    inputs, so a candidate's loss equals its one-by-one value up to the BLAS summation order.
    `map_groups` (default `map`) runs the groups; an executor's `map` runs them on its threads
    (numpy's GEMM releases the GIL). The groups depend only on the shapes and the cap, never on
    the threads, so the losses are the same bits either way.
    """
    F = np.asarray(features, dtype=np.float64)
    T = np.asarray(class_features, dtype=np.float64)
    if T.ndim == 2:
        T = T[None]
    n, K, P = T.shape
    labels = np.asarray(labels, dtype=np.int64)
    group = max(1, int(memory_cap) // (len(F) * K * 8))

    def scored(start: int) -> tuple[np.ndarray, np.ndarray]:
        block = T[start : start + group]
        g = len(block)
        logits = (F @ block.reshape(g * K, P).T).reshape(len(F), g, K)
        logits *= float(logit_scale)
        if offset is not None:
            logits += offset[:, None, :]
        peak = logits.max(axis=2, keepdims=True)
        log_norm = peak[..., 0] + np.log(np.exp(logits - peak).sum(axis=2))  # [N, g]
        true = np.take_along_axis(logits, labels[:, None, None], axis=2)[..., 0]  # [N, g]
        right = np.argmax(logits, axis=2) == labels[:, None]
        return np.mean(log_norm - true, axis=0), np.mean(right, axis=0)

    parts = list(map_groups(scored, range(0, n, group)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class PromptObjective:
    """Loss (and accuracy) of candidate prompt vectors through one text encoder, counted in queries.

    `offset` f64[N, K], when given, is added to every candidate's logits (`score`)."""

    def __init__(
        self,
        encoder,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        logit_scale: float,
        offset: np.ndarray | None = None,
    ):
        space = encoder.space
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
        self.encoder = encoder
        self.space = space
        self.features = features
        self.labels = labels
        self.logit_scale = float(logit_scale)
        self.offset = None if offset is None else np.asarray(offset, dtype=np.float64)
        self.queries = 0  # candidates evaluated by __call__/evaluate

    def __call__(self, W: np.ndarray) -> np.ndarray:
        """f64[n] mean cross-entropy of each candidate; n queries."""
        return self.evaluate(W)[0]

    def evaluate(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f64[n] losses, f64[n] training accuracies); n queries."""
        text = self.encoder.features(W)
        self.queries += len(text)
        return score(
            self.features,
            self.labels,
            text,
            self.logit_scale,
            offset=self.offset,
            map_groups=self.encoder.map_runs,
        )

    def class_features(self, w: np.ndarray) -> np.ndarray:
        """f32[K, P] normalised class text features of one prompt vector (not a query)."""
        return self.encoder.features(np.asarray(w, dtype=np.float64).reshape(1, -1))[0]


def ensemble(class_features) -> np.ndarray:
    """f64[K, P]: the fold prompts' class features [K, P] each, averaged and re-normalised."""
    mean = np.mean(np.stack([np.asarray(t, np.float64) for t in class_features]), axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def template_class_features(
    bundle,
    session,
    classnames,
    template: str | Sequence[str] = DEFAULT_TEMPLATE,
    *,
    memory_cap: int = DEFAULT_MEMORY_CAP,
) -> np.ndarray:
    """f32[K, P] class features of a hand-written template (zero-shot CLIP), in capped runs.

    Several templates make an ensemble, as CLIP's own ImageNet recipe does: each template's
    normalised features, averaged per class and normalised again."""
    from edge_tune.prompts import template_prompts

    templates = [template] if isinstance(template, str) else list(template)
    per_template = []
    for text in templates:
        embeds, eot_index = template_prompts(bundle, classnames, text)
        size = rows_per_run(embeds.shape[1], embeds.shape[2], memory_cap=memory_cap)
        parts = [
            session.run(
                {"prompt_embeds": embeds[i : i + size], "eot_index": eot_index[i : i + size]}
            )
            for i in range(0, len(embeds), size)
        ]
        per_template.append(np.concatenate([np.asarray(p, dtype=np.float32) for p in parts]))
    if len(per_template) == 1:
        return per_template[0]
    return ensemble(per_template).astype(np.float32)


def evaluate_dataset(
    bundle,
    dataset,
    *,
    template: str | Sequence[str] = DEFAULT_TEMPLATE,
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
    from edge_tune.encoders import text_encoder
    from edge_tune.features import image_features
    from edge_tune.prompts import PromptSpace, check_template, load_prompt
    from edge_tune.select import loss_and_accuracy

    # check the templates, prompt or classifier before spending time on images
    templates = [template] if isinstance(template, str) else list(template)
    for text in templates:
        check_template(text)
    if prompt is not None:
        W, spec, trained_classes = load_prompt(prompt, bundle)
        what = {"prompt": str(prompt)}
    elif run is not None:
        classifier = Classifier.load(run, bundle=bundle)
        trained_classes = classifier.classnames
        what = {"run": str(run), "shipped": classifier.name}
    if (prompt is not None or run is not None) and list(trained_classes) != list(
        dataset.classnames
    ):
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
            class_features = template_class_features(bundle, session, dataset.classnames, templates)
            what = {"template": templates[0] if len(templates) == 1 else templates}
        else:  # scored as `fit` scored it (text_shared.onnx when the bundle has it)
            space = PromptSpace.from_spec(bundle, dataset.classnames, spec)
            encoder = text_encoder(bundle, space, provider=provider, threads=threads)
            class_features = ensemble([encoder.features(w)[0] for w in W])
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
