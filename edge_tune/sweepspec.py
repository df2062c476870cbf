"""A sweep's specification: a declarative grid of ordinary fit runs (stdlib only, so that the CLI
and the benchmark can name methods without loading numpy).

A spec is a JSON or TOML file (TOML needs Python 3.11's `tomllib`):

    {"tasks": ["tasks/inverted", {"name": "pets", "shots": "pets/train", "eval": "pets/test"}],
     "methods": ["sharpzo-edge", "cma"], "seeds": [0, 1, 2], "shots": [16, 4],
     "budgets": [2000], "eval_per_class": 100, "bundle": "bundles/b16"}

A task given as a folder holds `shots/` (and optionally `eval/`) and is named after the folder.
Relative paths are relative to the spec's folder. List keys also take one value (`"seeds": 0`).
`shots` is the number of images per class drawn (seeded) from the task's shots, `"all"` for every
one; `eval_per_class` a seeded subsample of the evaluation images (omitted: all of them).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from edge_tune.errors import EdgeTuneError

#: Method label -> (optimizer, preset, tune_for).
METHODS = {
    "sharpzo-edge": ("sharpzo", "edge", "prompt"),
    "sharpzo-edge-hybrid": ("sharpzo", "edge", "hybrid"),
    "sharpzo-paper": ("sharpzo", "paper", "prompt"),
    "cma": ("cma", "edge", "prompt"),
    "zo": ("zo", "edge", "prompt"),
    "spsa-clip": ("spsa-clip", "edge", "prompt"),
}
#: Seed offset of the shots' subsample: run seed s draws its shots with seed 1000 + s.
SHOTS_SEED_OFFSET = 1000
_KEYS = {"tasks", "methods", "seeds", "shots", "budgets", "eval_per_class", "bundle"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Task:
    name: str
    shots: str  # a shots folder (class folders)
    eval: str | None  # an evaluation folder, or None


@dataclass(frozen=True)
class SweepRun:
    """One fit of the sweep: everything that decides its result."""

    task: Task
    method: str
    seed: int
    shots: int | None  # images per class drawn from the task's shots; None: all of them
    budget: int
    eval_per_class: int | None
    bundle: str | None  # None: the shipped bundle

    @property
    def key(self) -> str:
        """The run's folder under the sweep's runs/: task/method-shotsN-seedS-qB."""
        shots = "all" if self.shots is None else self.shots
        return f"{self.task.name}/{self.method}-shots{shots}-seed{self.seed}-q{self.budget}"

    @property
    def shots_seed(self) -> int:
        return SHOTS_SEED_OFFSET + self.seed


@dataclass(frozen=True)
class Spec:
    runs: tuple[SweepRun, ...]
    record: dict  # the spec as resolved (absolute paths, lists), written into the sweep's folder


def read_spec(path: str | Path) -> Spec:
    """Parse a spec file; one EdgeTuneError naming the file and the key for anything wrong."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise EdgeTuneError(
            f"cannot read the sweep spec ({getattr(err, 'strerror', None) or err})",
            path=path,
            hint="Pass a JSON or TOML file (see `edge-tune sweep --help`)",
        ) from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise EdgeTuneError(
                "TOML specs need Python 3.11 or newer", path=path, hint="Write the spec as JSON"
            ) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise EdgeTuneError(f"not valid TOML ({err})", path=path, hint="Fix the file") from None
    else:
        try:
            data = json.loads(text)
        except ValueError as err:
            raise EdgeTuneError(
                f"not valid JSON ({err})",
                path=path,
                hint="Fix the file (a .toml name reads it as TOML)",
            ) from None
    return spec_from_dict(data, base=path.parent, path=path)


