"""Test data made in-process: tiny ComfyUI models, synthetic adapter checkpoints, a tiny CLIP vision model.

Key names and shapes of the official files are written out here from the published layouts
(h94/IP-Adapter and h94/IP-Adapter-FaceID), independently of the pack's own code.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

import torch

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
