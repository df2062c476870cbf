"""Choices made on the shots alone: stratified folds, out-of-fold logits, blends and the final pick.

Every classifier a run could ship — zero-shot, a head alone, zero-shot + head, the tuned prompt,
the tuned prompt + head — is scored on the same k folds of the shots: each fold's images are
classified by a model fitted (heads) or tuned (prompts) on the other folds. A blend is a convex mix
of standardised logits, `(1 - mix)·T/s_T + mix·H/s_H` (T text logits, H head logits, s the spread
of each on the out-of-fold rows), times a temperature fitted to the out-of-fold cross-entropy; the
mix, a head's hyper-parameters and the shipped candidate are the ones with the lowest calibrated
out-of-fold cross-entropy (ties: higher accuracy, then the earlier, simpler candidate). `--eval`
never enters here.

DEVIATION(accuracy as the criterion): shipping the best out-of-fold accuracy gave worse classifiers
than the lowest calibrated cross-entropy at 4-16 shots: on 9 mini-world tasks x 3 seeds (the same
runs, `edge-tune bench accuracy`, docs/accuracy.md) test accuracy 74.3 vs 74.5 % at 16
shots, 72.7 vs 72.8 at 8, 69.7 vs 70.7 at 4 (the loss lost 0.2-0.5 at 1-2 shots: 61.4 vs 60.9,
67.6 vs 67.4). 160 held-out images give accuracies in steps of 0.6 points, so many candidates tie or
differ by noise, while the loss also weighs how confidently each image is classified.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from edge_tune.heads import HEADS, apply_head, fit_head

DEFAULT_FOLDS = 4
#: A blend's head share; the ends (text alone, head alone) are candidates of their own.
MIX_GRID = tuple(np.round(np.linspace(0.1, 0.9, 9), 2))
TEMPERATURES = tuple(np.geomspace(0.05, 20.0, 53))
#: The largest head share the prompt is tuned under: at mix 1 the text logits would not count.
TUNING_MIX_CAP = 0.9
_FOLD_STREAM = 0x5E1EC7  # folds draw from their own stream, never the projection's or optimiser's


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """i64[N] fold of each image: each class's images shuffled, then dealt round the k folds in one
    running sequence, so folds differ in size by at most one image (at 1 shot per class a fold holds
    about K/k classes, and the others have no image in it)."""
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([int(seed), _FOLD_STREAM])
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    )
    folds = np.empty(len(labels), dtype=np.int64)
    folds[order] = np.arange(len(order)) % k
    return folds


def fold_count(num_images: int, requested: int = DEFAULT_FOLDS) -> int:
    return max(2, min(int(requested), int(num_images)))


def spread(logits: np.ndarray) -> float:
    """The standard deviation of row-centred logits (1 where they are constant)."""
    centred = logits - logits.mean(axis=1, keepdims=True)
    value = float(np.sqrt(np.mean(centred**2)))
    return value if value > 1e-12 else 1.0


def loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of f64[N, K] logits."""
    peak = logits.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
    loss = float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))
    return loss, float(np.mean(np.argmax(logits, axis=1) == labels))


def out_of_fold_head(name: str, hyper: dict, X, y, num_classes: int, folds, *, skip=None):
    """f64[N, K] logits of each image from head `name` fitted on the folds other than its own (and
    other than fold `skip`, whose rows stay 0: the nested logits a fold's prompt is tuned with)."""
    out = np.zeros((len(y), num_classes))
    for fold in np.unique(folds):
        if fold == skip:
            continue
        rows = folds == fold
        train = ~rows & (folds != skip)
        if train.any():
            out[rows] = apply_head(
                name, fit_head(name, X[train], y[train], num_classes, hyper), X[rows]
            )
    return out


@dataclass(frozen=True)
class Blend:
    """One classifier a run could ship, and how it scored on the folds of the shots."""

    text: str | None  # "zero-shot" (the template), "prompt" (the tuned one), or None
    head: str | None = None
    hyper: dict = field(default_factory=dict)
    mix: float = 0.0  # the head's share: 0 text alone, 1 head alone
    text_spread: float = 1.0
    head_spread: float = 1.0
    temperature: float = 1.0
    cv_loss: float = float("nan")
    cv_accuracy: float = float("nan")

    @property
    def name(self) -> str:
        if self.head is None or self.mix == 0:
            return str(self.text)
        return self.head if self.text is None or self.mix == 1 else f"{self.text} + {self.head}"

    @property
    def text_weight(self) -> float:
        """The coefficient of `logit_scale · image · textᵀ` in the shipped logits."""
        return 0.0 if self.text is None else self.temperature * (1 - self.mix) / self.text_spread

    @property
    def head_weight(self) -> float:
        """The coefficient of the head's logits in the shipped logits."""
        return 0.0 if self.head is None else self.temperature * self.mix / self.head_spread

    def logits(self, text_logits, head_logits) -> np.ndarray:
        out = 0.0
        if self.text_weight:
            out = out + self.text_weight * text_logits
        if self.head_weight:
            out = out + self.head_weight * head_logits
        return np.asarray(out, dtype=np.float64)

    def record(self) -> dict:
        return {
            "name": self.name,
            "text": self.text,
            "head": self.head,
            "hyper": self.hyper,
            "mix": self.mix,
            "temperature": self.temperature,
            "cv_accuracy": self.cv_accuracy,
            "cv_loss": self.cv_loss,
        }


