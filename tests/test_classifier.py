"""The classifier: agrees with the objective, round-trips exactly, refuses a foreign bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fit_support import make_colour_shots, other_bundle

from edge_tune.classifier import Classifier, collect_images
from edge_tune.errors import BundleError, CheckpointError
from edge_tune.fit import FitConfig, Tuner


@pytest.fixture(scope="module")
def tuned(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    shots, evaluation = make_colour_shots(root / "shots"), make_colour_shots(root / "eval", seed=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGE_TUNE_CACHE", str(root / "cache"))
        config = FitConfig(optimizer="zo", budget_queries=200)
        tuner = Tuner(tiny_bundle, shots, eval_set=evaluation, config=config, run_dir=root / "run")
        tuner.run()
        tuner.finish()
    return tuner, evaluation, root / "run"


def test_predictions_agree_with_the_run_on_the_same_images(tuned):
    tuner, _, run = tuned
    result = json.loads((run / "result.json").read_text())
    paths = [s.path for s in tuner.datasets["eval"].samples]
    labels = np.array([s.label for s in tuner.datasets["eval"].samples])
    classifier = tuner.classifier()
    assert classifier.name == result["shipped"]
    predictions = classifier.predict(paths)
    predicted = np.array([p.index for p in predictions])
    assert np.mean(predicted == labels) == result["tuned_accuracy"]
    assert [p.label for p in predictions] == [tuner.classnames[i] for i in predicted]
    # and the image graph run here gives the cached features the run scored
    features = classifier.image_features(paths)
    assert np.allclose(features, tuner.eval_xy[0], atol=1e-6)


@pytest.mark.parametrize("head", ["none", "ncm", "gda", "probe", "tip"])
def test_every_head_round_trips_through_classifier_npz(tuned, head, tmp_path):
    """Each shipped kind (text alone, text + each head) predicts the same after save and load."""
    tuner, _, _ = tuned
    candidates, prompt_features = tuner.candidates()
    blend = next(
        b for b in candidates if b.text == "prompt" and b.head == (None if head == "none" else head)
    )
    in_memory = tuner.classifier(blend, prompt_features)
    in_memory.save(tmp_path / "classifier.npz")
    loaded = Classifier.load(tmp_path / "classifier.npz", bundle=tuner.bundle)
    assert loaded.name == blend.name and loaded.head == blend.head
    X = tuner.eval_xy[0]
    assert np.array_equal(loaded.logits(X), in_memory.logits(X))
    text = tuner.scale * X @ np.asarray(prompt_features, np.float32).astype(np.float64).T
    head_logits = None
    if blend.head:
        from edge_tune.heads import apply_head, fit_head

        arrays = fit_head(blend.head, tuner.X, tuner.y, len(tuner.classnames), blend.hyper)
        head_logits = apply_head(blend.head, arrays, X)
    assert np.allclose(loaded.logits(X), blend.logits(text, head_logits))


def test_saved_classifier_loads_and_predicts_the_same(tuned):
    tuner, evaluation, run = tuned
    in_memory = tuner.classifier()
    loaded = Classifier.load(run)  # the bundle comes from result.json
    assert loaded.classnames == in_memory.classnames
    assert np.array_equal(loaded.class_features, in_memory.class_features)
    assert (
        loaded.logit_scale == in_memory.logit_scale
        and loaded.bundle_hash == tuner.bundle.bundle_hash
    )
    images = collect_images([evaluation])
    assert np.array_equal(loaded.probabilities(images), in_memory.probabilities(images))
    top = loaded.predict(images[:1], top_k=2)[0]
    assert len(top.top_k) == 2 and top.top_k[0] == (top.label, top.probability)
    assert top.top_k[0][1] >= top.top_k[1][1]


def test_classifier_refuses_another_bundle(tuned, tiny_bundle, tmp_path):
    tuner, _, run = tuned
    other = other_bundle(tiny_bundle, tmp_path)
    with pytest.raises(BundleError) as err:
        Classifier.load(run, bundle=other)
    made_for = tuner.bundle.bundle_hash[:12]
    assert str(err.value).startswith(
        f"{other}: this classifier was made for another bundle (hash {made_for}, this one is "
    )
    assert str(err.value).endswith("). Pass the bundle the run was tuned with (--bundle)")


def test_classifier_without_result_or_file_is_a_clear_error(tuned, tmp_path):
    _, _, run = tuned
    (tmp_path / "classifier.npz").write_bytes((run / "classifier.npz").read_bytes())
    with pytest.raises(BundleError) as err:
        Classifier.load(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'result.json'}: cannot tell which bundle this classifier "
        "needs. Pass --bundle with the bundle the run was tuned with"
    )
    with pytest.raises(CheckpointError) as err:
        Classifier.load(tmp_path / "nothing")
    assert str(err.value) == (
        f"{tmp_path / 'nothing'}: no classifier.npz here. Pass the run directory "
        "of a finished `edge-tune fit`"
    )
