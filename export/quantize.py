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

Which data gates a bundle (`resolve_gate`): `--gate-data` when given; else, for the mini-world model,
the committed demo task (its eval images, and a tuned prompt made by a short fit on its shots with the
fp32 bundle); else nothing can be gated and the caller must say `--no-gate` (warned) explicitly.

int8 caveat: dynamic quantisation picks one activation scale per tensor per run, so a prompt's features
depend on the other prompts in the same run (up to 2.1e-2 on unit vectors, measured on the mini-world); batched and one-by-one
objective values agree only to that tolerance, not bit for bit. The manifest records this.

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
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edge_tune.atomic import atomic_write_json
from edge_tune.bundle import sha256_file
from edge_tune.errors import ExportError
from edge_tune_export import write_bundle

MODES = ("int8", "fp16")
GRAPHS = ("text.onnx", "image.onnx")
OPTIONAL_GRAPHS = (
    "text_shared.onnx",
)  # converted too when present; the gate's tuned prompt runs on it
DEFAULT_MAX_DROP_POINTS = 1.0
GATE_FIT_QUERIES = (
    1000  # the gate's tuned prompt: ~15 s on the demo shots, 61 -> 80 % on its eval set
)
MINIWORLD_DEMO = Path(__file__).resolve().parent.parent / "models" / "miniworld" / "demo"
INT8_BATCH_NOTE = (
    "dynamic int8 quantises activations with one scale per tensor per run, so a prompt's "
    "features depend on the other prompts run with it (max abs diff 2.1e-2 on unit "
    "vectors, mini-world text graph, 80 prompts in one run vs one at a time); batched "
    "and one-by-one objective values are not bit-identical"
)


def quantize_graph(src: Path, dst: Path, mode: str, *, reduce_range: bool = False) -> None:
    """Convert one ONNX graph, keeping its edge_tune metadata."""
    import onnx

    model = onnx.load(str(src))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    if mode == "int8":
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        prepared = _prepare_for_quantization(src, dst)
        root = logging.getLogger()
        level = root.level
        root.setLevel(
            logging.ERROR
        )  # quantize_dynamic warns about pre-processing via the root logger
        try:
            quantize_dynamic(
                str(prepared),
                str(dst),
                per_channel=True,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul", "Gemm"],
            )
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
        raise ExportError(
            f"unknown quantisation mode {mode!r}", hint=f"use one of {', '.join(MODES)}"
        )
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
    sentences = [
        "a photo of a dog.",
        "a blurry photo of a t-shirt.",
        "a photo of a sneaker.",
        "an ankle boot on a shelf.",
        "a low contrast photo of a bag.",
        "a cat.",
        "a photo of a pullover, a type of clothing.",
        "a drawing of a sandal.",
    ][:prompts]
    ids = [tokenizer.encode(s).ids for s in sentences]
    length = max(len(i) for i in ids)
    eot = manifest["tokens"]["eot_id"]
    padded = np.array(
        [i + [manifest["tokens"].get("pad_id", eot)] * (length - len(i)) for i in ids]
    )
    feeds_text = {
        "prompt_embeds": np.asarray(table[padded], dtype=np.float32),
        "eot_index": np.array([len(i) - 1 for i in ids], dtype=np.int64),
    }
    size = int(manifest["dims"]["image_size"])
    feeds_image = {
        "pixel_values": np.random.default_rng(0)
        .standard_normal((2, 3, size, size))
        .astype(np.float32)
    }

    def run(path: Path, feeds: dict) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, feeds)[0]

    return {
        "text_max_abs_diff_vs_fp32": float(
            np.abs(run(src / "text.onnx", feeds_text) - run(dst / "text.onnx", feeds_text)).max()
        ),
        "image_max_abs_diff_vs_fp32": float(
            np.abs(
                run(src / "image.onnx", feeds_image) - run(dst / "image.onnx", feeds_image)
            ).max()
        ),
    }


