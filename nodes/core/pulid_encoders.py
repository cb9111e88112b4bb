"""PuLID's identity encoders and PuLID-FLUX's cross-attention modules, sized from a checkpoint's shapes.

Written from the published method (ToTheBeginning/PuLID: pulid/encoders.py, pulid/encoders_transformer.py and
flux/model.py). Parameter names follow the published files, so they load with `strict=True`.

The input of both encoders is PuLID's ID vector, antelopev2's raw 512-d identity joined with EVA-CLIP's unit
768-d image embedding of the parsed face (1280 wide), plus five EVA-CLIP hidden states (the inputs of blocks 4,
8, 12, 16 and 20 of 24, class token first).

* `PulidIDEncoder` (PuLID v1, SDXL): an MLP turns the ID vector into 5 tokens; for each hidden state, one MLP of
  the class token plus the mean over patch tokens of another MLP gives one more token: 10 tokens per face.
* `PulidIDFormer` (PuLID v1.1 for SDXL, PuLID-FLUX): 32 learned queries, joined by the 5 ID tokens, read the
  hidden states level by level (two perceiver layers per level, the ID tokens also in the context). Several faces
  enter together, the reference's multi-image input: their ID tokens and hidden-state tokens are side by side.
* `PulidFluxCrossAttention` (PuLID-FLUX's `PerceiverAttentionCA`): image tokens of the DiT attend to the 32
  identity tokens; the result, times the weight, is added to the image tokens after some blocks. The identity
  side (norm1, to_kv) is constant over a run, so `identity_keys_values` is separate from `attend`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .projection import PerceiverAttention, feed_forward

HIDDEN_LEVELS = 5  # EVA-CLIP hidden states PuLID reads
ENCODER_HEAD_WIDTH = 64  # IDFormer's perceiver heads (dim_head=64 in the published code)
CA_HEAD_WIDTH = 128  # PuLID-FLUX's cross-attention heads (dim_head=128, heads=16 at width 2048)


def _mlp(widths: Sequence[int]) -> nn.Sequential:
    """Linear, LayerNorm, LeakyReLU, ... , Linear: PuLID's mapping networks (indices 0, 1, 3, 4, 6 hold weights)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.LayerNorm(b), nn.LeakyReLU()]
    return nn.Sequential(*layers)


