"""Test data made in-process: tiny ComfyUI models, synthetic adapter checkpoints, a tiny CLIP vision model.

Key names and shapes of the official files are written out here from the published layouts
(h94/IP-Adapter and h94/IP-Adapter-FaceID), independently of the pack's own code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os

import torch
import torch.nn.functional as F

import comfy.clip_vision
import comfy.model_patcher
import comfy.supported_models

CPU = torch.device("cpu")

# ---------------------------------------------------------------- tiny and real UNet layouts

SD15_LAYOUT = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    adm_in_channels=None, in_channels=4, num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
    channel_mult=[1, 2, 4, 4], transformer_depth_middle=1, use_linear_in_transformer=False,
    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_temporal_attention=False,
    use_temporal_resblock=False)
SDXL_LAYOUT = dict(
    use_checkpoint=False, image_size=32, out_channels=4, use_spatial_transformer=True, legacy=False,
    num_classes="sequential", in_channels=4, num_res_blocks=[2, 2, 2], transformer_depth=[0, 0, 2, 2, 10, 10],
    channel_mult=[1, 2, 4], transformer_depth_middle=10, use_linear_in_transformer=True,
    transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], use_temporal_attention=False,
    use_temporal_resblock=False)

TINY_CONTEXT = 64
TINY_KOLORS_TEXT = 96  # the tiny stand-in for Kolors' 4096-wide ChatGLM text space (its encoder_hid_proj input)
TINY_POOLED = 32


def _config(kind: str, tiny: bool) -> tuple[type, dict]:
    if kind == "sd15":
        cfg = dict(SD15_LAYOUT, model_channels=32 if tiny else 320, context_dim=TINY_CONTEXT if tiny else 768,
                   dtype=torch.float32)
        return comfy.supported_models.SD15, cfg
    if kind == "sdxl":
        cfg = dict(SDXL_LAYOUT, model_channels=32 if tiny else 320, context_dim=TINY_CONTEXT if tiny else 2048,
                   adm_in_channels=(TINY_POOLED if tiny else 1280) + 1536, dtype=torch.float32)
        return comfy.supported_models.SDXL, cfg
    raise ValueError(kind)


@functools.lru_cache(maxsize=8)
def build_unet(kind: str = "sd15", seed: int = 0, tiny: bool = True) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI SD1.5- or SDXL-layout model: tiny with seeded random weights, or full size on the meta device.

    Cached: Likeness never changes a model it is given, and the tests check that."""
    cls, cfg = _config(kind, tiny)
    mc = cls(cfg)
    if tiny and kind == "sdxl":
        mc.unet_config["num_head_channels"] = 16
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({}, device=None if tiny else torch.device("meta"))
    if tiny:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


# A FLUX.1 layout (ComfyUI's own Flux model class) narrowed for tests: the real block structure (double blocks,
# then single blocks; 16 latent channels, 2x2 patches, rope over 3 axes), sized by these numbers.
TINY_FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=64,
                 hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=4, depth_single_blocks=8, axes_dim=[8, 12, 12],
                 theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)


@functools.lru_cache(maxsize=8)
def build_flux(seed: int = 0, depth: int = 4, depth_single_blocks: int = 8) -> comfy.model_patcher.ModelPatcher:
    """A tiny FLUX.1 (dev-style, with a guidance embedding) from ComfyUI's classes, seeded random weights.

    Cached like build_unet: Likeness never changes a model it is given."""
    mc = comfy.supported_models.Flux(dict(TINY_FLUX, depth=depth, depth_single_blocks=depth_single_blocks))
    mc.set_inference_dtype(torch.float32, None)
    model = mc.get_model({})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def flux_conditioning(batch: int = 1, tokens: int = 7, seed: int = 1, guidance: float = 3.5):
    """FLUX conditioning for the tiny model: T5-like context [B, tokens, 64] and a pooled vector [B, 32]."""
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(batch, tokens, TINY_FLUX["context_in_dim"], generator=gen)
    pooled = torch.randn(batch, TINY_FLUX["vec_in_dim"], generator=gen)
    return [[ctx, {"pooled_output": pooled, "guidance": guidance}]]


def conditioning(kind: str, batch: int = 1, tokens: int = 7, seed: int = 1, tiny: bool = True):
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn(batch, tokens, TINY_CONTEXT if tiny else 768, generator=gen)
    extra = {}
    if kind == "sdxl":
        extra["pooled_output"] = torch.randn(batch, TINY_POOLED, generator=gen)
    return [[ctx, extra]]


# ---------------------------------------------------------------- adapter checkpoints

SD15_WIDTHS = [320, 320, 640, 640, 1280, 1280] + [1280] * 3 + [640] * 3 + [320] * 3 + [1280]
SDXL_WIDTHS = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10
LORA_RANK = 128


