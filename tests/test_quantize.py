"""Smaller bundles: int8 and fp16 copies of the tiny bundle are complete, verifiable bundles that stay
close to fp32, and the accuracy gate refuses a copy that loses accuracy, leaving nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge_tune.errors import ExportError
from edge_tune_export import quantize as quantize_module
from edge_tune_export.quantize import accuracy_gate, quantize_bundle


@pytest.fixture(scope="module")
def bundle_dir(tiny_bundle) -> Path:
    return Path(getattr(tiny_bundle, "path", tiny_bundle))


def _features(bundle_path: Path) -> np.ndarray:
    """Text features of real tokenised prompts through the bundle's own loader and session."""
    from edge_tune.bundle import open_bundle
    from edge_tune.prompts import template_prompts

    bundle = open_bundle(bundle_path)  # verifies every file's hash
    embeds, eot = template_prompts(bundle, ["dog", "cat", "ankle boot", "t-shirt"])
    return bundle.text_session(provider="cpu").run({"prompt_embeds": embeds, "eot_index": eot})


@pytest.mark.parametrize("mode, op, tolerance", [("int8", "MatMulInteger", 0.5), ("fp16", None, 1e-2)])
def test_quantised_bundle_is_complete_and_close_to_fp32(bundle_dir, tmp_path, mode, op, tolerance):
    out = tmp_path / mode
    manifest = quantize_bundle(bundle_dir, out, mode)
    assert manifest["quantization"]["mode"] == mode
    assert json.loads((out / "manifest.json").read_text()) == manifest
    text = onnx.load(str(out / "text.onnx"))
    ops = {node.op_type for node in text.graph.node}
    if op:
        assert op in ops
    else:
        assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in text.graph.initializer)
    # inputs and outputs stay float32, so callers feed the same arrays
    assert text.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert text.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {p.key: p.value for p in text.metadata_props}["edge_tune.role"] == "text"
    assert (out / "text.onnx").stat().st_size < (bundle_dir / "text.onnx").stat().st_size
    diff = np.abs(_features(out) - _features(bundle_dir)).max()
    assert diff < tolerance
    assert manifest["quantization"]["text_max_abs_diff_vs_fp32"] < tolerance


def test_quantising_into_a_non_empty_directory_is_refused(bundle_dir, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="the output directory is not empty"):
        quantize_bundle(bundle_dir, tmp_path / "taken", "int8")


def _labelled_by_fp32(bundle_path: Path, shots: Path):
    """The shots relabelled with the fp32 bundle's own zero-shot predictions: fp32 scores 100%."""
    from edge_tune.bundle import open_bundle
    from edge_tune.data import Dataset, Sample, load_shots
    from edge_tune.features import image_features
    from edge_tune.objective import PromptObjective
    from edge_tune.prompts import PromptSpace

    bundle = open_bundle(bundle_path)
    dataset = load_shots(shots)
    features, _ = image_features(bundle, dataset, cache_dir=shots.parent / "cache")
    space = PromptSpace.build(bundle, list(dataset.classnames))
    objective = PromptObjective(bundle.text_session(provider="cpu"), space, features,
                                np.zeros(len(features), dtype=np.int64), logit_scale=bundle.logit_scale)
    predicted = np.argmax(features @ objective.class_features(np.zeros(space.dim)).T, axis=1)
    samples = [Sample(s.path, int(p)) for s, p in zip(dataset.samples, predicted)]
    return Dataset(list(dataset.classnames), samples, dataset.root)


def test_gate_passes_an_identical_bundle_and_refuses_a_damaged_one(bundle_dir, tmp_path, monkeypatch):
    from fit_support import make_colour_shots

    monkeypatch.setenv("EDGE_TUNE_CACHE", str(tmp_path / "cache"))
    shots = _labelled_by_fp32(bundle_dir, make_colour_shots(tmp_path / "eval", per_class=6))
    same = accuracy_gate(bundle_dir, bundle_dir, shots)
    assert same["fp32"]["zero-shot"] == 100.0
    assert same["worst_drop_points"] == 0.0
    assert same["images"] == 24

    real_quantize_graph = quantize_module.quantize_graph

    def damaging(src, dst, mode, **kwargs):
        """int8, then flip the sign of the text output: every prediction becomes the least likely class."""
        real_quantize_graph(src, dst, mode, **kwargs)
        if Path(dst).name == "text.onnx":
            model = onnx.load(str(dst))
            graph = model.graph
            last = graph.output[0].name
            for node in graph.node:
                node.output[:] = [last + "_pre" if o == last else o for o in node.output]
            graph.node.append(onnx.helper.make_node("Neg", [last + "_pre"], [last], name="damage"))
            onnx.save(model, str(dst))

    monkeypatch.setattr(quantize_module, "quantize_graph", damaging)
    out = tmp_path / "refused"
    with pytest.raises(ExportError) as refused:
        quantize_bundle(bundle_dir, out, "int8", gate_data=shots, max_drop_points=1.0)
    assert "int8 bundle refused: accuracy falls 100.0 points below fp32" in str(refused.value)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]
