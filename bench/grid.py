"""What `bench accuracy` runs: the tasks, the methods, the shot counts (data only, stdlib only, so
that the CLI can build its options without loading the benchmark; the methods are the sweep's)."""

from __future__ import annotations

from pathlib import Path

from edge_tune.sweepspec import METHODS as METHODS  # the methods are the sweep's

#: The committed demo task (the `inverted` shift, 16 shots, 500 eval images). It lives in the
#: checkout, not in the wheel: the one path here that only a checkout has.
DEMO_TASK = Path(__file__).resolve().parent.parent / "models" / "miniworld" / "demo"
#: Where `python -m edge_tune_export.miniworld.tasks --out DIR` is told to write the tasks.
DEFAULT_TASKS_DIR = Path("/tmp/miniworld/tasks")
#: Tasks with >= 10 points of first-order headroom, then tasks where zero-shot is already strong.
HEADROOM_TASKS = (
    "blur_inverted",
    "inverted",
    "noise",
    "noise_low_contrast",
    "rot90",
    "upside_down",
)
STRONG_TASKS = ("clean", "blur", "low_contrast")
DEFAULT_TASKS = HEADROOM_TASKS + STRONG_TASKS
SHOTS = (1, 2, 4, 8, 16)
SEEDS = (0, 1, 2)
#: `--quick`: the demo task, one seed, two shot counts, a small budget, 20 test images per class.
QUICK = {"tasks": ("demo",), "seeds": (0,), "shots": (16, 4), "budget": 400, "eval_per_class": 20}
