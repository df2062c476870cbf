"""The optimiser contract shared by every strategy: ask/tell over an explicit, frozen state.

An optimiser is a NamedTuple of pure functions (optax's shape, evosax's ask/tell). The state is a
NamedTuple of numpy arrays and Python scalars; randomness is derived from counters in it
(`rng(seed, stream, step)`, MeZO's seed trick), so `ask` is repeatable and `tell` regenerates the
candidates instead of receiving them back. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from edge_tune.errors import EdgeTuneError, NumericalError

State = Any  # a NamedTuple of arrays / ints / floats / nested states


class OptimizerError(EdgeTuneError, ValueError):
    """A bad optimiser configuration or a misuse of ask/tell (wrong shapes, dtypes, d = 0, ...)."""


class Optimizer(NamedTuple):
    """A strategy: `W = ask(s); L = f(W); s, info = tell(s, L)`; every row of W is one query."""

    name: str
    config: object
    init: Callable[[np.ndarray], State]
    ask: Callable[[State], np.ndarray]
    tell: Callable[..., tuple[State, dict]]
    params: Callable[[State], np.ndarray]


# Random streams: one per kind of draw, so that no two phases ever reuse a direction.
STREAM_CMA = 1
STREAM_RGE = 2
STREAM_SHARPNESS = 3
STREAM_MASK = 4
STREAM_SPSA = 5


def rng(seed: int, stream: int, step: int) -> np.random.Generator:
    """A generator fixed by counters: the same (seed, stream, step) gives the same draws."""
    return np.random.default_rng([int(seed), int(stream), int(step)])


def freeze(state: State) -> State:
    """Mark every array of a (nested) state read-only, so an in-place update anywhere raises."""
    for value in state:
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
        elif isinstance(value, tuple) and hasattr(value, "_fields"):
            freeze(value)
    return state


def check_x0(x0: Any, dim: int) -> np.ndarray:
    """The starting point as a fresh float64 vector of the optimiser's dimension."""
    x = np.array(x0, dtype=np.float64, copy=True)
    if x.shape != (dim,):
        raise OptimizerError(
            f"x0 has shape {x.shape}, expected ({dim},)",
            hint="Pass a 1-D vector with one entry per tuned parameter",
        )
    if not np.all(np.isfinite(x)):
        raise OptimizerError("x0 contains NaN or inf", hint="Start from a finite point")
    return x


def check_dim(dim: int) -> int:
    """Refuse d < 1: there is nothing to tune."""
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise OptimizerError(
            f"dimension must be a positive integer, got {dim!r}",
            hint="The prompt space needs at least one tuned parameter",
        )
    return int(dim)


def check_losses(losses: Any, rows: int) -> np.ndarray:
    """Validate what `tell` receives: one real loss per asked row, as float64 (NaN/inf allowed)."""
    arr = np.asarray(losses)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise OptimizerError(
            f"losses have dtype {arr.dtype}, expected a real float array",
            hint="Pass the objective's float losses, one per candidate row",
        )
    if arr.shape != (rows,):
        raise OptimizerError(
            f"losses have shape {arr.shape}, expected ({rows},) (one per row of ask)",
            hint="Evaluate exactly the rows returned by ask(state), in order",
        )
    return arr.astype(np.float64, copy=True)


def rank_keys(losses: np.ndarray) -> np.ndarray:
    """Losses with NaN/-inf/+inf mapped to +inf so that they rank last (lower is better)."""
    return np.where(np.isfinite(losses), losses, np.inf)


def require_some_finite(losses: np.ndarray, what: str) -> None:
    """All-NaN/inf feedback cannot move an optimiser: say so instead of corrupting the state."""
    if not np.any(np.isfinite(losses)):
        raise NumericalError(
            f"every loss told to {what} was NaN or inf",
            hint="Check the objective (logit scale, prompt scale) or lower the step size",
        )


def update_best(
    best_loss: float, best_x: np.ndarray, losses: np.ndarray, rows: np.ndarray
) -> tuple[float, np.ndarray]:
    """Best-so-far over every evaluated row (probe rows count: they are real evaluations)."""
    keys = rank_keys(losses)
    i = int(np.argmin(keys))
    if np.isfinite(keys[i]) and keys[i] < best_loss:
        return float(keys[i]), np.array(rows[i], dtype=np.float64)
    return best_loss, best_x


def best_params(state: State) -> tuple[float, np.ndarray]:
    """The lowest loss seen so far and the row that produced it (any strategy)."""
    return float(state.best_loss), np.asarray(state.best_x)
