"""Smoke test of the accuracy benchmark (`edge-tune bench accuracy`, edge_tune_bench.accuracy) on
the committed demo task, with a tiny budget."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_tune.bundle import open_bundle
from edge_tune.data import load_eval, load_shots
from edge_tune.errors import DataError
from edge_tune.objective import evaluate_dataset
from edge_tune.sweep import subsample
from edge_tune_bench import accuracy as ba


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One image-feature cache for the module: the demo's features are encoded once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def report(cache, tmp_path_factory):
    return ba.bench_accuracy(
        sweep_dir=tmp_path_factory.mktemp("sweep"),
        tasks=["demo"],
        methods=["sharpzo-edge", "cma"],
        shots=[2, 16],
        seeds=[0],
        budget=80,
        eval_per_class=5,
        jobs=1,
        cache_dir=cache,
    )


def test_runs_spend_the_budget_and_score_every_candidate_on_the_test_images(report):
    runs = {(r["method"], r["shots"]): r for r in report["runs"]}
    assert set(runs) == {(m, n) for m in ("sharpzo-edge", "cma") for n in (2, 16)}
    for (_, shots), r in runs.items():
        assert r["queries"] == 80  # one round: 4 folds x one generation of λ = 20
        assert r["train_images"] == 10 * shots and r["test_images"] == 50
        assert set(ba.CHEAP) <= set(r["candidates"]) and "prompt" in r["candidates"]
        assert r["shipped"] in r["candidates"]
        # what ships has the lowest cross-validated loss: a choice made on the shots alone
        best = min(r["candidates"].values(), key=lambda c: c["cv_loss"])
        assert r["candidates"][r["shipped"]]["cv_loss"] == best["cv_loss"]
        queries = [p["queries"] for p in r["curve"]]
        assert queries[0] == 0 and queries[-1] == r["queries"] and queries == sorted(queries)


def test_zero_shot_equals_the_eval_command_on_the_same_subsample(report, tmp_path):
    """w = 0 is the template "a photo of a {}.": the benchmark's zero-shot is the real one."""
    bundle = open_bundle(report["settings"]["bundle"])  # the shipped one, or $EDGE_TUNE_BUNDLE
    shots = load_shots(ba.DEMO_TASK / "shots")
    test = subsample(load_eval(ba.DEMO_TASK / "eval", shots), 5)
    expected = evaluate_dataset(bundle, test, cache_dir=tmp_path)["accuracy"]
    assert abs(report["runs"][0]["candidates"]["zero-shot"]["test"] - expected) < 1e-9


def test_table_has_every_column_and_the_margins(report):
    table = ba.markdown(report)
    assert (
        "### 2 shot(s) per class, sharpzo-edge" in table
        and "### 16 shot(s) per class, cma" in table
    )
    assert "| task | " + " | ".join(ba.COLUMNS) + " | shipped − best cheap |" in table
    summary = ba.summarise(report)[(16, "cma")]
    row = summary["tasks"]["demo"]
    assert row["best cheap"] == max(row[name] for name in ba.CHEAP)
    assert f"| demo | {row['zero-shot']:.1f} | " in table
    assert summary["worst_margin_to_best_cheap"] == ("demo", row["shipped"] - row["best cheap"])


def test_learning_curve_numbers():
    curve = [
        {"queries": 0, "accuracy": 0.5},
        {"queries": 100, "accuracy": 0.7},
        {"queries": 200, "accuracy": 0.9},
        {"queries": 400, "accuracy": 0.9},
    ]
    assert ba.queries_to_gain(curve) == 200  # 90 % of the +0.4 gain first reached at 200
    assert ba.queries_to_gain(curve[:1] + [{"queries": 50, "accuracy": 0.4}]) is None
    assert ba.curve_area(curve) == pytest.approx((0.6 * 100 + 0.8 * 100 + 0.9 * 200) / 400)


def test_subsample_is_stratified_and_seeded():
    shots = load_shots(ba.DEMO_TASK / "shots")
    test = load_eval(ba.DEMO_TASK / "eval", shots)
    a, b = subsample(test, 7), subsample(test, 7)
    assert [s.path for s in a.samples] == [s.path for s in b.samples]
    assert np.bincount(a.labels).tolist() == [7] * 10
    assert len(subsample(test, 1000).samples) == len(test.samples)
    assert [s.path for s in subsample(test, 7, seed=1).samples] != [s.path for s in a.samples]


def test_unknown_task_names_the_folder_and_the_fix(tmp_path):
    with pytest.raises(DataError) as err:
        ba.resolve_task("nope", tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'nope'}: task 'nope' has no shots/ and eval/ folders. "
        f"Write the tasks with `python -m edge_tune_export.miniworld.tasks "
        f"--out {tmp_path}`, or use --tasks demo"
    )


def test_the_demo_task_outside_a_checkout_names_the_fix(monkeypatch, tmp_path):
    installed = tmp_path / "site-packages" / "models" / "miniworld" / "demo"  # what a wheel sees
    monkeypatch.setattr(ba, "DEMO_TASK", installed)
    with pytest.raises(DataError) as err:
        ba.resolve_task("demo", tmp_path)
    assert "the demo task ships in the edge-tune checkout" in str(err.value)
    assert "--tasks-dir DIR --tasks inverted" in str(err.value)


def test_cli_json_is_one_report_with_settings_and_runs(cache, run_cli):
    """`--quick` with explicit options: those win, the rest comes from --quick (demo, seed 0, 20
    test images per class)."""
    done = run_cli(
        "bench", "accuracy", "--quick", "--budget", 80, "--shots", 2, "--cache-dir", cache, "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    expected = {
        "tasks": ["demo"],
        "methods": ["sharpzo-edge"],
        "shots": [2],
        "seeds": [0],
        "budget": 80,
        "eval_per_class": 20,
        "provider": "auto",
        "ort_threads": 1,
    }
    assert report["settings"] == {**report["settings"], **expected}
    [run] = report["runs"]
    assert (run["task"], run["shots"], run["method"]) == ("demo", 2, "sharpzo-edge")
    assert run["queries"] == 80
    assert run["test_images"] == 200 and run["shipped"] in run["candidates"]
    assert "demo" in done.stderr  # the per-run log line goes to stderr, the JSON alone to stdout


def test_cli_help_lists_the_options(run_cli):
    done = run_cli("bench", "accuracy", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--provider", "--threads", "--json", "--quick", "--tasks-dir", "--from-json"):
        assert option in done.stdout
    assert "repeat for several" in done.stdout


def test_cli_reprints_a_saved_report_and_names_a_missing_task(report, tmp_path, run_cli):
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report), encoding="utf-8")
    done = run_cli("bench", "accuracy", "--from-json", saved)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ba.markdown(report).strip()

    missing = run_cli("bench", "accuracy", "--tasks", "nope", "--tasks-dir", tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        (
            f"Error: {tmp_path / 'nope'}: task 'nope' has no shots/ and eval/ folders. Write the tasks "
            f"with `python -m edge_tune_export.miniworld.tasks --out {tmp_path}`, or use --tasks demo"
        )
    ]
