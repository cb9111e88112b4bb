"""EVA-CLIP's vision tower, the image encoder PuLID reads: detection from a checkpoint's shapes, and PuLID's features.

The network is timm's `Eva` (timm.models.eva), built with the EVA02-CLIP-L-14-336 settings (SwiGLU MLP with a
LayerNorm inside, a LayerNorm inside attention, rotary position embeddings referenced to a 16 x 16 grid) at the
widths the file holds; timm's own checkpoint filter converts BAAI's EVA-CLIP layout (`visual.*`). PuLID reads two
things from it (ToTheBeginning/PuLID, eva_clip/eva_vit_model.py `forward_features(return_hidden=True)`):

* the image embedding: the class token after the final LayerNorm, through the head (768 wide), as a unit vector;
* five hidden states: the tokens (class token first) entering blocks 4, 8, 12, 16 and 20, i.e. leaving blocks
  3, 7, 11, 15 and 19.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .errors import LikenessError

# EVA-CLIP normalises with OpenAI CLIP's statistics (eva_clip/constants.py).
EVA_MEAN = (0.48145466, 0.4578275, 0.40821073)
EVA_STD = (0.26862954, 0.26130258, 0.27577711)
HIDDEN_BLOCKS = (4, 8, 12, 16, 20)  # PuLID's hidden states are the inputs of these blocks
HEAD_WIDTH = 64  # EVA02-CLIP's attention heads (head_width in its config)
ROPE_REFERENCE_GRID = (16, 16)  # pt_hw_seq_len: the rotary embedding is interpolated from the 224 px grid
_PREFIXES = ("visual.", "")


@dataclass(frozen=True)
class EvaConfig:
    """An EVA-CLIP vision tower, read from its weights."""

    width: int
    depth: int
    patch: int
    image_size: int
    mlp_hidden: int
    embed_width: int
    prefix: str  # "visual." for a whole EVA-CLIP file, "" for a vision tower on its own

    @property
    def heads(self) -> int:
        return max(1, self.width // HEAD_WIDTH)

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch) ** 2 + 1

    def describe(self) -> str:
        name = "EVA02-CLIP-L-14-336" if (self.width, self.depth, self.image_size, self.patch) == (1024, 24, 336, 14) \
            else "an EVA02-CLIP vision tower"
        return (f"{name} ({self.depth} blocks, {self.width}-wide hidden states, {self.embed_width}-wide image "
                f"embeds, {self.image_size} px)")


def detect_eva_clip(shapes: Mapping[str, Sequence[int]]) -> EvaConfig | None:
    """The EVA-CLIP vision tower described by a file's key names and shapes, or None when it is not one."""
    for prefix in _PREFIXES:
        def s(key, prefix=prefix):
            shape = shapes.get(prefix + key)
            return None if shape is None else tuple(int(d) for d in shape)

        needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "head.weight", "blocks.0.attn.q_proj.weight",
                  "blocks.0.mlp.w1.weight", "blocks.0.mlp.w3.weight")
        if any(s(k) is None for k in needed):
            continue
        width, tokens, patch = s("cls_token")[-1], s("pos_embed")[1], s("patch_embed.proj.weight")[-1]
        grid = math.isqrt(tokens - 1)
        if grid * grid != tokens - 1:
            return None
        depth = 1 + max(int(k[len(prefix) + 7:].split(".")[0]) for k in shapes if k.startswith(prefix + "blocks."))
        return EvaConfig(width, depth, patch, grid * patch, s("blocks.0.mlp.w1.weight")[0], s("head.weight")[0],
                         prefix)
    return None


def _timm_eva():
    try:
        from timm.models.eva import Eva, checkpoint_filter_fn
    except ImportError as e:
        raise LikenessError(
            f"PuLID's EVA-CLIP encoder needs the timm package, which could not be imported ({e}). Install the pack's "
            "requirements (requirements.txt) with the Python that runs ComfyUI.") from None
    return Eva, checkpoint_filter_fn


def build_eva_clip(state: Mapping[str, torch.Tensor], config: EvaConfig) -> torch.nn.Module:
    """timm's Eva at the file's widths, loaded strictly from an EVA-CLIP state dict (whole CLIP or vision only)."""
    eva, checkpoint_filter_fn = _timm_eva()
    model = eva(img_size=config.image_size, patch_size=config.patch, embed_dim=config.width, depth=config.depth,
                num_heads=config.heads, mlp_ratio=config.mlp_hidden / config.width, qkv_fused=False,
                swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True,
                ref_feat_shape=ROPE_REFERENCE_GRID, global_pool="token", num_classes=config.embed_width)
    converted = checkpoint_filter_fn(dict(state), model)  # keeps `visual.*` of a whole CLIP file
    dtypes = {v.dtype for v in converted.values() if v.is_floating_point()}
    model.to(dtypes.pop() if len(dtypes) == 1 else torch.float32)
    model.load_state_dict(converted, strict=True)
    return model.eval().requires_grad_(False)


def eva_pixels(rgb: torch.Tensor, config: EvaConfig) -> torch.Tensor:
    """[B, 3, H, W] RGB in 0-1 -> the encoder's input: bicubic resize to its size, then EVA-CLIP's normalisation."""
    if rgb.shape[-2:] != (config.image_size, config.image_size):
        rgb = F.interpolate(rgb, size=(config.image_size, config.image_size), mode="bicubic", align_corners=False,
                            antialias=True)
    mean = torch.tensor(EVA_MEAN, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(EVA_STD, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb - mean) / std


@torch.no_grad()
def eva_features(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixels [B, 3, S, S] -> (unit image embeddings [B, E], hidden states [B, 5, tokens, width])."""
    param = next(model.parameters())
    x = pixels.to(device=param.device, dtype=param.dtype)
    taken = [b - 1 for b in HIDDEN_BLOCKS]  # entering block b = leaving block b - 1
    final, intermediates = model.forward_intermediates(x, indices=taken, return_prefix_tokens=True, norm=False,
                                                       output_fmt="NLC")
    hidden = torch.stack([torch.cat([prefix, spatial], dim=1) for spatial, prefix in intermediates], dim=1)
    embeds = F.normalize(model.forward_head(final).float(), dim=-1)
    return embeds, hidden.float()
