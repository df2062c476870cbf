"""`edge-tune bench accuracy`: what `fit` ships against every cheap head on the mini-world, per
task, shots per class and seed, on the same folds and the same test images.

The grid is a sweep (`edge_tune.sweep`, what `edge-tune sweep` runs): one run folder per fit, so
a benchmark that dies goes on where it stood when given the same --sweep-dir. Each run is an
ordinary `Tuner` (what `edge-tune fit` runs) on `shots` images per class drawn from the task's 16
(seeded), with a seeded subsample of the task's evaluation images (default 100 per
class) as its `eval_set` — a report only: every choice (heads' hyper-parameters, blend weights,
what ships) comes from the cross-validation folds of the shots. Each run records every candidate's
cross-validated and test accuracy (zero-shot, each head, zero-shot + head, the tuned prompt,
prompt + head), what it shipped, and the test accuracy of the fold prompts' ensemble against
queries (the learning curve). Methods are optimiser x preset x tuning target (`-hybrid`: the
prompt is scored through the prompt + head blend while it is tuned). The grid itself is
`edge_tune_bench.grid`.

Runs are single-threaded: ORT at `threads` (1), numpy's BLAS at one thread (`edge_tune.blas`), so
`--jobs 2` uses two cores.

    edge-tune bench accuracy --quick                      # demo task, one seed, small budget
    edge-tune bench accuracy --jobs 2 --out /tmp/accbench/heads.json
    python -m edge_tune_bench.accuracy --quick            # the same command
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_tune.errors import DataError
from edge_tune_bench.grid import DEFAULT_TASKS_DIR, DEMO_TASK

#: The candidates that need no query: what a practitioner fits in milliseconds.
CHEAP = (
    "zero-shot",
    "ncm",
    "gda",
    "probe",
    "tip",
    "zero-shot + ncm",
    "zero-shot + gda",
    "zero-shot + probe",
    "zero-shot + tip",
)


def resolve_task(name: str, tasks_dir: Path) -> Path:
    """The folder of task `name`: `demo` is the checkout's demo task, any other name a folder
    under `tasks_dir`; a DataError when it has no shots/ and eval/ folders."""
    if name == "demo" and not DEMO_TASK.is_dir():
        raise DataError(
            "the demo task ships in the edge-tune checkout (models/miniworld/demo), not here",
            path=DEMO_TASK,
            hint="Run from a checkout, or write the tasks with `python -m "
            "edge_tune_export.miniworld.tasks --out DIR` and pass --tasks-dir DIR --tasks inverted "
            "(the demo's shift)",
        )
    path = DEMO_TASK if name == "demo" else Path(tasks_dir) / name
    if not (path / "shots").is_dir() or not (path / "eval").is_dir():
        raise DataError(
            f"task {name!r} has no shots/ and eval/ folders",
            path=path,
            hint="Write the tasks with `python -m edge_tune_export.miniworld.tasks --out "
            f"{tasks_dir}`, or use --tasks demo",
        )
    return path


# --- summaries ---------------------------------------------------------------------------------


def queries_to_gain(curve: list[dict], fraction: float = 0.9) -> int | None:
    """First recorded query count at which the curve has `fraction` of its final gain over its
    start (None when it never gains)."""
    start, final = curve[0]["accuracy"], curve[-1]["accuracy"]
    if final <= start:
        return None
    target = start + fraction * (final - start)
    return next(int(p["queries"]) for p in curve if p["accuracy"] >= target - 1e-12)


def curve_area(curve: list[dict]) -> float:
    """Mean accuracy over the queries spent (trapezoid area / budget): higher = earlier gains."""
    q = np.array([p["queries"] for p in curve], float)
    a = np.array([p["accuracy"] for p in curve], float)
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(q)) / q[-1]) if q[-1] > 0 else float(a[0])


def summarise(report: dict) -> dict:
    """Per shots count and method: mean test accuracy (%) per task of each candidate and of what
    was shipped, the per-task best cheap head, and the margins the issue's targets speak of."""
    out: dict = {}
    for shots in sorted({r["shots"] for r in report["runs"]}):
        for method in dict.fromkeys(r["method"] for r in report["runs"] if r["shots"] == shots):
            runs = [r for r in report["runs"] if r["shots"] == shots and r["method"] == method]
            tasks = list(dict.fromkeys(r["task"] for r in runs))
            names = list(runs[0]["candidates"])
            per_task = {}
            for task in tasks:
                mine = [r for r in runs if r["task"] == task]

                def mean(values):
                    return 100 * statistics.fmean(values)

                row = {n: mean([r["candidates"][n]["test"] for r in mine]) for n in names}
                row["shipped"] = mean([r["candidates"][r["shipped"]]["test"] for r in mine])
                row["cheap by cv"] = mean(
                    [  # fit's own rule (edge_tune.select), cheap ones only
                        r["candidates"][
                            min(CHEAP, key=lambda n, r=r: r["candidates"][n]["cv_loss"])
                        ]["test"]
                        for r in mine
                    ]
                )
                row["pick by cv accuracy"] = mean(
                    [  # the rule fit does not use, for comparison
                        r["candidates"][
                            max(
                                r["candidates"],
                                key=lambda n, r=r: (
                                    r["candidates"][n]["cv"],
                                    -r["candidates"][n]["cv_loss"],
                                ),
                            )
                        ]["test"]
                        for r in mine
                    ]
                )
                best = max(CHEAP, key=lambda n: row[n])
                row["best cheap"], row["best cheap name"] = row[best], best
                row["spread"] = (
                    statistics.stdev([100 * r["candidates"][r["shipped"]]["test"] for r in mine])
                    if len(mine) > 1
                    else 0.0
                )
                row["q90"] = [queries_to_gain(r["curve"]) for r in mine]
                row["area"] = 100 * statistics.fmean(curve_area(r["curve"]) for r in mine)
                row["shipped names"] = [r["shipped"] for r in mine]
                row["seeds"] = len(mine)
                per_task[task] = row
            numeric = [k for k in per_task[tasks[0]] if isinstance(per_task[tasks[0]][k], float)]
            means = {k: statistics.fmean(per_task[t][k] for t in tasks) for k in numeric}
            margins = {t: per_task[t]["shipped"] - per_task[t]["best cheap"] for t in tasks}
            zs_margins = {t: per_task[t]["shipped"] - per_task[t]["zero-shot"] for t in tasks}
            out[(shots, method)] = {
                "tasks": per_task,
                "mean": means,
                "worst_margin_to_best_cheap": min(margins.items(), key=lambda kv: kv[1]),
                "worst_margin_to_zero_shot": min(zs_margins.items(), key=lambda kv: kv[1]),
            }
    return out