class PulidIDEncoder(nn.Module):
    """PuLID v1: ID vector [B, I] and 5 hidden states [B, 1 + P, V] -> [B, id_tokens + 5, C]."""

    def __init__(self, input_width: int, body_widths: tuple[int, int], context_width: int, id_tokens: int,
                 vit_width: int, mapping_width: int):
        super().__init__()
        self.id_tokens, self.context_width = id_tokens, context_width
        self.body = _mlp((input_width, *body_widths, context_width * id_tokens))
        for i in range(HIDDEN_LEVELS):
            self.add_module(f"mapping_{i}", _mlp((vit_width, mapping_width, mapping_width, context_width)))
            self.add_module(f"mapping_patch_{i}", _mlp((vit_width, mapping_width, mapping_width, context_width)))

    def forward(self, id_vector: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        tokens = [self.body(id_vector).reshape(-1, self.id_tokens, self.context_width)]
        for i, states in enumerate(hidden):
            cls_token = getattr(self, f"mapping_{i}")(states[:, :1])
            patches = getattr(self, f"mapping_patch_{i}")(states[:, 1:]).mean(dim=1, keepdim=True)
            tokens.append(cls_token + patches)
        return torch.cat(tokens, dim=1)


class PulidIDFormer(nn.Module):
    """PuLID v1.1 / PuLID-FLUX: ID vectors [B, K, I] (K faces, or [B, I]) and 5 hidden states [B, K(1 + P), V]
    -> [B, queries, C]."""

    def __init__(self, width: int, depth: int, heads: int, id_tokens: int, queries: int, output_width: int,
                 input_width: int, vit_width: int, mapping_width: int, id_mapping_width: int, ff_mult: int = 4):
        super().__init__()
        if depth % HIDDEN_LEVELS:
            raise ValueError(f"an IDFormer has a multiple of {HIDDEN_LEVELS} layers, not {depth}")
        self.width, self.id_tokens, self.queries = width, id_tokens, queries
        self.per_level = depth // HIDDEN_LEVELS
        self.latents = nn.Parameter(torch.zeros(1, queries, width))
        self.proj_out = nn.Parameter(torch.zeros(width, output_width))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, heads, ENCODER_HEAD_WIDTH), feed_forward(width, ff_mult)])
            for _ in range(depth))
        for i in range(HIDDEN_LEVELS):
            self.add_module(f"mapping_{i}", _mlp((vit_width, mapping_width, mapping_width, width)))
        self.id_embedding_mapping = _mlp((input_width, id_mapping_width, id_mapping_width, width * id_tokens))

    def forward(self, id_vector: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        faces = id_vector.shape[1] if id_vector.ndim == 3 else 1
        latents = self.latents.expand(id_vector.shape[0], -1, -1)
        ids = self.id_embedding_mapping(id_vector).reshape(-1, self.id_tokens * faces, self.width)
        latents = torch.cat((latents, ids), dim=1)
        for i, states in enumerate(hidden):
            context = torch.cat((ids, getattr(self, f"mapping_{i}")(states)), dim=1)
            for attention, ff in self.layers[i * self.per_level:(i + 1) * self.per_level]:
                latents = attention(context, latents) + latents
                latents = ff(latents) + latents
        return latents[:, :self.queries] @ self.proj_out


class PulidFluxCrossAttention(nn.Module):
    """Image tokens [B, N, dim] attend to identity tokens [B, T, kv_width]; returns [B, N, dim]."""

    def __init__(self, dim: int, kv_width: int, inner: int):
        super().__init__()
        self.heads = inner // CA_HEAD_WIDTH
        self.norm1 = nn.LayerNorm(kv_width)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_width, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    @property
    def dim(self) -> int:
        return self.to_q.in_features

    @property
    def kv_width(self) -> int:
        return self.to_kv.in_features

    def identity_keys_values(self, identity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, kv_width] -> keys and values [B, T, inner]: what a run computes once per module."""
        return self.to_kv(self.norm1(identity)).chunk(2, dim=-1)

    def attend(self, image: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v per head, projected back to the image width. keys/values: [B, T, inner]."""
        b, n, _ = image.shape
        d = CA_HEAD_WIDTH
        q = self.to_q(self.norm2(image)).view(b, n, self.heads, d).transpose(1, 2)
        k = keys.reshape(keys.shape[0], -1, self.heads, d).transpose(1, 2)
        v = values.reshape(values.shape[0], -1, self.heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * d))

    def forward(self, identity: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.attend(image, *self.identity_keys_values(identity))


def _levels(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _finish(module: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    dtypes = {v.dtype for v in state.values()}
    module.to(dtypes.pop() if len(dtypes) == 1 else torch.float32)  # kept as stored: fp16 files stay fp16
    module.load_state_dict(state, strict=True)
    return module.eval().requires_grad_(False)


def build_id_encoder(state: Mapping[str, torch.Tensor]) -> PulidIDEncoder:
    """PuLID v1's IDEncoder from its state dict (group prefix removed)."""
    context = state["mapping_0.6.weight"].shape[0]
    module = PulidIDEncoder(
        input_width=state["body.0.weight"].shape[1],
        body_widths=(state["body.0.weight"].shape[0], state["body.3.weight"].shape[0]),
        context_width=context, id_tokens=state["body.6.weight"].shape[0] // context,
        vit_width=state["mapping_0.0.weight"].shape[1], mapping_width=state["mapping_0.0.weight"].shape[0])
    return _finish(module, state)


def build_id_former(state: Mapping[str, torch.Tensor]) -> PulidIDFormer:
    """PuLID v1.1's / PuLID-FLUX's IDFormer from its state dict (group prefix removed)."""
    width = state["latents"].shape[2]
    module = PulidIDFormer(
        width=width, depth=_levels(state, "layers."),
        heads=state["layers.0.0.to_q.weight"].shape[0] // ENCODER_HEAD_WIDTH,
        id_tokens=state["id_embedding_mapping.6.weight"].shape[0] // width, queries=state["latents"].shape[1],
        output_width=state["proj_out"].shape[1], input_width=state["id_embedding_mapping.0.weight"].shape[1],
        vit_width=state["mapping_0.0.weight"].shape[1], mapping_width=state["mapping_0.0.weight"].shape[0],
        id_mapping_width=state["id_embedding_mapping.0.weight"].shape[0],
        ff_mult=state["layers.0.1.1.weight"].shape[0] // width)
    return _finish(module, state)


def build_flux_cross_attention(state: Mapping[str, torch.Tensor]) -> PulidFluxCrossAttention:
    """One `pulid_ca.<i>` module from its state dict (prefix removed)."""
    inner = state["to_q.weight"].shape[0]
    if inner % CA_HEAD_WIDTH:
        raise ValueError(f"to_q is {inner} wide, not a multiple of the {CA_HEAD_WIDTH}-wide heads")
    module = PulidFluxCrossAttention(state["to_q.weight"].shape[1], state["to_kv.weight"].shape[1], inner)
    return _finish(module, state)


def id_vector(identity: torch.Tensor, eva_embeds: torch.Tensor) -> torch.Tensor:
    """PuLID's ID vector: the raw identity embedding joined with the unit EVA-CLIP image embedding."""
    return torch.cat([identity, F.normalize(eva_embeds, dim=-1)], dim=-1)
