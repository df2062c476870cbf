"""Smaller bundles: int8 (dynamic, per channel) for CPUs and fp16 for GPU providers, each gated.

`quantize_bundle(SRC, OUT, mode)` turns a finished fp32 bundle into a new, complete bundle: both
graphs converted, the token table and tokenizer copied unchanged, a fresh manifest with the new
files' hashes and a `quantization` record (mode, the fp32 bundle's hash, the largest feature
deviation from fp32 on real prompts). The output is written to a temporary directory beside OUT and
renamed at the end, so a refused or failed conversion leaves nothing half-written.

The accuracy gate (`accuracy_gate`) compares the converted bundle with its fp32 source on an
evaluation set (the mini-world task): zero-shot accuracy, and tuned accuracy when a tuned prompt
is given; a drop of more than `max_drop_points` refuses the bundle with a one-line `ExportError`.

    python -m edge_tune_export.quantize SRC --out DST --mode int8 [--gate-data DIR [--gate-prompt RUN]]

int8 uses `onnxruntime.quantization.quantize_dynamic` (weights int8 per output channel, activations
quantised on the fly; MatMul/Gemm only, so the image graph's patch convolution stays fp32). fp16
uses ONNX Runtime's float16 converter with fp32 inputs/outputs kept, so callers feed the same
arrays; on CPU it is known to be slower than fp32 (ORT inserts casts), it is meant for CUDA/TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.errors import ExportError

MODES = ("int8", "fp16")
GRAPHS = ("text.onnx", "image.onnx")
DEFAULT_MAX_DROP_POINTS = 1.0


def quantize_graph(src: Path, dst: Path, mode: str, *, reduce_range: bool = False) -> None:
    """Convert one ONNX graph, keeping its edge_tune metadata."""
    import onnx

    model = onnx.load(str(src))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if mode == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        import logging

        prepared = _prepare_for_quantization(src, dst)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing via the root logger
        try:
            quantize_dynamic(str(prepared), str(dst), per_channel=True, reduce_range=reduce_range,
                             weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
        finally:
            root.setLevel(level)
            if prepared != src:
                prepared.unlink(missing_ok=True)
        model = onnx.load(str(dst))
    elif mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        for index, node in enumerate(model.graph.node):  # the converter needs unique node names
            if not node.name:
                node.name = f"{node.op_type}_{index}"
        model = convert_float_to_float16(model, keep_io_types=True)
    else:
        raise ExportError(f"unknown quantisation mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    present = {prop.key for prop in model.metadata_props}
    for key, value in metadata.items():
        if key not in present:
            model.metadata_props.add(key=key, value=value)
    model.metadata_props.add(key="edge_tune.quantization", value=mode)
    onnx.save(model, str(dst))


def _prepare_for_quantization(src: Path, dst: Path) -> Path:
    """ORT's recommended pre-processing (ONNX shape inference + basic graph optimisation).

    Symbolic shape inference cannot resolve the text graph's dynamic C and L, so it is skipped; if
    pre-processing fails altogether the graph is quantised as exported.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name(f".{dst.stem}.pre.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        return prepared
    except Exception:  # an optional step: quantising the exported graph is still correct
        prepared.unlink(missing_ok=True)
        return src


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def feature_deviation(src: Path, dst: Path, prompts: int = 8) -> dict[str, float]:
    """Largest |feature - fp32 feature| of the converted text and image graphs on real inputs.

    Text: the bundle's tokenizer on a few sentences, embedded with its own token table; image:
    seeded noise images at the bundle's size. Both outputs are unit vectors, so 2.0 is the worst case.
    """
    import onnxruntime as ort

    manifest = json.loads((src / "manifest.json").read_text())
    table = np.load(src / "token_embedding.npy", mmap_mode="r", allow_pickle=False)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    sentences = ["a photo of a dog.", "a blurry photo of a t-shirt.", "a photo of a sneaker.",
                 "an ankle boot on a shelf.", "a low contrast photo of a bag.", "a cat.",
                 "a photo of a pullover, a type of clothing.", "a drawing of a sandal."][:prompts]
    ids = [tokenizer.encode(s).ids for s in sentences]
    length = max(len(i) for i in ids)
    eot = manifest["tokens"]["eot_id"]
    padded = np.array([i + [manifest["tokens"].get("pad_id", eot)] * (length - len(i)) for i in ids])
    feeds_text = {"prompt_embeds": np.asarray(table[padded], dtype=np.float32),
                  "eot_index": np.array([len(i) - 1 for i in ids], dtype=np.int64)}
    size = int(manifest["dims"]["image_size"])
    feeds_image = {"pixel_values": np.random.default_rng(0).standard_normal((2, 3, size, size))
                   .astype(np.float32)}

    def run(path: Path, feeds: dict) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)[0]

    return {
        "text_max_abs_diff_vs_fp32": float(np.abs(run(src / "text.onnx", feeds_text)
                                                  - run(dst / "text.onnx", feeds_text)).max()),
        "image_max_abs_diff_vs_fp32": float(np.abs(run(src / "image.onnx", feeds_image)
                                                   - run(dst / "image.onnx", feeds_image)).max()),
    }