def linear_proj_shapes(e: int, c: int, t: int) -> dict:
    return {"proj.weight": (t * c, e), "proj.bias": (t * c,), "norm.weight": (c,), "norm.bias": (c,)}


def perceiver_layer_shapes(prefix: str, d: int, heads: int, depth: int = 4, mult: int = 4) -> dict:
    out = {}
    for i in range(depth):
        p = f"{prefix}layers.{i}."
        out.update({
            p + "0.norm1.weight": (d,), p + "0.norm1.bias": (d,), p + "0.norm2.weight": (d,), p + "0.norm2.bias": (d,),
            p + "0.to_q.weight": (64 * heads, d), p + "0.to_kv.weight": (128 * heads, d),
            p + "0.to_out.weight": (d, 64 * heads),
            p + "1.0.weight": (d,), p + "1.0.bias": (d,), p + "1.1.weight": (mult * d, d), p + "1.3.weight": (d, mult * d),
        })
    return out


def resampler_shapes(d: int, heads: int, q: int, e: int, c: int, depth: int = 4) -> dict:
    out = {"latents": (1, q, d), "proj_in.weight": (d, e), "proj_in.bias": (d,), "proj_out.weight": (c, d),
           "proj_out.bias": (c,), "norm_out.weight": (c,), "norm_out.bias": (c,)}
    out.update(perceiver_layer_shapes("", d, heads, depth))
    return out


def full_face_shapes(e: int, c: int) -> dict:
    return {"proj.0.weight": (e, e), "proj.0.bias": (e,), "proj.2.weight": (c, e), "proj.2.bias": (c,),
            "proj.3.weight": (c,), "proj.3.bias": (c,)}


def faceid_mlp_shapes(c: int, t: int, e: int = 512, hidden: int = 1024) -> dict:
    return {"proj.0.weight": (hidden, e), "proj.0.bias": (hidden,), "proj.2.weight": (t * c, hidden),
            "proj.2.bias": (t * c,), "norm.weight": (c,), "norm.bias": (c,)}


