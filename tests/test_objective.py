"""The batched forward-only objective on the real tiny bundle's text graph (text.onnx)."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tune.encoders import PlainEncoder
from edge_tune.errors import DataError
from edge_tune.objective import PromptObjective, score, template_class_features
from edge_tune.prompts import PromptSpace
from edge_tune.runplan import DEFAULT_MEMORY_CAP, bytes_per_prompt, chunk_plan, rows_per_run

CLASSES = ["dog", "tabby cat", "school bus", "sea lion", "red fox"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from edge_tune.bundle import open_bundle

    return open_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def session(bundle):
    return bundle.text_session("cpu", 1)


@pytest.fixture(scope="module")
def space(bundle):
    return PromptSpace.build(bundle, CLASSES, seed=0)


@pytest.fixture(scope="module")
def data(bundle):
    """Unit 'image' features with labels, 6 per class."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((30, bundle.projection_dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features, np.arange(30) % len(CLASSES)


def reference_loss(features, labels, class_features, scale):
    """Cross-entropy written out plainly, one image at a time."""
    losses, correct = [], []
    for x, y in zip(features.astype(np.float64), labels, strict=True):
        logits = scale * (class_features.astype(np.float64) @ x)
        losses.append(np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[y])
        correct.append(int(np.argmax(logits)) == y)
    return float(np.mean(losses)), float(np.mean(correct))


def test_batched_equals_one_by_one(session, space, data, bundle):
    W = np.random.default_rng(1).standard_normal((7, space.dim)) * 0.5
    objective = PromptObjective(PlainEncoder(session, space), *data, logit_scale=bundle.logit_scale)
    batched = objective(W)
    single = np.array([objective(w[None])[0] for w in W])
    # the features are the same bits; the float64 loss GEMM over 7 candidates or 1 may round apart
    np.testing.assert_allclose(batched, single, rtol=1e-13, atol=0)
    features = objective.encoder.features(W)
    np.testing.assert_array_equal(
        np.concatenate([objective.encoder.features(w[None]) for w in W]), features
    )
    small = PlainEncoder(session, space, max_prompts=8)
    small_runs = PromptObjective(small, *data, logit_scale=bundle.logit_scale)
    np.testing.assert_array_equal(small.features(W), features)
    np.testing.assert_array_equal(small_runs(W), batched)
    plans = small.plan(len(W))  # each length group's 7·k prompts in equal runs of at most 8
    assert all(p.prompts <= 8 and p.prompts * p.runs >= 7 * len(p.group.classes) for p in plans)
    assert small.text_runs == 2 * sum(p.runs for p in plans)  # two calls so far
    assert small.prompts_run == 2 * sum(p.prompts * p.runs for p in plans)
    assert np.all(np.isfinite(batched)) and np.ptp(batched) > 1e-3  # candidates really differ


def test_loss_and_accuracy_match_the_definition(session, space, data, bundle):
    w = np.random.default_rng(2).standard_normal(space.dim)
    objective = PromptObjective(PlainEncoder(session, space), *data, logit_scale=bundle.logit_scale)
    losses, accuracies = objective.evaluate(w[None])
    loss, accuracy = reference_loss(*data, objective.class_features(w), bundle.logit_scale)
    assert losses[0] == pytest.approx(loss, rel=1e-12) and accuracies[0] == accuracy


