"""text_shared.onnx (exported by default; `--no-shared-prefix` leaves it out): the same features
from fewer token rows."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import export_in_subprocess
from fit_support import make_colour_shots

from edge_tune.bundle import open_bundle
from edge_tune.encoders import PlainEncoder, SharedPrefixEncoder, text_encoder
from edge_tune.objective import PromptObjective
from edge_tune.prompts import PromptSpace
from edge_tune_bench.workload import random_features


@pytest.fixture(scope="module")
def shared_bundle(tiny_bundle):
    """The session's tiny-random bundle: `edge-tune export` writes text_shared.onnx by default."""
    return tiny_bundle


def objectives(bundle_path, classes: int, **options):
    bundle = open_bundle(bundle_path)
    space = PromptSpace.build(bundle, [f"class {i}" for i in range(classes)], seed=0)
    features, labels = random_features(4 * classes, int(bundle.projection_dim), classes)
    standard = PromptObjective(
        text_encoder(bundle, space, threads=1, shared_prefix=False, **options),
        features,
        labels,
        logit_scale=bundle.logit_scale,
    )
    shared = PromptObjective(
        text_encoder(bundle, space, threads=1, shared_prefix=True, **options),
        features,
        labels,
        logit_scale=bundle.logit_scale,
    )
    return space, standard, shared


def test_the_bundle_lists_and_checks_the_shared_graph(shared_bundle):
    manifest = json.loads((shared_bundle / "manifest.json").read_text())
    assert manifest["graphs"]["text_shared"]["file"] == "text_shared.onnx"
    assert set(manifest["files"]) == {
        "image.onnx",
        "text.onnx",
        "text_shared.onnx",
        "token_embedding.npy",
        "tokenizer.json",
    }
    assert manifest["parity"]["text_shared_max_abs_diff"] <= 1e-5
    bundle = open_bundle(shared_bundle)  # hashes verified, the new file included
    space = PromptSpace.build(bundle, ["a", "b"], seed=0)
    encoder = text_encoder(bundle, space, provider="cpu")  # what fit and eval score prompts with
    assert isinstance(encoder, SharedPrefixEncoder) and encoder.session.role == "text_shared"
    role = {p.key: p.value for p in onnx.load(shared_bundle / "text_shared.onnx").metadata_props}
    assert role["edge_tune.role"] == "text_shared"


def test_a_bundle_without_it_scores_with_text_onnx(tmp_path):
    out = tmp_path / "plain"
    done = export_in_subprocess("tiny-random", out, "--no-shared-prefix")
    assert done.returncode == 0, done.stderr
    assert "text_shared" not in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert "text_shared" not in manifest["graphs"] and "text_shared.onnx" not in manifest["files"]
    plain = open_bundle(out)
    encoder = text_encoder(plain, PromptSpace.build(plain, ["a", "b"], seed=0), provider="cpu")
    assert isinstance(encoder, PlainEncoder) and encoder.session.role == "text"
    # and the speed benchmark times fit's step through text.onnx, with no shared row
    from edge_tune_bench.speed import run_speed

    report = run_speed(out, classes=3, population=2, threads=1, repeats=1)
    assert "objective_shared" not in report["rows"]
    assert report["python_overhead"]["fit_step"]["note"] == "text.onnx + sharpzo/edge"


@pytest.mark.parametrize("classes, memory_cap", [(3, None), (10, None), (40, 2**16)])
def test_shared_features_equal_the_text_graph_and_do_not_depend_on_the_batch(
    shared_bundle, classes, memory_cap
):
    """K = 40 with a 64 KiB cap splits the classes into blocks: still the same features."""
    options = {} if memory_cap is None else {"memory_cap": memory_cap}
    space, standard, shared = objectives(shared_bundle, classes, **options)
    assert isinstance(shared.encoder, SharedPrefixEncoder) and isinstance(
        standard.encoder, PlainEncoder
    )
    W = np.random.default_rng(0).standard_normal((7, space.dim)) * 0.05
    together = shared.encoder.features(W)
    np.testing.assert_allclose(together, standard.encoder.features(W), rtol=0, atol=1e-6)
    one_by_one = np.concatenate([shared.encoder.features(w[None]) for w in W])
    np.testing.assert_allclose(one_by_one, together, rtol=0, atol=1e-7)
    np.testing.assert_allclose(shared(W), standard(W), rtol=1e-5)
    assert shared.queries == standard.queries == 7
    if memory_cap is not None:
        assert any(p.class_runs > 1 for p in shared.encoder.plan(7))  # class blocks


def test_fit_uses_the_shared_graph_and_tunes(shared_bundle, tmp_path, run_cli):
    shots = make_colour_shots(tmp_path / "shots", seed=0)
    evaluation = make_colour_shots(tmp_path / "eval", seed=1)
    env = {"EDGE_TUNE_CACHE": str(tmp_path / "cache")}
    done = run_cli(
        "fit",
        "--data",
        shots,
        "--eval",
        evaluation,
        "--bundle",
        shared_bundle,
        "--budget-queries",
        800,
        "--threads",
        1,
        "--out",
        tmp_path / "run",
        "--json",
        "--head",
        "none",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    prompt = next(row for row in result["candidates"] if row["name"] == "prompt")
    assert prompt["eval_accuracy"] >= result["zero_shot_accuracy"] + 0.15, result
    scored = run_cli(
        "eval",
        "--bundle",
        shared_bundle,
        "--data",
        evaluation,
        "--prompt",
        tmp_path / "run",
        "--threads",
        1,
        "--json",
        env=env,
    )
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["accuracy"] == pytest.approx(prompt["eval_accuracy"])


def test_int8_converts_the_shared_graph_too(shared_bundle, tmp_path):
    from edge_tune_export.quantize import quantize_bundle

    manifest = quantize_bundle(shared_bundle, tmp_path / "int8", "int8")
    assert "text_shared.onnx" in manifest["files"]
    ops = {node.op_type for node in onnx.load(tmp_path / "int8" / "text_shared.onnx").graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    space, standard, shared = objectives(tmp_path / "int8", 4)
    W = np.zeros((1, space.dim))
    np.testing.assert_allclose(
        shared.encoder.features(W), standard.encoder.features(W), rtol=0, atol=0.05
    )


def test_bench_speed_measures_the_shared_graph_beside_text_onnx(shared_bundle):
    from edge_tune_bench.speed import run_speed

    report = run_speed(shared_bundle, classes=4, population=6, threads=1, repeats=1)
    row = report["rows"]["objective_shared"]
    assert row["status"] == "ok" and row["queries_per_s"] > 0
    assert row["note"].startswith("P=5 + S=")
    assert report["ratios"]["shared_vs_objective"] > 0
    assert report["python_overhead"]["fit_step"]["note"] == "text_shared.onnx + sharpzo/edge"
