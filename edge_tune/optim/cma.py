"""CMA-ES with Hansen's default parameters, as pure functions over an explicit state.

Reference: N. Hansen, "The CMA Evolution Strategy: A Tutorial" (arXiv:1604.00772, 2016), cited
below as "H16 eq. (n)". Weighted recombination, CSA step size, rank-one + rank-µ covariance update,
optional active (negative) weights as pycma uses by default, a lazily refreshed eigendecomposition
(B and D are kept in the state so a reloaded run samples bit-identically), a separable (diagonal)
variant for large d (Ros & Hansen 2008), and optional box bounds. pycma is only a test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from edge_tune.errors import NumericalError
from edge_tune.optim.base import (
    STREAM_CMA,
    Optimizer,
    OptimizerError,
    check_dim,
    check_losses,
    check_x0,
    freeze,
    rank_keys,
    require_some_finite,
    rng,
    update_best,
)


@dataclass(frozen=True)
class CMAConfig:
    """Hyper-parameters of plain CMA-ES (the paper's "BBT" baseline = BPT-VLM)."""

    population_size: int | None = None  # λ; None → 4 + ⌊3 ln d⌋ (H16 Table 1)
    step_size: float = 0.4  # σ0
    active: bool = True  # negative weights for the worst half (pycma's default "aCMA")
    diagonal: bool = False  # separable CMA: O(d) covariance, for very large d
    # σ control: "csa" (H16 eq. 44), "tpa" (two-point adaptation, Hansen 2008), or "auto" = TPA
    # for d >= 300, as pycma 4.x does. pycma 4.0.0, which the paper's code ran, picked TPA only
    # for the diagonal variant, so the paper's full CMA-ES at d = 512 used CSA (its preset says so).
    step_size_rule: str = "auto"
    lower: float | None = None  # box bounds: candidates are clipped into [lower, upper]
    upper: float | None = None
    seed: int = 0


class CMAState(NamedTuple):
    seed: int
    step: int  # generations told
    queries: int
    mean: np.ndarray  # m, f64[d]
    step_size: float  # σ
    cov: np.ndarray  # C, f64[d,d] (diagonal variant: f64[d])
    basis: np.ndarray  # B, eigenvectors of C (diagonal variant: f64[0,0], i.e. identity)
    scales: np.ndarray  # D, sqrt of the eigenvalues of C
    path_sigma: np.ndarray  # p_σ
    path_cov: np.ndarray  # p_c
    eigen_step: int  # generation of the last eigendecomposition
    previous_mean: np.ndarray  # m of the previous generation (TPA samples along m − m_old)
    tpa_score: float  # TPA's smoothed rank difference s
    best_loss: float
    best_x: np.ndarray
    nonfinite: int  # NaN/inf losses seen


class Constants(NamedTuple):
    population_size: int
    num_parents: int
    weights: np.ndarray  # all λ weights; the first µ positive, the rest ≤ 0 (0 if not active)
    mu_eff: float
    c_sigma: float
    d_sigma: float
    c_c: float
    c_1: float
    c_mu: float
    chi_n: float  # E‖N(0, I)‖
    eigen_gap: float  # generations between eigendecompositions


@lru_cache(maxsize=32)
def constants(dim: int, population_size: int | None, active: bool, diagonal: bool) -> Constants:
    """Hansen's default strategy parameters (H16 Table 1 and eqs. (49)-(58))."""
    n = dim
    lam = population_size if population_size is not None else 4 + int(3 * math.log(n))
    mu = lam // 2
    raw = math.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))  # H16 eq. (49)
    pos, neg = raw[:mu], raw[mu:]
    mu_eff = pos.sum() ** 2 / (pos**2).sum()
    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)  # H16 eq. (55)
    d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma
    c_c = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)  # H16 eq. (56)
    c_1 = 2 / ((n + 1.3) ** 2 + mu_eff)  # H16 eq. (57)
    c_mu = min(1 - c_1, 2 * (mu_eff - 2 + 1 / mu_eff) / ((n + 2) ** 2 + mu_eff))  # H16 eq. (58)
    if diagonal:  # Ros & Hansen 2008: the separable model learns (n+2)/3 times faster
        c_1 = min(1.0, c_1 * (n + 2) / 3)
        c_mu = min(1 - c_1, c_mu * (n + 2) / 3)
    weights = np.zeros(lam)
    weights[:mu] = pos / pos.sum()
    if active and neg.size and np.abs(neg).sum() > 0 and c_mu > 0:
        # The negative weights' sum, from the learning rates the update really uses (pycma's
        # `finalize_negative_weights` with pos_def=True): zero decay (H16 eq. 50), the µ_eff rule
        # (eq. 51) and the bound that keeps C positive definite (eq. 52).
        mu_eff_neg = neg.sum() ** 2 / (neg**2).sum()
        alpha = min(
            1 + c_1 / c_mu,
            1 + 2 * mu_eff_neg / (mu_eff + 2),
            (1 - c_1 - c_mu) / (n * c_mu),
        )
        weights[mu:] = alpha * neg / np.abs(neg).sum()
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    # DEVIATION(pycma): B and D are refreshed every 0.5 / ((c1 + cµ)·n) generations; pycma 4.0 and
    # 4.5 use 0.1 / ((c1 + cµ)·n), five times as often. At d = 512 an eigh costs ~40 ms, and
    # evaluations to target stayed within 0.95-1.09× pycma's (tests/test_optim_cma.py).
    eigen_gap = 0.5 / ((c_1 + c_mu) * n)
    weights.flags.writeable = False
    return Constants(lam, mu, weights, mu_eff, c_sigma, d_sigma, c_c, c_1, c_mu, chi_n, eigen_gap)


