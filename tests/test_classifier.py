"""The classifier: agrees with the objective, round-trips exactly, refuses a foreign bundle."""

from __future__ import annotations

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


def test_predictions_agree_with_the_objective_on_the_same_images(tuned):
    tuner, evaluation, _ = tuned
    w, _ = tuner.selected_params()
    _, accuracy = tuner.val_objective.evaluate(w[None])
    paths = [s.path for s in tuner.datasets["eval"].samples]
    labels = np.array([s.label for s in tuner.datasets["eval"].samples])
    predictions = tuner.classifier().predict(paths)
    predicted = np.array([p.index for p in predictions])
    assert np.mean(predicted == labels) == accuracy[0]
    assert [p.label for p in predictions] == [tuner.classnames[i] for i in predicted]
    # and the image graph run here gives the cached features the objective used
    features = tuner.classifier().image_features(paths)
    assert np.allclose(features, tuner.val_objective.features, atol=1e-6)


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
        f"{other}: this classifier was made for another bundle " f"(hash {made_for}, this one is "
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
