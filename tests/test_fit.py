"""`edge-tune fit` and the Tuner: beats zero-shot, budgets hold, exact resume, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from fit_support import cli_in_process, make_colour_shots, other_bundle
from PIL import Image

from edge_tune import features as features_module
from edge_tune.errors import EdgeTuneError
from edge_tune.fit import Budget, FitConfig, Tuner, parse_duration

BUDGET = 400  # optimiser queries: a few seconds on the tiny bundle


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_TUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def colour_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return make_colour_shots(root / "shots", seed=0), make_colour_shots(root / "eval", seed=1)


@pytest.fixture(scope="module")
def fitted_run(tiny_bundle, colour_task, tmp_path_factory):
    """One CLI fit on the colour task, shared by the tests that only read its outputs."""
    from edge_tune.cli import main

    shots, evaluation = colour_task
    run = tmp_path_factory.mktemp("run") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TUNE_CACHE", str(tmp_path_factory.mktemp("cache")))
        main(
            [
                "fit",
                "--data",
                str(shots),
                "--eval",
                str(evaluation),
                "--bundle",
                str(tiny_bundle),
                "--budget-queries",
                str(BUDGET),
                "--out",
                str(run),
                "--seed",
                "0",
                "--threads",
                "1",
                "--head",
                "none",
            ]
        )
    return run


def test_parse_duration_reads_the_usual_forms():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("20m") == 1200 and parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400 and parse_duration("0.5s") == 0.5
    with pytest.raises(EdgeTuneError) as err:
        parse_duration("soon")
    assert str(err.value) == "cannot read the duration 'soon'. Write it like 90s, 20m or 1h30m"


def test_fit_beats_zero_shot_and_writes_every_artifact(fitted_run):
    result = json.loads((fitted_run / "result.json").read_text())
    # the prompt alone (--head none): a real margin on held-out images, not an exact number
    assert result["shipped"] == "prompt", result
    assert result["tuned_accuracy"] >= result["zero_shot_accuracy"] + 0.15, result
    assert result["accuracy_on"] == "eval set" and result["data"]["folds"] == 4
    assert [c["name"] for c in result["candidates"]] == ["zero-shot", "prompt"]
    assert result["queries"] <= BUDGET and result["finished"] is True
    assert result["peak_rss_mb"] > 0

    prompt = np.load(fitted_run / "prompt.npz", allow_pickle=False)
    assert prompt["w"].shape == (4, 512) and prompt["w"].dtype == np.float64  # one per fold
    assert int(prompt["format_version"]) == 2
    assert list(prompt["classnames"]) == ["blue", "green", "red", "yellow"]
    assert str(prompt["preset"]) == "edge" and str(prompt["optimizer"]) == "sharpzo"
    assert str(prompt["bundle_hash"]) == result["bundle"]["hash"]
    spec = json.loads(str(prompt["spec"]))
    assert spec["seed"] == 0 and spec["init"] == "a photo of a"

    classifier = np.load(fitted_run / "classifier.npz", allow_pickle=False)
    features = classifier["class_features"]
    assert features.shape[0] == 4 and features.dtype == np.float32
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert str(classifier["bundle_hash"]) == result["bundle"]["hash"]

    with Image.open(fitted_run / "curve.png") as curve:
        assert curve.format == "PNG" and curve.size == (900, 620)
    metrics = [json.loads(line) for line in (fitted_run / "metrics.jsonl").read_text().splitlines()]
    # every 10 rounds of the 4 folds, and at the end
    assert [m["step"] for m in metrics] == sorted({*range(0, result["steps"], 40), result["steps"]})
    assert metrics[-1]["queries"] == result["queries"]
    prompt_row = result["candidates"][1]
    assert metrics[-1]["eval_accuracy"] == pytest.approx(prompt_row["eval_accuracy"])
    assert all(0 <= m["val_accuracy"] <= 1 for m in metrics)


def test_fit_json_prints_result_and_summary_reads_well(tiny_bundle, colour_task, tmp_path, capsys):
    shots, evaluation = colour_task
    code, out, err = cli_in_process(
        [
            "fit",
            "--data",
            shots,
            "--eval",
            evaluation,
            "--bundle",
            tiny_bundle,
            "--budget-queries",
            200,
            "--out",
            tmp_path / "run",
            "--json",
            "--optimizer",
            "zo",
        ],
        capsys,
    )
    assert code == 0, err
    printed = json.loads(out)
    assert printed.pop("run_dir") == str(tmp_path / "run")  # which folder it wrote
    assert printed == json.loads((tmp_path / "run" / "result.json").read_text())
    code, out, err = cli_in_process(
        [
            "fit",
            "--data",
            shots,
            "--folds",
            "2",
            "--bundle",
            tiny_bundle,
            "--budget-queries",
            200,
            "--out",
            tmp_path / "run2",
            "--optimizer",
            "zo",
        ],
        capsys,
    )
    assert code == 0, err
    assert re.match(
        r"cross-validated on the shots \(32 images, 2 folds\):\n"
        r"(( ->|   ) [a-z +-]+ +cv +\d+\.\d%  loss \d\.\d{3}\n){14}"
        r"shipped: [a-z +-]+ \(lowest cross-validated loss; cv accuracy [+-]\d+\.\d points over "
        r"zero-shot.*\)\n"
        r"queries \d+ \(\+\d+ to evaluate\), \d+ steps",
        out,
    ), out
    assert f"predict with: edge-tune predict {tmp_path / 'run2'} IMAGE..." in out
    assert err == "budget: 200 queries\n"  # and no progress line when stderr is not a terminal


def test_bad_data_and_budgets_are_one_line_errors(tiny_bundle, colour_task, tmp_path, capsys):
    shots, _ = colour_task
    base = ["fit", "--bundle", tiny_bundle, "--out", tmp_path / "r"]
    code, out, err = cli_in_process(base + ["--data", tmp_path / "nowhere"], capsys)
    assert (code, err) == (
        1,
        f"Error: {tmp_path / 'nowhere'}: data folder does not exist. "
        "Pass a folder holding one sub-folder of photos per class\n",
    )
    one = tmp_path / "one"
    make_colour_shots(one, per_class=2)
    for extra in ("green", "blue", "yellow"):
        for file in (one / extra).iterdir():
            file.unlink()
        (one / extra).rmdir()
    code, out, err = cli_in_process(base + ["--data", one], capsys)
    assert code == 1 and err.startswith(f"Error: {one}: only one class ('red')")
    assert err.count("\n") == 1

    code, out, err = cli_in_process(base + ["--data", shots, "--budget-queries", 3], capsys)
    assert code == 1 and re.fullmatch(
        r"Error: the query budget \(3\) is smaller than one step "
        r"\((\d+) queries\)\. Give --budget-queries of at least \1\n",
        err,
    ), err
    code, out, err = cli_in_process(
        base[:-1] + [tmp_path / "r2", "--data", shots, "--budget-time", "0.000001s"], capsys
    )
    assert code == 1 and re.fullmatch(
        r"budget: 0\.0s of tuning and no query cap \(--budget-time alone lifts the default 2000 "
        r"queries\)\nError: the time budget \(1e-06s\) is shorter than one step "
        r"\(\d+\.\ds here\)\. Give --budget-time of at least \d+s\n",
        err,
    ), err

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    code, out, err = cli_in_process(
        ["fit", "--bundle", tiny_bundle, "--data", shots, "--out", tmp_path / "full"], capsys
    )
    assert (code, err) == (
        1,
        f"Error: {tmp_path / 'full'}: the folder is not empty and is not an edge-tune run; "
        "nothing in it was changed. Choose another --out (a folder that does not exist yet)\n",
    )


def test_tuner_steps_count_queries_and_callbacks_stop(tiny_bundle, colour_task):
    shots, evaluation = colour_task
    tuner = Tuner(tiny_bundle, shots, eval_set=evaluation, config=FitConfig(budget_queries=None))
    per_step = len(tuner.optimizers[0].ask(tuner.opt_states[0]))
    seen = []
    state = tuner.run(
        callback=lambda t, i: seen.append((t.state.queries, i["fold"])) or len(seen) < 6
    )
    # the folds take turns, the one with the fewest queries first
    assert [fold for _, fold in seen] == [0, 1, 2, 3, 0, 1]
    assert [q for q, _ in seen] == [per_step * (i + 1) for i in range(6)]
    assert state.step == 6 and not state.finished
    tuner.run(budget=Budget(queries=state.queries + 2 * per_step))
    assert tuner.state.finished and tuner.state.queries == state.queries + 2 * per_step
    stopper = Tuner(tiny_bundle, shots, config=FitConfig(budget_queries=None, head="none"))
    stopper.stop()
    assert stopper.run(callback=lambda t, i: t.stop()).step == 1
    assert stopper.state.eval_accuracy is None and stopper.state.val_accuracy is not None


def test_resume_refuses_other_bundle_or_data_and_changes_nothing(
    tiny_bundle, colour_task, tmp_path, capsys
):
    shots, evaluation = colour_task
    run = tmp_path / "run"
    code, _, err = cli_in_process(
        [
            "fit",
            "--data",
            shots,
            "--eval",
            evaluation,
            "--bundle",
            tiny_bundle,
            "--budget-queries",
            200,
            "--optimizer",
            "zo",
            "--out",
            run,
        ],
        capsys,
    )
    assert code == 0, err
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    changed = tmp_path / "changed"
    make_colour_shots(changed, seed=5)
    code, _, err = cli_in_process(["fit", "--resume", run, "--data", changed], capsys)
    assert code == 1 and re.fullmatch(
        rf"Error: {re.escape(str(run))}: the run was made with other data "
        r"\(hash \w{12}, now \w{12}\); nothing was changed\. "
        r"Resume with the data it was made with, or start a new run with --out\n",
        err,
    )
    code, _, err = cli_in_process(
        ["fit", "--resume", run, "--bundle", other_bundle(tiny_bundle, tmp_path)], capsys
    )
    assert code == 1 and "the run was made with another bundle" in err and err.count("\n") == 1
    code, _, err = cli_in_process(["fit", "--resume", run, "--seed", 3], capsys)
    assert (code, err) == (
        1,
        f"Error: {run}: --seed cannot change when resuming. "
        "Resume with the run's own settings, or start a new run\n",
    )
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_save_load_continue_equals_an_uninterrupted_run(
    tiny_bundle, colour_task, tmp_path, monkeypatch
):
    shots, evaluation = colour_task
    config = FitConfig(budget_queries=240, eval_every=3, seed=4)
    straight = Tuner(tiny_bundle, shots, eval_set=evaluation, config=config, run_dir=tmp_path / "a")
    straight.run()
    straight.finish()

    halted = Tuner(tiny_bundle, shots, eval_set=evaluation, config=config, run_dir=tmp_path / "b")
    halted.run(budget=Budget(queries=100))
    reads = []
    real_read = features_module._read_bytes
    monkeypatch.setattr(features_module, "_read_bytes", lambda p: reads.append(p) or real_read(p))
    resumed = Tuner.resume(tmp_path / "b")
    images = len(resumed.datasets["shots"].samples) + len(resumed.datasets["eval"].samples)
    assert (
        len(reads) == images
    )  # each image read (and hashed) once: the features come from the cache
    assert resumed.state.queries == halted.state.queries and resumed.budget == Budget(queries=100)
    resumed.run(budget=Budget(queries=240))
    resumed.finish()
    for name in ("prompt.npz", "classifier.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    strip = [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    assert strip == [
        {k: v for k, v in json.loads(line).items() if k != "seconds"}
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]


def test_library_snippet_runs(tiny_bundle, colour_task, tmp_path, monkeypatch):
    """Every python block of docs/library.md runs as written, in a folder laid out as it says."""
    shots, _ = colour_task
    text = (Path(__file__).resolve().parent.parent / "docs" / "library.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "b16").symlink_to(Path(tiny_bundle).resolve())
    (tmp_path / "shots").symlink_to(shots)
    (tmp_path / "photos").mkdir()
    for i, file in enumerate(sorted(shots.rglob("*.png"))[::4]):
        (tmp_path / "photos" / f"{i}.png").write_bytes(file.read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/library.md", "exec"), namespace)
    assert (tmp_path / "runs" / "demo" / "classifier.npz").is_file()


def test_progress_line_metrics_log_and_curve(tmp_path, monkeypatch):
    import io

    from edge_tune.report import MetricsLog, Progress, draw_curve, read_metrics

    stream = io.StringIO()
    progress = Progress(budget_queries=1000, stream=stream)
    assert not progress.enabled  # not a terminal: quiet
    progress.update(
        queries=1,
        stage="x",
        loss=None,
        train_accuracy=None,
        val_accuracy=None,
        queries_per_second=1.0,
        elapsed=1.0,
    )
    assert stream.getvalue() == ""
    line = progress.line(
        queries=250,
        stage="cma",
        loss=0.6931,
        train_accuracy=0.5,
        val_accuracy=0.375,
        queries_per_second=50.0,
        elapsed=5.0,
    )
    assert line == (
        "[#####...............]  queries 250/1000  cma  loss 0.6931  train 50.0%  "
        "val 37.5%  50.0 q/s  ETA 15s"
    )
    # an 80-column terminal: one line of at most 79 characters, val / q/s / ETA still there
    # (the full line is 104 characters: each update used to leave a wrapped copy behind)
    monkeypatch.setenv("COLUMNS", "80")
    shown = io.StringIO()
    drawn = Progress(budget_queries=1000, stream=shown, enabled=True, min_interval=0)
    fields = dict(stage="sa-cma", loss=0.6931, train_accuracy=0.5, val_accuracy=0.375)
    for queries in (20, 250, 1000):
        drawn.update(**fields, queries=queries, queries_per_second=50.0, elapsed=queries / 50)
    frames = shown.getvalue().split("\r")[1:]
    assert len(frames) == 3 and all(len(frame) <= 79 and "\n" not in frame for frame in frames)
    assert frames[1].rstrip() == (
        "queries 250/1000  sa-cma  loss 0.6931  val 37.5%  50.0 q/s  ETA 15s"
    )
    assert drawn.line(**fields, queries=250, queries_per_second=50.0, elapsed=5.0, width=50) == (
        "queries 250/1000  val 37.5%  50.0 q/s  ETA 15s"
    )

    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"queries": 0, "train_accuracy": 0.25, "val_accuracy": 0.25, "train_loss": 1.4})
    offset = log.offset
    log.append({"queries": 40, "train_accuracy": 0.5, "val_accuracy": 0.5, "train_loss": 1.1})
    with open(tmp_path / "metrics.jsonl", "a") as torn:  # a kill in the middle of a line
        torn.write('{"queries": 8')
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2
    MetricsLog(tmp_path / "metrics.jsonl", offset=offset)  # resuming cuts back to the checkpoint
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert records == [
        {"queries": 0, "train_accuracy": 0.25, "val_accuracy": 0.25, "train_loss": 1.4}
    ]
    records.append(
        {"queries": 80, "train_accuracy": 0.75, "val_accuracy": 0.625, "train_loss": 0.8}
    )
    draw_curve(records, tmp_path / "curve.png", zero_shot=0.25)
    with Image.open(tmp_path / "curve.png") as curve:
        pixels = np.asarray(curve.convert("RGB"))
    assert (pixels == (214, 39, 40)).all(axis=2).sum() > 50  # the validation line was drawn
    assert (pixels == (120, 120, 120)).all(axis=2).sum() > 50  # and the zero-shot line


def test_bundle_comes_from_the_flag_then_the_environment_then_the_shipped_one(
    tmp_path, monkeypatch
):
    import edge_tune.fit as fit_module
    from edge_tune.fit import resolve_bundle

    monkeypatch.setenv("EDGE_TUNE_BUNDLE", str(tmp_path / "env"))
    assert resolve_bundle(tmp_path / "flag") == tmp_path / "flag"
    assert resolve_bundle(None) == tmp_path / "env"
    monkeypatch.delenv("EDGE_TUNE_BUNDLE")
    monkeypatch.setattr(fit_module, "DEFAULT_BUNDLE", tmp_path / "shipped")
    with pytest.raises(EdgeTuneError) as err:
        resolve_bundle(None)
    assert str(err.value) == (
        f"{tmp_path / 'shipped'}: no bundle given and the shipped mini-world bundle is not there. "
        "Pass --bundle DIR (or set EDGE_TUNE_BUNDLE)"
    )


def test_a_resumed_run_uses_the_settings_it_recorded_not_todays_presets(
    tiny_bundle, colour_task, tmp_path, monkeypatch
):
    """Editing a preset after a run started changes nothing of that run when it resumes."""
    from edge_tune.optim import presets

    shots, _ = colour_task
    config = FitConfig(budget_queries=240, seed=2, head="none")
    straight = Tuner(tiny_bundle, shots, config=config, run_dir=tmp_path / "a")
    straight.run()
    straight.finish()
    halted = Tuner(tiny_bundle, shots, config=config, run_dir=tmp_path / "b")
    halted.run(budget=Budget(queries=80))
    recorded = json.loads(next((tmp_path / "b" / "state").glob("ckpt-*/tuner.json")).read_text())
    assert (
        recorded["optimizers"][0]["config"]["step_size"]
        == presets.PRESET_VALUES["edge"]["sharpzo"]["step_size"]
    )
    edited = {**presets.PRESET_VALUES["edge"]["sharpzo"], "step_size": 3.0}
    monkeypatch.setitem(presets.PRESET_VALUES["edge"], "sharpzo", edited)
    resumed = Tuner.resume(tmp_path / "b", budget_queries=240)
    assert all(opt.config.step_size != 3.0 for opt in resumed.optimizers)
    resumed.run()
    resumed.finish()
    for name in ("prompt.npz", "classifier.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    result = json.loads((tmp_path / "b" / "result.json").read_text())
    assert result["optimizers"][0]["step_size"] == recorded["optimizers"][0]["config"]["step_size"]


def test_one_photo_per_class_fits_and_says_what_the_folds_cannot_see(tiny_bundle, tmp_path, capsys):
    shots = make_colour_shots(tmp_path / "one", per_class=1)
    code, out, err = cli_in_process(
        [
            "fit",
            "--data",
            shots,
            "--bundle",
            tiny_bundle,
            "--budget-queries",
            80,
            "--out",
            tmp_path / "run",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    assert err == (
        "4 class(es) with one photo ('blue', 'green', 'red', ...): cross-validation cannot see "
        "what a head or a tuned prompt gains for them, so fit leans to zero-shot; add a second "
        "photo\nbudget: 80 queries\n"
    )
    result = json.loads(out)
    assert result["data"]["folds"] == 4 and result["data"]["train_images"] == 4
    rows = {row["name"]: row for row in result["candidates"]}
    assert rows[result["shipped"]]["cv_loss"] <= rows["zero-shot"]["cv_loss"]


def test_fit_and_eval_read_a_dassl_split(tiny_bundle, tmp_path, run_cli):
    """`--split split_zhou_X.json --data IMAGE_ROOT`: shots drawn from its train part as Dassl does,
    the report (and `eval --split`) on its test part."""
    from edge_tune.data import load_dassl_split

    images = make_colour_shots(tmp_path / "images", per_class=10, seed=2)
    rows = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(sorted(p.name for p in images.iterdir())):
        files = sorted((images / folder).glob("*.png"))
        for part, chosen in (("train", files[:6]), ("val", files[6:8]), ("test", files[8:])):
            rows[part] += [[f"{folder}/{f.name}", label, folder] for f in chosen]
    split = tmp_path / "split_zhou_Colours.json"
    split.write_text(json.dumps(rows))
    env = {"EDGE_TUNE_CACHE": str(tmp_path / "cache")}
    done = run_cli(
        "fit",
        "--data",
        images,
        "--split",
        split,
        "--shots",
        4,
        "--bundle",
        tiny_bundle,
        "--budget-queries",
        40,
        "--folds",
        2,
        "--head",
        "ncm",
        "--threads",
        1,
        "--out",
        tmp_path / "run",
        "--json",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    train, _, test = load_dassl_split(split, images, shots=4, seed=1)
    assert result["data"]["train_images"] == len(train.samples) == 4 * len(train.classnames)
    assert result["data"]["eval_images"] == len(test.samples) == 2 * len(test.classnames)
    assert result["accuracy_on"] == "eval set"
    shipped = next(row for row in result["candidates"] if row["name"] == result["shipped"])
    scored = run_cli(
        "eval",
        "--bundle",
        tiny_bundle,
        "--data",
        images,
        "--split",
        split,
        "--run",
        tmp_path / "run",
        "--threads",
        1,
        "--json",
        env=env,
    )
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(shipped["eval_accuracy"])
    # the split file alone as --data: its images are found beside it (CoOp's layout)
    beside = run_cli(
        "eval", "--bundle", tiny_bundle, "--data", split, "--run", tmp_path / "run",
        "--threads", 1, "--json", env=env,
    )  # fmt: skip
    assert beside.returncode == 0, beside.stderr
    assert json.loads(beside.stdout)["accuracy"] == json.loads(scored.stdout)["accuracy"]
    alone = tmp_path / "elsewhere" / split.name
    alone.parent.mkdir()
    alone.write_text(split.read_text())
    refused = run_cli("fit", "--data", alone, "--bundle", tiny_bundle, env=env)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"Error: {alone}: cannot find the split's images beside it (looked for "
        f"'{rows['train'][0][0]}' in {alone.parent} and its sub-folders). Name the image "
        "folder: --data IMAGE_ROOT --split FILE"
    )


def test_curve_marks_the_switch_zooms_the_accuracy_axis_and_has_gridlines(tmp_path):
    from edge_tune.report import _COLOURS, accuracy_range, draw_curve, stage_changes

    records = [
        {
            "queries": q,
            "stage": stage,
            "train_accuracy": a + 0.05,
            "val_accuracy": a,
            "train_loss": 1.5 - a,
        }
        for q, stage, a in [
            (0, "sa-cma", 0.60),
            (40, "sa-cma", 0.62),
            (80, "sparse-zo", 0.66),
            (120, "sparse-zo", 0.68),
        ]
    ]
    assert stage_changes(records) == [(80.0, "sparse-zo")]
    assert accuracy_range([0.60, 0.73, 0.58]) == pytest.approx((0.565, 0.745))
    assert accuracy_range([0.5, 0.52]) == pytest.approx((0.46, 0.56))  # at least 0.1 wide
    assert accuracy_range([0.0, 1.0]) == (0.0, 1.0) and accuracy_range([]) == (0.0, 1.0)
    draw_curve(records, tmp_path / "curve.png", zero_shot=0.58)
    with Image.open(tmp_path / "curve.png") as curve:
        pixels = np.asarray(curve.convert("RGB"))

    def where(colour):
        return np.nonzero((pixels == colour).all(axis=2))

    rows, columns = where(_COLOURS["stage"])
    assert len(columns) > 50 and np.ptp(columns[rows > 100]) <= 3  # one dashed vertical marker
    assert len(where(_COLOURS["grid"])[0]) > 500
    val_rows = where(_COLOURS["val"])[0]
    val_rows = val_rows[val_rows < 300]  # the accuracy panel (the legend and final value too)
    # 0.60 -> 0.68 of an axis of 0.565..0.745 spans ~44 % of the 170-px panel, not 8 % of 0..1
    assert np.ptp(val_rows) > 0.3 * 170
