"""`edge-tune sweep`: a grid of ordinary fits whose results survive any process dying.

Runs on the shipped mini-world bundle and the checkout's demo task (small budgets): a sweep killed
at a random moment, or one of whose fits is SIGKILLed, and run again, ends with every run's
result identical to an uninterrupted sweep's; the Ray engine (the [ray] extra) gives the same
results on a Ray started by the test.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_tune.errors import EdgeTuneError
from edge_tune.sweep import Options, run_sweep
from edge_tune.sweep_report import build_report, markdown
from edge_tune.sweepspec import read_spec, spec_from_dict

DEMO = Path(__file__).resolve().parent.parent / "models" / "miniworld" / "demo"
#: 6 runs: 2 methods x 3 seeds, 4 shots per class, 10 test images per class.
SPEC = {
    "tasks": [str(DEMO)],
    "methods": ["sharpzo-edge", "cma"],
    "seeds": [0, 1, 2],
    "shots": 4,
    "budgets": 640,
    "eval_per_class": 10,
}
#: What a run computes (not when, how fast or in which process).
RESULT_KEYS = ("shipped", "candidates", "queries", "steps", "best_cheap", "tuned_accuracy")


def write_spec(folder: Path, spec: dict = SPEC) -> Path:
    path = folder / "sweep.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def results(out: Path) -> dict:
    """Every run's result (RESULT_KEYS) and its prompt's and classifier's arrays."""
    found = {}
    for result_path in sorted((out / "runs").glob("*/*/result.json")):
        folder = result_path.parent
        result = json.loads(result_path.read_text(encoding="utf-8"))
        arrays = {}
        for name in ("prompt.npz", "classifier.npz"):
            with np.load(folder / name, allow_pickle=False) as data:
                arrays.update({f"{name}:{k}": data[k] for k in data.files})
        found[folder.relative_to(out).as_posix()] = ({k: result[k] for k in RESULT_KEYS}, arrays)
    return found


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key][0] == b[key][0], key
        assert sorted(a[key][1]) == sorted(b[key][1]), key
        for name, array in a[key][1].items():
            assert np.array_equal(array, b[key][1][name]), (key, name)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """The uninterrupted sweep (library call, two jobs)."""
    folder = tmp_path_factory.mktemp("reference")
    spec = read_spec(write_spec(folder))
    report = run_sweep(spec, folder / "out", Options(cache_dir=str(cache), threads=1), jobs=2)
    return folder / "out", report


def sweep_cli(spec: Path, out: Path, cache: Path, *extra) -> list[str]:
    return [
        sys.executable, "-m", "edge_tune", "sweep", str(spec), "--out", str(out),
        "--cache-dir", str(cache), "--threads", "1", *map(str, extra),
    ]  # fmt: skip


def test_spec_expands_the_grid_with_paths_from_its_folder(tmp_path):
    (tmp_path / "task" / "shots").mkdir(parents=True)
    spec = spec_from_dict(
        {"tasks": ["task"], "methods": "cma", "seeds": [0, 1, 0], "shots": [16, "all"]},
        base=tmp_path,
    )
    assert [r.key for r in spec.runs] == [
        "task/cma-shots16-seed0-q2000",
        "task/cma-shots16-seed1-q2000",
        "task/cma-shotsall-seed0-q2000",
        "task/cma-shotsall-seed1-q2000",
    ]
    assert spec.runs[0].task.shots == str(tmp_path / "task" / "shots")
    assert spec.runs[0].task.eval is None  # no eval/: the report uses cross-validated accuracy


@pytest.mark.parametrize(
    "content, message",
    [
        ({"tasks": [str(DEMO)], "seed": 1}, "unknown key(s) seed"),
        ({"tasks": [str(DEMO)], "methods": ["adam"]}, "unknown method 'adam'"),
        ({"tasks": [str(DEMO)], "budgets": [0]}, "'budgets' must be a value or a non-empty list"),
        (
            {"tasks": [str(DEMO), {"name": "demo", "shots": str(DEMO / "eval")}]},
            "two tasks are named demo",
        ),
        ({"tasks": [{"name": "a b", "shots": str(DEMO / "shots")}]}, "task name 'a b' cannot"),
        ({"methods": ["cma"]}, "the spec has no 'tasks'"),
    ],
)
def test_a_bad_spec_is_one_error_naming_the_file(tmp_path, content, message):
    path = write_spec(tmp_path, content)
    with pytest.raises(EdgeTuneError) as err:
        read_spec(path)
    assert err.value.path == str(path) or Path(err.value.path) == path
    assert message in err.value.message