def check_config(config: CMAConfig, dim: int) -> Constants:
    """Refuse settings under which CMA-ES cannot learn; return its constants."""
    check_dim(dim)
    if config.population_size is not None and config.population_size < 2:
        raise OptimizerError(
            f"CMA-ES population_size must be >= 2, got {config.population_size}",
            hint="A population of 1 cannot rank candidates; use 2 or more (default 4 + 3 ln d)",
        )
    if not config.step_size > 0:
        raise OptimizerError(
            f"CMA-ES step_size must be > 0, got {config.step_size}",
            hint="Use the initial search radius, e.g. 0.4",
        )
    if config.lower is not None and config.upper is not None and not config.lower < config.upper:
        raise OptimizerError(
            f"CMA-ES bounds are empty: lower={config.lower} upper={config.upper}",
            hint="Give lower < upper, or no bounds",
        )
    if config.step_size_rule not in ("auto", "csa", "tpa"):
        raise OptimizerError(
            f"unknown step_size_rule {config.step_size_rule!r}", hint="Choose one of auto, csa, tpa"
        )
    return constants(dim, config.population_size, config.active, config.diagonal)


TPA_DIMENSION = 300  # pycma 4.x's threshold for TPA when AdaptSigma is left at its default


def uses_tpa(config: CMAConfig, dim: int) -> bool:
    """Whether σ follows two-point adaptation (needs λ >= 3: two mirrored rows plus the rest)."""
    rule = config.step_size_rule
    lam = constants(dim, config.population_size, config.active, config.diagonal).population_size
    return lam >= 3 and (rule == "tpa" or (rule == "auto" and dim >= TPA_DIMENSION))


def clip_to_bounds(config: CMAConfig, x: np.ndarray) -> np.ndarray:
    """Candidates are evaluated inside the box; CMA itself learns from the unclipped samples."""
    if config.lower is None and config.upper is None:
        return x
    return np.clip(x, config.lower, config.upper)


def bound_penalised(
    config: CMAConfig, keys: np.ndarray, x: np.ndarray, step_size: float
) -> np.ndarray:
    """Rank keys with a penalty for samples outside the box (their loss is from the clipped point).

    DEVIATION(paper §3.3): the released code bounds CMA with pycma's BoundTransform (a smooth
    fold into the box); we clip and penalise instead. With σ ≤ 1 and ±5 bounds neither binds often.

    Without it a flat, clipped fitness lets σ grow without limit. The penalty is the squared
    distance to the box in units of σ, scaled by the spread of the finite losses (pycma's
    BoundPenalty idea with a fixed, scale-free weight). It is not divided by d: at d = 512 that
    made one coordinate's excursion worth 1/512 of the spread, and coordinates wandered off
    beyond the bounds (tests/test_optim_cma.py).
    """
    if config.lower is None and config.upper is None:
        return keys
    distance = ((x - clip_to_bounds(config, x)) ** 2).sum(axis=1) / step_size**2
    finite = keys[np.isfinite(keys)]
    spread = float(np.median(np.abs(finite - np.median(finite)))) if finite.size else 0.0
    return keys + (spread if spread > 0 else 1.0) * distance


