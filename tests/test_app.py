"""The example app (deploy/app/photo_sorter.py) on a real bundle: it predicts while it learns, tunes
in the background within its budget, and swaps a finished classifier in atomically."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from deploy_support import MINIWORLD_BUNDLE, MINIWORLD_DEMO, REPO, write_photos

APP = REPO / "deploy" / "app" / "photo_sorter.py"


def load_app():
    spec = importlib.util.spec_from_file_location("photo_sorter", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def label(home: Path, classes: dict[str, int], seed: int) -> None:
    write_photos(home / "label", classes, seed=seed)


def test_app_predicts_while_it_learns_and_swaps_finished_classifiers_in(tmp_path, tiny_bundle):
    app_module = load_app()
    from edge_tune.errors import EdgeTuneError
    from edge_tune.fit import Budget, FitConfig

    home = tmp_path / "home"
    swaps = []
    live = app_module.LiveClassifier(
        tiny_bundle,
        home,
        config=FitConfig(folds=2),
        budget=Budget(queries=40, seconds=120.0),
        on_swap=lambda run, result: swaps.append((run, result)),
    )
    app = app_module.FolderApp(live, retune_after=3)
    with pytest.raises(EdgeTuneError, match="no classifier yet"):
        live.predict([])

    label(home, {"red": 4, "green": 4}, seed=0)
    assert app.poll() == {"labelled": 8, "retune_started": True, "predicted": 0}
    assert live.wait(timeout=300)
    first = live.classifier
    assert first is not None and first.classnames == ["green", "red"]
    ((run, result),) = swaps
    assert result["queries"] <= 40  # the budget held
    assert os.readlink(home / "current") == f"runs/{run.name}"
    assert (run / "classifier.npz").is_file()

    write_photos(home / "incoming", {"x": 3}, seed=5)
    for photo in (home / "incoming" / "x").iterdir():
        photo.rename(home / "incoming" / photo.name)
    (home / "incoming" / "x").rmdir()
    assert app.poll()["predicted"] == 3
    logged = [json.loads(line) for line in (home / "predictions.jsonl").read_text().splitlines()]
    assert len(logged) == 3 and {row["class"] for row in logged} <= {"green", "red"}
    assert all((home / "sorted" / row["class"] / row["file"]).is_file() for row in logged)
    assert not any((home / "incoming").iterdir())

    # Three new labels start a retune; the old classifier keeps answering until the new one is in.
    label(home, {"red": 2, "blue": 2}, seed=1)
    assert app.poll()["retune_started"] is True
    answered, _ = live.predict(sorted((home / "sorted").rglob("*.png")))
    assert len(answered) == 3
    assert live.wait(timeout=300)
    assert live.swaps == 2 and live.classifier is not first
    assert live.classifier.classnames == ["blue", "green", "red"]
    second_run = swaps[-1][0]
    assert os.readlink(home / "current") == f"runs/{second_run.name}" and second_run != run
    assert not (home / ".current.partial").exists()

    # A restart picks up the current classifier from disk.
    reopened = app_module.LiveClassifier(tiny_bundle, home)
    assert reopened.classifier.classnames == ["blue", "green", "red"]
    np.testing.assert_array_equal(
        reopened.classifier.class_features, live.classifier.class_features
    )


def test_app_stopped_mid_tuning_keeps_the_current_classifier(tmp_path, tiny_bundle):
    app_module = load_app()
    from edge_tune.fit import Budget, FitConfig

    home = tmp_path / "home"
    live = app_module.LiveClassifier(
        tiny_bundle,
        home,
        config=FitConfig(folds=2),
        budget=Budget(queries=1_000_000, seconds=600.0),
    )
    write_photos(home / "shots", {"red": 4, "green": 4})
    assert live.retune()
    assert not live.retune()  # one at a time: a second request queues a re-run instead
    live.stop()
    assert not live.tuning and live.classifier is None and live.swaps == 0
    assert not (home / "current").exists()


def test_app_command_line_sorts_a_folder_once(tmp_path, tiny_bundle):
    home = tmp_path / "home"
    label(home, {"red": 3, "green": 3}, seed=2)
    write_photos(home / "incoming-src", {"any": 2}, seed=3)
    (home / "incoming").mkdir()
    for photo in (home / "incoming-src" / "any").iterdir():
        shutil.move(photo, home / "incoming" / photo.name)
    result = subprocess.run(
        [
            sys.executable,
            str(APP),
            "--bundle",
            str(tiny_bundle),
            "--home",
            str(home),
            "--budget-queries",
            "40",
            "--budget-time",
            "2m",
            "--once",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, EDGE_TUNE_CACHE=str(tmp_path / "cache")),
    )
    assert result.returncode == 0, result.stderr
    assert "new classifier" in result.stderr
    assert len(result.stdout.splitlines()) == 2
    assert len((home / "predictions.jsonl").read_text().splitlines()) == 2


def test_app_reports_a_bad_bundle_in_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(APP),
            "--bundle",
            str(tmp_path / "nope"),
            "--home",
            str(tmp_path / "home"),
            "--once",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(
    not (MINIWORLD_BUNDLE / "manifest.json").is_file(), reason="mini-world not shipped yet"
)
def test_app_on_the_mini_world_sorts_better_than_chance(tmp_path):
    """The README's app story on the shipped model: label the demo shots, sort the demo eval photos."""
    app_module = load_app()
    from edge_tune.fit import Budget

    shots = MINIWORLD_DEMO / "shots" if (MINIWORLD_DEMO / "shots").is_dir() else MINIWORLD_DEMO
    evaluation = MINIWORLD_DEMO / "eval"
    home = tmp_path / "home"
    shutil.copytree(shots, home / "label")
    live = app_module.LiveClassifier(
        MINIWORLD_BUNDLE, home, budget=Budget(queries=600, seconds=300.0)
    )
    app = app_module.FolderApp(live)
    app.poll()
    assert live.wait(timeout=900) and live.classifier is not None
    photos = sorted(p for p in evaluation.rglob("*") if p.is_file())[:200]
    predictions, _ = live.predict(photos)
    truth = [p.parent.name.replace("_", " ").replace("-", " ") for p in photos]
    accuracy = np.mean([p.label == t for p, t in zip(predictions, truth)])
    assert accuracy > 1.5 / len(live.classifier.classnames), accuracy
