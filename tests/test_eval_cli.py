"""`edge-tune eval`: zero-shot and tuned-prompt accuracy on a folder, against a plain reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_tune.cli import main
from edge_tune.encoders import PlainEncoder
from edge_tune.objective import PromptObjective
from edge_tune.preprocess import preprocess_image
from edge_tune.prompts import PromptSpace

skimage_data = pytest.importorskip("skimage.data")
PHOTOS = Path(skimage_data.__file__).parent
LAYOUT = {
    "cat": ["chelsea.png", "coffee.png"],
    "space_rocket": ["rocket.jpg", "astronaut.png"],
    "street-scene": ["camera.png", "motorcycle_left.png", "page.png"],
}
CLASSES = ["cat", "space rocket", "street scene"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from edge_tune.bundle import open_bundle

    return open_bundle(tiny_bundle)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    for folder, names in LAYOUT.items():
        (root / folder).mkdir(parents=True)
        for name in names:
            (root / folder / name).write_bytes((PHOTOS / name).read_bytes())
    (root / "cat" / "notes.txt").write_text("not a photo")
    return root


def run(args, capsys) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reference_features(bundle, root):
    """Image features and labels computed directly: each file through the image graph."""
    session = bundle.image_session("cpu", 1)
    paths = [
        (root / f / n, label)
        for label, (f, names) in enumerate(LAYOUT.items())
        for n in sorted(names)
    ]
    features = np.concatenate(
        [
            session.run({"pixel_values": preprocess_image(p, bundle.preprocess)[None]})
            for p, _ in paths
        ]
    )
    return features.astype(np.float64), np.array([label for _, label in paths])


def reference_zero_shot(bundle, features, labels, template):
    table = np.asarray(bundle.token_embedding())
    tokenizer, session = bundle.tokenizer(), bundle.text_session("cpu", 1)
    text = []
    for name in CLASSES:
        ids = list(tokenizer.encode(template.format(name)))
        text.append(
            session.run(
                {
                    "prompt_embeds": table[ids][None].astype(np.float32),
                    "eot_index": np.array([len(ids) - 1], dtype=np.int64),
                }
            )[0]
        )
    predicted = np.argmax(features @ np.array(text, dtype=np.float64).T, axis=1)
    return float(np.mean(predicted == labels))


def test_zero_shot_accuracy_matches_reference(bundle, data_dir, tmp_path, capsys):
    template = "a photo of a {}."
    code, out, err = run(
        [
            "eval",
            "--bundle",
            bundle.path,
            "--data",
            data_dir,
            "--json",
            "--cache-dir",
            tmp_path / "cache",
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    features, labels = reference_features(bundle, data_dir)
    assert result["accuracy"] == reference_zero_shot(bundle, features, labels, template)
    assert (result["images"], result["classes"], result["template"]) == (7, 3, template)
    assert sorted(result["per_class_accuracy"]) == sorted(CLASSES)
    assert "skipped 1 non-image file (notes.txt)" in err
    other = "a blurry photo of the {}, seen from far away."
    code, out, _ = run(
        [
            "eval",
            "--bundle",
            bundle.path,
            "--data",
            data_dir,
            "--template",
            other,
            "--cache-dir",
            tmp_path / "cache",
        ],
        capsys,
    )
    expected = reference_zero_shot(bundle, features, labels, other)
    assert code == 0 and out.startswith(
        f"accuracy {100 * expected:.1f}% ({round(expected * 7)}/7 images, "
        f"3 classes, template {other!r}); mean cross-entropy "
    )


def test_tuned_prompt_accuracy_matches_the_objective(bundle, data_dir, tmp_path, capsys):
    space = PromptSpace.build(bundle, CLASSES, seed=5)
    w = np.random.default_rng(0).standard_normal(space.dim)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    np.savez(
        run_dir / "prompt.npz",
        w=w,
        spec=np.array(json.dumps(space.spec())),
        classnames=np.array(CLASSES),
        bundle_hash=np.array(bundle.bundle_hash),
    )
    code, out, err = run(
        [
            "eval",
            "--bundle",
            bundle.path,
            "--data",
            data_dir,
            "--prompt",
            run_dir,
            "--json",
            "--cache-dir",
            tmp_path / "cache",
        ],
        capsys,
    )
    assert code == 0, err
    features, labels = reference_features(bundle, data_dir)
    objective = PromptObjective(
        PlainEncoder(bundle.text_session("cpu", 1), space),
        features,
        labels,
        logit_scale=bundle.logit_scale,
    )
    losses, accuracies = objective.evaluate(w[None])
    result = json.loads(out)
    assert result["accuracy"] == accuracies[0]
    assert result["loss"] == pytest.approx(losses[0], rel=1e-5)


def test_errors_are_one_line(bundle, data_dir, tmp_path, capsys):
    code, out, err = run(["eval", "--bundle", bundle.path, "--data", tmp_path / "nowhere"], capsys)
    assert code == 1 and err == (
        f"Error: {tmp_path / 'nowhere'}: data folder does not exist. Pass a folder "
        "holding one sub-folder of photos per class\n"
    )
    space = PromptSpace.build(bundle, CLASSES)
    foreign = tmp_path / "prompt.npz"
    np.savez(
        foreign,
        w=np.zeros(space.dim),
        spec=np.array(json.dumps(space.spec())),
        classnames=np.array(CLASSES),
        bundle_hash=np.array("0" * 64),
    )
    code, _, err = run(
        ["eval", "--bundle", bundle.path, "--data", data_dir, "--prompt", foreign], capsys
    )
    assert code == 1 and err.splitlines()[-1] == (
        f"Error: {foreign}: prompt was tuned with bundle 000000000000, not this one "
        f"({bundle.bundle_hash[:12]}). Pass the --bundle the prompt was tuned with"
    )
    code, _, err = run(
        ["eval", "--bundle", bundle.path, "--data", data_dir, "--template", "no slot"], capsys
    )
    assert code == 1 and "template 'no slot' must contain '{}' exactly once" in err


def reference_text(bundle, template):
    table = np.asarray(bundle.token_embedding())
    tokenizer, session = bundle.tokenizer(), bundle.text_session("cpu", 1)
    rows = []
    for name in CLASSES:
        ids = list(tokenizer.encode(template.format(name)))
        eot = np.array([len(ids) - 1], dtype=np.int64)
        rows.append(
            session.run({"prompt_embeds": table[ids][None].astype(np.float32), "eot_index": eot})[0]
        )
    return np.array(rows, dtype=np.float64)


TEMPLATES = ["a photo of a {}.", "a sketch of the {}.", "itap of a {}."]


def test_repeated_templates_are_an_ensemble_of_normalised_features(
    bundle, data_dir, tmp_path, capsys
):
    # CLIP's recipe: each template's unit features, averaged per class, normalised again
    texts = [reference_text(bundle, template) for template in TEMPLATES]
    mean = sum(t / np.linalg.norm(t, axis=1, keepdims=True) for t in texts)
    text = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    features, labels = reference_features(bundle, data_dir)
    logits = bundle.logit_scale * features @ text.T
    expected = float(np.mean(np.argmax(logits, axis=1) == labels))
    args = ["eval", "--bundle", bundle.path, "--data", data_dir, "--cache-dir", tmp_path / "c"]
    for template in TEMPLATES:
        args += ["--template", template]
    code, out, err = run([*args, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["template"] == TEMPLATES and result["accuracy"] == expected
    shifted = logits - logits.max(axis=1, keepdims=True)
    loss = float(np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(7), labels]))
    assert abs(result["loss"] - loss) < 1e-5
    code, out, _ = run(args, capsys)
    assert code == 0 and "3 classes, ensemble of 3 templates); mean cross-entropy" in out


def test_zero_shot_predict_without_a_fit_agrees_with_eval(bundle, data_dir, tmp_path, capsys):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("# the classes, in any order\ncat\n\nspace rocket\nstreet scene\n")
    for labels in (",".join(CLASSES), str(labels_file)):
        args = ["predict", "--bundle", bundle.path, "--labels", labels, data_dir, "--json"]
        for template in TEMPLATES[:2]:
            args += ["--template", template]
        code, out, err = run(args, capsys)
        assert code == 0, err
        rows = json.loads(out)["predictions"]
        folder_class = {folder: CLASSES[i] for i, folder in enumerate(LAYOUT)}
        correct = sum(row["label"] == folder_class[Path(row["image"]).parent.name] for row in rows)
        args = ["eval", "--bundle", bundle.path, "--data", data_dir, "--json"]
        code, out, _ = run([*args, "--template", TEMPLATES[0], "--template", TEMPLATES[1]], capsys)
        assert len(rows) == 7 and correct == json.loads(out)["correct"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--labels", "cat"],
            "zero-shot needs two or more distinct, non-empty labels, got ['cat']",
        ),
        (["--labels", "cat,,dog"], "zero-shot needs two or more distinct, non-empty labels"),
        (["--labels", "cat,cat"], "zero-shot needs two or more distinct, non-empty labels"),
        (["--labels", "missing/labels.txt"], "labels.txt: no such labels file. Check the path"),
        (["--labels", "cat,dog", "--template", "a {} of {}"], "must contain '{}' exactly once"),
        (["--template", "a {}."], "--template goes with --labels: a run carries its own prompt"),
    ],
)
def test_zero_shot_predict_refuses_bad_labels_in_one_line(bundle, data_dir, extra, message, capsys):
    code, out, err = run(["predict", "--bundle", bundle.path, *extra, data_dir / "cat"], capsys)
    assert code != 0 and message in err and "Traceback" not in err and out == ""