def quantize_bundle(
    src: str | Path,
    out: str | Path,
    mode: str,
    *,
    gate_data: Any = None,
    gate_prompt: Any = None,
    gate_shots: str | Path | None = None,
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS,
    reduce_range: bool = False,
    echo=None,
    final_path: str | Path | None = None,
) -> dict[str, Any]:
    """Write an int8 or fp16 copy of the fp32 bundle `src` to `out`; returns the new manifest.

    With `gate_data` (a shots-layout folder of labelled evaluation images) the accuracy gate runs:
    zero-shot, and tuned with `gate_prompt` (a fit run / prompt.npz / (w, space options)) or, failing
    that, with a prompt tuned here by a short fit on `gate_shots`. A drop of more than
    `max_drop_points` in either refuses the bundle: `ExportError`, nothing written. `final_path`:
    the bundle's name in messages when `out` is itself a staging folder (`edge-tune export`).
    """
    src, out = Path(src), Path(out)
    if mode not in MODES:
        raise ExportError(
            f"unknown quantisation mode {mode!r}", hint=f"use one of {', '.join(MODES)}"
        )
    manifest_path = src / "manifest.json"
    if not manifest_path.is_file():
        raise ExportError(
            "not a bundle (no manifest.json)",
            path=src,
            hint="export an fp32 bundle first with `edge-tune export`",
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("quantization"):
        raise ExportError(
            f"this bundle is already {manifest['quantization'].get('mode')}",
            path=src,
            hint="quantise from the fp32 bundle",
        )
    if out.exists() and any(out.iterdir()):
        raise ExportError(
            "the output directory is not empty", path=out, hint="choose a new --out or remove it"
        )
    staging = write_bundle.scratch_dir(out, "quantize")
    try:
        bundle_dir = staging / "bundle"
        bundle_dir.mkdir()
        graphs = [name for name in (*GRAPHS, *OPTIONAL_GRAPHS) if name in manifest["files"]]
        for name in manifest["files"]:
            if name not in graphs:
                shutil.copy2(src / name, bundle_dir / name)
        for name in graphs:
            quantize_graph(src / name, bundle_dir / name, mode, reduce_range=reduce_range)
        new = json.loads(json.dumps(manifest))
        new["files"] = {
            name: {
                "sha256": sha256_file(bundle_dir / name),
                "bytes": (bundle_dir / name).stat().st_size,
            }
            for name in manifest["files"]
        }
        new["model"] = {**manifest["model"], "name": f"{manifest['model']['name']}-{mode}"}
        new["precision"] = mode
        source_hash = hashlib.sha256(manifest_path.read_bytes()).hexdigest()
        new["quantization"] = {
            "mode": mode,
            "from_bundle": source_hash,
            "method": (
                "onnxruntime quantize_dynamic, QInt8 weights per channel, "
                "MatMul/Gemm" + (", reduce_range" if reduce_range else "")
            )
            if mode == "int8"
            else "onnxruntime float16 converter, fp32 io kept",
            **feature_deviation(src, bundle_dir),
        }
        if mode == "int8":
            new["quantization"]["batch_dependence"] = INT8_BATCH_NOTE
        if mode == "fp16":
            new["quantization"]["intended_providers"] = (
                "CUDA/TensorRT (on CPU fp16 is slower than fp32)"
            )
        new["quantization"]["gate"] = None
        atomic_write_json(
            bundle_dir / "manifest.json", new
        )  # the gate opens the candidate as a bundle
        if gate_data is not None:
            cache = (
                staging / "feature-cache"
            )  # features of throw-away bundles stay out of the user's cache
            prompt_record: Any = None if gate_prompt is None else {"given": "vector"}
            if gate_prompt is None and gate_shots is not None:
                if echo:
                    echo(
                        f"gate: tuning a prompt on {gate_shots} with the fp32 bundle "
                        f"({GATE_FIT_QUERIES} queries)"
                    )
                gate_prompt, prompt_record = short_fit_prompt(src, gate_shots, cache_dir=cache)
            elif isinstance(gate_prompt, (str, Path)):
                prompt_record = {"run": str(gate_prompt)}
            if echo:
                echo(f"gate: {mode} vs fp32 on {_data_path(gate_data)}")
            gate = accuracy_gate(
                src,
                bundle_dir,
                gate_data,
                tuned_prompt=gate_prompt,
                cache_dir=cache,
                candidate_name=mode,
            )
            gate["data"] = str(Path(_data_path(gate_data)).resolve())
            gate["tuned_prompt"] = prompt_record
            gate["max_drop_points"] = max_drop_points
            gate["passed"] = gate["worst_drop_points"] <= max_drop_points
            new["quantization"]["gate"] = gate
            if echo:
                echo(
                    f"gate: {gate['summary']}; worst drop {gate['worst_drop_points']:.1f} points "
                    f"(limit {max_drop_points:g})"
                )
            if not gate["passed"]:
                raise ExportError(
                    f"{mode} bundle refused, nothing written: accuracy falls "
                    f"{gate['worst_drop_points']:.1f} points below fp32 on {gate['data']} "
                    f"({gate['summary']}), more than the {max_drop_points:g} allowed",
                    path=final_path or out,
                    hint="Keep the fp32 bundle (export without --quantize/--fp16)",
                )
            shutil.rmtree(cache, ignore_errors=True)
        atomic_write_json(bundle_dir / "manifest.json", new)
        for path in bundle_dir.iterdir():
            path.chmod(0o644)
        bundle_dir.chmod(0o755)
        if out.exists():
            out.rmdir()
        os.replace(bundle_dir, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return new


def is_miniworld(manifest: dict) -> bool:
    """The project's own mini-world CLIP (by name, or by the `miniworld.json` beside its checkpoint)."""
    model = manifest.get("model", {})
    source = str(model.get("source", ""))
    if source.startswith("dir:") and (Path(source[4:]) / "miniworld.json").is_file():
        return True
    return str(model.get("name", "")).split("-")[0] == "miniworld"


def resolve_gate(
    manifest: dict,
    *,
    gate_data: str | Path | None,
    gate_prompt: str | Path | None,
    no_gate: bool,
    mode: str,
) -> dict[str, Any]:
    """Which data gates a `mode` copy of the bundle described by `manifest` (the fp32 one).

    Returns keyword arguments for `quantize_bundle` (`gate_data`, `gate_prompt`, `gate_shots`);
    all None with `no_gate`. The mini-world defaults to its committed demo task; any other model
    needs labelled data from the user (`--gate-data`) or an explicit `--no-gate`.
    """
    if no_gate:
        if gate_data is not None or gate_prompt is not None:
            raise ExportError(
                "--no-gate contradicts --gate-data/--gate-prompt", hint="give one or the other"
            )
        return {"gate_data": None, "gate_prompt": None, "gate_shots": None}
    if gate_data is not None:
        data = (
            gate_data if hasattr(gate_data, "samples") else Path(gate_data)
        )  # a folder or a Dataset
        return {"gate_data": data, "gate_prompt": gate_prompt, "gate_shots": None}
    if gate_prompt is not None:
        raise ExportError(
            "--gate-prompt needs --gate-data (the labelled images it is scored on)",
            path=gate_prompt,
            hint="add --gate-data DIR",
        )
    if is_miniworld(manifest):
        if not (MINIWORLD_DEMO / "eval").is_dir() or not (MINIWORLD_DEMO / "shots").is_dir():
            raise ExportError(
                "the mini-world demo task that gates this export is missing",
                path=MINIWORLD_DEMO,
                hint="pass --gate-data DIR (labelled images)",
            )
        return {
            "gate_data": MINIWORLD_DEMO / "eval",
            "gate_prompt": None,
            "gate_shots": MINIWORLD_DEMO / "shots",
        }
    raise ExportError(
        f"the {mode} bundle must pass an accuracy gate, and this model has no default gate data",
        path=manifest.get("model", {}).get("name"),
        hint="Pass --gate-data DIR (labelled images, DIR/<class>/*.png) [--gate-prompt RUN], "
        "or --no-gate to skip the check",
    )


def short_fit_prompt(
    bundle: str | Path,
    shots: str | Path,
    *,
    queries: int = GATE_FIT_QUERIES,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> tuple[tuple, dict]:
    """A tuned prompt for the gate: `fit`'s optimiser (SharpZO, edge) for `queries` on all shots.

    Returns ((w, prompt-space options), a record of how it was made) for `accuracy_gate`.
    """
    from edge_tune.bundle import open_bundle
    from edge_tune.data import load_shots
    from edge_tune.encoders import text_encoder
    from edge_tune.features import image_features
    from edge_tune.objective import PromptObjective
    from edge_tune.optim import make_optimizer
    from edge_tune.prompts import PromptSpace

    opened = open_bundle(bundle)
    dataset = load_shots(shots)
    features, labels = image_features(opened, dataset, cache_dir=cache_dir, provider="cpu")
    space = PromptSpace.build(opened, list(dataset.classnames), seed=seed)
    objective = PromptObjective(
        text_encoder(opened, space, provider="cpu"),
        features,
        labels,
        logit_scale=opened.logit_scale,
    )
    optimizer = make_optimizer("sharpzo", space.dim, preset="edge", seed=seed)
    state, used = optimizer.init(np.zeros(space.dim)), 0
    while True:
        W = optimizer.ask(state)
        if used + len(W) > queries:
            break
        state, _ = optimizer.tell(state, objective(W))
        used += len(W)
    spec = space.spec()
    options = {
        "init": spec["init"],
        "dim": spec["dim"],
        "seed": spec["seed"],
        "parameterisation": spec["parameterisation"],
        "projection_std": spec["projection_std"],
    }
    record = {
        "made_by": "short fit on the fp32 bundle",
        "shots": str(shots),
        "queries": used,
        "optimizer": "sharpzo",
        "preset": "edge",
        "seed": seed,
    }
    return (np.asarray(optimizer.params(state), dtype=np.float64), options), record


def accuracy_gate(
    reference: str | Path,
    candidate: str | Path,
    eval_data: Any,
    *,
    tuned_prompt: Any = None,
    provider: str = "cpu",
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    candidate_name: str = "candidate",
) -> dict[str, Any]:
    """Zero-shot (and tuned) accuracy of `candidate` vs its fp32 `reference` on `eval_data`.

    `eval_data`: a shots-layout folder or a loaded `Dataset`.
    `tuned_prompt`: a run directory or `prompt.npz` from `edge-tune fit` on the fp32 bundle, the
    vector w itself, or (w, prompt-space options) from `short_fit_prompt`; it is scored in both bundles with the same prompt space (init, dim, seed).
    A candidate with text_shared.onnx is scored through both text graphs and counts by the worse.
    Returns accuracies in percent and `worst_drop_points` = max(fp32 - candidate).
    """
    from edge_tune.bundle import open_bundle
    from edge_tune.data import load_shots
    from edge_tune.encoders import text_encoder
    from edge_tune.features import image_features
    from edge_tune.objective import PromptObjective
    from edge_tune.prompts import PromptSpace

    dataset = eval_data if hasattr(eval_data, "samples") else load_shots(eval_data)
    w, space_options = _tuned_vector(tuned_prompt)
    rows = {}
    for label, path in (("fp32", reference), ("candidate", candidate)):
        bundle = open_bundle(path)
        features, labels = image_features(
            bundle, dataset, cache_dir=cache_dir, provider=provider, threads=threads
        )
        space = PromptSpace.build(bundle, list(dataset.classnames), **space_options)
        W = np.zeros((1 if w is None else 2, space.dim))
        if w is not None:
            W[1] = w
        # the candidate's every text graph must hold: fit scores with text_shared.onnx when the
        # bundle has it, eval's templates with text.onnx; a candidate counts by its worse one
        shared = (
            [True, False] if label == "candidate" and bundle.has_graph("text_shared") else [None]
        )
        worst = None
        for shared_prefix in shared:
            encoder = text_encoder(
                bundle, space, provider=provider, threads=threads, shared_prefix=shared_prefix
            )
            objective = PromptObjective(encoder, features, labels, logit_scale=bundle.logit_scale)
            accuracies = objective.evaluate(W)[1]
            worst = accuracies if worst is None else np.minimum(worst, accuracies)
        rows[label] = [100.0 * float(a) for a in worst]
    names = ["zero-shot", "tuned"][: len(rows["fp32"])]
    drops = [a - b for a, b in zip(rows["fp32"], rows["candidate"])]
    summary = ", ".join(
        f"{n} {candidate_name} {a:.1f}% vs fp32 {b:.1f}%"
        for n, a, b in zip(names, rows["candidate"], rows["fp32"])
    )
    return {
        "images": len(dataset.samples),
        "fp32": dict(zip(names, _rounded(rows["fp32"]))),
        "candidate": dict(zip(names, _rounded(rows["candidate"]))),
        "worst_drop_points": round(max(drops), 6),
        "summary": summary,
    }


def _data_path(data: Any) -> Path:
    """The folder of a shots-layout path or of a loaded `Dataset` (a Path has `.root` too: "/")."""
    return Path(data.root) if hasattr(data, "samples") else Path(data)


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 6) for v in values]


def _tuned_vector(tuned: str | Path | np.ndarray | None) -> tuple[np.ndarray | None, dict]:
    """w and the prompt-space options it was tuned in, from a run dir / prompt.npz / a vector."""
    if tuned is None:
        return None, {}
    if isinstance(tuned, tuple):
        w, options = tuned
        return np.asarray(w, dtype=np.float64), dict(options)
    if isinstance(tuned, np.ndarray):
        return np.asarray(tuned, dtype=np.float64), {"dim": int(tuned.shape[-1])}
    path = Path(tuned)
    path = path / "prompt.npz" if path.is_dir() else path
    if not path.is_file():
        raise ExportError(
            "no tuned prompt there", path=path, hint="give a run directory of `edge-tune fit`"
        )
    with np.load(path, allow_pickle=False) as data:
        w = np.asarray(data["w"], dtype=np.float64)
        w = w.reshape(-1, w.shape[-1])[0]  # a fit run's prompt.npz holds one prompt per fold
        options: dict[str, Any] = {"dim": int(w.shape[-1])}
        if "spec" in data.files:  # edge-tune fit's prompt.npz: the prompt space's own spec
            spec = json.loads(str(data["spec"]))
            options.update(
                init=spec["init"],
                seed=int(spec["seed"]),
                parameterisation=spec.get("parameterisation", "sharpzo"),
                projection_std=spec.get("projection_std"),
            )
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
    parser.add_argument("--gate-shots", help="tune the gate's prompt by a short fit on these shots")
    parser.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP_POINTS)
    parser.add_argument("--reduce-range", action="store_true")
    args = parser.parse_args(argv)
    try:
        manifest = quantize_bundle(
            args.src,
            args.out,
            args.mode,
            gate_data=args.gate_data,
            gate_prompt=args.gate_prompt,
            gate_shots=args.gate_shots,
            max_drop_points=args.max_drop,
            reduce_range=args.reduce_range,
            echo=lambda line: print(line, file=sys.stderr),
        )
    except ExportError as err:
        raise SystemExit(f"Error: {err}") from None
    print(json.dumps(manifest["quantization"], indent=2))


if __name__ == "__main__":
    main()