def spec_from_dict(data, *, base: Path, path: Path | None = None) -> Spec:
    """The runs of a spec's content (the grid tasks x methods x shots x seeds x budgets)."""

    def bad(what: str, hint: str = "Fix the spec (see `edge-tune sweep --help`)") -> EdgeTuneError:
        return EdgeTuneError(what, path=path, hint=hint)

    if not isinstance(data, dict):
        raise bad("a sweep spec is an object (a table in TOML)")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(unknown)}", f"Use only {', '.join(sorted(_KEYS))}")

    def values(key: str, kind, default=None) -> list:
        raw = data.get(key, default)
        if raw is None:
            raise bad(f"the spec has no {key!r}")
        items = raw if isinstance(raw, list) else [raw]
        if not items or not all(kind(v) for v in items):
            raise bad(f"{key!r} must be a value or a non-empty list of them, got {raw!r}")
        return [v for i, v in enumerate(items) if v not in items[:i]]  # repeats once, in order

    def positive_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    methods = values("methods", lambda v: isinstance(v, str), ["sharpzo-edge"])
    for method in methods:
        if method not in METHODS:
            raise bad(f"unknown method {method!r}", f"Use one of {', '.join(METHODS)}")
    seeds = values("seeds", lambda v: isinstance(v, int) and not isinstance(v, bool), [0])
    shots = values("shots", lambda v: v == "all" or positive_int(v), ["all"])
    budgets = values("budgets", positive_int, [2000])
    eval_per_class = data.get("eval_per_class")
    if eval_per_class is not None and not positive_int(eval_per_class):
        raise bad(f"'eval_per_class' must be a positive integer, got {eval_per_class!r}")
    bundle = data.get("bundle")
    if bundle is not None and not isinstance(bundle, str):
        raise bad(f"'bundle' must be a path, got {bundle!r}")
    bundle = None if bundle is None else str((base / bundle).resolve())
    tasks = [_task(item, base, bad) for item in values("tasks", lambda v: True)]
    names = [t.name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise bad(f"two tasks are named {', '.join(repeated)}", "Give each task its own name")
    runs = tuple(
        SweepRun(t, m, s, None if n == "all" else n, b, eval_per_class, bundle)
        for t in tasks
        for m in methods
        for n in shots
        for b in budgets
        for s in seeds
    )
    record = {
        "tasks": [{"name": t.name, "shots": t.shots, "eval": t.eval} for t in tasks],
        "methods": methods,
        "seeds": seeds,
        "shots": shots,
        "budgets": budgets,
        "eval_per_class": eval_per_class,
        "bundle": bundle,
    }
    return Spec(runs, record)


def _task(item, base: Path, bad) -> Task:
    if isinstance(item, str):
        folder = (base / item).resolve()
        if not (folder / "shots").is_dir():
            raise bad(
                f"task {item!r} has no shots/ folder",
                "A task folder holds shots/<class>/ (and eval/<class>/), or give "
                '{"name": ..., "shots": ..., "eval": ...}',
            )
        evaluation = folder / "eval"
        name, shots, evaluation = (
            folder.name,
            folder / "shots",
            evaluation if evaluation.is_dir() else None,
        )
    else:
        if not isinstance(item, dict) or not isinstance(item.get("shots"), str):
            raise bad(
                f"a task is a folder or an object with 'shots' (and 'name', 'eval'), got {item!r}"
            )
        extra = sorted(set(item) - {"name", "shots", "eval"})
        if extra:
            raise bad(f"unknown task key(s) {', '.join(extra)}", "A task has name, shots and eval")
        shots = (base / item["shots"]).resolve()
        name = item.get("name", shots.parent.name if shots.name == "shots" else shots.name)
        evaluation = item.get("eval")
        if evaluation is not None and not isinstance(evaluation, str):
            raise bad(f"a task's 'eval' is a folder, got {evaluation!r}")
        evaluation = None if evaluation is None else (base / evaluation).resolve()
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad(
            f"task name {name!r} cannot name a folder", "Use letters, digits, '.', '_' and '-'"
        )
    return Task(name, str(shots), None if evaluation is None else str(evaluation))
