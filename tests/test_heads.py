"""Heads on cached features and the choices made on the shots: each against its closed form or its
optimality condition, and the selection rules that make "never below zero-shot on the folds" hold."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tune import select
from edge_tune.heads import HEAD_NAMES, HEADS, apply_head, fit_head, probe


def blobs(n_per_class=16, K=4, P=12, spread=0.35, seed=0):
    """K Gaussian clusters on the unit sphere (like L2-normalised image features)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, P))
    X = np.concatenate([c + spread * rng.standard_normal((n_per_class, P)) for c in centres])
    y = np.repeat(np.arange(K), n_per_class)
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_every_head_separates_separable_classes_on_unseen_samples(name):
    X, y = blobs(seed=1)
    Xt, yt = blobs(seed=1, n_per_class=50)[0][::-1], blobs(seed=1, n_per_class=50)[1][::-1]
    _, grid = HEADS[name]
    arrays = fit_head(name, X, y, 4, grid[len(grid) // 2])
    assert np.mean(np.argmax(apply_head(name, arrays, Xt), axis=1) == yt) >= 0.95
    assert all(isinstance(v, np.ndarray) for v in arrays.values())  # storable without pickle


def test_nearest_class_mean_is_cosine_to_the_normalised_class_means():
    X, y = blobs()
    arrays = fit_head("ncm", X, y, 4, {})
    means = np.stack([X[y == k].mean(0) for k in range(4)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    assert np.allclose(apply_head("ncm", arrays, X), X @ means.T)


def test_gda_is_the_linear_rule_of_shared_shrunk_covariance():
    X, y = blobs()
    s = 0.3
    arrays = fit_head("gda", X, y, 4, {"shrinkage": s})
    means = np.stack([X[y == k].mean(0) for k in range(4)])
    centred = X - means[y]
    cov = centred.T @ centred / len(X)
    cov = (1 - s) * cov + s * np.trace(cov) / X.shape[1] * np.eye(X.shape[1])
    inv = np.linalg.inv(cov)
    expected = X @ inv @ means.T - 0.5 * np.einsum("kp,pq,kq->k", means, inv, means)
    assert np.allclose(apply_head("gda", arrays, X), expected, atol=1e-8)


def test_tip_adapter_is_the_exponential_affinity_to_the_cache():
    X, y = blobs(n_per_class=3)
    arrays = fit_head("tip", X, y, 4, {"beta": 5.5})
    onehot = np.eye(4)[y]
    assert np.allclose(apply_head("tip", arrays, X[:5]), np.exp(-5.5 * (1 - X[:5] @ X.T)) @ onehot)


def test_probe_reaches_the_minimum_of_its_penalised_loss():
    """At the probe's solution the gradient of mean CE + ½·l2·‖W‖² vanishes (the optimality condition)."""
    X, y = blobs(seed=3, spread=0.8)
    l2 = 1e-2
    arrays = probe.fit(X, y, 4, l2=l2)
    W, b = arrays["weights"], arrays["bias"]
    logits = X @ W + b
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    residual = (prob - np.eye(4)[y]) / len(X)
    assert np.abs(X.T @ residual + l2 * W).max() < 1e-5
    assert np.abs(residual.sum(0)).max() < 1e-5


def test_a_class_missing_from_a_fold_gets_each_rows_mean_logit():
    X, y = blobs()
    keep = y != 2
    for name in HEAD_NAMES:
        _, grid = HEADS[name]
        logits = apply_head(name, fit_head(name, X[keep], y[keep], 4, grid[0]), X)
        assert logits.shape == (len(X), 4)
        assert np.allclose(logits[:, 2], logits[:, [0, 1, 3]].mean(axis=1))


def test_folds_are_stratified_balanced_seeded_and_cover_every_image():
    y = np.repeat(np.arange(5), [16, 16, 3, 1, 7])
    folds = select.stratified_folds(y, 4, seed=0)
    assert np.array_equal(folds, select.stratified_folds(y, 4, seed=0))
    assert not np.array_equal(folds, select.stratified_folds(y, 4, seed=1))
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1
    for c in (0, 1):  # 16 shots: 4 of each class in each fold
        assert np.bincount(folds[y == c], minlength=4).tolist() == [4, 4, 4, 4]
    assert select.fold_count(3) == 3 and select.fold_count(100) == 4 and select.fold_count(1) == 2


def test_out_of_fold_logits_never_see_their_own_image():
    X, y = blobs()
    folds = select.stratified_folds(y, 4, seed=0)
    oof = select.out_of_fold_head("tip", {"beta": 8.0}, X, y, 4, folds)
    for fold in range(4):
        held = folds == fold
        arrays = fit_head("tip", X[~held], y[~held], 4, {"beta": 8.0})
        assert np.allclose(oof[held], apply_head("tip", arrays, X[held]))
    nested = select.out_of_fold_head("tip", {"beta": 8.0}, X, y, 4, folds, skip=0)
    assert not nested[folds == 0].any()  # fold 0's rows are left out for its own prompt


def test_choice_never_ships_a_higher_cross_validated_loss_than_zero_shot():
    rng = np.random.default_rng(0)
    X, y = blobs(seed=5, spread=0.9)
    folds = select.stratified_folds(y, 4, seed=0)
    text = 3.0 * rng.standard_normal((len(y), 4)) + 2.0 * np.eye(4)[y]  # a weak zero-shot
    candidates = [select.text_alone("zero-shot", text, y)]
    for name in HEAD_NAMES:
        alone, blend, _ = select.tune_head(name, X, y, 4, folds, "zero-shot", text)
        candidates += [alone, blend]
        assert blend.text == "zero-shot" and 0 < blend.mix < 1
        assert blend.name == f"zero-shot + {name}" and alone.name == name
    shipped = select.choose(candidates)
    assert shipped.cv_loss == min(c.cv_loss for c in candidates)
    assert shipped.cv_loss <= candidates[0].cv_loss
    # the blend's weights reproduce the logits it was scored with
    head = shipped if shipped.head else None
    if head is not None:
        oof = select.out_of_fold_head(head.head, head.hyper, X, y, 4, folds)
        loss, acc = select.loss_and_accuracy(shipped.logits(text, oof), y)
        assert (loss, acc) == pytest.approx((shipped.cv_loss, shipped.cv_accuracy))


def test_temperature_calibration_lowers_the_loss_and_keeps_the_accuracy():
    X, y = blobs(seed=2, spread=1.0)
    logits = 40.0 * (X @ X[::16].T)  # overconfident
    blend = select.text_alone("zero-shot", logits, y)
    raw_loss, raw_acc = select.loss_and_accuracy(logits / select.spread(logits), y)
    assert blend.cv_loss < raw_loss and blend.cv_accuracy == raw_acc


def test_temperatures_scored_together_equal_one_by_one_to_the_bit():
    rng = np.random.default_rng(4)
    for N, K in ((7, 3), (160, 10), (50, 37)):
        logits = 12.0 * rng.standard_normal((N, K))
        labels = rng.integers(0, K, N)
        one_by_one = [select.loss_and_accuracy(t * logits, labels)[0] for t in select.TEMPERATURES]
        for cap in (1, 32 * 2**20):  # one temperature per pass, or all of them
            together = select.losses_at(logits, labels, select.TEMPERATURES, memory_cap=cap)
            assert np.array_equal(together, one_by_one)