def quantize_bundle(src: str | Path, out: str | Path, mode: str, *, gate_data: Any = None,
                    gate_prompt: str | Path | None = None,
                    max_drop_points: float = DEFAULT_MAX_DROP_POINTS,
                    reduce_range: bool = False) -> dict[str, Any]:
    """Write an int8 or fp16 copy of the fp32 bundle `src` to `out`; returns the new manifest.

    With `gate_data` (a shots-layout folder of evaluation images) the accuracy gate runs and a drop
    of more than `max_drop_points` (zero-shot, and tuned with `gate_prompt`) refuses the bundle.
    """
    src, out = Path(src), Path(out)
    if mode not in MODES:
        raise ExportError(f"unknown quantisation mode {mode!r}", hint=f"use one of {', '.join(MODES)}")
    manifest_path = src / "manifest.json"
    if not manifest_path.is_file():
        raise ExportError("not a bundle (no manifest.json)", path=src,
                          hint="export an fp32 bundle first with `edge-tune export`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("quantization"):
        raise ExportError(f"this bundle is already {manifest['quantization'].get('mode')}", path=src,
                          hint="quantise from the fp32 bundle")
    if out.exists() and any(out.iterdir()):
        raise ExportError("the output directory is not empty", path=out,
                          hint="choose a new --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name in manifest["files"]:
            if name not in GRAPHS:
                shutil.copy2(src / name, staging / name)
        for name in GRAPHS:
            quantize_graph(src / name, staging / name, mode, reduce_range=reduce_range)
        new = json.loads(json.dumps(manifest))
        new["files"] = {name: {"sha256": _sha256(staging / name), "bytes": (staging / name).stat().st_size}
                        for name in manifest["files"]}
        new["model"] = {**manifest["model"], "name": f"{manifest['model']['name']}-{mode}"}
        source_hash = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        new["quantization"] = {"mode": mode, "from_bundle": source_hash,
                               "method": ("onnxruntime quantize_dynamic, QInt8 weights per channel, "
                                          "MatMul/Gemm" + (", reduce_range" if reduce_range else ""))
                               if mode == "int8" else "onnxruntime float16 converter, fp32 io kept",
                               **feature_deviation(src, staging)}
        _write_json_atomic(staging / "manifest.json", new)
        if gate_data is not None:
            gate = accuracy_gate(src, staging, gate_data, tuned_prompt=gate_prompt)
            gate_path = getattr(gate_data, "root", gate_data)
            new["quantization"]["gate"] = gate
            _write_json_atomic(staging / "manifest.json", new)
            if gate["worst_drop_points"] > max_drop_points:
                raise ExportError(
                    f"{mode} bundle refused: accuracy falls {gate['worst_drop_points']:.1f} points below "
                    f"fp32 ({gate['summary']}), more than the {max_drop_points:g} allowed",
                    path=gate_path, hint="ship the fp32 bundle, or try --mode int8 with reduce_range")
        for path in staging.iterdir():
            path.chmod(0o644)
        staging.chmod(0o755)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return new


def accuracy_gate(reference: str | Path, candidate: str | Path, eval_data: Any, *,
                  tuned_prompt: str | Path | np.ndarray | None = None, provider: str = "cpu",
                  threads: int | None = None) -> dict[str, Any]:
    """Zero-shot (and tuned) accuracy of `candidate` vs its fp32 `reference` on `eval_data`.

    `eval_data`: a shots-layout folder or a loaded `Dataset`.
    `tuned_prompt`: a run directory or `prompt.npz` from `edge-tune fit` on the fp32 bundle, or the
    vector w itself; it is scored in both bundles with the same prompt space (init, dim, seed).
    Returns accuracies in percent and `worst_drop_points` = max(fp32 - candidate).
    """
    from edge_tune.bundle import open_bundle
    from edge_tune.data import load_shots
    from edge_tune.features import image_features
    from edge_tune.objective import PromptObjective
    from edge_tune.prompts import PromptSpace

    dataset = eval_data if hasattr(eval_data, "samples") else load_shots(eval_data)
    w, space_options = _tuned_vector(tuned_prompt)
    rows = {}
    for label, path in (("fp32", reference), ("candidate", candidate)):
        bundle = open_bundle(path)
        features, labels = image_features(bundle, dataset, provider=provider, threads=threads)
        space = PromptSpace.build(bundle, list(dataset.classnames), **space_options)
        objective = PromptObjective(bundle.text_session(provider=provider, threads=threads), space,
                                    features, labels, logit_scale=bundle.logit_scale)
        W = np.zeros((1 if w is None else 2, space.dim))
        if w is not None:
            W[1] = w
        _, accuracies = objective.evaluate(W)
        rows[label] = [100.0 * float(a) for a in accuracies]
    names = ["zero-shot", "tuned"][: len(rows["fp32"])]
    drops = [a - b for a, b in zip(rows["fp32"], rows["candidate"])]
    summary = ", ".join(f"{n} {a:.1f}% vs {b:.1f}%"
                        for n, a, b in zip(names, rows["candidate"], rows["fp32"]))
    return {"images": len(dataset.samples), "fp32": dict(zip(names, rows["fp32"])),
            "candidate": dict(zip(names, rows["candidate"])),
            "worst_drop_points": max(drops), "summary": summary}


def _tuned_vector(tuned: str | Path | np.ndarray | None) -> tuple[np.ndarray | None, dict]:
    """w and the prompt-space options it was tuned in, from a run dir / prompt.npz / a vector."""
    if tuned is None:
        return None, {}
    if isinstance(tuned, np.ndarray):
        return np.asarray(tuned, dtype=np.float64), {"dim": int(tuned.shape[-1])}
    path = Path(tuned)
    path = path / "prompt.npz" if path.is_dir() else path
    if not path.is_file():
        raise ExportError("no tuned prompt there", path=path, hint="give a run directory of `edge-tune fit`")
    with np.load(path, allow_pickle=False) as data:
        w = np.asarray(data["w"], dtype=np.float64)
        options: dict[str, Any] = {"dim": int(w.shape[-1])}
        if "spec" in data.files:  # edge-tune fit's prompt.npz: the prompt space's own spec
            spec = json.loads(str(data["spec"]))
            options.update(init=spec["init"], seed=int(spec["seed"]),
                           parameterisation=spec.get("parameterisation", "sharpzo"),
                           projection_std=spec.get("projection_std"))
        else:
            if "projection_seed" in data.files:
                options["seed"] = int(data["projection_seed"])
            if "context_init" in data.files:
                options["init"] = str(data["context_init"])
            if "projection_std" in data.files and np.isfinite(float(data["projection_std"])):
                options["projection_std"] = float(data["projection_std"])
    return w, options


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src")
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--gate-data")
    parser.add_argument("--gate-prompt")
    parser.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP_POINTS)
    parser.add_argument("--reduce-range", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = quantize_bundle(args.src, args.out, args.mode, gate_data=args.gate_data,
                                   gate_prompt=args.gate_prompt, max_drop_points=args.max_drop,
                                   reduce_range=args.reduce_range)
    except ExportError as err:
        raise SystemExit(f"Error: {err}") from None
    print(json.dumps(manifest["quantization"], indent=2))


if __name__ == "__main__":
    main()
