"""Write the wrappers as ONNX graphs with the modern exporter (`torch.onnx.export(dynamo=True)`).

Each graph is one self-contained file (`external_data=False`) with dynamic batch axes (image: B; text:
C and L <= context length) and `metadata_props` naming its role and the bundle format version, so a
runtime can tell a text graph from an image graph without trusting file names.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from edge_tune.bundle import FORMAT_VERSION
from edge_tune_export.wrappers import ImageEncoder, PromptTextEncoder, SharedPrefixTextEncoder

DEFAULT_OPSET = 20
#: protobuf's 2 GiB limit on one serialised file, less 64 MiB for the graph around the weights.
SINGLE_FILE_LIMIT = 2**31 - 2**26


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters and buffers `module` would carry into its graph (shared ones once)."""
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_graph_sizes(model) -> None:
    """Refuse, before any export work, a model whose image or text graph cannot be one ONNX file:
    ViT-L/14 (1.2 GB image graph) fits, ViT-H/14 (2.5 GB) and larger do not."""
    from edge_tune.errors import ExportError

    for role, module in (("image", ImageEncoder(model)), ("text", PromptTextEncoder(model))):
        size = weight_bytes(module)
        if size > SINGLE_FILE_LIMIT:
            raise ExportError(
                f"the {role} graph would hold {size / 1e9:.2f} GB of weights, above ONNX's 2 GB "
                "limit for a single-file graph",
                hint="Models up to ViT-L/14 export; ViT-H/14 and larger need ONNX external data, "
                "which bundles do not support yet",
            )


def export_text_graph(model, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """text.onnx: prompt_embeds [C,L,D] + eot_index [C] -> text_embeds [C,P]."""
    text = model.config.text_config
    length = text.max_position_embeddings
    embeds = torch.randn(3, length, text.hidden_size)
    eot = torch.tensor([length - 1, 5, 9], dtype=torch.int64)
    count, seq = torch.export.Dim("C", min=1), torch.export.Dim("L", min=2, max=length)
    _export(
        PromptTextEncoder(model).eval(),
        (embeds, eot),
        path,
        opset=opset,
        input_names=["prompt_embeds", "eot_index"],
        output_names=["text_embeds"],
        dynamic_shapes={"prompt_embeds": {0: count, 1: seq}, "eot_index": {0: count}},
        role="text",
    )


def export_shared_text_graph(model, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """text_shared.onnx: prefix_embeds [n,P,D] + suffix_embeds [n,K,S,D] + eot_in_suffix [n,K] ->
    text_embeds [n,K,P'] (P + S <= the context length; the runtime never asks for more)."""
    text = model.config.text_config
    length, width = text.max_position_embeddings, text.hidden_size
    example = (
        torch.randn(3, 5, width),
        torch.randn(3, 4, 6, width),
        torch.tensor([[1, 2, 3, 5]] * 3, dtype=torch.int64),
    )
    n, k = torch.export.Dim("n", min=1), torch.export.Dim("K", min=1)
    p, s = (
        torch.export.Dim("P", min=1, max=length - 1),
        torch.export.Dim("S", min=1, max=length - 1),
    )
    _export(
        SharedPrefixTextEncoder(model).eval(),
        example,
        path,
        opset=opset,
        input_names=["prefix_embeds", "suffix_embeds", "eot_in_suffix"],
        output_names=["text_embeds"],
        dynamic_shapes={
            "prefix_embeds": {0: n, 1: p},
            "suffix_embeds": {0: n, 1: k, 2: s},
            "eot_in_suffix": {0: n, 1: k},
        },
        role="text_shared",
    )


def export_image_graph(model, path: Path, *, opset: int = DEFAULT_OPSET) -> None:
    """image.onnx: pixel_values [B,3,H,W] -> image_embeds [B,P]."""
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    _export(
        ImageEncoder(model).eval(),
        (pixels,),
        path,
        opset=opset,
        input_names=["pixel_values"],
        output_names=["image_embeds"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("B", min=1)}},
        role="image",
    )


def _export(
    module, args, path: Path, *, opset, input_names, output_names, dynamic_shapes, role
) -> None:
    quiet = io.StringIO()
    with (
        torch.no_grad(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(quiet),
        _quiet_logs(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
    proto = onnx.load(str(path))
    stamp = {"edge_tune.role": role, "edge_tune.format_version": str(FORMAT_VERSION)}
    kept = [p for p in proto.metadata_props if p.key not in stamp]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in stamp.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet_logs():
    """The exporter logs its progress on INFO/WARNING; a user needs only the parity lines."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