COLUMNS = (
    "zero-shot",
    "ncm",
    "gda",
    "probe",
    "tip",
    "zero-shot + probe",
    "cheap by cv",
    "best cheap",
    "prompt",
    "prompt + gda",
    "prompt + probe",
    "pick by cv accuracy",
    "shipped",
)


def markdown(report: dict) -> str:
    """The tables as Markdown: per shots count and method, one row per task and the mean."""
    s = report["settings"]
    lines = [
        (
            f"Test accuracy (%), mean over seeds {s['seeds']}, {s['budget']} queries per fit, "
            f"{s['eval_per_class']} test images per class. `cheap by cv`: the query-free "
            "candidate fit's rule picks on the folds; `best cheap`: the query-free candidate "
            "best on the test images per task (an oracle, favourable to the baselines); `pick "
            "by cv accuracy`: what shipping the best cross-validated accuracy would give; "
            "`shipped`: what `fit` ships (lowest cross-validated loss)."
        ),
        "",
    ]
    for (shots, method), entry in summarise(report).items():
        lines += [
            f"### {shots} shot(s) per class, {method}",
            "",
            "| task | " + " | ".join(COLUMNS) + " | shipped − best cheap | q90 (per seed) "
            "| shipped (per seed) |",
            "|---|" + "---|" * (len(COLUMNS) + 3),
        ]
        for task, row in entry["tasks"].items():
            cells = [f"{row[c]:.1f}" if c in row else "–" for c in COLUMNS]
            cells[-1] = f"{row['shipped']:.1f} ± {row['spread']:.1f}"
            q90 = ", ".join("–" if q is None else str(q) for q in row["q90"])
            lines.append(
                f"| {task} | "
                + " | ".join(cells)
                + f" | {row['shipped'] - row['best cheap']:+.1f} | {q90} | "
                + ", ".join(row["shipped names"])
                + " |"
            )
        mean = entry["mean"]
        cells = [f"{mean[c]:.1f}" if c in mean else "–" for c in COLUMNS]
        lines.append(
            "| **mean** | "
            + " | ".join(f"**{c}**" for c in cells)
            + f" | **{mean['shipped'] - mean['best cheap']:+.1f}** | | |"
        )
        worst, zs = entry["worst_margin_to_best_cheap"], entry["worst_margin_to_zero_shot"]
        lines += [
            "",
            (
                f"Worst task vs best cheap head: {worst[0]} {worst[1]:+.1f}; vs zero-shot: "
                f"{zs[0]} {zs[1]:+.1f}. Area under the prompt's test-accuracy curve (mean "
                f"accuracy over the queries): {mean['area']:.1f}."
            ),
            "",
        ]
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


