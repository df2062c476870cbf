"""What a run shows while it works and leaves behind: metrics.jsonl, curve.png, the progress line.

`metrics.jsonl` gets one JSON object per evaluation; its byte length is recorded in each checkpoint
so that a resumed run cuts off what was logged after the checkpoint it continues from. The learning
curve is drawn with Pillow alone (no plotting library in the runtime). The progress line goes to
stderr and stays quiet when stderr is not a terminal (logs and CI stay clean).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from edge_tune.atomic import atomic_write_bytes

# --- metrics.jsonl ----------------------------------------------------------------------------


class MetricsLog:
    """Append-only JSON-lines log whose length (`offset`) a checkpoint can record and restore."""

    def __init__(self, path: str | Path, *, offset: int | None = None):
        self.path = Path(path)
        if offset is not None:  # resuming: forget lines written after the checkpoint
            with open(self.path, "ab+") as handle:
                size = handle.seek(0, os.SEEK_END)
                if size < offset:  # shorter than recorded (a lost write): keep whole lines only
                    handle.seek(0)
                    offset = handle.read().rfind(b"\n") + 1
                handle.truncate(offset)
        self.path.touch(exist_ok=True)

    def sync(self) -> None:
        """fsync the log (with each checkpoint, so its recorded length is on disk too)."""
        with open(self.path, "rb+") as handle:
            os.fsync(handle.fileno())

    @property
    def offset(self) -> int:
        return self.path.stat().st_size

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a metrics.jsonl (a torn last line from a kill is ignored)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


# --- curve.png --------------------------------------------------------------------------------

_COLOURS = {
    "train": (31, 119, 180),
    "val": (214, 39, 40),
    "zero-shot": (120, 120, 120),
    "loss": (44, 160, 44),
    "stage": (148, 103, 189),
    "grid": (225, 225, 225),
}


def stage_changes(records: Sequence[dict]) -> list[tuple[float, str]]:
    """(queries, new stage) wherever a record's stage differs from the one before it (the switch
    from SharpZO's warm-up to its stage 2, for instance)."""
    changes = []
    for before, record in zip(records, records[1:]):
        if record.get("stage") and before.get("stage") and record["stage"] != before["stage"]:
            changes.append((float(record["queries"]), str(record["stage"])))
    return changes


