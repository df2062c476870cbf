"""The PyTorch references that `edge-tune bench` measures edge-tune against.

Two paths, both on SharpZO's parameterisation `ctx(w) = ctx0 + reshape(A w)` from the runtime's own
`PromptSpace` (so the same prompts are scored):

- `EagerReference`: forward-only scoring the way SharpZO's released code does it: every candidate
  on its own, its K class prompts padded to CLIP's full 77 tokens, one PyTorch-eager text-encoder
  call per candidate, under `no_grad`.
- `first_order_tune`: CoOp-style first-order prompt tuning (Adam through autograd) on the same
  parameterisation and classes, for the memory comparison: this is what a device would have to hold
  to train the prompt with backpropagation.

The text encoder is the exporter's own `PromptTextEncoder` around the model the bundle was exported
from (registry model, `dir:` checkpoint or hub id, by the manifest's `model.source`), so its features
match the bundle's text graph; when that model cannot be rebuilt here (a hub id offline), a randomly
initialised encoder of the same shapes stands in and `weights` says so: its timings and memory still
hold, its losses do not. Attention runs as transformers loads it by default (SDPA), PyTorch at its best
in eager mode.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_tune_export.wrappers import PromptTextEncoder  # the bundle text graph's own maths

FULL_LENGTH = 77


def load_clip_model(bundle_dir: str | Path) -> tuple[nn.Module, str]:
    """The bundle's source model in eval mode, and where its weights came from."""
    from transformers import CLIPConfig, CLIPModel

    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    source = str(manifest.get("model", {}).get("source", ""))
    kind, _, name = source.partition(":")
    model = None
    if kind == "registry":
        model = _registry_model(name)
    elif kind == "dir" and Path(name).is_dir():
        model = CLIPModel.from_pretrained(name, local_files_only=True)
    elif kind == "hf":
        try:
            model = CLIPModel.from_pretrained(name)
        except Exception:  # offline hub: fall back to the same shapes below
            model = None
    if model is not None:
        return model.eval(), source
    config = CLIPConfig(
        text_config=_text_config_from_graph(Path(bundle_dir), manifest),
        projection_dim=manifest["dims"]["projection_dim"],
    )
    torch.manual_seed(0)
    return CLIPModel(config).eval(), "random (same shapes as the bundle; source not available here)"


def _registry_model(name: str) -> nn.Module | None:
    """Rebuild a registry model (tiny-random, b16-random) through the exporter's registry."""
    from edge_tune_export import registry

    return registry.build_model(name)


def _text_config_from_graph(bundle_dir: Path, manifest: dict) -> dict:
    """Text-tower shapes read from text.onnx: width, layers (Softmax count), MLP width."""
    import onnx

    graph = onnx.load(str(bundle_dir / "text.onnx"), load_external_data=False).graph
    width = int(manifest["dims"]["text_width"])
    layers = sum(1 for node in graph.node if node.op_type == "Softmax")
    hidden = max(
        (
            int(i.dims[0]) * int(i.dims[1]) // width
            for i in graph.initializer
            if len(i.dims) == 2 and width in tuple(i.dims)
        ),
        default=4 * width,
    )
    return {
        "hidden_size": width,
        "intermediate_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // 64),
        "max_position_embeddings": int(manifest["dims"]["context_length"]),
        "vocab_size": int(manifest["dims"]["vocab_size"]),
        "hidden_act": "quick_gelu",
    }


class EagerReference:
    """SharpZO's released scoring path in PyTorch eager: one candidate at a time, 77-token prompts."""

    def __init__(
        self,
        bundle_dir: str | Path,
        space: Any,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        logit_scale: float,
        threads: int | None = None,
    ):
        if threads:
            torch.set_num_threads(int(threads))
        model, self.weights = load_clip_model(bundle_dir)
        self.encoder = PromptTextEncoder(model).eval()
        self.space = space.padded(min(FULL_LENGTH, space.context_length))
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.logit_scale = float(logit_scale)
        self.eot_index = torch.from_numpy(np.asarray(space.eot_index, dtype=np.int64))

    @torch.no_grad()
    def class_features(self, w: np.ndarray) -> torch.Tensor:
        prompts = self.space.embeddings(np.asarray(w, dtype=np.float64)[None, :])
        return self.encoder(torch.from_numpy(prompts), self.eot_index)

    @torch.no_grad()
    def losses(self, W: np.ndarray) -> np.ndarray:
        """Mean cross-entropy per candidate, each candidate its own text-encoder call."""
        out = []
        for w in np.atleast_2d(W):
            logits = self.logit_scale * self.features @ self.class_features(w).T
            out.append(float(F.cross_entropy(logits, self.labels)))
        return np.asarray(out, dtype=np.float64)


def first_order_tune(
    bundle_dir: str | Path,
    space: Any,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    logit_scale: float,
    steps: int = 5,
    lr: float = 1e-3,
    threads: int | None = None,
    full_length: bool = True,
) -> dict:
    """Adam on w through autograd (CoOp-style), SharpZO's parameterisation; returns losses and timing.

    Prompts are built in torch as [SOT] (ctx0 + reshape(A w)) suffix from the prompt space's own
    tensors, so the gradient reaches w; `full_length` pads them to 77 tokens as CoOp does.
    """
    if threads:
        torch.set_num_threads(int(threads))
    model, weights = load_clip_model(bundle_dir)
    encoder = PromptTextEncoder(model)
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    if space.projection is None:
        raise ValueError("first_order_tune needs the sharpzo parameterisation (a projection A)")
    if full_length:
        space = space.padded(min(FULL_LENGTH, space.context_length))
    base = torch.from_numpy(
        np.ascontiguousarray(space.base, dtype=np.float32)
    )  # [K, L, D], ctx0 at 1..m
    projection = torch.from_numpy(np.asarray(space.projection, dtype=np.float32))  # [m*D, d]
    count = space.m
    eot_index = torch.from_numpy(np.asarray(space.eot_index, dtype=np.int64))
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    w = torch.zeros(projection.shape[1], dtype=torch.float32, requires_grad=True)
    optimiser = torch.optim.Adam([w], lr=lr)
    classes, length, width = base.shape
    losses, started = [], time.perf_counter()
    for _ in range(steps):
        ctx = (projection @ w).view(1, count, width).expand(classes, count, width)
        prompts = torch.cat(
            [base[:, :1], base[:, 1 : 1 + count] + ctx, base[:, 1 + count :]], dim=1
        )
        logits = logit_scale * x @ encoder(prompts, eot_index).T
        loss = F.cross_entropy(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    return {
        "losses": losses,
        "seconds_per_step": (time.perf_counter() - started) / max(1, steps),
        "weights": weights,
        "w": w.detach().numpy().astype(np.float64),
    }
