"""The accuracy benchmark on the mini-world: every optimiser × task × seed at equal query budgets.

Each zeroth-order run is an ordinary `Tuner` (what `edge-tune fit` runs): 20 % of the 16 shots per
class held out for validation (SharpZO `edge`'s plateau switch and best-on-validation selection),
the rest the training shots. Every `mark` queries the current prompt and the best-on-validation
prompt are scored on a seeded subsample of the task's evaluation images (default 100 per class),
which no optimiser ever sees. Scoring costs text-graph runs that are not counted as queries.
The first-order reference (Adam through torch autograd on the same parameterisation, same training
shots) needs the `export` extra and the mini-world's torch checkpoint; without torch it is
reported as "not installed" and everything else still runs.

    python -m edge_tune.bench_accuracy --quick            # one task, one seed, small budget
    python -m edge_tune.bench_accuracy --jobs 2 --out /tmp/accbench/full.json --picture docs/accuracy.png
"""

from __future__ import annotations

import os

for _blas_threads in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_blas_threads, "1")  # the runs are single-threaded; see cli.py

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge_tune.errors import DataError

REPO = Path(__file__).resolve().parent.parent
DEMO_TASK = REPO / "models" / "miniworld" / "demo"
DEFAULT_BUNDLE = REPO / "models" / "miniworld" / "bundle"
DEFAULT_CHECKPOINT = REPO / "models" / "miniworld" / "clip"
DEFAULT_TASKS_DIR = Path("/tmp/miniworld/tasks")
#: Tasks whose first-order gain over zero-shot is >= 10 points (models/miniworld/README.md).
HEADROOM_TASKS = ("blur_inverted", "inverted", "noise", "noise_low_contrast", "rot90", "upside_down")
DEFAULT_TASKS = ("blur_inverted", "inverted", "noise", "upside_down")
#: Method label -> (optimizer, preset). Baselines use the `edge` preset's values (CMA-ES with
#: SharpZO edge's λ and σ, so that the only difference is the sharpness shift and stage 2).
METHODS = {
    "sharpzo-edge": ("sharpzo", "edge"),
    "sharpzo-paper": ("sharpzo", "paper"),
    "cma": ("cma", "edge"),
    "zo": ("zo", "edge"),
    "spsa-clip": ("spsa-clip", "edge"),
}
FIRST_ORDER = "first-order"


@dataclass(frozen=True)
class RunSpec:
    """One zeroth-order run: everything that decides its result."""

    task: str
    task_dir: str
    method: str
    seed: int
    budget: int
    mark: int  # queries between two scorings on the evaluation images
    eval_per_class: int
    bundle: str
    cache_dir: str


