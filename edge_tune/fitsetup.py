"""Everything `fit` builds before its loop, in two steps that return records.

`read_inputs` opens the bundle and the data and hashes every image once — nothing is encoded, so a
resume against other data, or a bad run directory, is refused at once. `prepare` then caches the
image features (the per-image hashes double as cache keys), deals the folds, builds the prompt
space and the one text encoder, fits and scores the cheap heads out of fold and makes one objective
per fold. The loop (`edge_tune.fit.Tuner`) only reads the `Setup` it returns.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_tune import select
from edge_tune.encoders import text_encoder
from edge_tune.errors import DataError
from edge_tune.objective import PromptObjective
from edge_tune.optim import presets


@dataclass(frozen=True)
class Inputs:
    """The bundle and data of a run, hashed, before any image is encoded."""

    bundle: object
    shots: object  # Dataset
    eval_set: object | None
    digests: dict  # "shots"/"eval" -> sha256 of each sample's file, in sample order
    hashes: dict  # bundle_hash, data_hash, eval_hash
    sources: dict  # resolved paths of the bundle, the shots and the evaluation folder

    @property
    def datasets(self) -> dict:
        return {"shots": self.shots, "eval": self.eval_set}


@dataclass(frozen=True)
class Setup:
    """What the loop needs: features, folds, the prompt space, the encoder and objectives, and the
    cheap heads every candidate is compared with."""

    bundle: object
    classnames: list
    datasets: dict  # for the CLI to report skipped files
    hashes: dict
    sources: dict
    X: np.ndarray  # f64[N, P] the shots' image features
    y: np.ndarray  # i64[N]
    eval_xy: tuple | None  # (f64[M, P], i64[M]) of the evaluation set, report only
    folds: np.ndarray  # i64[N]: each shot's fold
    space: object  # PromptSpace
    encoder: object  # the text encoder every objective shares
    scale: float  # the bundle's logit scale
    scorer: PromptObjective  # on all the shots (class features, not queries)
    zero_shot_features: np.ndarray  # f32[K, P]
    cheap: list  # [Blend]: zero-shot, each head, zero-shot + head, scored out of fold
    head_logits: dict  # head -> f64[N, K] out-of-fold logits at its chosen hyper-parameters
    tuning_blend: object | None  # the blend prompts are tuned through (tune_for="hybrid")
    offset_weight: float
    objectives: list  # one PromptObjective per fold, on its training folds
    val_offsets: list  # per fold: the head logits its held-out fold is scored with, or None


def read_inputs(bundle, shots, eval_set) -> Inputs:
    """Open the bundle and the data (folders or loaded Datasets) and hash every image once."""
    from edge_tune.bundle import Bundle, open_bundle
    from edge_tune.data import load_eval, load_shots
    from edge_tune.features import file_digest

    bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    shots = shots if hasattr(shots, "samples") else load_shots(shots)
    if len(shots.classnames) < 2:  # load_shots refuses this too; a hand-made Dataset may not
        raise DataError(
            f"only {len(shots.classnames)} class(es); a classifier needs at least 2",
            path=shots.root,
            hint="Add a folder of photos for each other class",
        )
    single = [name for name, n in zip(shots.classnames, shots.counts()) if n < 2]
    if single:  # such a class has no second photo for a fold to validate a head or prompt on
        note = (
            f"{len(single)} class(es) with one photo ({', '.join(map(repr, single[:3]))}"
            f"{', ...' if len(single) > 3 else ''}): cross-validation cannot see what a "
            "head or a tuned prompt gains for them, so fit leans to zero-shot; add a "
            "second photo"
        )
        shots = replace(shots, notes=(*shots.notes, note))
    if eval_set is not None and not hasattr(eval_set, "samples"):
        eval_set = load_eval(eval_set, shots)
    elif eval_set is not None and list(eval_set.classnames) != list(shots.classnames):
        raise DataError(
            "evaluation classes differ from the training classes",
            path=eval_set.root,
            hint="Use the same class folders for both",
        )
    digests = {
        name: None
        if data is None
        else [data.digests.get(s.path) or file_digest(s.path) for s in data.samples]
        for name, data in (("shots", shots), ("eval", eval_set))
    }
    hashes = {
        "bundle_hash": bundle.bundle_hash,
        "data_hash": dataset_hash(shots, digests["shots"]),
        "eval_hash": None if eval_set is None else dataset_hash(eval_set, digests["eval"]),
    }
    sources = {
        "bundle": str(Path(bundle.path).resolve()),
        "data": str(Path(shots.root).resolve()),
        "eval": None if eval_set is None else str(Path(eval_set.root).resolve()),
    }
    return Inputs(bundle, shots, eval_set, digests, hashes, sources)


def prepare(
    inputs: Inputs,
    config,
    *,
    provider: str = "auto",
    threads: int | None = None,
    cache_dir=None,
    feature_progress=None,
) -> Setup:
    """Encode (or read from the cache), deal the folds, build the space, encoder, heads and
    objectives: the `Setup` the loop runs on."""
    from edge_tune.features import image_features
    from edge_tune.prompts import PromptSpace

    bundle = inputs.bundle

    def features(dataset, digests):  # the image session is not kept
        X, y = image_features(
            bundle, dataset, cache_dir=cache_dir, provider=provider, threads=threads,
            progress=feature_progress, digests=digests,
        )  # fmt: skip
        return X.astype(np.float64), y

    X, y = features(inputs.shots, inputs.digests["shots"])
    eval_xy = None if inputs.eval_set is None else features(inputs.eval_set, inputs.digests["eval"])
    folds = select.stratified_folds(y, select.fold_count(len(y), config.folds), config.seed)
    classnames = list(inputs.shots.classnames)
    space = PromptSpace.build(
        bundle, classnames, init=config.init, dim=config.prompt_dim,
        projection_std=(
            presets.projection_std(config.preset)
            if config.projection_std is None
            else config.projection_std
        ),
        seed=config.seed,
        parameterisation=config.parameterisation,
    )  # fmt: skip
    # The loop needs neither the tokenizer nor the image session's freed heap: hand both back
    # before the text session grows its own (bench memory: the fit's peak is the loop's).
    bundle.release_tokenizer()
    return_free_memory()
    encoder = text_encoder(bundle, space, provider=provider, threads=threads)
    scale = float(bundle.logit_scale)
    scorer = PromptObjective(encoder, X, y, logit_scale=scale)

    # Zero-shot (w = 0: the template prompt) and every head, scored out of fold.
    zero_shot_features = scorer.class_features(np.zeros(space.dim))
    zero_logits = scale * X @ zero_shot_features.astype(np.float64).T
    cheap = [select.text_alone("zero-shot", zero_logits, y)]
    head_logits = {}
    for name in config.heads:
        alone, blend, logits = select.tune_head(
            name, X, y, len(classnames), folds, "zero-shot", zero_logits
        )
        cheap += [alone, blend]
        head_logits[name] = logits
    blends = [b for b in cheap if b.text and b.head]
    tuning_blend = select.choose(blends) if blends and config.tune_for == "hybrid" else None
    offset_weight = 0.0 if tuning_blend is None else select.tuning_offset_weight(tuning_blend)

    # One objective per fold on its training folds (through the hybrid when tuned for it).
    objectives, val_offsets = [], []
    for fold in range(int(folds.max()) + 1):
        train = folds != fold
        offset = val_offset = None
        if offset_weight:
            head, hyper = tuning_blend.head, tuning_blend.hyper
            nested = select.out_of_fold_head(head, hyper, X, y, len(classnames), folds, skip=fold)
            offset = offset_weight * nested[train]
            val_offset = offset_weight * head_logits[head][~train]
        objectives.append(
            PromptObjective(encoder, X[train], y[train], logit_scale=scale, offset=offset)
        )
        val_offsets.append(val_offset)
    return Setup(
        bundle=bundle, classnames=classnames, datasets=inputs.datasets, hashes=inputs.hashes,
        sources=inputs.sources, X=X, y=y, eval_xy=eval_xy, folds=folds, space=space,
        encoder=encoder, scale=scale, scorer=scorer, zero_shot_features=zero_shot_features,
        cheap=cheap, head_logits=head_logits, tuning_blend=tuning_blend,
        offset_weight=offset_weight, objectives=objectives, val_offsets=val_offsets,
    )  # fmt: skip


def dataset_hash(dataset, digests: list[str]) -> str:
    """sha256 over class names and every sample's relative path, label and file digest."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(dataset.classnames)).encode())
    root = Path(dataset.root)
    for sample, file_sha in zip(dataset.samples, digests, strict=True):
        path = Path(sample.path)
        try:
            name = path.relative_to(root).as_posix()
        except ValueError:
            name = path.name
        digest.update(f"\n{name}\t{int(sample.label)}\t".encode())
        digest.update(bytes.fromhex(file_sha))
    return digest.hexdigest()


def return_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc `malloc_trim`); a no-op elsewhere.

    glibc keeps freed small blocks (the tokenizer's, the image session's) in its arenas, so RSS
    stays at the high-water mark of setup unless they are trimmed.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)  # the symbols already loaded: libc's among them
    except (OSError, AttributeError):  # musl or another libc without malloc_trim
        pass
