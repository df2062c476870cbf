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


def _damage_text_graph(real_quantize_graph):
    def damaging(src, dst, mode, **kwargs):
        """Convert, then flip the sign of text.onnx's output: every prediction becomes the least likely class."""
        real_quantize_graph(src, dst, mode, **kwargs)
        if Path(dst).name == "text.onnx":  # text_shared.onnx is left intact: the gate checks both
            model = onnx.load(str(dst))
            graph = model.graph
            last = graph.output[0].name
            for node in graph.node:
                node.output[:] = [last + "_pre" if o == last else o for o in node.output]
            graph.node.append(onnx.helper.make_node("Neg", [last + "_pre"], [last], name="damage"))
            onnx.save(model, str(dst))

    return damaging


@pytest.mark.parametrize(
    "mode, op, tolerance", [("int8", "MatMulInteger", 0.5), ("fp16", None, 1e-2)]
)
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
    from edge_tune.encoders import PlainEncoder
    from edge_tune.features import image_features
    from edge_tune.prompts import PromptSpace

    bundle = open_bundle(bundle_path)
    dataset = load_shots(shots)
    features, _ = image_features(bundle, dataset, cache_dir=shots.parent / "cache")
    space = PromptSpace.build(bundle, list(dataset.classnames))
    text = PlainEncoder(bundle.text_session(provider="cpu"), space).features(np.zeros(space.dim))[0]
    predicted = np.argmax(features @ text.T, axis=1)
    samples = [Sample(s.path, int(p)) for s, p in zip(dataset.samples, predicted)]
    return Dataset(list(dataset.classnames), samples, dataset.root)


def test_gate_passes_an_identical_bundle_and_refuses_a_damaged_one(
    bundle_dir, tmp_path, monkeypatch
):
    from fit_support import make_colour_shots

    monkeypatch.setenv("EDGE_TUNE_CACHE", str(tmp_path / "cache"))
    shots = _labelled_by_fp32(bundle_dir, make_colour_shots(tmp_path / "eval", per_class=6))
    same = accuracy_gate(bundle_dir, bundle_dir, shots)
    assert same["fp32"]["zero-shot"] == 100.0
    assert same["worst_drop_points"] == 0.0
    assert same["images"] == 24

    monkeypatch.setattr(
        quantize_module, "quantize_graph", _damage_text_graph(quantize_module.quantize_graph)
    )
    out = tmp_path / "refused"
    with pytest.raises(ExportError) as refused:
        quantize_bundle(bundle_dir, out, "int8", gate_data=shots, max_drop_points=1.0)
    assert str(refused.value) == (
        f"{out}: int8 bundle refused, nothing written: accuracy falls 100.0 points below fp32 on "
        f"{shots.root.resolve()} (zero-shot int8 0.0% vs fp32 100.0%), more than the 1 allowed. "
        "Keep the fp32 bundle (export without --quantize/--fp16)"
    )
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]


def test_export_refuses_a_damaged_quantisation_and_leaves_nothing(
    bundle_dir, tmp_path, monkeypatch
):
    """The whole `edge-tune export --quantize` path: fp32 staging, conversion, gate, no partial output."""
    from fit_support import make_colour_shots

    from edge_tune_export import export_bundle

    monkeypatch.setenv("EDGE_TUNE_CACHE", str(tmp_path / "cache"))
    shots = _labelled_by_fp32(bundle_dir, make_colour_shots(tmp_path / "eval", per_class=6))
    monkeypatch.setattr(
        quantize_module, "quantize_graph", _damage_text_graph(quantize_module.quantize_graph)
    )
    out_parent = tmp_path / "bundles"
    out_parent.mkdir()
    out = out_parent / "tiny-int8"
    lines: list[str] = []
    with pytest.raises(ExportError) as refused:
        export_bundle("tiny-random", out, quantize="int8", gate_data=shots, echo=lines.append)
    assert str(refused.value).startswith(
        f"{out}: int8 bundle refused, nothing written: accuracy falls 100.0 points below fp32 on "
    )
    assert str(refused.value).endswith(
        "more than the 1 allowed. Keep the fp32 bundle (export without --quantize/--fp16)"
    )
    assert list(out_parent.iterdir()) == []  # no bundle, no staging folder, no fp32 left behind
    assert any(line.startswith("gate: zero-shot int8 0.0% vs fp32 100.0%") for line in lines)


