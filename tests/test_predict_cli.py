"""`edge-tune predict`: agrees with the run's accuracy, skips non-images, refuses other bundles."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from fit_support import cli_in_process, make_colour_shots, other_bundle


@pytest.fixture(scope="module")
def run_and_eval(tiny_bundle, tmp_path_factory):
    from edge_tune.cli import main

    root = tmp_path_factory.mktemp("predict")
    shots, evaluation = make_colour_shots(root / "shots"), make_colour_shots(root / "eval", seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TUNE_CACHE", str(root / "cache"))
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
                "200",
                "--optimizer",
                "zo",
                "--out",
                str(root / "run"),
            ]
        )
    return root / "run", evaluation


def test_predict_agrees_with_the_runs_accuracy_on_the_same_images(run_and_eval, capsys):
    run, evaluation = run_and_eval
    code, out, err = cli_in_process(["predict", run, evaluation, "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["predictions"]
    assert len(rows) == 32 and all(len(row["top_k"]) == 3 for row in rows)
    correct = sum(row["label"] == row["image"].split("/")[-2] for row in rows)
    result = json.loads((run / "result.json").read_text())
    assert correct / len(rows) == result["tuned_accuracy"]


def test_predict_prints_class_probability_and_skips_non_images(run_and_eval, tmp_path, capsys):
    run, evaluation = run_and_eval
    folder = tmp_path / "mixed"
    shutil.copytree(evaluation / "red", folder)
    (folder / "notes.txt").write_text("not a photo")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    code, out, err = cli_in_process(["predict", run, folder, "--top-k", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 8
    assert all(
        re.fullmatch(
            rf"{re.escape(str(folder))}/\d\.png: \w+ \(\d+\.\d%\)   top 2: "
            r"\w+ \d+\.\d%, \w+ \d+\.\d%",
            line,
        )
        for line in lines
    ), lines
    skipped = err.splitlines()
    assert len(skipped) == 2
    assert skipped[0].startswith(f"skipped {folder / 'broken.png'}: ")
    assert skipped[1] == f"skipped {folder / 'notes.txt'}: not an image (extension '.txt')"


def test_predict_refuses_another_bundle_and_empty_input(
    run_and_eval, tiny_bundle, tmp_path, capsys
):
    run, evaluation = run_and_eval
    other = other_bundle(tiny_bundle, tmp_path)
    code, out, err = cli_in_process(["predict", run, evaluation, "--bundle", other], capsys)
    assert code == 1 and out == ""
    assert re.fullmatch(
        rf"Error: {re.escape(str(other))}: this classifier was made for another bundle "
        r"\(hash \w{12}, this one is \w{12}\)\. Pass the bundle the run was tuned with "
        r"\(--bundle\)\n",
        err,
    ), err
    (tmp_path / "text.txt").write_text("hello")
    code, out, err = cli_in_process(["predict", run, tmp_path / "text.txt"], capsys)
    assert code == 1
    assert err.splitlines()[-1] == (
        "Error: no images to classify among the given paths. "
        "Pass image files (jpg, png, webp, bmp) or folders holding them"
    )


def test_predict_holds_one_batch_of_pixels_not_the_folder(run_and_eval, monkeypatch):
    # 2,000 images held 1.2 GB of pixels before the first inference when all were decoded first
    import edge_tune.preprocess as preprocess
    from edge_tune.classifier import BATCH_SIZE, Classifier, collect_images

    run, evaluation = run_and_eval
    classifier = Classifier.load(run)
    events = []
    decode, graph = preprocess.preprocess_image, classifier._run_image_graph
    monkeypatch.setattr(preprocess, "preprocess_image", lambda *a: events.append(".") or decode(*a))
    monkeypatch.setattr(classifier, "_run_image_graph", lambda p: events.append("|") or graph(p))
    predictions, _ = classifier.predict_files(collect_images([evaluation]))
    assert len(predictions) == 32 and events.count("|") == 32 // BATCH_SIZE
    assert max(len(chunk) for chunk in "".join(events).split("|")) == BATCH_SIZE