def faceid_plus_shapes(c: int, clip: int = 1280, t: int = 4, depth: int = 4) -> dict:
    out = faceid_mlp_shapes(c, t)
    pr = "perceiver_resampler."
    out.update({pr + "proj_in.weight": (c, clip), pr + "proj_in.bias": (c,), pr + "proj_out.weight": (c, c),
                pr + "proj_out.bias": (c,), pr + "norm_out.weight": (c,), pr + "norm_out.bias": (c,)})
    out.update(perceiver_layer_shapes(pr, c, c // 64, depth))
    return out


def kv_shapes(widths: list[int], c: int) -> dict:
    out = {}
    for n, w in enumerate(widths):
        out[f"{2 * n + 1}.to_k_ip.weight"] = (w, c)
        out[f"{2 * n + 1}.to_v_ip.weight"] = (w, c)
    return out


def lora_shapes(widths: list[int], c: int, rank: int = LORA_RANK) -> dict:
    out = {}
    for n, w in enumerate(widths):
        for j, ctx in ((2 * n, w), (2 * n + 1, c)):  # attn1 (self), attn2 (cross: k/v read the text)
            for name, fan_in in (("q", w), ("k", ctx), ("v", ctx), ("out", w)):
                out[f"{j}.to_{name}_lora.down.weight"] = (rank, fan_in)
                out[f"{j}.to_{name}_lora.up.weight"] = (w, rank)
    return out


def official_shapes(name: str) -> dict:
    """Key -> shape of each official h94 file (flat safetensors naming), from the published layouts."""
    sd15, sdxl = (SD15_WIDTHS, 768), (SDXL_WIDTHS, 2048)
    table = {
        "ip-adapter_sd15.safetensors": (linear_proj_shapes(1024, 768, 4), sd15),
        "ip-adapter_sd15_light_v11.bin": (linear_proj_shapes(1024, 768, 4), sd15),
        "ip-adapter_sd15_vit-G.safetensors": (linear_proj_shapes(1280, 768, 4), sd15),
        "ip-adapter-plus_sd15.safetensors": (resampler_shapes(768, 12, 16, 1280, 768), sd15),
        "ip-adapter-plus-face_sd15.safetensors": (resampler_shapes(768, 12, 16, 1280, 768), sd15),
        "ip_plus_composition_sd15.safetensors": (resampler_shapes(768, 12, 16, 1280, 768), sd15),
        "ip-adapter-full-face_sd15.safetensors": (full_face_shapes(1280, 768), sd15),
        "ip-adapter_sdxl.safetensors": (linear_proj_shapes(1280, 2048, 4), sdxl),
        "ip-adapter_sdxl_vit-h.safetensors": (linear_proj_shapes(1024, 2048, 4), sdxl),
        "ip-adapter-plus_sdxl_vit-h.safetensors": (resampler_shapes(1280, 20, 16, 1280, 2048), sdxl),
        "ip-adapter-plus-face_sdxl_vit-h.safetensors": (resampler_shapes(1280, 20, 16, 1280, 2048), sdxl),
        "ip-adapter-faceid_sd15.bin": (faceid_mlp_shapes(768, 4), sd15, True),
        "ip-adapter-faceid-plusv2_sd15.bin": (faceid_plus_shapes(768), sd15, True),
        "ip-adapter-faceid-portrait-v11_sd15.bin": (faceid_mlp_shapes(768, 16), sd15),
        "ip-adapter-faceid_sdxl.bin": (faceid_mlp_shapes(2048, 4), sdxl, True),
        "ip-adapter-faceid-plusv2_sdxl.bin": (faceid_plus_shapes(2048), sdxl, True),
        "ip-adapter-faceid-portrait_sdxl.bin": (faceid_mlp_shapes(2048, 16), sdxl),
        "ip-adapter-faceid-portrait_sdxl_unnorm.bin": (resampler_shapes(1280, 20, 16, 512, 2048), sdxl),
        # InstantX/InstantID ip-adapter.bin: Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16,
        # embedding_dim=512, output_dim=2048, ff_mult=4) and the 70 SDXL to_k_ip/to_v_ip pairs, all float32
        "ip-adapter.bin": (resampler_shapes(1280, 20, 16, 512, 2048), sdxl),
        # Kwai-Kolors: a 2048-wide resampler with 12 heads over ViT-L/14-336 hidden states; FaceID Plus making
        # 6 tokens 4096 wide (the ChatGLM space) whose K/V weights read the UNet's 2048-wide projection of them
        "Kolors-IP-Adapter-Plus.bin": (resampler_shapes(2048, 12, 16, 1024, 2048), sdxl),
        "Kolors-IP-Adapter-FaceID-Plus.bin": (faceid_plus_shapes(4096, clip=1024, t=6), sdxl),
    }
    proj, (widths, c), *lora = table[name]
    out = {"image_proj." + k: v for k, v in proj.items()}
    out.update({"ip_adapter." + k: v for k, v in kv_shapes(widths, c).items()})
    if lora:
        out.update({"ip_adapter." + k: v for k, v in lora_shapes(widths, c).items()})
    return out


OFFICIAL_FILES = [
    "ip-adapter_sd15.safetensors", "ip-adapter_sd15_light_v11.bin", "ip-adapter_sd15_vit-G.safetensors",
    "ip-adapter-plus_sd15.safetensors", "ip-adapter-plus-face_sd15.safetensors",
    "ip_plus_composition_sd15.safetensors", "ip-adapter-full-face_sd15.safetensors", "ip-adapter_sdxl.safetensors",
    "ip-adapter_sdxl_vit-h.safetensors", "ip-adapter-plus_sdxl_vit-h.safetensors",
    "ip-adapter-plus-face_sdxl_vit-h.safetensors", "ip-adapter-faceid_sd15.bin",
    "ip-adapter-faceid-plusv2_sd15.bin", "ip-adapter-faceid-portrait-v11_sd15.bin", "ip-adapter-faceid_sdxl.bin",
    "ip-adapter-faceid-plusv2_sdxl.bin", "ip-adapter-faceid-portrait_sdxl.bin",
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin", "ip-adapter.bin",
]
# How each published file stores its two tensor groups (image_proj, ip_adapter), where the layout alone is shared:
# InstantID's 1,691,134,141-byte file is 4 bytes a parameter; Portrait unnorm's 1.01 GB fits a float32 Resampler with
# float16 attention weights.
OFFICIAL_DTYPES = {"ip-adapter.bin": ("F32", "F32"), "ip-adapter-faceid-portrait_sdxl_unnorm.bin": ("F32", "F16")}
KOLORS_FILES = ["Kolors-IP-Adapter-Plus.bin", "Kolors-IP-Adapter-FaceID-Plus.bin"]


# ---------------------------------------------------------------- PuLID checkpoints (ToTheBeginning/PuLID layouts)

def pulid_mlp_shapes(prefix: str, widths: tuple) -> dict:
    """nn.Sequential(Linear, LayerNorm, LeakyReLU, Linear, LayerNorm, LeakyReLU, Linear): weights at 0, 1, 3, 4, 6."""
    out = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        out.update({f"{prefix}{3 * i}.weight": (b, a), f"{prefix}{3 * i}.bias": (b,)})
        if i < len(widths) - 2:
            out.update({f"{prefix}{3 * i + 1}.weight": (b,), f"{prefix}{3 * i + 1}.bias": (b,)})
    return out


def pulid_encoder_shapes(c: int = 2048, vit: int = 1024, id_in: int = 1280, hidden: int = 1024,
                         id_tokens: int = 5) -> dict:
    """PuLID v1 `IDEncoder(width=1280, context_dim=2048, num_token=5)`; `hidden` is its fixed 1024."""
    h1, h2 = min(c * id_tokens // 4, hidden), min(c * id_tokens // 2, hidden)
    out = pulid_mlp_shapes("body.", (id_in, h1, h2, c * id_tokens))
    for i in range(5):
        out.update(pulid_mlp_shapes(f"mapping_{i}.", (vit, hidden, hidden, c)))
        out.update(pulid_mlp_shapes(f"mapping_patch_{i}.", (vit, hidden, hidden, c)))
    return out


def pulid_former_shapes(dim: int = 1024, depth: int = 10, heads: int = 16, queries: int = 32, c: int = 2048,
                        id_in: int = 1280, vit: int = 1024, hidden: int = 1024, id_tokens: int = 5) -> dict:
    """PuLID v1.1 / PuLID-FLUX `IDFormer()` with its published defaults (64-wide heads, ff_mult 4)."""
    out = {"latents": (1, queries, dim), "proj_out": (dim, c)}
    out.update(perceiver_layer_shapes("", dim, heads, depth))
    for i in range(5):
        out.update(pulid_mlp_shapes(f"mapping_{i}.", (vit, hidden, hidden, dim)))
    out.update(pulid_mlp_shapes("id_embedding_mapping.", (id_in, hidden, hidden, dim * id_tokens)))
    return out


def pulid_ca_shapes(count: int = 20, dim: int = 3072, kv: int = 2048, inner: int = 2048) -> dict:
    """PuLID-FLUX `PerceiverAttentionCA(dim=3072, dim_head=128, heads=16, kv_dim=2048)` x count."""
    out = {}
    for i in range(count):
        p = f"{i}."
        out.update({p + "norm1.weight": (kv,), p + "norm1.bias": (kv,), p + "norm2.weight": (dim,),
                    p + "norm2.bias": (dim,), p + "to_q.weight": (inner, dim), p + "to_kv.weight": (2 * inner, kv),
                    p + "to_out.weight": (dim, inner)})
    return out


def pulid_sdxl_kv(widths: list[int], c: int, published: bool) -> dict:
    """Attention weights as PuLID publishes them (`id_adapter_attn_layers.<n>.id_to_k`) or as the IP-Adapter-style
    conversions name them (`ip_adapter.<n>.to_k_ip`)."""
    if not published:
        return {"ip_adapter." + k: v for k, v in kv_shapes(widths, c).items()}
    out = {}
    for n, w in enumerate(widths):
        out[f"id_adapter_attn_layers.{2 * n + 1}.id_to_k.weight"] = (w, c)
        out[f"id_adapter_attn_layers.{2 * n + 1}.id_to_v.weight"] = (w, c)
    return out


def pulid_official_shapes(name: str) -> dict:
    """Key -> shape of each published PuLID file (flat naming, as in the file)."""
    if name.startswith("pulid_flux"):
        out = {"pulid_encoder." + k: v for k, v in pulid_former_shapes().items()}
        out.update({"pulid_ca." + k: v for k, v in pulid_ca_shapes().items()})
        return out
    published = name.startswith("pulid_")
    encoder = pulid_former_shapes() if "1.1" in name else pulid_encoder_shapes()
    group = "id_adapter." if published else "image_proj."
    out = {group + k: v for k, v in encoder.items()}
    out.update(pulid_sdxl_kv(SDXL_WIDTHS, 2048, published))
    return out


PULID_FILES = ["ip-adapter_pulid_sdxl_fp16.safetensors", "pulid_v1.bin", "pulid_v1.1.safetensors",
               "ip-adapter_pulidv1.1_sdxl_fp16.safetensors", "pulid_flux_v0.9.0.safetensors",
               "pulid_flux_v0.9.1.safetensors"]


def tiny_pulid_state(kind: str, seed: int = 0, widths: list[int] | None = None, context: int = TINY_CONTEXT,
                     vit: int = 64, eva_embed: int = 32, flux_blocks: int = 4, flux_dim: int = 64) -> dict:
    """A tiny PuLID file in the published layout: `v1` / `v1.1` for a tiny SDXL UNet whose sites have `widths`, or
    `flux` with `flux_blocks` cross-attention modules for a tiny FLUX of width `flux_dim`."""
    id_in = 512 + eva_embed
    if kind == "v1":
        shapes = {"id_adapter." + k: v for k, v in
                  pulid_encoder_shapes(c=context, vit=vit, id_in=id_in, hidden=48).items()}
    else:
        enc = pulid_former_shapes(dim=64, depth=5, heads=1, queries=8, c=context, id_in=id_in, vit=vit, hidden=48)
        shapes = {("pulid_encoder." if kind == "flux" else "id_adapter.") + k: v for k, v in enc.items()}
    if kind == "flux":
        shapes.update({"pulid_ca." + k: v for k, v in
                       pulid_ca_shapes(flux_blocks, dim=flux_dim, kv=context, inner=256).items()})
    else:
        shapes.update(pulid_sdxl_kv(widths, context, published=True))
    return tensors_for(shapes, seed)


def tensors_for(shapes: dict, seed: int = 0) -> dict:
    """Seeded random tensors for a shape table: matrices ~ N(0, 1/fan_in), norms ~ 1, biases small."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in sorted(shapes.items()):
        if k.endswith("latents"):
            t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        elif len(shape) == 1 and ("norm" in k or k.endswith(("1.0.weight", "proj.3.weight"))) and k.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:
            t = 0.05 * torch.randn(shape, generator=gen)
        else:
            t = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
        out[k] = t
    return out


def tiny_adapter_state(layout: str, widths: list[int], context: int = TINY_CONTEXT, input_width: int = 32,
                       tokens: int = 4, seed: int = 0, kv_scale: float = 1.0) -> dict:
    """A tiny adapter in the official key layout for a tiny UNet whose sites have `widths`."""
    if layout == "linear":
        proj = linear_proj_shapes(input_width, context, tokens)
    elif layout == "resampler":
        proj = resampler_shapes(64, 1, tokens, input_width, context, depth=2)
    elif layout == "full":
        proj = full_face_shapes(input_width, context)
    else:
        raise ValueError(layout)
    shapes = {"image_proj." + k: v for k, v in proj.items()}
    shapes.update({"ip_adapter." + k: v for k, v in kv_shapes(widths, context).items()})
    state = tensors_for(shapes, seed)
    for k in state:
        if k.startswith("ip_adapter."):
            state[k] = state[k] * kv_scale
    return state


def save_safetensors(path: str, state: dict) -> str:
    import safetensors.torch

    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


# ---------------------------------------------------------------- a tiny SDXL ControlNet in the diffusers layout

TINY_SDXL_UNET = dict(SDXL_LAYOUT, model_channels=32, context_dim=TINY_CONTEXT, adm_in_channels=TINY_POOLED + 1536,
                      num_head_channels=16)


def _is_tiny_sdxl_diffusers(state_dict) -> bool:
    conv_in = state_dict.get("conv_in.weight")
    attn = state_dict.get("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    add = state_dict.get("add_embedding.linear_1.weight")
    return (conv_in is not None and attn is not None and add is not None and conv_in.shape[0] == 32
            and attn.shape[1] == TINY_CONTEXT and add.shape[1] == TINY_SDXL_UNET["adm_in_channels"])


@contextlib.contextmanager
def comfy_knows_the_tiny_sdxl():
    """ComfyUI reads a diffusers-layout UNet or ControlNet's config from its table of published models
    (`model_detection.unet_config_from_diffusers_unet`); while this runs, the table also knows the tiny SDXL layout
    of `build_unet`. Only the lookup is extended: published layouts are found as before, and ComfyUI's own key
    conversion and loading run unchanged."""
    import comfy.model_detection

    published = comfy.model_detection.unet_config_from_diffusers_unet

    def lookup(state_dict, dtype=None):
        found = published(state_dict, dtype)
        if found is None and _is_tiny_sdxl_diffusers(state_dict):
            found = comfy.model_detection.convert_config(dict(TINY_SDXL_UNET, dtype=dtype))
        return found

    comfy.model_detection.unet_config_from_diffusers_unet = lookup
    try:
        yield
    finally:
        comfy.model_detection.unet_config_from_diffusers_unet = published


def _controlnet_to_diffusers(config: dict) -> dict:
    """ComfyUI (ldm) key -> diffusers key of a ControlNet: the UNet's map plus the ControlNet's own parts."""
    import comfy.utils

    to_ldm = comfy.utils.unet_to_diffusers(config)
    to_ldm.update({f"controlnet_mid_block.{p}": f"middle_block_out.0.{p}" for p in ("weight", "bias")})
    blocks = sum(config["num_res_blocks"]) + len(config["channel_mult"])  # input blocks, zero convs
    for i in range(blocks):
        to_ldm.update({f"controlnet_down_blocks.{i}.{p}": f"zero_convs.{i}.0.{p}" for p in ("weight", "bias")})
    hint = ["controlnet_cond_embedding.conv_in"] + [f"controlnet_cond_embedding.blocks.{i}" for i in range(6)]
    hint.append("controlnet_cond_embedding.conv_out")
    for n, name in enumerate(hint):
        to_ldm.update({f"{name}.{p}": f"input_hint_block.{2 * n}.{p}" for p in ("weight", "bias")})
    # SDXL's size-and-pooled embedding is `add_embedding` in diffusers (`class_embedding` maps to the same weights
    # for other models); ComfyUI's map lists both, in no fixed order
    ordered = sorted(to_ldm.items(), key=lambda item: item[0].startswith("add_embedding."))
    return {ldm: diffusers for diffusers, ldm in ordered}


def tiny_identitynet_state(seed: int = 0, scale: float = 0.05) -> dict:
    """A ControlNet for the tiny SDXL of `build_unet` in the diffusers key layout InstantX published IdentityNet in
    (ControlNetModel/diffusion_pytorch_model.safetensors): hint 3 channels, cross-attention over 64-wide tokens.
    Made with ComfyUI's own ControlNet class and its key map, seeded random weights (no diffusers needed)."""
    import comfy.cldm.cldm
    import comfy.model_detection
    import comfy.ops

    config = comfy.model_detection.convert_config(dict(TINY_SDXL_UNET))
    config.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(hint_channels=3, dtype=torch.float32, device=CPU,
                                     operations=comfy.ops.disable_weight_init, **config)
    names = _controlnet_to_diffusers(config)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in sorted(net.state_dict().items()):
        if value.ndim == 1 and key.endswith("weight"):
            t = 1.0 + 0.1 * torch.randn(value.shape, generator=gen)
        else:
            t = scale * torch.randn(value.shape, generator=gen)
        out[names[key]] = t
    return out


# ---------------------------------------------------------------- tiny CLIP vision

def clip_config(hidden: int = 64, projection: int = 32, layers: int = 3, image_size: int = 56) -> dict:
    return {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": hidden,
            "image_size": image_size, "initializer_factor": 1.0, "initializer_range": 0.02,
            "intermediate_size": hidden * 4, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
            "num_attention_heads": 4, "num_channels": 3, "num_hidden_layers": layers, "patch_size": 14,
            "projection_dim": projection, "torch_dtype": "float32"}


def write_tiny_clip_vision(folder: str, name: str = "tiny-clip-vision", seed: int = 0, **cfg) -> str:
    """Writes <name>.json and <name>.safetensors; returns the safetensors path."""
    os.makedirs(folder, exist_ok=True)
    config_path = os.path.join(folder, name + ".json")
    with open(config_path, "w") as f:
        json.dump(clip_config(**cfg), f)
    cv = comfy.clip_vision.ClipVisionModel(config_path)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in cv.get_sd().items():
        if k.endswith("weight") and v.ndim == 1:
            state[k] = 1.0 + 0.05 * torch.randn(v.shape, generator=gen)
        else:
            state[k] = 0.05 * torch.randn(v.shape, generator=gen)
    return save_safetensors(os.path.join(folder, name + ".safetensors"), state)


def load_tiny_clip_vision(path: str):
    cv = comfy.clip_vision.ClipVisionModel(os.path.splitext(path)[0] + ".json")
    import safetensors.torch

    missing, unexpected = cv.load_sd(safetensors.torch.load_file(path))
    assert not unexpected, unexpected
    return cv


# ---------------------------------------------------------------- tiny edit models (Qwen-Image, OmniGen2), their
# text encoders and VAEs: ComfyUI's own classes, narrowed by these numbers, seeded random weights.

TINY_TEXT = 64  # hidden width of the tiny Qwen2.5 text encoders = the DiTs' text width

TINY_QWEN_IMAGE = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                       attention_head_dim=32, num_attention_heads=2, joint_attention_dim=TINY_TEXT,
                       axes_dims_rope=(8, 12, 12))
TINY_OMNIGEN2 = dict(image_model="omnigen2", patch_size=2, in_channels=16, hidden_size=64, num_layers=2,
                     num_refiner_layers=1, num_attention_heads=2, num_kv_heads=2, multiple_of=16,
                     axes_dim_rope=(8, 12, 12), axes_lens=(300, 512, 512), text_feat_dim=TINY_TEXT)


def seed_parameters(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Fill every parameter: norm-like weights (1-D, named weight/gamma) near 1, the rest small."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and name.endswith(("weight", "gamma")):
                p.copy_(1.0 + scale * noise)
            else:
                p.copy_(scale * noise)


def _patcher(model_config, seed: int) -> comfy.model_patcher.ModelPatcher:
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    seed_parameters(model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


@functools.lru_cache(maxsize=4)
def build_qwen_image(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny Qwen-Image (the MMDiT of Qwen-Image-Edit) from ComfyUI's classes."""
    return _patcher(comfy.supported_models.QwenImage(dict(TINY_QWEN_IMAGE)), seed)


@functools.lru_cache(maxsize=4)
def build_omnigen2(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A tiny OmniGen2 diffusion transformer from ComfyUI's classes."""
    return _patcher(comfy.supported_models.Omnigen2(dict(TINY_OMNIGEN2)), seed)


class PooledVAE(torch.nn.Module):
    """A VAE network run at latent resolution: encode average-pools the image by `factor` first, decode upsamples
    its output by `factor` (nearest). Same latent shapes as a real 8x VAE, a fraction of the work on a CPU."""

    def __init__(self, inner: torch.nn.Module, factor: int = 8):
        super().__init__()
        self.inner, self.factor = inner, factor

    def _spatial(self, x, fn):
        if x.ndim == 5:
            b, c, t = x.shape[:3]
            y = fn(x.movedim(2, 1).reshape(b * t, c, *x.shape[3:]))
            return y.reshape(b, t, c, *y.shape[2:]).movedim(1, 2)
        return fn(x)

    def encode(self, x):
        return self.inner.encode(self._spatial(x, lambda y: F.avg_pool2d(y, self.factor)))

    def decode(self, z, **kwargs):
        return self._spatial(self.inner.decode(z, **kwargs),
                             lambda y: F.interpolate(y, scale_factor=self.factor, mode="nearest"))


# The FLUX.1 VAE layout (ComfyUI's AutoencoderKL, 16 latent channels) with one level at latent resolution.
TINY_FLUX_VAE = {"params": {"embed_dim": 16, "ddconfig": {
    "double_z": True, "z_channels": 16, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}


def _pooled_vae(inner: torch.nn.Module, seed: int, channels: int, dims: int):
    import comfy.sd

    seed_parameters(inner, seed)
    vae = comfy.sd.VAE(sd={}, config=TINY_FLUX_VAE)  # sets devices and dtypes; the network is replaced below
    vae.first_stage_model = PooledVAE(inner.eval()).to(vae.vae_dtype)
    vae.patcher = comfy.model_patcher.ModelPatcher(vae.first_stage_model, load_device=vae.device,
                                                   offload_device=CPU)
    vae.latent_channels, vae.latent_dim = channels, dims
    return vae


@functools.lru_cache(maxsize=2)
def tiny_flux_vae(seed: int = 21):
    """A VAE with the FLUX.1 latent format: 16 channels, 8x smaller (what Kontext and OmniGen2 take)."""
    import comfy.ldm.models.autoencoder

    inner = comfy.ldm.models.autoencoder.AutoencoderKL(**TINY_FLUX_VAE["params"])
    for part in (inner.encoder, inner.decoder):
        part.mid.attn_1 = torch.nn.Identity()
    return _pooled_vae(inner, seed, 16, 2)


@functools.lru_cache(maxsize=2)
def tiny_flux2_vae(seed: int = 23):
    """A VAE with the FLUX.2 latent format: 32 channels, 8x smaller (ComfyUI 0.3.64 has no FLUX.2 VAE class)."""
    import comfy.ldm.models.autoencoder

    params = {"embed_dim": 32, "ddconfig": dict(TINY_FLUX_VAE["params"]["ddconfig"], z_channels=32)}
    inner = comfy.ldm.models.autoencoder.AutoencoderKL(**params)
    for part in (inner.encoder, inner.decoder):
        part.mid.attn_1 = torch.nn.Identity()
    return _pooled_vae(inner, seed, 32, 2)


@functools.lru_cache(maxsize=2)
def tiny_qwen_vae(seed: int = 22):
    """A VAE with the Qwen-Image (Wan 2.1) latent format: 16 channels, 8x smaller, video-style 5-D latents, with
    the attributes comfy.sd.VAE gives the Wan 2.1 VAE (which it recognises only at full width)."""
    import comfy.ldm.wan.vae

    wan = comfy.ldm.wan.vae.WanVAE(dim=16, z_dim=16, dim_mult=[1], num_res_blocks=1, attn_scales=[],
                                   temperal_downsample=[], dropout=0.0)
    for part in (wan.encoder, wan.decoder):
        part.middle[1] = torch.nn.Identity()  # attention over every latent pixel: seconds per image on a CPU
    vae = _pooled_vae(wan, seed, 16, 3)
    vae.upscale_ratio = (lambda a: max(0, a * 4 - 3), 8, 8)
    vae.upscale_index_formula = (4, 8, 8)
    vae.downscale_ratio = (lambda a: max(0, math.floor((a + 3) / 4)), 8, 8)
    vae.downscale_index_formula = (4, 8, 8)
    return vae


# Text encoders. The Qwen2.5 layers keep their fixed head width (128) and the full vocabulary, so the real
# tokenizers shipped with ComfyUI work; everything else is narrowed.
TINY_QWEN_LLM = dict(hidden_size=TINY_TEXT, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1)


def _tiny_qwen25_vl_class():
    import comfy.text_encoders.llama as llama
    import comfy.text_encoders.qwen_vl as qwen_vl

    class TinyQwen25VL(llama.Qwen25_7BVLI):
        """Qwen2.5-VL with a 2-layer, 64-wide vision tower (ComfyUI's fixes its tower at full size)."""

        def __init__(self, config_dict, dtype, device, operations):
            torch.nn.Module.__init__(self)
            config = llama.Qwen25_7BVLI_Config(**config_dict)
            self.num_layers = config.num_hidden_layers
            self.model = llama.Llama2_(config, device=device, dtype=dtype, ops=operations)
            self.visual = qwen_vl.Qwen2VLVisionTransformer(
                hidden_size=64, output_hidden_size=config.hidden_size, intermediate_size=128, num_heads=2,
                num_layers=2, device=device, dtype=dtype, ops=operations)
            self.dtype = dtype

    return TinyQwen25VL


def _text_target(tokenizer, clip):
    return type("TinyTextTarget", (), {"tokenizer": tokenizer, "clip": clip, "params": {}})


@functools.lru_cache(maxsize=1)
def tiny_qwen_image_text_encoder(seed: int = 31):
    """A CLIP object on ComfyUI's Qwen-Image text encoder classes (Qwen2.5-VL, tokenizer and templates real)."""
    import comfy.sd
    import comfy.sd1_clip as sd1_clip
    import comfy.text_encoders.qwen_image as qwen_image

    vl_class = _tiny_qwen25_vl_class()

    class TinyQwen25VLModel(sd1_clip.SDClipModel):
        def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, attention_mask=True,
                     model_options={}):
            super().__init__(device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=dict(TINY_QWEN_LLM),
                             dtype=dtype, special_tokens={"pad": 151643}, layer_norm_hidden_state=False,
                             model_class=vl_class, enable_attention_masks=attention_mask,
                             return_attention_masks=attention_mask, model_options=model_options)

    class TinyQwenImageTE(qwen_image.QwenImageTEModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            sd1_clip.SD1ClipModel.__init__(self, device=device, dtype=dtype, name="qwen25_7b",
                                           clip_model=TinyQwen25VLModel, model_options=model_options)

    clip = comfy.sd.CLIP(_text_target(qwen_image.QwenImageTokenizer, TinyQwenImageTE),
                         model_options={"dtype": torch.float32})
    seed_parameters(clip.cond_stage_model, seed)
    return clip


@functools.lru_cache(maxsize=1)
def tiny_omnigen2_text_encoder(seed: int = 32):
    """A CLIP object on ComfyUI's OmniGen2 text encoder classes (Qwen2.5-3B layout, narrowed)."""
    import comfy.sd
    import comfy.text_encoders.omnigen2 as omnigen2

    clip = comfy.sd.CLIP(_text_target(omnigen2.Omnigen2Tokenizer, omnigen2.Omnigen2Model),
                         model_options={"dtype": torch.float32, "qwen25_3b_model_config": dict(TINY_QWEN_LLM)})
    seed_parameters(clip.cond_stage_model, seed)
    return clip


TINY_CLIP_L = dict(hidden_size=TINY_FLUX["vec_in_dim"], intermediate_size=64, num_attention_heads=2,
                   num_hidden_layers=2, projection_dim=TINY_FLUX["vec_in_dim"])
TINY_T5 = dict(d_model=TINY_FLUX["context_in_dim"], d_ff=128, d_kv=16, num_heads=4, num_layers=2)


@functools.lru_cache(maxsize=1)
def tiny_flux_text_encoder(seed: int = 33):
    """A CLIP object on ComfyUI's FLUX text encoder classes (CLIP-L + T5-XXL layouts, real tokenizers, narrowed to
    the tiny FLUX's widths)."""
    import comfy.sd
    import comfy.text_encoders.flux as flux

    clip = comfy.sd.CLIP(_text_target(flux.FluxTokenizer, flux.FluxClipModel),
                         model_options={"dtype": torch.float32, "clip_l_model_config": dict(TINY_CLIP_L),
                                        "t5xxl_model_config": dict(TINY_T5)})
    seed_parameters(clip.cond_stage_model, seed)
    return clip