def test_gate_defaults(tmp_path):
    """mini-world: the committed demo task; other models: --gate-data or an explicit --no-gate."""
    from edge_tune_export.quantize import MINIWORLD_DEMO, resolve_gate

    miniworld = {"model": {"name": "miniworld", "source": f"dir:{MINIWORLD_DEMO.parent / 'clip'}"}}
    assert resolve_gate(
        miniworld, gate_data=None, gate_prompt=None, no_gate=False, mode="int8"
    ) == {
        "gate_data": MINIWORLD_DEMO / "eval",
        "gate_prompt": None,
        "gate_shots": MINIWORLD_DEMO / "shots",
    }
    other = {"model": {"name": "tiny-random", "source": "registry:tiny-random"}}
    with pytest.raises(ExportError) as missing:
        resolve_gate(other, gate_data=None, gate_prompt=None, no_gate=False, mode="fp16")
    assert str(missing.value) == (
        "tiny-random: the fp16 bundle must pass an accuracy gate, and this model has no default gate data. "
        "Pass --gate-data DIR (labelled images, DIR/<class>/*.png) [--gate-prompt RUN], or --no-gate to "
        "skip the check"
    )
    assert (
        resolve_gate(other, gate_data=tmp_path, gate_prompt=None, no_gate=False, mode="int8")[
            "gate_data"
        ]
        == tmp_path
    )
    assert resolve_gate(other, gate_data=None, gate_prompt=None, no_gate=True, mode="int8") == {
        "gate_data": None,
        "gate_prompt": None,
        "gate_shots": None,
    }
    with pytest.raises(ExportError, match="--gate-prompt needs --gate-data"):
        resolve_gate(other, gate_data=None, gate_prompt=tmp_path, no_gate=False, mode="int8")


def test_cli_fp16_export_verifies_and_ungated_export_is_refused(tmp_path, run_cli):
    refused = run_cli("export", "tiny-random", "--fp16", "--out", tmp_path / "refused")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "Error: tiny-random: the fp16 bundle must pass an accuracy gate, and this model has no default gate "
        "data. Pass --gate-data DIR (labelled images, DIR/<class>/*.png) [--gate-prompt RUN], or --no-gate "
        "to skip the check"
    )
    assert list(tmp_path.iterdir()) == []

    out = tmp_path / "tiny-fp16"
    done = run_cli("export", "tiny-random", "--fp16", "--no-gate", "--out", out)
    assert done.returncode == 0, done.stderr
    assert (
        "warning: --no-gate: the fp16 bundle's accuracy is not checked against fp32" in done.stderr
    )
    info = run_cli(
        "info", out, "--provider", "cpu", "--json"
    )  # verifies every hash, runs the text graph
    assert info.returncode == 0, info.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and manifest["model"]["name"] == "tiny-random-fp16"
    assert manifest["quantization"]["gate"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-fp16"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "fp16"])
def test_miniworld_quantised_bundle_passes_the_default_gate(tmp_path, mode):
    """The shipped mini-world bundle, gated as `edge-tune export miniworld --quantize` gates it: demo eval
    set, zero-shot and a prompt tuned by a short fit on the demo shots (int8: 60.6/79.6 vs fp32 61.0/79.8 %,
    docs/bench.md)."""
    from edge_tune.fit import DEFAULT_BUNDLE
    from edge_tune_export.quantize import resolve_gate

    source = DEFAULT_BUNDLE
    fp32 = json.loads((source / "manifest.json").read_text())
    gate = resolve_gate(fp32, gate_data=None, gate_prompt=None, no_gate=False, mode=mode)
    manifest = quantize_bundle(source, tmp_path / mode, mode, **gate)
    record = manifest["quantization"]["gate"]
    assert record["passed"] and record["worst_drop_points"] <= 1.0
    assert record["images"] == 500 and record["tuned_prompt"]["queries"] == 1000
    assert (
        record["fp32"]["tuned"] >= record["fp32"]["zero-shot"] + 10
    )  # the tuned prompt is really tuned
    assert record["candidate"]["tuned"] >= record["fp32"]["tuned"] - 1.0
    assert record["candidate"]["zero-shot"] >= record["fp32"]["zero-shot"] - 1.0
