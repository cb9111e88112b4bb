"""Model files PuLID reads besides the adapter, made in-process: an EVA-CLIP vision tower in BAAI's published key
layout (tiny widths, or full size as shapes only) and facexlib's BiSeNet face parsing with seeded random weights.

The EVA-CLIP key names follow the published EVA02-CLIP checkpoints (BAAI/EVA, EVA-CLIP/rei/eva_clip/eva_vit_model.py:
q/k/v projections with q_bias and v_bias, `inner_attn_ln`, a SwiGLU MLP `w1`/`w2`/`w3` with `ffn_ln`, rotary
buffers under `rope`), with the text tower's keys beside them as in the whole-CLIP file."""

from __future__ import annotations

import contextlib
import os

import torch

EVA_FILE = "EVA02_CLIP_L_336_psz14_s6B.pt"
PARSING_FILE = "parsing_bisenet.pth"
TINY_EVA = dict(width=64, depth=24, image=56, patch=14, mlp=170, embed=32)  # the tiny PuLID files read these widths
FULL_EVA = dict(width=1024, depth=24, image=336, patch=14, mlp=2730, embed=768)


def eva_clip_shapes(width: int, depth: int, image: int, patch: int, mlp: int, embed: int, text: bool = True) -> dict:
    v, grid = "visual.", image // patch
    out = {v + "cls_token": (1, 1, width), v + "pos_embed": (1, grid * grid + 1, width),
           v + "patch_embed.proj.weight": (width, 3, patch, patch), v + "patch_embed.proj.bias": (width,),
           v + "norm.weight": (width,), v + "norm.bias": (width,), v + "head.weight": (embed, width),
           v + "head.bias": (embed,), v + "rope.freqs_cos": (grid * grid, 64), v + "rope.freqs_sin": (grid * grid, 64)}
    for i in range(depth):
        p = f"{v}blocks.{i}."
        for norm in ("norm1", "norm2", "attn.inner_attn_ln"):
            out.update({p + norm + ".weight": (width,), p + norm + ".bias": (width,)})
        out.update({p + f"attn.{n}_proj.weight": (width, width) for n in "qkv"})
        out.update({p + "attn.q_bias": (width,), p + "attn.v_bias": (width,), p + "attn.proj.weight": (width, width),
                    p + "attn.proj.bias": (width,), p + "mlp.w1.weight": (mlp, width), p + "mlp.w1.bias": (mlp,),
                    p + "mlp.w2.weight": (mlp, width), p + "mlp.w2.bias": (mlp,), p + "mlp.ffn_ln.weight": (mlp,),
                    p + "mlp.ffn_ln.bias": (mlp,), p + "mlp.w3.weight": (width, mlp), p + "mlp.w3.bias": (width,)})
    if text:
        out.update({"logit_scale": (), "text.positional_embedding": (77, 48), "text.token_embedding.weight": (64, 48)})
    return out


def tiny_eva_state(seed: int = 0) -> dict:
    state = {}
    gen = torch.Generator().manual_seed(seed)
    for k, shape in sorted(eva_clip_shapes(**TINY_EVA).items()):
        if k.endswith(("norm1.weight", "norm2.weight", "ln.weight", "norm.weight")) and len(shape) == 1:
            state[k] = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2 and "rope" not in k:
            state[k] = torch.randn(shape, generator=gen) / shape[-1] ** 0.5 if len(shape) == 2 else \
                0.05 * torch.randn(shape, generator=gen)
        else:
            state[k] = 0.02 * torch.randn(shape, generator=gen)
    return state


def write_tiny_eva(folder: str, name: str = EVA_FILE, seed: int = 0) -> str:
    """The tiny EVA-CLIP as a whole-CLIP `.pt` state dict, like the published file."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    torch.save(tiny_eva_state(seed), path)
    return path


def parsing_state(seed: int = 0) -> dict:
    """facexlib's BiSeNet (19 classes) with seeded random weights: the published layout of parsing_bisenet.pth."""
    from facexlib.parsing.bisenet import BiSeNet

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in BiSeNet(num_class=19).state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = 1.0 + 0.1 * torch.rand(v.shape, generator=gen)
        elif k.endswith("running_mean") or k.endswith("bias"):
            out[k] = 0.05 * torch.randn(v.shape, generator=gen)
        elif v.ndim == 1:
            out[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=gen)
        else:
            fan_in = v[0].numel()
            out[k] = torch.randn(v.shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return out


def write_parsing(folder: str, name: str = PARSING_FILE, seed: int = 0) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    torch.save(parsing_state(seed), path)
    return path


@contextlib.contextmanager
def pulid_folders(tmp_path_factory):
    """Temporary clip_vision and facexlib folders holding the tiny EVA-CLIP and the random BiSeNet, registered while
    in use (as extra_model_paths.yaml would add them)."""
    import face_models as fm

    root = tmp_path_factory.mktemp("pulid_models")
    write_tiny_eva(str(root / "clip_vision"))
    write_parsing(str(root / "facexlib"))
    with fm.model_folder("clip_vision", str(root / "clip_vision")), fm.model_folder("facexlib", str(root / "facexlib")):
        yield root


def eva_shapes_full() -> dict:
    return eva_clip_shapes(**FULL_EVA)