def bench_accuracy(
    *,
    tasks: list[str],
    methods: list[str],
    shots: list[int],
    seeds: list[int],
    budget: int,
    eval_per_class: int,
    jobs: int = 1,
    tasks_dir: Path = DEFAULT_TASKS_DIR,
    bundle: str | Path | None = None,
    cache_dir: Path | None = None,
    provider: str = "auto",
    threads: int = 1,
    sweep_dir: Path | None = None,
    log=None,
) -> dict:
    """The grid tasks x shots x methods x seeds as a sweep (`edge_tune.sweep`) in `sweep_dir`
    (None: a new temporary folder, named in the log; give it again to go on with the sweep);
    {"settings", "runs": one record per finished run (`edge_tune.sweep_report.record`),
    "missing", "stopped_by", "wall_seconds"}. `bundle` None: $EDGE_TUNE_BUNDLE, else the
    shipped one."""
    from edge_tune.fit import resolve_bundle
    from edge_tune.sweep import Options, run_sweep
    from edge_tune.sweepspec import spec_from_dict

    bundle = resolve_bundle(bundle)
    dirs = {t: resolve_task(t, tasks_dir) for t in tasks}
    spec = spec_from_dict(
        {
            "tasks": [
                {"name": t, "shots": str(dirs[t] / "shots"), "eval": str(dirs[t] / "eval")}
                for t in tasks
            ],
            "methods": methods,
            "shots": shots,
            "seeds": seeds,
            "budgets": [budget],
            "eval_per_class": eval_per_class,
            "bundle": str(bundle),
        },
        base=Path.cwd(),
    )
    if sweep_dir is None:
        sweep_dir = Path(tempfile.mkdtemp(prefix="edge-tune-accuracy-"))
        if log is not None:
            log(f"the runs go to {sweep_dir}: pass --sweep-dir {sweep_dir} to go on with them")
    started = time.perf_counter()
    options = Options(
        cache_dir=None if cache_dir is None else str(cache_dir), provider=provider, threads=threads
    )
    sweep = run_sweep(spec, sweep_dir, options, jobs=jobs, log=log)
    return {
        "settings": {
            "tasks": tasks,
            "methods": methods,
            "shots": shots,
            "seeds": seeds,
            "budget": budget,
            "eval_per_class": eval_per_class,
            "bundle": str(bundle),
            "provider": provider,
            "ort_threads": threads,
            "jobs": jobs,
            "sweep_dir": str(sweep_dir),
        },
        "runs": sweep["runs"],
        "missing": sweep["missing"],
        "stopped_by": sweep["stopped_by"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def merge_reports(reports: list[dict]) -> dict:
    """Saved reports as one: the first one's settings, every report's runs."""
    return {"settings": reports[0]["settings"], "runs": [r for x in reports for r in x["runs"]]}


if __name__ == "__main__":  # `python -m edge_tune_bench.accuracy` is `edge-tune bench accuracy`
    from edge_tune.cli import main

    main(["bench", "accuracy", *sys.argv[1:]])
