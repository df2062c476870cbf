"""edge-tune's torch side: turn a Hugging Face CLIPModel into a bundle the runtime can tune.

`export_bundle` = load -> two ONNX graphs -> token table + tokenizer -> parity vs PyTorch -> manifest
with hashes -> atomic rename. Only this package imports torch and transformers.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from edge_tune.atomic import fsync_dir
from edge_tune.errors import EdgeTuneError, ExportError


def export_bundle(
    name_or_source: str,
    out: str | Path,
    *,
    source_dir: str | Path | None = None,
    provider: str = "auto",
    opset: int | None = None,
    tolerance: float | None = None,
    token_table: str = "fp32",
    shared_prefix: bool = True,
    quantize: str | None = None,
    gate_data: str | Path | None = None,
    gate_prompt: str | Path | None = None,
    no_gate: bool = False,
    max_drop_points: float | None = None,
    echo=print,
) -> dict:
    """Export `name_or_source` (registry name, or a save_pretrained dir) to the bundle `out`.

    Returns the manifest. `provider` is checked here (one ORT session on the finished graph) so that a
    user learns at export time whether the bundle will run on the provider they asked for.
    `token_table="fp16"` halves the bundle's largest file for small models: the model's own table is
    rounded to fp16 *before* export and parity, so the bundle is exactly the model it describes.
    `shared_prefix` (default) adds `text_shared.onnx`, the text graph that computes each candidate's common
    prefix once for all its class prompts (same features, parity-checked; ~2x faster tuning on
    ViT-B/16 at 10 classes, docs/bench.md), which `fit` then uses.
    `quantize="int8"|"fp16"`: the fp32 bundle is exported to a staging folder, converted, and gated on
    accuracy (`edge_tune_export.quantize`); only the converted bundle reaches `out`, and a refused one
    leaves nothing there.
    """
    if quantize is not None:
        return _export_quantized(
            name_or_source,
            Path(out),
            mode=quantize,
            source_dir=source_dir,
            provider=provider,
            opset=opset,
            tolerance=tolerance,
            token_table=token_table,
            shared_prefix=shared_prefix,
            gate_data=gate_data,
            gate_prompt=gate_prompt,
            no_gate=no_gate,
            max_drop_points=max_drop_points,
            echo=echo,
        )
    import numpy as np
    import torch
    import transformers

    from edge_tune import __version__
    from edge_tune.bundle import FORMAT_VERSION
    from edge_tune_export import load, parity, to_onnx, write_bundle

    out = Path(out)
    if source_dir is None and Path(name_or_source).is_dir():
        source_dir, name_or_source = Path(name_or_source), Path(name_or_source).name
    opset = opset or to_onnx.DEFAULT_OPSET
    tolerance = parity.TOLERANCE if tolerance is None else tolerance
    started = time.perf_counter()
    loaded = load.load_model(name_or_source, source_dir=source_dir)
    model = loaded.model
    if token_table not in ("fp32", "fp16"):
        raise ExportError(f"unknown token table precision {token_table!r}", hint="use fp32 or fp16")
    if token_table == "fp16":
        weight = model.text_model.embeddings.token_embedding.weight
        with torch.no_grad():
            weight.copy_(weight.half().float())
    to_onnx.check_graph_sizes(model)  # before the slow part
    manifest = _manifest_head(loaded, FORMAT_VERSION)
    manifest["token_table_dtype"] = token_table
    write_bundle.check_target(
        out, write_bundle.bundle_identity(manifest)
    )  # fail before the slow part
    staging = write_bundle.make_staging_dir(out)
    try:
        timings = {"load_s": time.perf_counter() - started}
        tick = time.perf_counter()
        to_onnx.export_text_graph(model, staging / "text.onnx", opset=opset)
        timings["text_export_s"] = time.perf_counter() - tick
        if shared_prefix:
            tick = time.perf_counter()
            to_onnx.export_shared_text_graph(model, staging / "text_shared.onnx", opset=opset)
            timings["text_shared_export_s"] = time.perf_counter() - tick
            manifest["graphs"]["text_shared"] = {
                "file": "text_shared.onnx",
                "inputs": ["prefix_embeds", "suffix_embeds", "eot_in_suffix"],
                "outputs": ["text_embeds"],
            }
        tick = time.perf_counter()
        to_onnx.export_image_graph(model, staging / "image.onnx", opset=opset)
        timings["image_export_s"] = time.perf_counter() - tick
        table = model.text_model.embeddings.token_embedding.weight.detach().numpy()
        table = table.astype(np.float16 if token_table == "fp16" else np.float32)
        np.save(staging / "token_embedding.npy", table, allow_pickle=False)
        (staging / "tokenizer.json").write_bytes(loaded.tokenizer_json)
        echo(
            f"exported {loaded.name} ({loaded.source}) in {time.perf_counter() - started:.1f} s; "
            f"checking parity"
        )
        tick = time.perf_counter()
        manifest["parity"] = parity.check_parity(
            model,
            staging,
            loaded.tokenizer_json,
            eot_id=manifest["tokens"]["eot_id"],
            tolerance=tolerance,
            echo=echo,
        )
        if shared_prefix:
            manifest["parity"].update(
                parity.check_shared_parity(
                    model,
                    staging,
                    loaded.tokenizer_json,
                    eot_id=manifest["tokens"]["eot_id"],
                    tolerance=tolerance,
                    echo=echo,
                )
            )
        timings["parity_s"] = time.perf_counter() - tick
        manifest["exporter"] = {
            "edge_tune": __version__,
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
            "opset": opset,
            "seconds": {k: round(v, 3) for k, v in timings.items()},
        }
        if provider != "auto":
            _check_provider(staging, provider)
        write_bundle.finish_bundle(staging, out, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    echo(f"bundle written to {out} ({time.perf_counter() - started:.1f} s)")
    return manifest


def _export_quantized(
    name_or_source: str,
    out: Path,
    *,
    mode: str,
    gate_data,
    gate_prompt,
    no_gate: bool,
    max_drop_points: float | None,
    echo,
    provider: str,
    **fp32_options,
) -> dict:
    """fp32 export to a hidden staging folder -> quantise + gate -> atomic swap into `out`."""
    import json

    from edge_tune_export import quantize as quantize_module
    from edge_tune_export import write_bundle

    if mode not in quantize_module.MODES:
        raise ExportError(
            f"unknown quantisation mode {mode!r}",
            hint=f"use one of {', '.join(quantize_module.MODES)}",
        )
    if no_gate and (gate_data is not None or gate_prompt is not None):
        raise ExportError(
            "--no-gate contradicts --gate-data/--gate-prompt", hint="give one or the other"
        )
    source_dir = fp32_options.get("source_dir")
    if source_dir is None and Path(name_or_source).is_dir():
        source_dir = name_or_source
    provisional = {
        "model": {
            "name": Path(name_or_source).name,
            "source": f"dir:{Path(source_dir).resolve()}" if source_dir else "",
        }
    }
    quantize_module.resolve_gate(
        provisional, gate_data=gate_data, gate_prompt=gate_prompt, no_gate=no_gate, mode=mode
    )  # fail before the slow part; resolved again on the manifest
    work = write_bundle.scratch_dir(out, mode)
    try:
        fp32_dir = work / "fp32"
        fp32_manifest = export_bundle(
            name_or_source, fp32_dir, provider="auto", echo=echo, **fp32_options
        )
        gate = quantize_module.resolve_gate(
            fp32_manifest, gate_data=gate_data, gate_prompt=gate_prompt, no_gate=no_gate, mode=mode
        )
        if no_gate:
            echo(f"warning: --no-gate: the {mode} bundle's accuracy is not checked against fp32")
        identity = write_bundle.bundle_identity(
            {
                **fp32_manifest,
                "model": {
                    **fp32_manifest["model"],
                    "name": f"{fp32_manifest['model']['name']}-{mode}",
                },
            }
        )
        write_bundle.check_target(out, identity)
        echo(f"converting to {mode}")
        converted = work / "converted"
        manifest = quantize_module.quantize_bundle(
            fp32_dir,
            converted,
            mode,
            **gate,
            echo=echo,
            final_path=out,
            max_drop_points=quantize_module.DEFAULT_MAX_DROP_POINTS
            if max_drop_points is None
            else max_drop_points,
        )
        if provider != "auto":
            _check_provider(converted, provider)
        write_bundle.check_target(out, identity)
        if out.exists():  # an older copy of the same bundle: swap it out, then remove it
            os.replace(out, work / "previous")
        os.replace(converted, out)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sizes = {name: entry["bytes"] for name, entry in manifest["files"].items()}
    echo(
        f"{mode} bundle written to {out} ({sum(sizes.values()) / 1e6:.1f} MB; fp32 "
        f"{sum(e['bytes'] for e in fp32_manifest['files'].values()) / 1e6:.1f} MB)"
    )
    return json.loads((out / "manifest.json").read_text())


def _manifest_head(loaded, format_version: int) -> dict:
    from tokenizers import Tokenizer

    model = loaded.model
    text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
    tok = Tokenizer.from_str(loaded.tokenizer_json.decode("utf-8"))
    sot = tok.token_to_id("<|startoftext|>")
    eot = tok.token_to_id("<|endoftext|>")
    if sot is None or eot is None:
        raise ExportError(
            "the checkpoint's tokenizer has no <|startoftext|>/<|endoftext|> tokens",
            path=loaded.source,
            hint="export a CLIP checkpoint with its CLIP tokenizer",
        )
    return {
        "format": "edge-tune-bundle",
        "format_version": format_version,
        "model": {"name": loaded.name, "source": loaded.source},
        "dims": {
            "text_width": text_cfg.hidden_size,
            "projection_dim": model.config.projection_dim,
            "context_length": text_cfg.max_position_embeddings,
            "vocab_size": text_cfg.vocab_size,
            "vision_width": vision_cfg.hidden_size,
            "image_size": vision_cfg.image_size,
            "patch_size": vision_cfg.patch_size,
        },
        "tokens": {"sot_id": sot, "eot_id": eot, "pad_id": eot},
        "preprocess": loaded.preprocess,
        "logit_scale": float(model.logit_scale.detach().exp().item()),
        "graphs": {
            "image": {
                "file": "image.onnx",
                "inputs": ["pixel_values"],
                "outputs": ["image_embeds"],
            },
            "text": {
                "file": "text.onnx",
                "inputs": ["prompt_embeds", "eot_index"],
                "outputs": ["text_embeds"],
            },
        },
    }


def _check_provider(staging: Path, provider: str) -> None:
    from edge_tune.providers import make_session

    make_session(staging / "text.onnx", provider, role="text")
    if (staging / "text_shared.onnx").is_file():  # the graph fit will run on that provider
        make_session(staging / "text_shared.onnx", provider, role="text_shared")


__all__ = ["EdgeTuneError", "ExportError", "export_bundle"]
