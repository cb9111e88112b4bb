"""Image projection modules: encoder features (or identity embeddings) -> image tokens.

Parameter names follow the h94 `image_proj` group so official files load with `strict=True`.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from .variants import Layout


class LinearProjection(nn.Module):
    """Pooled image embedding -> `tokens` tokens (Linear, reshape, LayerNorm). Standard/light/vit-G."""

    def __init__(self, input_width: int, context_width: int, tokens: int):
        super().__init__()
        self.tokens, self.context_width = tokens, context_width
        self.proj = nn.Linear(input_width, tokens * context_width)
        self.norm = nn.LayerNorm(context_width)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:  # [B, E] -> [B, T, C]
        return self.norm(self.proj(embeds).reshape(-1, self.tokens, self.context_width))


class PerTokenMLPProjection(nn.Module):
    """Every encoder hidden state becomes one token (full-face)."""

    def __init__(self, input_width: int, context_width: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Linear(input_width, input_width), nn.GELU(), nn.Linear(input_width, context_width),
            nn.LayerNorm(context_width))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, S, E] -> [B, S, C]
        return self.proj(hidden)


def feed_forward(width: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width * mult, bias=False), nn.GELU(),
                         nn.Linear(width * mult, width, bias=False))


class PerceiverAttention(nn.Module):
    """Latents attend to [features; latents]; softmax in float32 with the scale split over q and k."""

    def __init__(self, width: int, heads: int, head_width: int = 64):
        super().__init__()
        self.heads, self.head_width = heads, head_width
        inner = heads * head_width
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_width).transpose(1, 2)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        b, n, _ = latents.shape
        q = self._split_heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat((features, latents), dim=-2)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)
        scale = 1.0 / math.sqrt(math.sqrt(self.head_width))
        scores = (q * scale) @ (k * scale).transpose(-2, -1)
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        out = (weights @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class PerceiverStack(nn.Module):
    """proj_in -> depth x (attention + feed-forward, both residual) -> proj_out -> norm_out."""

    def __init__(self, width: int, depth: int, heads: int, input_width: int, output_width: int, ff_mult: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(input_width, width)
        self.proj_out = nn.Linear(width, output_width)
        self.norm_out = nn.LayerNorm(output_width)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, heads), feed_forward(width, ff_mult)]) for _ in range(depth))

    def refine(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        for attention, ff in self.layers:
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class Resampler(PerceiverStack):
    """Learned latent queries read encoder hidden states (plus, plus-face, portrait-unnorm)."""

    def __init__(self, width: int, depth: int, heads: int, queries: int, input_width: int, output_width: int,
                 ff_mult: int = 4):
        super().__init__(width, depth, heads, input_width, output_width, ff_mult)
        self.latents = nn.Parameter(torch.zeros(1, queries, width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # [B, S, E] (or [B, E]) -> [B, Q, C]
        if features.ndim == 2:
            features = features[:, None]
        return self.refine(self.latents.expand(features.shape[0], -1, -1), features)


class FaceIDProjection(nn.Module):
    """Identity embedding -> tokens (FaceID, FaceID Portrait)."""

    def __init__(self, input_width: int, hidden_width: int, context_width: int, tokens: int):
        super().__init__()
        self.tokens, self.context_width = tokens, context_width
        self.proj = nn.Sequential(nn.Linear(input_width, hidden_width), nn.GELU(),
                                  nn.Linear(hidden_width, tokens * context_width))
        self.norm = nn.LayerNorm(context_width)

    def forward(self, identity: torch.Tensor) -> torch.Tensor:  # [B, 512] -> [B, T, C]
        return self.norm(self.proj(identity).reshape(-1, self.tokens, self.context_width))


class FaceIDPlusProjection(FaceIDProjection):
    """FaceID tokens refined by a perceiver over CLIP features of the face crop; v2 adds a shortcut."""

    def __init__(self, input_width: int, hidden_width: int, context_width: int, tokens: int, clip_width: int,
                 depth: int = 4):
        super().__init__(input_width, hidden_width, context_width, tokens)
        self.perceiver_resampler = PerceiverStack(context_width, depth, context_width // 64, clip_width, context_width)

    def forward(self, identity: torch.Tensor, clip_hidden: torch.Tensor, shortcut: bool = False,
                shortcut_scale: float = 1.0) -> torch.Tensor:
        id_tokens = super().forward(identity)
        refined = self.perceiver_resampler.refine(id_tokens, clip_hidden)
        return id_tokens + shortcut_scale * refined if shortcut else refined


def _depth(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def build_projection(layout: Layout, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the projection for `layout` from its `image_proj` state dict (prefix removed) and load it strictly."""
    if layout is Layout.LINEAR:
        c = state["norm.weight"].shape[0]
        module = LinearProjection(state["proj.weight"].shape[1], c, state["proj.weight"].shape[0] // c)
    elif layout is Layout.MLP_PER_TOKEN:
        module = PerTokenMLPProjection(state["proj.0.weight"].shape[1], state["proj.3.weight"].shape[0])
    elif layout is Layout.RESAMPLER:
        width = state["latents"].shape[2]
        ff_mult = state["layers.0.1.1.weight"].shape[0] // width
        module = Resampler(width, _depth(state, "layers."), state["layers.0.0.to_q.weight"].shape[0] // 64,
                           state["latents"].shape[1], state["proj_in.weight"].shape[1],
                           state["proj_out.weight"].shape[0], ff_mult)
    elif layout in (Layout.FACEID_MLP, Layout.FACEID_PLUS):
        c = state["norm.weight"].shape[0]
        args = (state["proj.0.weight"].shape[1], state["proj.0.weight"].shape[0], c,
                state["proj.2.weight"].shape[0] // c)
        if layout is Layout.FACEID_MLP:
            module = FaceIDProjection(*args)
        else:
            module = FaceIDPlusProjection(*args, clip_width=state["perceiver_resampler.proj_in.weight"].shape[1],
                                          depth=_depth(state, "perceiver_resampler.layers."))
    elif layout in (Layout.PULID_ENCODER, Layout.PULID_FORMER):
        from .pulid_encoders import build_id_encoder, build_id_former

        return (build_id_encoder if layout is Layout.PULID_ENCODER else build_id_former)(state)
    else:  # pragma: no cover - the Layout enum is closed
        raise ValueError(layout)
    dtypes = {v.dtype for v in state.values()}
    module.to(dtypes.pop() if len(dtypes) == 1 else torch.float32)  # kept as stored: fp16 files stay fp16 in memory
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)
