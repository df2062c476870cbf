"""The shipped artifact: class text features baked once, plus an optional image head; prediction is
the image graph, one matmul and the head's closed form.

`classifier.npz` (format 2) holds the class names, the L2-normalised class text features `f32[K, P]`
(the tuned prompt's, or the template's when zero-shot won), the bundle's logit scale and hash, and
the blend `fit` chose on the shots: logits = text_weight · logit_scale · image · textᵀ +
head_weight · head(image), the head's arrays stored as `head.<name>` (no pickle). The text graph is
never needed again. Format 1 files (text only) still load. A classifier refuses to run with a bundle
other than the one it was made with (the image features of another model live in another space,
and the answers would be silently wrong).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_tune.atomic import atomic_save_npz
from edge_tune.checkpoint import load_npz
from edge_tune.errors import BundleError, CheckpointError, DataError
from edge_tune.features import DEFAULT_BATCH_SIZE as BATCH_SIZE  # one batch's memory at a time
from edge_tune.prompts import DEFAULT_TEMPLATE

CLASSIFIER_FORMAT = 2
READABLE_FORMATS = (1, 2)


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the top class, its probability and the `top_k` (class, probability)."""

    source: str
    label: str
    index: int
    probability: float
    top_k: list[tuple[str, float]]


@dataclass
class Classifier:
    """Class text features + logit scale (+ a head), applied to image features of the same bundle."""

    classnames: list[str]
    class_features: np.ndarray  # f32[K, P], L2-normalised rows
    logit_scale: float
    bundle_hash: str
    text_weight: float = 1.0
    head: str | None = None  # a name of edge_tune.heads.HEADS, or None
    head_arrays: dict = field(default_factory=dict)
    head_weight: float = 0.0
    name: str = "prompt"  # what `fit` shipped: "zero-shot", "prompt + probe", ...
    bundle: object | None = None
    provider: str = "auto"
    threads: int | None = None
    _session: object | None = field(default=None, repr=False)

    # -- on disk -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write `classifier.npz` atomically (no pickle, byte-reproducible)."""
        arrays = {
            "format_version": np.array(CLASSIFIER_FORMAT, dtype=np.int64),
            "classnames": np.array(self.classnames, dtype=np.str_),
            "class_features": np.asarray(self.class_features, dtype=np.float32),
            "logit_scale": np.array(self.logit_scale, dtype=np.float64),
            "bundle_hash": np.array(self.bundle_hash, dtype=np.str_),
            "name": np.array(self.name, dtype=np.str_),
            "text_weight": np.array(self.text_weight, dtype=np.float64),
            "head": np.array(self.head or "", dtype=np.str_),
            "head_weight": np.array(self.head_weight, dtype=np.float64),
        }
        arrays.update({f"head.{key}": np.asarray(v) for key, v in self.head_arrays.items()})
        return atomic_save_npz(path, arrays)

    @classmethod
    def load(
        cls, run: str | Path, *, bundle=None, provider: str = "auto", threads: int | None = None
    ) -> Classifier:
        """Load `RUN/classifier.npz` (or a classifier.npz path) with the bundle it was made for.

        Without `bundle`, the bundle path recorded in `RUN/result.json` is used.
        """
        from edge_tune.bundle import Bundle, open_bundle

        run = Path(run)
        path = run / "classifier.npz" if run.is_dir() else run
        if not path.is_file():
            raise CheckpointError(
                "no classifier.npz here",
                path=path,
                hint="Pass the run directory of a finished `edge-tune fit`",
            )
        try:
            arrays = load_npz(path)
            version = int(arrays["format_version"])
            classnames = [str(name) for name in arrays["classnames"]]
            features = np.asarray(arrays["class_features"], dtype=np.float32)
            scale, made_for = float(arrays["logit_scale"]), str(arrays["bundle_hash"])
            blend = {}
            if version >= 2:
                blend = {
                    "name": str(arrays["name"]),
                    "text_weight": float(arrays["text_weight"]),
                    "head": str(arrays["head"]) or None,
                    "head_weight": float(arrays["head_weight"]),
                    "head_arrays": {k[5:]: v for k, v in arrays.items() if k.startswith("head.")},
                }
        except (OSError, ValueError, KeyError) as err:
            raise CheckpointError(
                f"unreadable classifier ({err})",
                path=path,
                hint="Re-run `edge-tune fit` to write it again",
            ) from err
        if version not in READABLE_FORMATS:
            raise CheckpointError(
                f"classifier format {version} is not one of {READABLE_FORMATS}",
                path=path,
                hint="Use the edge-tune version that wrote it",
            )
        from edge_tune.heads import HEADS

        if blend.get("head") is not None and blend["head"] not in HEADS:
            raise CheckpointError(
                f"unknown head {blend['head']!r}",
                path=path,
                hint="Use the edge-tune version that wrote it",
            )
        if features.ndim != 2 or features.shape[0] != len(classnames):
            raise CheckpointError(
                f"class features of shape {features.shape} for {len(classnames)} classes",
                path=path,
                hint="Re-run `edge-tune fit` to write it again",
            )
        if bundle is None:
            bundle = _recorded_bundle(path.parent / "result.json")
        if not isinstance(bundle, Bundle):
            bundle = open_bundle(bundle)
        if bundle.bundle_hash != made_for:
            raise BundleError(
                f"this classifier was made for another bundle (hash {made_for[:12]}, "
                f"this one is {bundle.bundle_hash[:12]})",
                path=bundle.path,
                hint="Pass the bundle the run was tuned with (--bundle)",
            )
        return cls(
            classnames=classnames,
            class_features=features,
            logit_scale=scale,
            bundle_hash=made_for,
            **blend,
            bundle=bundle,
            provider=provider,
            threads=threads,
        )

    @classmethod
    def zero_shot(
        cls,
        bundle,
        classnames: Sequence[str],
        templates: Sequence[str] = (DEFAULT_TEMPLATE,),
        *,
        provider: str = "auto",
        threads: int | None = None,
    ) -> Classifier:
        """CLIP zero-shot: class features of the templates (an ensemble when several), no fit."""
        from edge_tune.bundle import Bundle, open_bundle
        from edge_tune.objective import template_class_features
        from edge_tune.prompts import check_template

        names = [str(name).strip() for name in classnames]
        if len(names) < 2 or any(not name for name in names) or len(set(names)) < len(names):
            raise DataError(
                f"zero-shot needs two or more distinct, non-empty labels, got {names[:6]}",
                hint='Pass e.g. --labels "cat,dog,bird" (or a file with one label per line)',
            )
        for template in templates:
            check_template(template)
        bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        session = bundle.text_session(provider, threads)
        features = template_class_features(bundle, session, names, list(templates))
        return cls(
            classnames=names,
            class_features=features,
            logit_scale=float(bundle.logit_scale),
            bundle_hash=bundle.bundle_hash,
            name="zero-shot",
            bundle=bundle,
            provider=provider,
            threads=threads,
        )

    # -- prediction ----------------------------------------------------------------------------

    def _image_session(self):
        if self._session is None:
            if self.bundle is None:
                raise BundleError(
                    "this classifier has no bundle to run images through",
                    hint="Load it with Classifier.load(RUN, bundle=...)",
                )
            self._session = self.bundle.image_session(provider=self.provider, threads=self.threads)
        return self._session

    def logits(self, image_features: np.ndarray) -> np.ndarray:
        """f64[N, K]: `text_weight · logit_scale · image · textᵀ + head_weight · head(image)` for
        L2-normalised image features `f32[N, P]`."""
        X = np.asarray(image_features, np.float64)
        out = self.text_weight * self.logit_scale * (X @ self.class_features.astype(np.float64).T)
        if self.head is not None and self.head_weight:
            from edge_tune.heads import apply_head

            out += self.head_weight * apply_head(self.head, self.head_arrays, X)
        return out

    def probabilities_from_features(self, image_features: np.ndarray) -> np.ndarray:
        logits = self.logits(image_features).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def image_features(self, images: Sequence) -> np.ndarray:
        """Image-graph features `f32[N, P]` of paths or PIL images (DataError on a non-image),
        decoded one batch at a time: memory holds a batch of pixels, not all of them."""
        from edge_tune.preprocess import preprocess_image

        images = list(images)
        chunks = [
            self._run_image_graph(
                [
                    preprocess_image(image, self.bundle.preprocess)
                    for image in images[i : i + BATCH_SIZE]
                ]
            )
            for i in range(0, len(images), BATCH_SIZE)
        ]
        if not chunks:
            return np.zeros((0, self.class_features.shape[1]), np.float32)
        return np.concatenate(chunks)

    def _run_image_graph(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Features of one batch of preprocessed images."""
        session = self._image_session()
        return np.asarray(session.run({"pixel_values": np.stack(pixels)}), dtype=np.float32)

    def probabilities(self, images: Sequence) -> np.ndarray:
        """Class probabilities `f64[N, K]` for paths or PIL images."""
        return self.probabilities_from_features(self.image_features(list(images)))

    def predict(self, images: Sequence, *, top_k: int = 3) -> list[Prediction]:
        """The top class and the `top_k` classes of each image (paths or PIL images)."""
        images = list(images)
        probabilities = self.probabilities(images)
        return [
            self._prediction(_name(image), row, top_k) for image, row in zip(images, probabilities)
        ]

    def predict_files(
        self, paths: Iterable[str | Path], *, top_k: int = 3
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predict every readable image; return the predictions and the skipped (path, reason)."""
        from edge_tune.data import file_problem
        from edge_tune.preprocess import preprocess_image

        predictions, skipped = [], []
        readable, pixels = [], []  # one batch at a time: memory holds a batch, not the folder

        def run_batch() -> None:
            rows = self.probabilities_from_features(self._run_image_graph(pixels))
            predictions.extend(self._prediction(n, row, top_k) for n, row in zip(readable, rows))
            readable.clear()
            pixels.clear()

        for path in paths:
            problem = file_problem(Path(path))  # the files `fit` accepts, none opened before this
            if problem is not None:
                skipped.append((str(path), problem))
                continue
            try:
                pixels.append(preprocess_image(path, self.bundle.preprocess))
            except DataError as err:
                skipped.append((str(path), err.message))
            else:
                readable.append(str(path))
            if len(pixels) == BATCH_SIZE:
                run_batch()
        if pixels:
            run_batch()
        return predictions, skipped

    def _prediction(self, source: str, row: np.ndarray, top_k: int) -> Prediction:
        order = np.argsort(-row, kind="stable")[: max(1, top_k)]
        best = int(order[0])
        return Prediction(
            source=source,
            label=self.classnames[best],
            index=best,
            probability=float(row[best]),
            top_k=[(self.classnames[int(i)], float(row[int(i)])) for i in order],
        )


def _recorded_bundle(result_json: Path) -> Path:
    try:
        recorded = Path(json.loads(result_json.read_text(encoding="utf-8"))["bundle"]["path"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(
            "cannot tell which bundle this classifier needs",
            path=result_json,
            hint="Pass --bundle with the bundle the run was tuned with",
        ) from err
    if not recorded.is_dir():
        raise BundleError(
            "the bundle this run was tuned with is no longer here",
            path=recorded,
            hint="Pass --bundle DIR with that bundle where it is now",
        )
    return recorded


def _name(image) -> str:
    return (
        str(image)
        if isinstance(image, (str, Path))
        else getattr(image, "filename", "") or "<image>"
    )


def read_labels(value: str) -> list[str]:
    """Class names from `--labels`: a file with one per line (blank and `#` lines skipped), or a
    comma-separated list."""
    path = Path(value)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(
                f"cannot read the labels file: {err}",
                path=path,
                hint="Give a UTF-8 text file with one class name per line",
            ) from None
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if "," not in value and (path.suffix or "/" in value):
        raise DataError(
            "no such labels file", path=path, hint='Check the path, or pass --labels "cat,dog"'
        )
    return [part.strip() for part in value.split(",")]


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders walked recursively in sorted order (hidden files left out)."""
    from edge_tune.data import walk_files

    found: list[Path] = []
    for path in map(Path, paths):
        found.extend(walk_files(path) if path.is_dir() else [path])
    return found
