"""SharpZO (arXiv 2506.20990): sharpness-aware CMA-ES warm-up, then sparse ZO-SGD.

A composition of the pieces in `cma`, `estimators` and `zo`. `ask` switches between phases and
every probe is a row it returns, so the fit loop never knows which phase it is in:

| stage / phase    | ask returns                               | tell does                       |
|------------------|-------------------------------------------|---------------------------------|
| sa-cma / probe   | CGE (2d rows) or RGE (2q_s) at the mean   | ε* = ρ·ĝ/‖ĝ‖; → sample          |
| sa-cma / sample  | CMA candidates x_i + ε* (λ rows)          | CMA told the UNshifted x_i      |
| sparse-zo / mask | CGE (2d) or RGE (2q_m) at w               | Z-pruning mask; → step          |
| sparse-zo / step | w ± µ·(mask ⊙ u_k) (2q rows)              | w ← w − η·ĝ (no buffer)         |

With `sharpness="population"` there is no probe phase: ĝ is the ES gradient of the previous
generation's own evaluations (edge-tune's query-free variant; it lags one generation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_tune.errors import NumericalError
from edge_tune.optim.base import (
    STREAM_MASK,
    STREAM_RGE,
    STREAM_SHARPNESS,
    Optimizer,
    OptimizerError,
    check_dim,
    check_losses,
    check_x0,
    freeze,
    update_best,
)
from edge_tune.optim.cma import (
    CMAConfig,
    CMAState,
    check_config,
    clip_to_bounds,
    cma_ask,
    cma_init,
    cma_sample,
    cma_tell,
    uses_tpa,
)
from edge_tune.optim.estimators import (
    cge_gradient,
    cge_points,
    es_gradient,
    rge_gradient,
    rge_points,
    z_pruning_mask,
)
from edge_tune.optim.zo import (
    Anchor,
    centre_loss,
    check_zo,
    line_search_step,
    masked_directions,
    zo_step,
)

#: Stage 2 with a fixed η stops when the loss at its probes is this many times its first loss
#: (measured: at η = 100 on the mini-world one run in four diverged, silently, until non-finite).
DIVERGENCE_FACTOR = 10.0

STAGE_WARMUP, STAGE_ZO = 0, 1
PHASE_PROBE, PHASE_RUN = 0, 1  # warm-up: probe → sample; zo: mask probe → step
STAGE_NAMES = {STAGE_WARMUP: "sa-cma", STAGE_ZO: "sparse-zo"}
PHASE_NAMES = {
    (STAGE_WARMUP, PHASE_PROBE): "sharpness-probe",
    (STAGE_WARMUP, PHASE_RUN): "sample",
    (STAGE_ZO, PHASE_PROBE): "mask-probe",
    (STAGE_ZO, PHASE_RUN): "step",
}
SHARPNESS_ESTIMATES = ("cge", "rge", "population", "none")
MASK_ESTIMATES = ("cge", "rge")
STEP_RULES = ("sgd", "line-search")


@dataclass(frozen=True)
class SharpZOConfig:
    """Every knob of the schedule; presets (`presets.py`) are named values of this record."""

    # stage 1: sharpness-aware CMA-ES
    population_size: int | None = 40  # λ
    step_size: float = 0.4  # σ0
    active: bool = True
    diagonal: bool = False
    step_size_rule: str = "auto"  # CMA-ES σ control: auto | csa | tpa (see CMAConfig)
    lower: float | None = None
    upper: float | None = None
    sharpness_radius: float = 0.1  # ρ
    sharpness: str = "cge"  # how ĝ for ε* is estimated: cge | rge | population | none
    sharpness_smoothing: float = 1e-3  # µ_cge (stage 1) or µ of the RGE probe
    sharpness_directions: int = 4  # q_s for sharpness="rge"
    # the switch
    switch: str = "fixed"  # fixed: after change_point generations; plateau: on val_accuracy
    change_point: int = 500  # T_c (for "plateau" the latest switch)
    patience: int = 10
    min_delta: float = 0.01  # accuracy as a fraction
    # stage 2: sparse ZO-SGD
    # "sgd": w ← w − η·ĝ (the paper); "line-search": η adapts to the measured loss (zo.py)
    step_rule: str = "sgd"
    learning_rate: float = 1e-3  # η (for "line-search" the first η)
    grow: float = 2**0.25  # "line-search": η × grow after an accepted step
    shrink: float = 0.5  # "line-search": η × shrink after a rejected one
    shaped_directions: bool = False  # stage-2 directions from N(0, C) of the warm-up's CMA-ES
    smoothing: float = 1e-3  # µ_rge
    directions: int = 1  # q
    keep_fraction: float = 0.5  # fraction of coordinates perturbed; 1.0 = dense, no mask probes
    mask_keep: str = "high"  # which end of the Z-score ranking is kept: high | low
    mask_estimate: str = "cge"  # cge | rge
    mask_smoothing: float = 1e-5  # µ_cge (stage 2)
    mask_directions: int = 32  # q_m for mask_estimate="rge"
    mask_interval: int = 200  # K
    seed: int = 0

    def cma_config(self) -> CMAConfig:
        return CMAConfig(
            population_size=self.population_size,
            step_size=self.step_size,
            active=self.active,
            diagonal=self.diagonal,
            step_size_rule=self.step_size_rule,
            lower=self.lower,
            upper=self.upper,
            seed=self.seed,
        )


class SharpZOState(NamedTuple):
    seed: int
    step: int  # tells
    queries: int
    stage: int
    phase: int
    cma: CMAState
    shift: np.ndarray  # ε*
    x: np.ndarray  # stage-2 iterate (the CMA mean until the switch)
    mask: np.ndarray  # bool[d], coordinates perturbed in stage 2
    warmup_steps: int  # CMA generations done
    zo_steps: int  # stage-2 SGD steps done (skipped ones included)
    skipped_steps: int  # steps that moved nothing: all pairs non-finite, or rejected by the search
    zo_start_loss: float  # L at the first stage-2 step (the divergence guard's reference)
    zo_rate: float  # η now ("line-search" adapts it)
    anchor_x: np.ndarray  # "line-search": the last accepted point (size 0 before the first)
    anchor_loss: float
    anchor_grad: np.ndarray
    anchor_rejections: int
    best_val: float
    stale_evals: int  # validation evaluations without an improvement > min_delta
    best_loss: float
    best_x: np.ndarray
    nonfinite: int


def check_sharpzo(config: SharpZOConfig, dim: int) -> None:
    """Refuse unknown modes and out-of-range values up front, with the valid choices."""
    check_config(config.cma_config(), dim)
    check_zo(config.learning_rate, config.smoothing, config.directions)
    for field, value, choices in (
        ("sharpness", config.sharpness, SHARPNESS_ESTIMATES),
        ("mask_estimate", config.mask_estimate, MASK_ESTIMATES),
        ("mask_keep", config.mask_keep, ("high", "low")),
        ("switch", config.switch, ("fixed", "plateau")),
        ("step_rule", config.step_rule, STEP_RULES),
    ):
        if value not in choices:
            raise OptimizerError(
                f"unknown {field} {value!r}", hint=f"Choose one of {', '.join(choices)}"
            )
    if not 0 < config.keep_fraction <= 1:
        raise OptimizerError(
            f"keep_fraction must be in (0, 1], got {config.keep_fraction}",
            hint="0.5 is the paper's value; 1.0 disables the mask",
        )
    if not (config.grow >= 1 and 0 < config.shrink < 1):
        raise OptimizerError(
            f"line-search needs grow >= 1 and 0 < shrink < 1, got {config.grow}, {config.shrink}",
            hint="The defaults are grow = 2**0.25, shrink = 0.5",
        )
    if config.change_point < 0 or config.mask_interval < 1 or config.patience < 1:
        raise OptimizerError(
            "change_point must be >= 0, mask_interval and patience >= 1",
            hint="See the paper preset for typical values",
        )
    if (
        config.sharpness_radius < 0
        or not config.sharpness_smoothing > 0
        or not config.mask_smoothing > 0
    ):
        raise OptimizerError(
            "sharpness_radius must be >= 0 and the smoothings > 0",
            hint="The paper uses ρ = 0.1, µ_cge = 1e-3 / 1e-5",
        )


def check_not_diverging(loss: float, start: float, learning_rate: float) -> None:
    """Stop a fixed-η stage 2 whose loss has blown up, instead of stepping on to inf."""
    if math.isfinite(start) and start > 0 and loss > DIVERGENCE_FACTOR * start:
        raise NumericalError(
            f"stage 2 (sparse ZO-SGD) diverged: the loss rose from {start:.4g} to {loss:.4g} "
            f"at learning_rate {learning_rate:g}",
            hint="Lower learning_rate, or use step_rule='line-search', which adapts it",
        )


def sharpzo(config: SharpZOConfig, dim: int) -> Optimizer:
    """SharpZO as an `Optimizer` (see the module docstring for the phases)."""
    d = check_dim(dim)
    check_sharpzo(config, d)
    cma_cfg = config.cma_config()
    probing = config.sharpness in ("cge", "rge")
    masked = config.keep_fraction < 1.0

    def warmup_phase_after_generation() -> int:
        return PHASE_PROBE if probing else PHASE_RUN

    def init(x0: np.ndarray) -> SharpZOState:
        x = check_x0(x0, d)
        cma = cma_init(cma_cfg, x)
        zero = np.zeros(d)
        if config.change_point == 0:  # straight to stage 2
            stage, phase = STAGE_ZO, (PHASE_PROBE if masked else PHASE_RUN)
        else:
            stage, phase = STAGE_WARMUP, warmup_phase_after_generation()
        return freeze(
            SharpZOState(
                seed=int(config.seed),
                step=0,
                queries=0,
                stage=stage,
                phase=phase,
                cma=cma,
                shift=zero,
                x=clip_to_bounds(cma_cfg, x),
                mask=np.ones(d, dtype=bool),
                warmup_steps=0,
                zo_steps=0,
                skipped_steps=0,
                zo_start_loss=math.inf,
                zo_rate=float(config.learning_rate),
                anchor_x=np.zeros(0),
                anchor_loss=math.inf,
                anchor_grad=np.zeros(0),
                anchor_rejections=0,
                best_val=-math.inf,
                stale_evals=0,
                best_loss=math.inf,
                best_x=x.copy(),
                nonfinite=0,
            )
        )

    def sharpness_directions(state: SharpZOState) -> np.ndarray:
        return masked_directions(
            state.seed, state.warmup_steps, config.sharpness_directions, None, d, STREAM_SHARPNESS
        )

    def mask_directions(state: SharpZOState) -> np.ndarray:
        return masked_directions(
            state.seed, state.zo_steps, config.mask_directions, None, d, STREAM_MASK
        )

    last_directions: list = [None, None]  # (state, its directions): ask and the tell after it

    def step_directions(state: SharpZOState) -> np.ndarray:
        if last_directions[0] is state:  # states are immutable: the same object, the same draws
            return last_directions[1]
        u = masked_directions(state.seed, state.zo_steps, config.directions, None, d, STREAM_RGE)
        if config.shaped_directions:
            # u ~ N(0, C) of the warm-up's covariance, scaled to trace d (E‖u‖² stays d): the
            # estimate is then of C·∇L, a gradient preconditioned by what stage 1 learned.
            scales = state.cma.scales * math.sqrt(d / float(np.sum(state.cma.scales**2)))
            u = u * scales if cma_cfg.diagonal else (u * scales) @ state.cma.basis.T
        u = u * state.mask
        u.flags.writeable = False
        last_directions[:] = [state, u]
        return u

    def ask(state: SharpZOState) -> np.ndarray:
        """Every row lies inside the box bounds, the perturbed and probing ones included."""
        return clip_to_bounds(cma_cfg, unclipped_rows(state))

    def unclipped_rows(state: SharpZOState) -> np.ndarray:
        if state.stage == STAGE_WARMUP and state.phase == PHASE_PROBE:
            mean = clip_to_bounds(cma_cfg, state.cma.mean)
            if config.sharpness == "cge":
                return cge_points(mean, config.sharpness_smoothing)
            return rge_points(mean, config.sharpness_smoothing, sharpness_directions(state))
        if state.stage == STAGE_WARMUP:
            # SharpZO eq. 3: fitness of x_i is taken at x_i + ε*.
            return cma_ask(cma_cfg, state.cma) + state.shift
        if state.phase == PHASE_PROBE:
            if config.mask_estimate == "cge":
                return cge_points(state.x, config.mask_smoothing)
            return rge_points(state.x, config.mask_smoothing, mask_directions(state))
        return rge_points(state.x, config.smoothing, step_directions(state))

    def shift_from(grad: np.ndarray) -> np.ndarray:
        norm = float(np.linalg.norm(grad))
        if not (math.isfinite(norm) and norm > 0):
            return np.zeros(d)
        return config.sharpness_radius * grad / norm  # SharpZO eq. 2: ε* = ρ·ĝ/‖ĝ‖

    def track_validation(state: SharpZOState, val_accuracy: float | None) -> tuple[float, int]:
        if val_accuracy is None or state.stage != STAGE_WARMUP:
            return state.best_val, state.stale_evals
        val = float(val_accuracy)
        if not math.isfinite(val):
            raise OptimizerError(
                f"val_accuracy must be finite, got {val_accuracy!r}",
                hint="Pass the validation accuracy as a fraction in [0, 1]",
            )
        stale = 0 if val > state.best_val + config.min_delta else state.stale_evals + 1
        return max(state.best_val, val), stale

    def tell(state: SharpZOState, losses: np.ndarray, *, val_accuracy: float | None = None):
        rows = ask(state)
        losses = check_losses(losses, rows.shape[0])
        best_val, stale = track_validation(state, val_accuracy)
        best_loss, best_x = update_best(state.best_loss, state.best_x, losses, rows)
        bad = int((~np.isfinite(losses)).sum())
        fields = dict(
            step=state.step + 1,
            queries=state.queries + rows.shape[0],
            best_val=best_val,
            stale_evals=stale,
            best_loss=best_loss,
            best_x=best_x,
            nonfinite=state.nonfinite + bad,
        )
        extra: dict = {}
        if state.stage == STAGE_WARMUP and state.phase == PHASE_PROBE:
            if config.sharpness == "cge":
                grad, _ = cge_gradient(losses, config.sharpness_smoothing)
            else:
                grad, _ = rge_gradient(
                    losses, config.sharpness_smoothing, sharpness_directions(state)
                )
            fields.update(shift=shift_from(grad), phase=PHASE_RUN)
        elif state.stage == STAGE_WARMUP:
            cma, cma_info = cma_tell(cma_cfg, state.cma, losses)  # told the UNshifted x_i
            extra["step_size"] = cma_info["step_size"]
            shift = state.shift
            if config.sharpness == "population":
                # DEVIATION(paper §3.1): ĝ comes from this generation's own λ evaluations (taken
                # at x_i + ε*, one generation old by the time it is used) instead of 2d CGE probes.
                # TPA's two mirrored mean-shift rows are not N(0, I) draws: they stay out.
                z, _, _ = cma_sample(cma_cfg, state.cma)
                first = 2 if state.cma.step > 0 and uses_tpa(cma_cfg, d) else 0
                grad = es_gradient(
                    losses[first:],
                    z[first:],
                    None if cma_cfg.diagonal else state.cma.basis,
                    state.cma.scales,
                    state.cma.step_size,
                )
                shift = shift_from(grad)
            warmup_steps = state.warmup_steps + 1
            switch = warmup_steps >= config.change_point or (
                config.switch == "plateau" and stale >= config.patience
            )
            fields.update(
                cma=cma, shift=shift, warmup_steps=warmup_steps, x=clip_to_bounds(cma_cfg, cma.mean)
            )
            # Stage 2 starts from the CMA mean (paper Alg. 1; the released code used a sample mean).
            if switch:
                fields.update(stage=STAGE_ZO, phase=PHASE_PROBE if masked else PHASE_RUN)
                extra["switched"] = True
            else:
                fields.update(phase=warmup_phase_after_generation())
        elif state.phase == PHASE_PROBE:
            if config.mask_estimate == "cge":
                grad, _ = cge_gradient(losses, config.mask_smoothing)
            else:
                # DEVIATION(paper §4.1): a q_m-direction RGE estimate of ∇L feeds the Z-score
                # instead of 2d CGE probes (2q_m queries instead of 2d).
                grad, _ = rge_gradient(losses, config.mask_smoothing, mask_directions(state))
            mask = z_pruning_mask(state.x, grad, config.keep_fraction, config.mask_keep)
            fields.update(mask=mask, phase=PHASE_RUN)
        else:
            loss = centre_loss(losses)
            start = state.zo_start_loss if state.zo_steps else loss
            if config.step_rule == "line-search":
                anchor = None
                if state.anchor_x.size:
                    anchor = Anchor(
                        state.anchor_x,
                        state.anchor_loss,
                        state.anchor_grad,
                        state.anchor_rejections,
                    )
                x, anchor, rate, accepted = line_search_step(
                    state.x, losses, config.smoothing, step_directions(state), anchor,
                    state.zo_rate if anchor is not None else config.learning_rate, config.grow, config.shrink,
                )  # fmt: skip
                skipped = not accepted
                fields.update(
                    zo_rate=rate,
                    anchor_x=anchor.x,
                    anchor_loss=anchor.loss,
                    anchor_grad=anchor.grad,
                    anchor_rejections=anchor.rejections,
                )
            else:
                check_not_diverging(loss, start, config.learning_rate)
                x, _, skipped = zo_step(
                    state.x, losses, config.smoothing, config.learning_rate, step_directions(state)
                )
            x = clip_to_bounds(cma_cfg, x)  # projected ZO-SGD: the iterate stays in the box
            fields.update(zo_start_loss=start)
            zo_steps = state.zo_steps + 1
            refresh = masked and zo_steps % config.mask_interval == 0
            fields.update(
                x=x,
                zo_steps=zo_steps,
                skipped_steps=state.skipped_steps + int(skipped),
                phase=PHASE_PROBE if refresh else PHASE_RUN,
            )
            extra["skipped"] = bool(skipped)
        new = state._replace(**fields)
        if not np.all(np.isfinite(new.x)):
            raise NumericalError(
                "the SharpZO iterate became non-finite",
                hint="Lower learning_rate or check the objective's scale",
            )
        finite = losses[np.isfinite(losses)]
        info = {
            "stage": STAGE_NAMES[state.stage],
            "phase": PHASE_NAMES[(state.stage, state.phase)],
            "queries": int(rows.shape[0]),
            "total_queries": new.queries,
            "best_loss": best_loss,
            "mean_loss": float(finite.mean()) if finite.size else math.nan,
            "nonfinite": bad,
            "switched": False,
            **extra,
        }
        return freeze(new), info

    def params(state: SharpZOState) -> np.ndarray:
        if state.stage == STAGE_WARMUP:
            return clip_to_bounds(cma_cfg, state.cma.mean)
        # with the line search, x is an untried point; the anchor is the last one that improved
        return state.anchor_x if state.anchor_x.size else state.x

    return Optimizer(name="sharpzo", config=config, init=init, ask=ask, tell=tell, params=params)