def accuracy_range(values: Sequence[float]) -> tuple[float, float]:
    """The accuracy panel's axis: the data's span (zero-shot included) padded by a tenth, at least
    0.1 wide, inside [0, 1], so that a few points of gain are visible."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    pad = max((high - low) * 0.1, (0.1 - (high - low)) / 2, 0.0)
    low, high = max(0.0, low - pad), min(1.0, high + pad)
    return (low, high) if high > low else (0.0, 1.0)


def draw_curve(
    records: Sequence[dict],
    path: str | Path,
    *,
    zero_shot: float | None = None,
    title: str = "edge-tune fit",
) -> Path:
    """Accuracy (train, validation) and training loss against queries, with the zero-shot line,
    gridlines, a dashed marker where the stage changes and each line's final value at its end."""
    from PIL import Image, ImageDraw, ImageFont

    width, height, margin = 900, 620, 70
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((margin, 12), title, fill="black", font=font)
    xs = [float(r["queries"]) for r in records] or [0.0]
    x_max = max(max(xs), 1.0)
    accuracy_series = [("train", "train_accuracy"), ("val", "val_accuracy")]
    accuracies = [r[k] for _, k in accuracy_series for r in records if r.get(k) is not None]
    panels = [
        (
            "accuracy",
            accuracy_range(accuracies + ([zero_shot] if zero_shot is not None else [])),
            accuracy_series,
            "{:.1%}",
        ),
        ("training loss", None, [("loss", "train_loss")], "{:.3f}"),
    ]
    panel_height = (height - 3 * margin) // 2
    for index, (label, y_range, series, value_format) in enumerate(panels):
        top = margin + index * (panel_height + margin)
        box = (margin, top, width - margin, top + panel_height)
        values = [r[key] for _, key in series for r in records if r.get(key) is not None]
        if y_range is None:
            low, high = (min(values), max(values)) if values else (0.0, 1.0)
            pad = (high - low) * 0.05 or 0.5
            y_range = (low - pad, high + pad)

        def to_xy(x: float, y: float, box=box, y_range=y_range) -> tuple[float, float]:
            left, top_, right, bottom = box
            fx = x / x_max
            fy = (y - y_range[0]) / (y_range[1] - y_range[0])
            return left + fx * (right - left), bottom - fy * (bottom - top_)

        for fraction in (0.25, 0.5, 0.75):  # gridlines first, under everything
            _, py = to_xy(0, y_range[0] + fraction * (y_range[1] - y_range[0]))
            draw.line([(box[0], py), (box[2], py)], fill=_COLOURS["grid"])
            px, _ = to_xy(fraction * x_max, y_range[0])
            draw.line([(px, box[1]), (px, box[3])], fill=_COLOURS["grid"])
        draw.rectangle(box, outline="black")
        draw.text((box[0], box[1] - 16), label, fill="black", font=font)
        for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
            y = y_range[0] + fraction * (y_range[1] - y_range[0])
            _, py = to_xy(0, y)
            text = f"{y:.1%}" if index == 0 else f"{y:.3g}"
            draw.text((8, py - 6), text, fill="black", font=font)
            px, _ = to_xy(fraction * x_max, y_range[0])
            draw.text((px - 10, box[3] + 4), f"{fraction * x_max:.0f}", fill="black", font=font)
        for queries, stage in stage_changes(records):
            _dashed_line(
                draw,
                to_xy(queries, y_range[1]),
                to_xy(queries, y_range[0]),
                _COLOURS["stage"],
                width=2,
            )
            px, _ = to_xy(queries, y_range[1])
            draw.text((px + 4, box[1] + 20), stage, fill=_COLOURS["stage"], font=font)
        if index == 0 and zero_shot is not None:
            _dashed_line(draw, to_xy(0, zero_shot), to_xy(x_max, zero_shot), _COLOURS["zero-shot"])
        legend_x = box[0] + 8
        for name, key in series:
            points = [to_xy(float(r["queries"]), r[key]) for r in records if r.get(key) is not None]
            if len(points) > 1:
                draw.line(points, fill=_COLOURS[name], width=2)
            finals = [r[key] for r in records if r.get(key) is not None][-1:]
            for (px, py), final in zip(points[-1:], finals):
                draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=_COLOURS[name])
                draw.text(
                    (px + 6, py - 6), value_format.format(final), fill=_COLOURS[name], font=font
                )
            draw.text((legend_x, box[1] + 6), name, fill=_COLOURS[name], font=font)
            legend_x += 60
        if index == 0 and zero_shot is not None:
            draw.text(
                (legend_x, box[1] + 6),
                f"zero-shot {zero_shot:.1%}",
                fill=_COLOURS["zero-shot"],
                font=font,
            )
    draw.text((width // 2 - 20, height - 22), "queries", fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _dashed_line(draw, start, end, colour, dash: float = 8.0, width: int = 1) -> None:
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    steps = max(int(length // dash), 1)
    for i in range(0, steps, 2):
        a, b = i / steps, min((i + 1) / steps, 1.0)
        draw.line(
            [(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
            fill=colour,
            width=width,
        )


# --- the progress line ------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """`75` -> `1m15s`; short, for the progress line and the summary."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 9.95:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """One self-rewriting line on stderr: queries/budget, stage, loss, accuracies, speed, ETA."""

    def __init__(
        self,
        *,
        budget_queries: int | None = None,
        budget_seconds: float | None = None,
        stream: IO[str] | None = None,
        enabled: bool | None = None,
        min_interval: float = 0.2,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _is_terminal(self.stream) if enabled is None else enabled
        self.budget_queries = budget_queries
        self.budget_seconds = budget_seconds
        self.min_interval = min_interval
        self._last_draw = 0.0
        self._width = 0

    def line(
        self,
        *,
        queries: int,
        stage: str,
        loss: float | None,
        train_accuracy: float | None,
        val_accuracy: float | None,
        queries_per_second: float,
        elapsed: float,
        width: int | None = None,
    ) -> str:
        """The text of the line (pure, for tests), at most `width` characters.

        On a narrow terminal the bar goes first, then the train accuracy, the loss and the stage,
        so that queries, the cross-validated accuracy, q/s and ETA stay in view. (A library bar,
        tqdm's, cuts the end of the line instead: the ETA is what goes.)"""
        total = f"/{self.budget_queries}" if self.budget_queries else ""
        fields = {"bar": None, "queries": f"queries {queries}{total}", "stage": stage}
        if self.budget_queries:
            filled = int(min(queries / self.budget_queries, 1.0) * 20)
            fields["bar"] = "[" + "#" * filled + "." * (20 - filled) + "]"
        fields["loss"] = None if loss is None else f"loss {loss:.4f}"
        fields["train"] = None if train_accuracy is None else f"train {100 * train_accuracy:.1f}%"
        fields["val"] = None if val_accuracy is None else f"val {100 * val_accuracy:.1f}%"
        fields["rate"] = f"{queries_per_second:.1f} q/s"
        eta = self._eta(queries, queries_per_second, elapsed)
        fields["eta"] = f"ETA {format_seconds(eta)}"
        order = ("bar", "queries", "stage", "loss", "train", "val", "rate", "eta")
        text = "  ".join(fields[key] for key in order if fields[key])
        for key in ("bar", "train", "loss", "stage"):
            if width is None or len(text) <= width:
                break
            fields[key] = None
            text = "  ".join(fields[k] for k in order if fields[k])
        return text if width is None else text[:width]

    def _eta(self, queries: int, rate: float, elapsed: float) -> float:
        left = []
        if self.budget_queries and rate > 0:
            left.append(max(self.budget_queries - queries, 0) / rate)
        if self.budget_seconds:
            left.append(max(self.budget_seconds - elapsed, 0.0))
        return min(left) if left else float("nan")

    def update(self, force: bool = False, **fields) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        # one column short of the terminal: a line that fills it wraps on some terminals
        width = shutil.get_terminal_size(fallback=(80, 24)).columns - 1
        text = self.line(**fields, width=width)
        self.stream.write("\r" + text.ljust(min(self._width, width)))
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def encoding_progress(stream: IO[str] | None = None):
    """A `(done, total)` callback for image-feature encoding: one line on a terminal, else None."""
    stream = stream if stream is not None else sys.stderr
    if not _is_terminal(stream):
        return None

    def show(done: int, total: int) -> None:
        if total:
            stream.write(f"\rencoding images {done}/{total}")
            if done >= total:
                stream.write("\n")
            stream.flush()

    return show


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


# --- the end-of-run summary -------------------------------------------------------------------


def format_summary(result: dict, run_dir: str | Path | None = None) -> str:
    """The lines `edge-tune fit` prints at the end: what it shipped and why, what it cost."""
    data = result["data"]
    rows = {row["name"]: row for row in result["candidates"]}
    on_eval = result["accuracy_on"] == "eval set"

    def accuracy(row: dict) -> str:
        text = f"cv {100 * row['cv_accuracy']:5.1f}%  loss {row['cv_loss']:.3f}"
        if on_eval:
            text += f"  eval {100 * row['eval_accuracy']:5.1f}%"
        return text

    shipped, zero = rows[result["shipped"]], rows["zero-shot"]
    lines = [
        f"cross-validated on the shots ({data['train_images']} images, {data['folds']} folds)"
        + (f"; eval on {data['eval_images']} images, report only" if on_eval else "")
        + ":"
    ]
    for row in result["candidates"]:
        mark = "->" if row["name"] == result["shipped"] else "  "
        lines.append(f" {mark} {row['name']:<22} {accuracy(row)}")
    margin = 100 * (shipped["cv_accuracy"] - zero["cv_accuracy"])
    line = (
        f"shipped: {result['shipped']} (lowest cross-validated loss; cv accuracy "
        f"{margin:+.1f} points over zero-shot"
    )
    if result.get("best_cheap") and result["best_cheap"] != result["shipped"]:
        cheap = rows[result["best_cheap"]]
        line += (
            f", loss {shipped['cv_loss']:.3f} vs {cheap['cv_loss']:.3f} for the best "
            f"query-free one, {result['best_cheap']}"
        )
    lines.append(line + ")")
    lines.append(
        f"queries {result['queries']} (+{result['eval_queries']} to evaluate), "
        f"{result['steps']} steps, stage {result['stage']}, "
        f"{format_seconds(result['seconds'])} tuning, peak memory {result['peak_rss_mb']:.0f} MiB"
    )
    if run_dir is not None:
        lines.append(
            f"wrote {run_dir}/: classifier.npz prompt.npz result.json metrics.jsonl curve.png"
        )
        lines.append(f"predict with: edge-tune predict {run_dir} IMAGE...")
    return "\n".join(lines)


def budget_line(queries: int | None, seconds: float | None, *, default_queries: int) -> str:
    """The line `fit` starts with: what will stop the tuning."""
    if queries is not None and seconds is not None:
        return (
            f"budget: {queries} queries or {format_seconds(seconds)} of tuning, whichever "
            "comes first"
        )
    if seconds is not None:
        return (
            f"budget: {format_seconds(seconds)} of tuning and no query cap (--budget-time "
            f"alone lifts the default {default_queries} queries)"
        )
    if queries is not None:
        return f"budget: {queries} queries"
    return "budget: none (until stopped)"
