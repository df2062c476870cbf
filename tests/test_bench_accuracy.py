"""Smoke test of the accuracy benchmark on the committed demo task, with a tiny budget."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_tune import bench_accuracy as ba
from edge_tune.bundle import open_bundle
from edge_tune.data import load_eval, load_shots
from edge_tune.errors import DataError
from edge_tune.objective import evaluate_dataset


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return ba.bench_accuracy(tasks=["demo"], methods=["sharpzo-edge", "cma", "zo"], seeds=[0],
                             budget=60, paper_budget=None, mark=20, eval_per_class=5, jobs=1,
                             first_order_steps=2, cache_dir=cache)


def test_runs_spend_the_budget_and_log_a_curve_from_zero_shot(report):
    runs = {r["method"]: r for r in report["runs"]}
    assert set(runs) == {"sharpzo-edge", "cma", "zo"}
    assert runs["cma"]["queries"] == 60  # three generations of λ = 20
    assert runs["zo"]["queries"] == 60  # thirty two-point steps
    assert runs["sharpzo-edge"]["queries"] == 60
    for r in runs.values():
        queries = [p["queries"] for p in r["curve"]]
        assert queries[0] == 0 and queries[-1] == r["queries"]
        assert queries == sorted(queries) and len(queries) == 4  # 0, 20, 40, 60
        assert r["curve"][0]["accuracy"] == r["zero_shot"]
        assert r["curve"][-1]["accuracy"] == r["final_accuracy"]
        assert r["test_images"] == 50 and r["train_images"] + r["val_images"] == 160


def test_zero_shot_equals_the_eval_command_on_the_same_subsample(report, tmp_path):
    """w = 0 is the template "a photo of a {}.": the benchmark's start is the real zero-shot."""
    bundle = open_bundle(ba.DEFAULT_BUNDLE)
    shots = load_shots(ba.DEMO_TASK / "shots")
    test = ba.subsample(load_eval(ba.DEMO_TASK / "eval", shots), 5)
    expected = evaluate_dataset(bundle, test, cache_dir=tmp_path)["accuracy"]
    assert abs(report["runs"][0]["zero_shot"] - expected) < 1e-9


def test_table_has_every_method_and_the_picture_is_drawn(report, tmp_path):
    table = ba.markdown(report)
    assert "| task | zero-shot | sharpzo-edge | cma | zo |" in table
    zero = 100 * report["runs"][0]["zero_shot"]
    assert f"| demo | {zero:.1f} | " in table
    assert "60 q" in table
    ba.draw_picture(report, tmp_path / "acc.png")
    with Image.open(tmp_path / "acc.png") as image:
        assert image.size == (420, 330)


def test_subsample_is_stratified_and_seeded():
    shots = load_shots(ba.DEMO_TASK / "shots")
    test = load_eval(ba.DEMO_TASK / "eval", shots)
    a, b = ba.subsample(test, 7), ba.subsample(test, 7)
    assert [s.path for s in a.samples] == [s.path for s in b.samples]
    assert np.bincount(a.labels).tolist() == [7] * 10
    assert len(ba.subsample(test, 1000).samples) == len(test.samples)


def test_unknown_task_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        ba.resolve_task("nope", tmp_path)
    assert str(err.value) == (f"{tmp_path / 'nope'}: task 'nope' has no shots/ and eval/ folders. "
                              f"Write the tasks with `python -m edge_tune_export.miniworld.tasks "
                              f"--out {tmp_path}`, or use --tasks demo")


def test_first_order_column_says_not_installed_without_torch(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    report = ba.bench_accuracy(tasks=["demo"], methods=["cma", ba.FIRST_ORDER], seeds=[0],
                               budget=20, paper_budget=None, mark=20, eval_per_class=2, jobs=1,
                               first_order_steps=2, cache_dir=tmp_path)
    assert [r["method"] for r in report["runs"]] == ["cma"]
    assert report["first_order_note"].startswith("first-order reference: not installed (")
    assert "not installed" in ba.markdown(report)


def test_first_order_reference_runs_when_torch_is_there(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if not (ba.DEFAULT_CHECKPOINT / "config.json").is_file():
        pytest.skip("mini-world checkpoint not present")
    runs = ba.first_order("demo", Path(ba.DEMO_TASK), [0], steps=2, eval_per_class=5,
                          checkpoint=ba.DEFAULT_CHECKPOINT, lrs=(0.01,))
    assert len(runs) == 1 and runs[0]["method"] == ba.FIRST_ORDER and runs[0]["steps"] == 2
    assert 0.0 <= runs[0]["final_accuracy"] <= 1.0


def test_cli_reprints_a_saved_report_and_names_a_missing_task(report, tmp_path, run_cli):
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report), encoding="utf-8")
    done = run_cli("bench", "accuracy", "--from-json", saved, "--picture", tmp_path / "acc.png")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ba.markdown(report).strip()
    assert (tmp_path / "acc.png").is_file()

    missing = run_cli("bench", "accuracy", "--tasks", "nope", "--tasks-dir", tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'nope'}: task 'nope' has no shots/ and eval/ folders. Write the tasks "
        f"with `python -m edge_tune_export.miniworld.tasks --out {tmp_path}`, or use --tasks demo"]