def test_truncated_equals_untruncated(session, space, data, bundle):
    W = np.random.default_rng(3).standard_normal((3, space.dim))
    short = PromptObjective(PlainEncoder(session, space), *data, logit_scale=bundle.logit_scale)
    full = PromptObjective(
        PlainEncoder(session, space.padded(space.context_length)),
        *data,
        logit_scale=bundle.logit_scale,
    )
    assert space.length < space.context_length == 77
    np.testing.assert_allclose(
        short.encoder.features(W), full.encoder.features(W), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(short(W), full(W), rtol=1e-6)


def test_query_counter(session, space, data, bundle):
    objective = PromptObjective(PlainEncoder(session, space), *data, logit_scale=bundle.logit_scale)
    objective(np.zeros((4, space.dim)))
    objective.evaluate(np.zeros((3, space.dim)))
    objective(np.zeros(space.dim))
    objective.class_features(np.zeros(space.dim))
    assert objective.queries == 8


def test_zero_shot_prompt_classifies_its_own_class_features(session, space, bundle):
    """Images whose features lie near a class's zero-shot text feature are classified as it."""
    text = template_class_features(bundle, session, CLASSES, "a photo of a {}.")
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(len(CLASSES)), 4)
    gaps = np.linalg.norm(text[:, None] - text[None], axis=2)
    radius = 0.25 * gaps[~np.eye(len(CLASSES), dtype=bool)].min()  # < half the nearest other class
    noise = rng.standard_normal((len(labels), text.shape[1]))
    noisy = text[labels] + radius * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    noisy = (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)
    objective = PromptObjective(
        PlainEncoder(session, space), noisy, labels, logit_scale=bundle.logit_scale
    )
    np.testing.assert_allclose(objective.class_features(np.zeros(space.dim)), text, atol=1e-6)
    losses, accuracies = objective.evaluate(np.zeros((1, space.dim)))
    chance = reference_loss(noisy, labels, np.zeros_like(text), 1.0)[0]  # uniform logits: ln K
    assert accuracies[0] == 1.0 and losses[0] < chance == pytest.approx(np.log(len(CLASSES)))
    shuffled = PromptObjective(
        PlainEncoder(session, space),
        noisy,
        (labels + 1) % len(CLASSES),
        logit_scale=bundle.logit_scale,
    )
    assert shuffled.evaluate(np.zeros((1, space.dim)))[1][0] == 0.0


def test_chunking_is_a_pure_function_of_shapes():
    assert chunk_plan(400, 406) == (400, 1)
    assert chunk_plan(401, 400) == (201, 2)
    assert chunk_plan(10, 3) == (3, 4)
    assert rows_per_run(20, 512) == DEFAULT_MEMORY_CAP // bytes_per_prompt(20, 512) == 17
    assert rows_per_run(77, 512, memory_cap=1) == 1
    assert rows_per_run(10, 64, max_prompts=50) == 50


def test_score_handles_a_batch_of_class_features(data):
    features, labels = data
    T = np.random.default_rng(5).standard_normal((3, len(CLASSES), features.shape[1]))
    losses, accuracies = score(features, labels, T, 10.0)
    for i in range(3):
        assert (losses[i], accuracies[i]) == pytest.approx(
            reference_loss(features, labels, T[i], 10.0)
        )
    # a memory cap of one candidate's logits splits the GEMM per candidate, same results
    one = len(features) * len(CLASSES) * 8
    split = score(features, labels, T, 10.0, memory_cap=one)
    np.testing.assert_allclose(split[0], losses, rtol=1e-12)
    np.testing.assert_array_equal(split[1], accuracies)
    # the groups on worker threads (as PromptObjective runs them): the same bits as in turn
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        threaded = score(features, labels, T, 10.0, memory_cap=one, map_groups=pool.map)
    np.testing.assert_array_equal(threaded[0], split[0])
    np.testing.assert_array_equal(threaded[1], split[1])


def test_bad_labels_and_bad_candidates(session, space, data):
    features, labels = data
    with pytest.raises(DataError, match=r"labels run 0\.\.5 but the prompt space has 5 classes"):
        PromptObjective(PlainEncoder(session, space), features, np.arange(30) % 6, logit_scale=1.0)
    with pytest.raises(DataError, match=r"features \[30, \d+\] and labels \[29\] do not match"):
        PromptObjective(PlainEncoder(session, space), features, labels[:29], logit_scale=1.0)
    objective = PromptObjective(PlainEncoder(session, space), features, labels, logit_scale=1.0)
    with pytest.raises(ValueError, match=r"candidates must have shape \[n, \d+\], got \[2, 3\]"):
        objective(np.zeros((2, 3)))
