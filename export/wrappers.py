"""The modules that become the bundle's graphs.

The text graph takes token embeddings *before* positional embeddings plus an explicit EOT index, so the
runtime can splice tuned context vectors in and cut L after the last EOT; the causal mask is built from
L inside the graph (a constant pattern, no device or data dependence) and there is no ArgMax on ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptTextEncoder(nn.Module):
    """prompt_embeds f32[C,L,D], eot_index i64[C] -> L2-normalised text_embeds f32[C,P]."""

    def __init__(self, clip_model):
        super().__init__()
        text = clip_model.text_model
        self.position_embedding = text.embeddings.position_embedding
        self.encoder = text.encoder
        self.final_layer_norm = text.final_layer_norm
        self.text_projection = clip_model.text_projection

    def forward(self, prompt_embeds: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        count, length, _ = prompt_embeds.shape
        hidden = prompt_embeds + self.position_embedding.weight[:length].unsqueeze(0)
        positions = torch.arange(length, device=hidden.device)
        future = positions[None, :] > positions[:, None]
        mask = torch.where(future, torch.finfo(hidden.dtype).min, 0.0).to(hidden.dtype)
        hidden = self.encoder(
            inputs_embeds=hidden, attention_mask=mask[None, None]
        ).last_hidden_state
        hidden = self.final_layer_norm(hidden)
        pooled = hidden[torch.arange(count, device=hidden.device), eot_index]
        return F.normalize(self.text_projection(pooled), dim=-1)


class ImageEncoder(nn.Module):
    """pixel_values f32[B,3,H,W] -> L2-normalised image_embeds f32[B,P]."""

    def __init__(self, clip_model):
        super().__init__()
        self.vision_model = clip_model.vision_model
        self.visual_projection = clip_model.visual_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.visual_projection(pooled), dim=-1)


class SharedPrefixTextEncoder(nn.Module):
    """prefix_embeds f32[n,P,D], suffix_embeds f32[n,K,S,D], eot_in_suffix i64[n,K] -> f32[n,K,P'].

    The optional `text_shared.onnx`: the same features as `PromptTextEncoder` on the K sequences
    [prefix; suffix_k] of each of n candidates, with the prefix (SOT + the m context tokens, common to
    all K class prompts of a candidate) computed once per candidate. The encoder is causal, so the
    prefix's hidden states, keys and values do not depend on any suffix; each suffix attends to its
    candidate's prefix keys/values and, causally, to itself. Token rows per prompt fall from P + S to
    P/K + S (ViT-B/16 at K = 10, P = 5, S = 3: 8 -> 3.5). `eot_in_suffix` is the EOT position minus P.
    Attention is written out (q, k, v, out projections of each CLIP layer) because the shared
    keys/values are not something `CLIPEncoderLayer` takes.
    """

    def __init__(self, clip_model):
        super().__init__()
        text = clip_model.text_model
        self.position_embedding = text.embeddings.position_embedding
        self.layers = text.encoder.layers
        self.final_layer_norm = text.final_layer_norm
        self.text_projection = clip_model.text_projection
        self.heads = text.config.num_attention_heads
        self.head_width = text.config.hidden_size // self.heads

    def _heads(self, x: torch.Tensor, *lead: int) -> torch.Tensor:
        """[rows, D] -> [*lead, heads, T, head_width]."""
        return x.reshape(*lead, self.heads, self.head_width).transpose(-2, -3)

    def forward(
        self, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor, eot_in_suffix: torch.Tensor
    ) -> torch.Tensor:
        n, p, width = prefix_embeds.shape
        k, s = suffix_embeds.shape[1], suffix_embeds.shape[2]
        positions = self.position_embedding.weight
        # Prefix rows and suffix rows go through every weight GEMM together, as one [rows, D]
        # matrix: one MatMul per weight in the graph, so ORT keeps one prepacked copy of it.
        rows_p = n * p
        hidden = torch.cat(
            [
                (prefix_embeds + positions[:p]).reshape(rows_p, width),
                (suffix_embeds + positions[p : p + s]).reshape(n * k * s, width),
            ]
        )
        ip, is_ = torch.arange(p), torch.arange(s)
        mask_p = torch.where(ip[None, :] > ip[:, None], float("-inf"), 0.0)
        mask_s = torch.where(is_[None, :] > is_[:, None], float("-inf"), 0.0)
        scale = self.head_width**-0.5
        for layer in self.layers:
            attention = layer.self_attn
            normed = layer.layer_norm1(hidden)
            q, key, value = (
                attention.q_proj(normed) * scale,
                attention.k_proj(normed),
                attention.v_proj(normed),
            )
            qp, kp, vp = (self._heads(t[:rows_p], n, p) for t in (q, key, value))  # [n,H,P,hd]
            qs, ks, vs = (self._heads(t[rows_p:], n, k, s) for t in (q, key, value))  # [n,K,H,S,hd]
            out_p = torch.softmax(qp @ kp.transpose(-1, -2) + mask_p, -1) @ vp
            scores = torch.cat(
                [qs @ kp.unsqueeze(1).transpose(-1, -2), qs @ ks.transpose(-1, -2) + mask_s], -1
            )
            probs = torch.softmax(scores, -1)
            out_s = probs[..., :p] @ vp.unsqueeze(1) + probs[..., p:] @ vs
            mixed = torch.cat(
                [
                    out_p.transpose(-2, -3).reshape(rows_p, width),
                    out_s.transpose(-2, -3).reshape(n * k * s, width),
                ]
            )
            hidden = hidden + attention.out_proj(mixed)
            hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        hidden_s = hidden[rows_p:].reshape(n, k, s, width)
        index = eot_in_suffix[:, :, None, None].expand(n, k, 1, width)
        pooled = torch.gather(hidden_s, 2, index)[:, :, 0]
        return F.normalize(self.text_projection(self.final_layer_norm(pooled)), dim=-1)