def _better(a: tuple[float, float], b: tuple[float, float] | None) -> bool:
    """(accuracy, loss) a beats b: lower loss, then higher accuracy (1e-9 counts as a tie)."""
    return b is None or a[1] < b[1] - 1e-9 or (abs(a[1] - b[1]) <= 1e-9 and a[0] > b[0] + 1e-9)


def losses_at(
    logits: np.ndarray, labels: np.ndarray, temperatures, *, memory_cap: int = 32 * 2**20
) -> np.ndarray:
    """f64[T] mean cross-entropy of `t · logits` for each temperature t: `loss_and_accuracy`'s
    arithmetic, several temperatures per pass (as many as fit in `memory_cap`)."""
    temperatures = np.asarray(temperatures, dtype=np.float64)
    rows = np.arange(len(labels))
    per_pass = max(1, int(memory_cap) // max(1, logits.size * 8))
    out = np.empty(len(temperatures))
    for start in range(0, len(temperatures), per_pass):
        z = temperatures[start : start + per_pass, None, None] * logits[None]  # [t, N, K]
        peak = z.max(axis=2, keepdims=True)
        log_norm = peak[..., 0] + np.log(np.exp(z - peak).sum(axis=2))
        out[start : start + len(z)] = np.mean(log_norm - z[:, rows, labels], axis=1)
    return out


def calibrate(blend: Blend, text_logits, head_logits, labels) -> Blend:
    """`blend` with the temperature of lowest out-of-fold cross-entropy, and its scores."""
    base = replace(blend, temperature=1.0).logits(text_logits, head_logits)
    losses = losses_at(base, labels, TEMPERATURES)
    best = int(np.argmin(losses))
    return replace(
        blend,
        temperature=float(TEMPERATURES[best]),
        cv_loss=float(losses[best]),
        cv_accuracy=loss_and_accuracy(base, labels)[1],
    )


def best_mix(
    text: str, head: str, hyper: dict, text_logits, head_logits, labels, grid=MIX_GRID
) -> Blend:
    """The calibrated blend of these text and head logits that scores best out of fold."""
    s_t, s_h = spread(text_logits), spread(head_logits)
    best = None
    for mix in grid:
        blend = calibrate(
            Blend(text, head, dict(hyper), float(mix), s_t, s_h), text_logits, head_logits, labels
        )
        if best is None or _better(
            (blend.cv_accuracy, blend.cv_loss), (best.cv_accuracy, best.cv_loss)
        ):
            best = blend
    return best


def text_alone(text: str, text_logits, labels) -> Blend:
    return calibrate(Blend(text, text_spread=spread(text_logits)), text_logits, None, labels)


def head_alone(head: str, hyper: dict, head_logits, labels) -> Blend:
    blend = Blend(None, head, dict(hyper), 1.0, head_spread=spread(head_logits))
    return calibrate(blend, None, head_logits, labels)


def tune_head(name: str, X, y, num_classes: int, folds, text: str, text_logits):
    """(head alone, text + head) for head `name`, its hyper-parameters chosen by the blend's
    out-of-fold score; also returns the chosen head's out-of-fold logits."""
    _, grid = HEADS[name]
    best = None
    for hyper in grid:
        logits = out_of_fold_head(name, hyper, X, y, num_classes, folds)
        blend = best_mix(text, name, hyper, text_logits, logits, y)
        if best is None or _better(
            (blend.cv_accuracy, blend.cv_loss), (best[0].cv_accuracy, best[0].cv_loss)
        ):
            best = (blend, logits)
    blend, logits = best
    return head_alone(name, blend.hyper, logits, y), blend, logits


def choose(candidates: list[Blend]) -> Blend:
    """The candidate with the lowest out-of-fold loss (ties: higher accuracy, then the earlier)."""
    best = None
    for candidate in candidates:
        if best is None or _better(
            (candidate.cv_accuracy, candidate.cv_loss), (best.cv_accuracy, best.cv_loss)
        ):
            best = candidate
    return best


def tuning_offset_weight(blend: Blend) -> float:
    """The weight c of the head's logits in `scale·F·Tᵀ + c·H`, the logits a prompt is tuned under
    so that it learns what `blend`'s head cannot (its share capped at TUNING_MIX_CAP)."""
    if blend.head is None or blend.text is None:
        return 0.0
    mix = min(blend.mix, TUNING_MIX_CAP)
    return mix * blend.text_spread / ((1 - mix) * blend.head_spread)
