"""The two modules that become the bundle's graphs.

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
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=mask[None, None]).last_hidden_state
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
