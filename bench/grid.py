"""What `bench accuracy` runs: the tasks, the methods, the shot counts (data only, stdlib only, so
that the CLI can build its options without loading the benchmark)."""

from __future__ import annotations

from pathlib import Path

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
#: Method label -> (optimizer, preset, tune_for).
METHODS = {
    "sharpzo-edge": ("sharpzo", "edge", "prompt"),
    "sharpzo-edge-hybrid": ("sharpzo", "edge", "hybrid"),
    "sharpzo-paper": ("sharpzo", "paper", "prompt"),
    "cma": ("cma", "edge", "prompt"),
    "zo": ("zo", "edge", "prompt"),
    "spsa-clip": ("spsa-clip", "edge", "prompt"),
}
#: `--quick`: the demo task, one seed, two shot counts, a small budget, 20 test images per class.
QUICK = {"tasks": ("demo",), "seeds": (0,), "shots": (16, 4), "budget": 400, "eval_per_class": 20}