def cma_init(config: CMAConfig, x0: np.ndarray) -> CMAState:
    """State at generation 0: mean x0, C = I, σ = step_size."""
    d = x0.shape[0]
    check_config(config, d)
    diag = config.diagonal
    return freeze(
        CMAState(
            seed=int(config.seed),
            step=0,
            queries=0,
            mean=np.array(x0, dtype=np.float64),
            step_size=float(config.step_size),
            cov=np.ones(d) if diag else np.eye(d),
            basis=np.zeros((0, 0)) if diag else np.eye(d),
            scales=np.ones(d),
            path_sigma=np.zeros(d),
            path_cov=np.zeros(d),
            eigen_step=0,
            previous_mean=np.array(x0, dtype=np.float64),
            tpa_score=0.0,
            best_loss=math.inf,
            best_x=np.array(x0, dtype=np.float64),
            nonfinite=0,
        )
    )


# The last (config, state) -> sample: `ask` and the `tell` after it sample the same state, and
# at d = 512 the B·D·z product is the larger part of a generation's Python time. Keyed by the
# state object itself (states are immutable), so a reloaded state simply recomputes.
_last_sample: tuple = (None, None, None)


def cma_sample(config: CMAConfig, state: CMAState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, y, x): z ~ N(0, I) from counters, y = B·D·z ~ N(0, C), x = m + σ·y (H16 eqs. 38-40).

    Pure; the arrays are read-only (they are memoised for the `tell` that follows an `ask`).
    """
    global _last_sample
    cached_config, cached_state, cached = _last_sample
    if cached_state is state and cached_config == config:
        return cached
    sample = _draw_sample(config, state)
    for array in sample:
        array.flags.writeable = False
    _last_sample = (config, state, sample)
    return sample


def _draw_sample(config: CMAConfig, state: CMAState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = constants(state.mean.shape[0], config.population_size, config.active, config.diagonal)
    shape = (c.population_size, state.mean.shape[0])
    z = rng(state.seed, STREAM_CMA, state.step).standard_normal(shape)
    if state.step > 0 and uses_tpa(config, shape[1]):
        # TPA: the first two rows are mirrored along the last mean shift, rescaled to the length of
        # a typical sample (pycma's `_random_rescaling_factor_to_mahalanobis_size`).
        shift = (state.mean - state.previous_mean) / state.step_size
        whitened = shift if config.diagonal else state.basis.T @ shift
        whitened = whitened / state.scales
        norm = float(np.linalg.norm(whitened))
        if norm > 0:
            z[0] = whitened * (np.linalg.norm(z[0]) / norm)
            z[1] = -z[0]
    y = z * state.scales if config.diagonal else (z * state.scales) @ state.basis.T
    return z, y, state.mean + state.step_size * y


def cma_ask(config: CMAConfig, state: CMAState) -> np.ndarray:
    """λ candidates (clipped into the bounds, if any); pure."""
    return np.array(clip_to_bounds(config, cma_sample(config, state)[2]))  # a caller's own copy


def cma_tell(config: CMAConfig, state: CMAState, losses: np.ndarray) -> tuple[CMAState, dict]:
    """One CMA-ES generation from the losses of the λ rows of `cma_ask(state)` (NaN/inf last)."""
    n = state.mean.shape[0]
    c = constants(n, config.population_size, config.active, config.diagonal)
    losses = check_losses(losses, c.population_size)
    require_some_finite(losses, "CMA-ES")
    z, y, x = cma_sample(config, state)
    keys = bound_penalised(config, rank_keys(losses), x, state.step_size)
    order = np.argsort(keys, kind="stable")
    z, y = z[order], y[order]
    w, mu = c.weights, c.num_parents
    sigma = state.step_size

    y_w = w[:mu] @ y[:mu]
    mean = state.mean + sigma * y_w  # H16 eq. (41), c_m = 1
    z_w = w[:mu] @ z[:mu]  # C^(-1/2)·y_w = B·z_w
    whitened_step = z_w if config.diagonal else state.basis @ z_w
    path_sigma = (1 - c.c_sigma) * state.path_sigma + math.sqrt(
        c.c_sigma * (2 - c.c_sigma) * c.mu_eff
    ) * whitened_step  # eq. (43)
    norm_ps = float(np.linalg.norm(path_sigma))
    h_sigma = float(
        norm_ps / math.sqrt(1 - (1 - c.c_sigma) ** (2 * (state.step + 1)))
        < (1.4 + 2 / (n + 1)) * c.chi_n
    )  # H16 p. 28 (stall the rank-one update)
    path_cov = (1 - c.c_c) * state.path_cov + h_sigma * math.sqrt(
        c.c_c * (2 - c.c_c) * c.mu_eff
    ) * y_w  # eq. (45)

    # Active weights are rescaled by n/‖C^(-1/2) y_i‖² = n/‖z_i‖² (H16 eq. (46)).
    w_circ = np.where(w >= 0, w, w * n / np.maximum((z * z).sum(axis=1), 1e-300))
    delta_h = (1 - h_sigma) * c.c_c * (2 - c.c_c)
    decay = 1 + c.c_1 * delta_h - c.c_1 - c.c_mu * w.sum()
    if config.diagonal:
        cov = decay * state.cov + c.c_1 * path_cov**2 + c.c_mu * (w_circ @ (y * y))
    else:
        # H16 eq. (47), decay·C + c1·p pᵀ + cµ·Σ w_i y_i y_iᵀ: the rank-one and rank-µ terms
        # are one GEMM over the rows [p; y] weighted [c1, cµ·w], then one pass adds decay·C.
        # DEVIATION: the four d×d passes this replaces (outer, scale, add, add) cost ~4 ms per
        # generation at d = 512 (issue 19); the sum's order changes, so bits differ at ~1e-16.
        rows = np.vstack([path_cov[None], y])
        weights = np.concatenate([[c.c_1], c.c_mu * w_circ])
        cov = (rows.T * weights) @ rows
        cov += decay * state.cov
    tpa_score = state.tpa_score
    if uses_tpa(config, n):
        if state.step > 0:  # Hansen 2008 / pycma CMAAdaptSigmaTPA.update2
            diff = (np.sum(keys < keys[1]) - np.sum(keys < keys[0])) / (c.population_size - 1)
            tpa_score = 0.7 * tpa_score + 0.3 * math.copysign(abs(diff) ** 0.5, diff)
        damp = 0.7 + 2 * math.log(n) + 2 * math.log(max(1, c.population_size - n))
        step_size = sigma * math.exp(tpa_score / damp)
    else:
        # CSA, H16 eq. (44); exponent capped at 1 as pycma does, against a blow-up after a jump.
        step_size = sigma * math.exp(min(1.0, (c.c_sigma / c.d_sigma) * (norm_ps / c.chi_n - 1)))

    generation = state.step + 1
    basis, scales, eigen_step = state.basis, state.scales, state.eigen_step
    if config.diagonal:
        cov = np.maximum(cov, 1e-300)
        scales = np.sqrt(cov)
        eigen_step = generation
    elif generation - state.eigen_step >= c.eigen_gap:
        cov = (cov + cov.T) / 2
        eigenvalues, basis = np.linalg.eigh(cov)
        scales = np.sqrt(np.maximum(eigenvalues, 1e-300 * max(eigenvalues.max(), 1e-300)))
        eigen_step = generation

    finite = int(np.isfinite(losses).sum())
    best_loss, best_x = update_best(
        state.best_loss, state.best_x, losses, clip_to_bounds(config, x)
    )
    new = CMAState(
        seed=state.seed,
        step=generation,
        queries=state.queries + losses.size,
        mean=mean,
        step_size=step_size,
        cov=cov,
        basis=basis,
        scales=scales,
        path_sigma=path_sigma,
        path_cov=path_cov,
        eigen_step=eigen_step,
        previous_mean=state.mean,
        tpa_score=float(tpa_score),
        best_loss=best_loss,
        best_x=best_x,
        nonfinite=state.nonfinite + losses.size - finite,
    )
    if not (
        np.all(np.isfinite(new.mean)) and math.isfinite(step_size) and np.all(np.isfinite(scales))
    ):
        raise NumericalError(
            "CMA-ES state became non-finite", hint="Lower step_size or check the objective's scale"
        )
    info = {
        "stage": "cma",
        "phase": "sample",
        "queries": int(losses.size),
        "total_queries": new.queries,
        "best_loss": best_loss,
        "mean_loss": float(losses[np.isfinite(losses)].mean()),
        "nonfinite": losses.size - finite,
        "step_size": step_size,
    }
    return freeze(new), info


def cma_params(config: CMAConfig, state: CMAState) -> np.ndarray:
    """The current solution: the distribution mean (inside the bounds)."""
    return clip_to_bounds(config, state.mean)


def cma_es(config: CMAConfig, dim: int) -> Optimizer:
    """Plain CMA-ES as an `Optimizer` (the paper's BBT / BPT-VLM baseline)."""
    check_config(config, dim)

    def init(x0: np.ndarray) -> CMAState:
        return cma_init(config, check_x0(x0, dim))

    def tell(state: CMAState, losses: np.ndarray, *, val_accuracy: float | None = None):
        del val_accuracy  # plain CMA-ES has no stage switch
        return cma_tell(config, state, losses)

    return Optimizer(
        name="cma",
        config=config,
        init=init,
        ask=lambda state: cma_ask(config, state),
        tell=tell,
        params=lambda state: cma_params(config, state),
    )