def test_toml_spec_reads_like_json(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(f'tasks = ["{DEMO}"]\nmethods = ["cma"]\nseeds = [0, 1]\n', encoding="utf-8")
    assert [r.key for r in read_spec(path).runs] == [
        "demo/cma-shotsall-seed0-q2000",
        "demo/cma-shotsall-seed1-q2000",
    ]


def test_a_sweep_runs_every_run_once_and_its_report_comes_from_the_folders(reference, tmp_path):
    out, report = reference
    assert report["missing"] == [] and len(report["runs"]) == 6
    assert all(outcome == "finished" for outcome, _ in report["outcomes"].values())
    for r in report["runs"]:
        assert r["queries"] == 640 and r["test_images"] == 100 and r["train_images"] == 40
    table = (out / "report.md").read_text(encoding="utf-8")
    assert table == markdown(build_report(read_spec(out.parent / "sweep.json"), out))
    assert "| demo | 4 | 640 | cma | 3 |" in table
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = run_sweep(read_spec(out.parent / "sweep.json"), out, Options(threads=1))
    assert again["outcomes"] == {} and len(again["runs"]) == 6  # all done: nothing ran


def test_a_sweep_killed_at_a_random_moment_goes_on_to_the_same_results(reference, tmp_path, cache):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    command = sweep_cli(spec, out, cache, "--jobs", 2, "--checkpoint-every", "0.05s")
    moment = random.Random(os.getpid()).uniform(1.0, 4.0)
    started = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(moment)
    started.kill()  # SIGKILL: no handler runs; the fits die with it
    started.communicate()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert_same(results(out), results(reference[0]))


def _fit_processes(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    ]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_fit_whose_process_is_killed_is_started_again_from_its_checkpoint(
    reference, tmp_path, cache
):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    command = sweep_cli(spec, out, cache, "--checkpoint-every", "0.05s")
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((out / "runs").glob("*/*/state")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first fit has checkpointed
    [fit] = _fit_processes(sweep.pid)
    os.kill(fit, signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr
    assert "its process was killed by SIGKILL; starting it again from its checkpoint" in stderr
    assert_same(results(out), results(reference[0]))


def test_ctrl_c_stops_every_fit_at_a_checkpoint_and_the_same_command_goes_on(
    reference, tmp_path, cache
):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    command = sweep_cli(spec, out, cache, "--jobs", 2)
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list((out / "runs").glob("*/*/state")) and time.monotonic() < deadline:
        time.sleep(0.05)
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    if sweep.returncode == 0:  # the small sweep may have ended before the signal landed
        pytest.skip("the sweep finished before SIGINT")
    assert sweep.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"Stopped; checkpoints saved. Continue with the same command: edge-tune sweep {spec} "
        f"--out {out}"
    )
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert_same(results(out), results(reference[0]))


def test_a_folder_that_is_not_a_sweep_or_holds_another_one_is_refused(tmp_path, reference):
    spec = write_spec(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(EdgeTuneError) as err:
        run_sweep(read_spec(spec), tmp_path / "mine", Options())
    assert "holds no edge-tune sweep; nothing in it was changed" in err.value.message
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    other = write_spec(tmp_path, {**SPEC, "eval_per_class": 20})
    with pytest.raises(EdgeTuneError) as err:
        run_sweep(read_spec(other), reference[0], Options())
    assert err.value.message == "the sweep in this folder was made with another eval_per_class"


def test_the_ray_engine_gives_the_same_results(reference, tmp_path, cache):
    pytest.importorskip("ray", reason="the [ray] extra")
    spec = read_spec(write_spec(tmp_path))
    report = run_sweep(
        spec, tmp_path / "out", Options(cache_dir=str(cache), threads=1), engine="ray"
    )
    assert report["missing"] == []
    assert_same(results(tmp_path / "out"), results(reference[0]))
