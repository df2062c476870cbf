"""Forward-only optimisers in pure numpy: SharpZO and the baselines it is compared with.

    opt = make_optimizer("sharpzo", dim=512, preset="edge", seed=0)
    state = opt.init(np.zeros(512))
    while budget_left:
        W = opt.ask(state)                       # f64[n, 512]; every row is one query
        state, info = opt.tell(state, objective(W), val_accuracy=maybe)
    w = opt.params(state)

No onnxruntime and no I/O here, except `save_state` / `load_state`.
"""

from edge_tune.optim.base import Optimizer, OptimizerError, best_params
from edge_tune.optim.presets import (
    OPTIMIZERS,
    PAPER_DATASETS,
    PRESETS,
    make_optimizer,
    optimizer_from_config,
    preset_config,
    projection_std,
)
from edge_tune.optim.state_io import load_state, save_state

__all__ = [
    "OPTIMIZERS",
    "PAPER_DATASETS",
    "PRESETS",
    "Optimizer",
    "OptimizerError",
    "best_params",
    "load_state",
    "make_optimizer",
    "optimizer_from_config",
    "preset_config",
    "projection_std",
    "save_state",
]
