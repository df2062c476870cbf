"""A sweep's report, built from its run folders alone (result.json + metrics.jsonl of each):
one record per finished run, a Markdown table (mean ± std over seeds), the JSON, and a picture."""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path

from edge_tune.atomic import atomic_write_bytes, atomic_write_json
from edge_tune.report import format_seconds, read_metrics
from edge_tune.sweepspec import Spec, SweepRun


def record(run: SweepRun, folder: Path) -> dict | None:
    """A finished run's record (None while it is not finished): what it shipped, every
    candidate's cross-validated and evaluation accuracy, and the learning curve."""
    try:
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {
        "key": run.key,
        "task": run.task.name,
        "shots": run.shots,
        "method": run.method,
        "seed": run.seed,
        "budget": run.budget,
        "queries": result["queries"],
        "shipped": result["shipped"],
        "best_cheap": result["best_cheap"],
        "candidates": {
            c["name"]: {
                "cv": c["cv_accuracy"],
                "cv_loss": c["cv_loss"],
                "test": c["eval_accuracy"],
                "mix": c["mix"],
            }
            for c in result["candidates"]
        },
        "curve": [
            {"queries": m["queries"], "accuracy": m.get("eval_accuracy")}
            for m in read_metrics(folder / "metrics.jsonl")
        ],
        "train_images": result["data"]["train_images"],
        "test_images": result["data"]["eval_images"],
        "tuning_seconds": result["seconds"],
    }


def accuracy(r: dict, name: str) -> float | None:
    """A candidate's accuracy on the run's evaluation set, else cross-validated on its shots."""
    c = r["candidates"].get(name)
    if c is None:
        return None
    return c["test"] if c["test"] is not None else c["cv"]


def headline(folder: Path) -> str:
    """One line on a finished run: what it shipped and how it scored."""
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    on = "eval" if result["accuracy_on"] == "eval set" else "cv"
    return (
        f"shipped {result['shipped']} {100 * result['tuned_accuracy']:.1f}% {on} (zero-shot "
        f"{100 * result['zero_shot_accuracy']:.1f}%), {format_seconds(result['seconds'])} of tuning"
    )


def build_report(spec: Spec, out: Path) -> dict:
    """{"settings": the spec, "runs": finished runs' records, "missing": the other runs' keys}."""
    from edge_tune.sweep import run_dir

    runs, missing = [], []
    for run in spec.runs:
        r = record(run, run_dir(out, run))
        if r is None:
            missing.append(run.key)
        else:
            runs.append(r)
    return {"settings": spec.record, "runs": runs, "missing": missing}


def rows(report: dict) -> list[dict]:
    """The table's rows: one per task x shots x budget x method, over the seeds that finished."""
    groups: dict[tuple, list[dict]] = {}
    for r in report["runs"]:
        groups.setdefault((r["task"], r["shots"], r["budget"], r["method"]), []).append(r)
    table = []
    for (task, shots, budget, method), runs in groups.items():

        def values(pick, runs=runs) -> list[float]:
            return [v for v in map(pick, runs) if v is not None]

        shipped = values(lambda r: accuracy(r, r["shipped"]))
        names = [r["shipped"] for r in runs]
        table.append(
            {
                "task": task,
                "shots": "all" if shots is None else shots,
                "budget": budget,
                "method": method,
                "seeds": len(runs),
                "zero-shot": _mean(values(lambda r: accuracy(r, "zero-shot"))),
                "best cheap": _mean(
                    values(lambda r: r["best_cheap"] and accuracy(r, r["best_cheap"]))
                ),
                "prompt": _mean(values(lambda r: accuracy(r, "prompt"))),
                "shipped": _mean(shipped),
                "std": statistics.pstdev(shipped) if len(shipped) > 1 else 0.0,
                "what shipped": ", ".join(f"{n} ×{names.count(n)}" for n in dict.fromkeys(names)),
            }
        )
    return table


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def markdown(report: dict) -> str:
    """The table (accuracy %: on each task's eval set, else cross-validated), and what is missing."""
    header = (
        "| task | shots | budget | method | seeds | zero-shot | best cheap (cv) | prompt | "
        "shipped | what shipped |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for row in rows(report):
        cells = [str(row[k]) for k in ("task", "shots", "budget", "method", "seeds")]
        cells += [_pct(row[k]) for k in ("zero-shot", "best cheap", "prompt")]
        cells += [f"{_pct(row['shipped'])} ± {100 * row['std']:.1f}", row["what shipped"]]
        lines.append("| " + " | ".join(cells) + " |")
    missing = report.get("missing", [])
    if missing:
        lines.append(f"\n{len(missing)} run(s) not finished: {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def draw(report: dict, path: Path) -> Path:
    """One bar per table row: what shipped (mean over seeds, the seeds' range as a whisker), with
    zero-shot (black) and the cross-validated best cheap head (grey) as ticks."""
    from PIL import Image, ImageDraw, ImageFont

    table = rows(report)
    font = ImageFont.load_default()
    label_width, bar_width, row_height, top = 360, 520, 22, 40
    height = top + row_height * max(len(table), 1) + 30
    image = Image.new("RGB", (label_width + bar_width + 40, height), "white")
    pen = ImageDraw.Draw(image)
    pen.text(
        (10, 10),
        "edge-tune sweep: what shipped (bar: mean over seeds, orange: their range); "
        "black: zero-shot, grey: best cheap head (cv)",
        fill="black",
        font=font,
    )

    def x(value: float) -> float:
        return label_width + value * bar_width

    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        pen.line([(x(fraction), top - 4), (x(fraction), height - 28)], fill=(225, 225, 225))
        pen.text((x(fraction) - 10, height - 24), f"{fraction:.0%}", fill="black", font=font)
    by_run = {}
    for r in report["runs"]:
        by_run.setdefault((r["task"], r["shots"], r["budget"], r["method"]), []).append(r)
    for i, row in enumerate(table):
        y = top + i * row_height
        label = f"{row['task']} · {row['shots']} shots · {row['budget']} q · {row['method']}"
        pen.text((10, y + 4), label, fill="black", font=font)
        if row["shipped"] is not None:
            pen.rectangle((x(0), y + 3, x(row["shipped"]), y + row_height - 3), fill=(31, 119, 180))
            shots = None if row["shots"] == "all" else row["shots"]
            seeds = by_run[(row["task"], shots, row["budget"], row["method"])]
            each = [v for v in (accuracy(r, r["shipped"]) for r in seeds) if v is not None]
            mid = y + row_height / 2
            pen.line([(x(min(each)), mid), (x(max(each)), mid)], fill=(255, 160, 40), width=2)
        for key, colour in (("best cheap", (150, 150, 150)), ("zero-shot", (0, 0, 0))):
            if row[key] is not None:
                pen.line(
                    [(x(row[key]), y + 1), (x(row[key]), y + row_height - 1)], fill=colour, width=3
                )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def write_report(out: Path, report: dict) -> None:
    """OUT/report.json, report.md and report.png (each written atomically)."""
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", markdown(report).encode("utf-8"))
    draw(report, out / "report.png")
