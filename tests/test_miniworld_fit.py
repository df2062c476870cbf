"""Default `edge-tune fit` runs on the shipped mini-world bundle: a shifted task where tuning pays,
and a task where zero-shot is already strong, where what ships must not fall below it.

Margins come from the accuracy benchmark (docs/accuracy.md, `edge-tune bench accuracy`):
on the full `inverted` task (the demo's shift, same shots) what `fit` ships at 16 shots gains ~15
points over zero-shot; the test asks for 8 on the demo's 500 held-out images (one standard error
≈ 2.2 points), so it fails only when fitting really stops working.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edge_tune.fit import DEFAULT_BUNDLE
from edge_tune_bench.grid import DEMO_TASK

BUDGET = 2000
MIN_GAIN = 0.08  # accuracy fraction on the demo eval set (500 images, ±2.2 points s.e.)


def _eval(run_cli, data, *extra) -> dict:
    done = run_cli(
        "eval", "--bundle", DEFAULT_BUNDLE, "--data", data, "--threads", 1, "--json", *extra
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow
def test_default_fit_on_the_demo_beats_zero_shot_on_held_out_images(run_cli, tmp_path):
    run = tmp_path / "run"
    fitted = run_cli(
        "fit",
        "--data",
        DEMO_TASK / "shots",
        "--bundle",
        DEFAULT_BUNDLE,
        "--budget-queries",
        BUDGET,
        "--threads",
        1,
        "--out",
        run,
        "--json",
    )
    assert fitted.returncode == 0, fitted.stderr
    result = json.loads(fitted.stdout)
    assert result["config"]["optimizer"] == "sharpzo" and result["config"]["preset"] == "edge"
    assert result["queries"] <= BUDGET

    zero_shot = _eval(run_cli, DEMO_TASK / "eval")
    shipped = _eval(run_cli, DEMO_TASK / "eval", "--run", run)
    assert zero_shot["images"] == shipped["images"] == 500
    assert abs(zero_shot["accuracy"] - 0.610) < 1e-9  # the README's figure for this bundle and task
    assert shipped["shipped"] == result["shipped"]
    assert shipped["accuracy"] >= zero_shot["accuracy"] + MIN_GAIN, (zero_shot, shipped)


def _uninvert(source, target):
    """The demo's images with their intensities inverted back: clean Fashion-MNIST, where the
    mini-world CLIP's zero-shot is strong (86 % on the full test set)."""
    for path in source.rglob("*"):
        out = target / path.relative_to(source)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".png":
            out.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.asarray(Image.open(path).convert("L"))
            Image.fromarray(255 - pixels).save(out)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(path.read_bytes())
    return target


@pytest.mark.slow
def test_where_zero_shot_is_strong_what_ships_is_not_below_it(run_cli, tmp_path):
    shots = _uninvert(DEMO_TASK / "shots", tmp_path / "clean" / "shots")
    evaluation = _uninvert(DEMO_TASK / "eval", tmp_path / "clean" / "eval")
    run = tmp_path / "run"
    fitted = run_cli(
        "fit",
        "--data",
        shots,
        "--bundle",
        DEFAULT_BUNDLE,
        "--budget-queries",
        1000,
        "--threads",
        1,
        "--out",
        run,
        "--json",
    )
    assert fitted.returncode == 0, fitted.stderr
    result = json.loads(fitted.stdout)
    rows = {row["name"]: row for row in result["candidates"]}
    # on the held-out folds of the shots, by construction: zero-shot is one of the candidates
    assert rows[result["shipped"]]["cv_loss"] <= rows["zero-shot"]["cv_loss"]
    assert rows[result["shipped"]]["cv_accuracy"] >= rows["zero-shot"]["cv_accuracy"] - 0.02
    # and on 500 images the run never saw: within 1.5 points (0.7 standard errors) of zero-shot
    zero_shot = _eval(run_cli, evaluation)
    shipped = _eval(run_cli, evaluation, "--run", run)
    assert zero_shot["accuracy"] >= 0.80, zero_shot  # the task is one where zero-shot is strong
    assert shipped["accuracy"] >= zero_shot["accuracy"] - 0.015, (result["shipped"], shipped)