def subsample(dataset, per_class: int, seed: int = 0):
    """A seeded stratified subsample of an evaluation set (the same one for every run)."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for sample in dataset.samples:
        by_class.setdefault(sample.label, []).append(sample)
    kept = []
    for label in sorted(by_class):
        items = by_class[label]
        take = sorted(rng.permutation(len(items))[: min(per_class, len(items))].tolist())
        kept.extend(items[i] for i in take)
    return replace(dataset, samples=kept)


def resolve_task(name: str, tasks_dir: Path) -> Path:
    """`demo` is the committed demo task; any other name is a folder under `tasks_dir`."""
    path = DEMO_TASK if name == "demo" else Path(tasks_dir) / name
    if not (path / "shots").is_dir() or not (path / "eval").is_dir():
        raise DataError(
            f"task {name!r} has no shots/ and eval/ folders",
            path=path,
            hint="Write the tasks with `python -m edge_tune_export.miniworld.tasks --out "
            f"{tasks_dir}`, or use --tasks demo",
        )
    return path


def run_one(spec: RunSpec) -> dict:
    """One Tuner run; accuracy on the evaluation subsample against queries, every `mark` queries."""
    from edge_tune.bundle import open_bundle
    from edge_tune.data import load_eval, load_shots
    from edge_tune.features import image_features
    from edge_tune.fit import Budget, FitConfig, Tuner
    from edge_tune.objective import PromptObjective

    started = time.perf_counter()
    bundle = open_bundle(spec.bundle)
    shots = load_shots(Path(spec.task_dir) / "shots")
    test = subsample(load_eval(Path(spec.task_dir) / "eval", shots), spec.eval_per_class)
    test_x, test_y = image_features(bundle, test, cache_dir=spec.cache_dir, threads=1)
    optimizer, preset = METHODS[spec.method]
    config = FitConfig(optimizer=optimizer, preset=preset, seed=spec.seed,
                       budget_queries=spec.budget, checkpoint_every=1e9,
                       select="best")  # both prompts are scored: best-on-validation and final
    tuner = Tuner(bundle, shots, config=config, threads=1, cache_dir=spec.cache_dir)
    test_objective = PromptObjective(tuner.text_session, tuner.space, test_x, test_y,
                                     logit_scale=bundle.logit_scale)

    def test_accuracy(w: np.ndarray) -> float:
        return float(test_objective.evaluate(np.asarray(w, np.float64)[None])[1][0])

    def point() -> dict:
        current = np.asarray(tuner.optimizer.params(tuner.opt_state), np.float64)
        return {"queries": tuner.queries, "seconds": round(tuner.seconds, 3), "stage": tuner.stage,
                "accuracy": test_accuracy(current), "best_val_accuracy": tuner.best_val_accuracy,
                "selected_accuracy": test_accuracy(tuner.best_w)}

    curve = [point()]
    switch_queries = None
    next_mark = spec.mark

    def callback(t, info) -> None:
        nonlocal next_mark, switch_queries
        if switch_queries is None and info.get("stage") == "sparse-zo":
            switch_queries = t.queries - int(info.get("queries", 0))
        if t.queries >= next_mark:
            curve.append(point())
            next_mark = (t.queries // spec.mark + 1) * spec.mark

    tuner.run(callback=callback, budget=Budget(queries=spec.budget))
    result = tuner.finish()
    selected_w, selected = tuner.selected_params()
    final = point()
    if curve[-1]["queries"] != final["queries"]:
        curve.append(final)
    return {
        "task": spec.task, "method": spec.method, "optimizer": optimizer, "preset": preset,
        "seed": spec.seed, "budget": spec.budget, "queries": tuner.queries,
        "eval_queries": tuner.eval_queries, "train_images": tuner.num_train,
        "val_images": tuner.num_val, "test_images": len(test_y),
        "zero_shot": test_accuracy(np.zeros(tuner.space.dim)),
        "final_accuracy": final["accuracy"], "selected": selected,
        "selected_accuracy": test_accuracy(selected_w),
        "val_zero_shot": result["zero_shot_accuracy"], "val_best": result["best"]["val_accuracy"],
        "switch_queries": switch_queries, "tuning_seconds": round(tuner.seconds, 2),
        "wall_seconds": round(time.perf_counter() - started, 2), "curve": curve,
    }


def first_order(task: str, task_dir: Path, seeds: list[int], *, steps: int, eval_per_class: int,
                checkpoint: Path, lrs: tuple[float, ...] = (0.01, 0.05)) -> list[dict]:
    """Adam on w (SharpZO's parameterisation) on the same training shots; the ceiling per seed.

    Imports torch lazily: raises ImportError when the `export` extra is absent.
    """
    import torch
    from edge_tune_export.miniworld import first_order as fo
    from PIL import Image

    from edge_tune.data import load_eval, load_shots, split_holdout

    torch.set_num_threads(1)
    model = fo.load_model(checkpoint)
    shots = load_shots(task_dir / "shots")
    test = subsample(load_eval(task_dir / "eval", shots), eval_per_class)

    def tensors(dataset):
        images = np.stack([np.asarray(Image.open(s.path).convert("L")) for s in dataset.samples])
        return fo.cached_features(model, images), torch.from_numpy(dataset.labels)

    test_xy = tensors(test)
    scale = float(model.logit_scale.exp())
    parts = fo.prompt_parts(model, list(shots.classnames))
    out = []
    for seed in seeds:
        started = time.perf_counter()
        train, _ = split_holdout(shots, 0.2, seed)  # the Tuner's training shots for this seed
        train_xy = tensors(train)
        runs = [fo.tune(model, parts, scale, train_xy, test_xy, mode="sharpzo", steps=steps,
                        lr=lr, seed=seed) for lr in lrs]
        best = min(runs, key=lambda r: r["train_loss"])  # chosen by training loss, never by eval
        out.append({"task": task, "method": FIRST_ORDER, "seed": seed, "steps": steps,
                    "lr": best["lr"], "final_accuracy": best["eval_accuracy"],
                    "selected_accuracy": best["eval_accuracy"],
                    "train_accuracy": best["train_accuracy"],
                    "wall_seconds": round(time.perf_counter() - started, 2)})
    return out


# --- summaries ---------------------------------------------------------------------------------


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), in points."""
    pts = [100.0 * v for v in values]
    return statistics.fmean(pts), (statistics.stdev(pts) if len(pts) > 1 else 0.0)


def curve_at(curve: list[dict], queries: int, key: str = "accuracy") -> float:
    """The curve's value after `queries` queries (the last point at or before them)."""
    value = curve[0][key]
    for p in curve:
        if p["queries"] <= queries:
            value = p[key]
    return value


def queries_to_reach(curve: list[dict], target: float, key: str = "accuracy") -> int | None:
    """First recorded query count at which the curve is at or above `target` (None: never)."""
    for p in curve:
        if p[key] >= target - 1e-12:
            return int(p["queries"])
    return None


def summarise(report: dict) -> dict:
    """Per task × method: mean ± std of the artifact (best-on-validation) and final accuracy."""
    runs = report["runs"]
    budget = report["settings"]["budget"]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    table: dict = {}
    for task in tasks:
        rows = [r for r in runs if r["task"] == task]
        zs = [r["zero_shot"] for r in rows if "zero_shot" in r]
        entry = {"zero_shot": mean_spread(zs[:1])[0] if zs else None, "methods": {}}
        for method in list(METHODS) + [FIRST_ORDER]:
            mine = [r for r in rows if r["method"] == method and r.get("budget", budget) == budget]
            if not mine:
                continue
            entry["methods"][method] = {
                "selected": mean_spread([r["selected_accuracy"] for r in mine]),
                "final": mean_spread([r["final_accuracy"] for r in mine]),
                "queries": statistics.fmean(r.get("queries", r.get("steps", 0)) for r in mine),
                "seconds": statistics.fmean(r["wall_seconds"] for r in mine),
                "seeds": len(mine),
            }
        long = [r for r in rows if r["method"] == "sharpzo-paper" and r["budget"] > budget]
        if long:
            entry["paper_long"] = {
                "budget": long[0]["budget"],
                "selected": mean_spread([r["selected_accuracy"] for r in long]),
                "final": mean_spread([r["final_accuracy"] for r in long]),
                "seconds": statistics.fmean(r["wall_seconds"] for r in long),
            }
            edge = [r for r in rows if r["method"] == "sharpzo-edge" and r["budget"] == budget]
            target = statistics.fmean(r["final_accuracy"] for r in long)
            reach = [queries_to_reach(r["curve"], target) for r in edge]
            entry["edge_reaches_paper_long"] = {"target": 100 * target, "queries": reach}
        table[task] = entry
    return table


def fmt(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.1f} ± {ms[1]:.1f}"


def markdown(report: dict) -> str:
    """The results table (and the paper-vs-edge line) as Markdown."""
    summary = summarise(report)
    s = report["settings"]
    methods = [m for m in list(METHODS) + [FIRST_ORDER]
               if any(m in e["methods"] for e in summary.values())]
    lines = [(f"Test accuracy (%) of the selected prompt (best on validation), mean ± std over "
              f"{len(s['seeds'])} seed(s), at {s['budget']} queries; "
              f"{s['eval_per_class']} evaluation images per class."), "",
             "| task | zero-shot | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for task, e in summary.items():
        cells = [fmt(e["methods"][m]["selected"]) if m in e["methods"] else "–" for m in methods]
        lines.append(f"| {task} | {e['zero_shot']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Final prompt (no selection), same runs:", "",
              "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task, e in summary.items():
        cells = [fmt(e["methods"][m]["final"]) if m in e["methods"] else "–" for m in methods]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    lines += ["", "Queries used and wall seconds per run (mean; first-order: Adam steps):", "",
              "| task | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for task, e in summary.items():
        cells = [f"{e['methods'][m]['queries']:.0f} q, {e['methods'][m]['seconds']:.0f} s"
                 if m in e["methods"] else "–" for m in methods]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if any("paper_long" in e for e in summary.values()):
        lines += ["", "SharpZO `paper` at its long budget vs `edge` (final prompt):", "",
                  ("| task | paper budget | paper final | paper selected | edge final at budget | "
                   "queries edge needs to reach paper's final (per seed) |"),
                  "|---|---|---|---|---|---|"]
        for task, e in summary.items():
            if "paper_long" not in e:
                continue
            pl, reach = e["paper_long"], e["edge_reaches_paper_long"]["queries"]
            edge = e["methods"].get("sharpzo-edge")
            lines.append(f"| {task} | {pl['budget']} | {fmt(pl['final'])} | {fmt(pl['selected'])} | "
                         f"{fmt(edge['final']) if edge else '–'} | "
                         f"{', '.join('never' if q is None else str(q) for q in reach)} |")
    if "first_order_note" in report:
        lines += ["", report["first_order_note"]]
    return "\n".join(lines)


# --- the picture -------------------------------------------------------------------------------

COLOURS = {"sharpzo-edge": (214, 39, 40), "sharpzo-paper": (148, 103, 189), "cma": (31, 119, 180),
           "zo": (44, 160, 44), "spsa-clip": (255, 127, 14), FIRST_ORDER: (90, 90, 90)}


def to_pixel(frame: tuple, queries: float, accuracy: float) -> tuple[float, float]:
    """Pixel position of (queries on a log axis, accuracy) inside a panel's frame."""
    x0, x1, y0, y1, lo, hi, amin, amax = frame
    lq = math.log10(max(queries, 10**lo))
    return (x0 + (x1 - x0) * (lq - lo) / (hi - lo),
            y0 - (y0 - y1) * (accuracy - amin) / (amax - amin))


def draw_picture(report: dict, path: Path) -> None:
    """Accuracy (mean over seeds) against queries, log axis, one panel per task; Pillow only."""
    from PIL import Image, ImageDraw

    runs = [r for r in report["runs"] if "curve" in r]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    cols = min(3, len(tasks))
    rows_n = math.ceil(len(tasks) / cols)
    pw, ph, ml, mb, mt = 420, 300, 48, 34, 26
    legend_h = 30
    img = Image.new("RGB", (cols * pw, rows_n * ph + legend_h), "white")
    draw = ImageDraw.Draw(img)
    qmax = max(p["queries"] for r in runs for p in r["curve"])
    lo, hi = math.log10(max(10, min(p["queries"] for r in runs for p in r["curve"][1:]) or 10)), \
        math.log10(max(qmax, 100))
    fo = {(r["task"]): r for r in report["runs"] if r["method"] == FIRST_ORDER}
    for i, task in enumerate(tasks):
        ox, oy = (i % cols) * pw, (i // cols) * ph
        x0, x1, y0, y1 = ox + ml, ox + pw - 10, oy + ph - mb, oy + mt
        mine = [r for r in runs if r["task"] == task]
        values = [p["accuracy"] for r in mine for p in r["curve"]]
        if task in fo:
            values.append(fo[task]["final_accuracy"])
        amin = max(0.0, math.floor(min(values) * 10) / 10)
        amax = min(1.0, math.ceil(max(values) * 10) / 10)
        amax = amax if amax > amin else amin + 0.1

        frame = (x0, x1, y0, y1, lo, hi, amin, amax)

        def xy(q, a, frame=frame):
            return to_pixel(frame, q, a)

        draw.rectangle([x0, y1, x1, y0], outline=(0, 0, 0))
        draw.text((ox + ml, oy + 6), f"{task}: test accuracy vs queries", fill=(0, 0, 0))
        for k in range(math.floor(lo), math.ceil(hi) + 1):
            if lo <= k <= hi:
                x = xy(10 ** k, amin)[0]
                draw.line([x, y0, x, y0 + 4], fill=(0, 0, 0))
                draw.text((x - 12, y0 + 6), f"1e{k}", fill=(0, 0, 0))
        for t in np.linspace(amin, amax, 5):
            y = xy(10 ** lo, t)[1]
            draw.line([x0 - 4, y, x0, y], fill=(0, 0, 0))
            draw.text((ox + 6, y - 6), f"{100 * t:.0f}%", fill=(0, 0, 0))
        zs = mine[0]["zero_shot"]
        draw.line([xy(10 ** lo, zs), xy(10 ** hi, zs)], fill=(160, 160, 160))
        if task in fo:
            fa = statistics.fmean(r["final_accuracy"] for r in report["runs"]
                                  if r["method"] == FIRST_ORDER and r["task"] == task)
            for s in np.arange(x0, x1, 12):
                draw.line([s, xy(10 ** lo, fa)[1], min(s + 6, x1), xy(10 ** lo, fa)[1]],
                          fill=COLOURS[FIRST_ORDER])
        for method in METHODS:
            for long in (False, True):
                sel = [r for r in mine if r["method"] == method
                       and (r["budget"] > report["settings"]["budget"]) == long]
                if not sel:
                    continue
                grid = sorted({p["queries"] for r in sel for p in r["curve"]})
                pts = [xy(q, statistics.fmean(curve_at(r["curve"], q) for r in sel)) for q in grid]
                draw.line(pts, fill=COLOURS[method], width=1 if long else 2)
    x = 8
    for name, colour in COLOURS.items():
        label = name + (" (dashed: ceiling)" if name == FIRST_ORDER else "")
        draw.line([x, rows_n * ph + 15, x + 20, rows_n * ph + 15], fill=colour, width=3)
        draw.text((x + 24, rows_n * ph + 9), label, fill=(0, 0, 0))
        x += 30 + 7 * len(label)
    draw.text((x, rows_n * ph + 9), "grey: zero-shot; thin: paper at long budget", fill=(0, 0, 0))
    from edge_tune.atomic import atomic_write

    atomic_write(path, lambda handle: img.save(handle, format="PNG"))


# --- the command ---------------------------------------------------------------------------------


def bench_accuracy(*, tasks: list[str], methods: list[str], seeds: list[int], budget: int,
                   paper_budget: int | None, mark: int, eval_per_class: int, jobs: int,
                   first_order_steps: int, tasks_dir: Path = DEFAULT_TASKS_DIR,
                   bundle: Path = DEFAULT_BUNDLE, checkpoint: Path = DEFAULT_CHECKPOINT,
                   cache_dir: Path | None = None, log=None) -> dict:
    """Run the grid and return the report (settings + one record per run)."""
    from edge_tune.features import default_cache_dir

    cache = str(cache_dir or default_cache_dir())
    dirs = {t: resolve_task(t, tasks_dir) for t in tasks}
    specs = [RunSpec(t, str(dirs[t]), m, s, budget, mark, eval_per_class, str(bundle), cache)
             for t in tasks for m in methods if m != FIRST_ORDER for s in seeds]
    if paper_budget and "sharpzo-paper" in methods:
        specs += [RunSpec(t, str(dirs[t]), "sharpzo-paper", s, paper_budget,
                          max(mark, paper_budget // 100), eval_per_class, str(bundle), cache)
                  for t in tasks for s in seeds]
    specs.sort(key=lambda s: -s.budget)  # longest first, so the pool ends together
    report = {"settings": {"tasks": tasks, "methods": methods, "seeds": seeds, "budget": budget,
                           "paper_budget": paper_budget, "mark": mark,
                           "eval_per_class": eval_per_class, "first_order_steps": first_order_steps,
                           "bundle": str(bundle), "val_fraction": 0.2, "ort_threads": 1,
                           "jobs": jobs},
              "runs": []}
    started = time.perf_counter()
    # Image features once per task in this process, so parallel runs only read the cache.
    from edge_tune.bundle import open_bundle
    from edge_tune.data import load_eval, load_shots
    from edge_tune.features import image_features

    opened = open_bundle(bundle)
    for t in tasks:
        shots = load_shots(dirs[t] / "shots")
        image_features(opened, shots, cache_dir=cache, threads=1)
        image_features(opened, subsample(load_eval(dirs[t] / "eval", shots), eval_per_class),
                       cache_dir=cache, threads=1)
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for result in pool.map(run_one, specs):
                report["runs"].append(result)
                _log(log, result)
    else:
        for spec in specs:
            report["runs"].append(run_one(spec))
            _log(log, report["runs"][-1])
    if FIRST_ORDER in methods:
        try:
            for t in tasks:
                fo_runs = first_order(t, dirs[t], seeds, steps=first_order_steps,
                                      eval_per_class=eval_per_class, checkpoint=checkpoint)
                for r in fo_runs:
                    report["runs"].append(r)
                    _log(log, r)
        except ImportError as err:
            report["first_order_note"] = (f"first-order reference: not installed ({err}); "
                                          "install the `export` extra (torch) to measure it")
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    return report


def _log(log, r: dict) -> None:
    if log is not None:
        log(f"{r['task']:<20} {r['method']:<14} seed {r['seed']} budget {r.get('budget', '-')}: "
            f"final {100 * r['final_accuracy']:.1f}  selected {100 * r['selected_accuracy']:.1f}  "
            f"({r['wall_seconds']:.0f} s)")


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    p = argparse.ArgumentParser(prog=prog, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="demo task, seed 0, 1200 queries (one paper generation), 20 eval images/class, 50 Adam steps")
    p.add_argument("--tasks", nargs="+", default=None, help=f"default: {' '.join(DEFAULT_TASKS)}")
    p.add_argument("--tasks-dir", type=Path, default=DEFAULT_TASKS_DIR)
    p.add_argument("--methods", nargs="+", default=list(METHODS) + [FIRST_ORDER],
                   choices=list(METHODS) + [FIRST_ORDER])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budget", type=int, default=4000, help="queries per run (equal for all)")
    p.add_argument("--paper-budget", type=int, default=40000,
                   help="also run SharpZO paper this long (0: no)")
    p.add_argument("--mark", type=int, default=100, help="queries between evaluations")
    p.add_argument("--eval-per-class", type=int, default=100)
    p.add_argument("--first-order-steps", type=int, default=500)
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (each uses 1 ORT thread)")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, help="write the full report (runs and curves) as JSON")
    p.add_argument("--picture", type=Path, help="write accuracy-vs-queries PNG here")
    p.add_argument("--from-json", type=Path, help="only print the table (and picture) of a report")
    a = p.parse_args(argv)
    if a.from_json:
        report = json.loads(a.from_json.read_text(encoding="utf-8"))
    else:
        if a.quick:
            tasks, seeds, budget, paper_budget = a.tasks or ["demo"], [0], 1200, 0
            a.eval_per_class, a.first_order_steps, a.mark = 20, 50, 50
        else:
            tasks, seeds, budget, paper_budget = (a.tasks or list(DEFAULT_TASKS), a.seeds,
                                                  a.budget, a.paper_budget)
        report = bench_accuracy(tasks=tasks, methods=a.methods, seeds=seeds, budget=budget,
                                paper_budget=paper_budget, mark=a.mark,
                                eval_per_class=a.eval_per_class, jobs=a.jobs,
                                first_order_steps=a.first_order_steps, tasks_dir=a.tasks_dir,
                                bundle=a.bundle, checkpoint=a.checkpoint, cache_dir=a.cache_dir,
                                log=lambda line: print(line, file=sys.stderr, flush=True))
        if a.out:
            from edge_tune.atomic import atomic_write_bytes

            atomic_write_bytes(a.out, (json.dumps(report) + "\n").encode("utf-8"))
    if a.picture:
        draw_picture(report, a.picture)
    print(markdown(report))


if __name__ == "__main__":
    from edge_tune.errors import EdgeTuneError

    try:
        main()
    except EdgeTuneError as err:
        print(f"Error: {err}", file=sys.stderr)
        sys.exit(1)
