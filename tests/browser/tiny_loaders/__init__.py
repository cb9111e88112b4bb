"""Test-only ComfyUI nodes that stand in for the model-loading nodes of the example workflows.

Loaded two ways: in-process by tests/test_workflows.py, and as a custom node folder by the ComfyUI server
that tests/test_browser.py starts. Nothing here is part of the pack.

* `LikenessTestTinyCheckpoint` replaces CheckpointLoaderSimple. It returns a tiny SD1.5- or SDXL-layout
  UNet (SDXL when the file name contains "xl"), a tiny CLIP text model with the real SD1 tokenizer, and a
  tiny VAE, all with seeded random weights. The UNet is ComfyUI's real UNetModel with the real block
  layout (so Likeness finds the same 16 / 70 cross-attention sites), narrowed to 32 channels. It runs on
  the latent average-pooled by 8 and upsamples its output back, because attention over a 64x64 latent
  (a 512 px image) costs ~20 s per step on two CPU cores; the example workflows keep their real sizes.
  The VAE decodes at latent resolution without mid-block attention and upsamples x8, for the same reason.
* `LikenessTestTinyCLIPVision` replaces CLIPVisionLoader: a tiny CLIP vision file plus its JSON config,
  written under the official file name.
"""

from __future__ import annotations

import functools
import math
import os
import sys

import torch
import torch.nn.functional as F

_TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
if _TESTS not in sys.path:
    sys.path.append(_TESTS)

import builders  # noqa: E402
import comfy.ldm.models.autoencoder  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.sd1_clip  # noqa: E402
import folder_paths  # noqa: E402

POOL = 8  # the tiny UNet sees the latent shrunk by this factor

TEXT_CONFIG = {
    "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 49407, "hidden_act": "quick_gelu",
    "hidden_size": builders.TINY_CONTEXT, "initializer_factor": 1.0, "initializer_range": 0.02,
    "intermediate_size": 4 * builders.TINY_CONTEXT, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 4, "num_hidden_layers": 2, "pad_token_id": 1,
    "projection_dim": builders.TINY_POOLED, "torch_dtype": "float32", "vocab_size": 49408,
}

VAE_CONFIG = {"params": {"embed_dim": 4, "ddconfig": {
    "double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}}}


def kind_for(ckpt_name: str) -> str:
    return "sdxl" if "xl" in ckpt_name.lower() else "sd15"


def _seeded(state: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sorted(state.items()):
        if not v.is_floating_point():
            out[k] = v
        elif k.endswith("weight") and v.ndim == 1:
            out[k] = 1.0 + 0.05 * torch.randn(v.shape, generator=gen)
        else:
            out[k] = 0.05 * torch.randn(v.shape, generator=gen)
    return out


@functools.lru_cache(maxsize=None)
def _pooled_class(base: type) -> type:
    class PooledUNet(base):
        def forward(self, x, *args, **kwargs):
            h, w = x.shape[-2:]
            small = F.adaptive_avg_pool2d(x, (max(1, math.ceil(h / POOL)), max(1, math.ceil(w / POOL))))
            out = super().forward(small, *args, **kwargs)
            return F.interpolate(out, size=(h, w), mode="nearest")

    PooledUNet.__name__ = f"Pooled{base.__name__}"
    return PooledUNet


@functools.lru_cache(maxsize=4)
def tiny_model(kind: str):
    model = builders.build_unet.__wrapped__(kind, seed=11)  # a private copy; the cached one stays as it is
    unet = model.model.diffusion_model
    unet.__class__ = _pooled_class(type(unet))
    return model


class _TinyTextModel(comfy.sd1_clip.SD1ClipModel):
    """The real SD1 text-encoder wrapper; the pooled output is cut to the tiny SDXL UNet's pooled width."""

    def encode_token_weights(self, token_weight_pairs):
        cond, pooled, *rest = super().encode_token_weights(token_weight_pairs)
        return (cond, None if pooled is None else pooled[..., :builders.TINY_POOLED], *rest)


class _Upsample(torch.nn.Module):
    """A one-level decoder (latent resolution) followed by a nearest-neighbour x8: a 1024 px decode in 0.1 s."""

    def __init__(self, inner: torch.nn.Module, factor: int):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, z, **kwargs):
        return F.interpolate(self.inner(z, **kwargs), scale_factor=self.factor, mode="nearest")


class _TextTarget:
    clip = _TinyTextModel
    tokenizer = comfy.sd1_clip.SD1Tokenizer
    params = {"clip_model": functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=TEXT_CONFIG)}


@functools.lru_cache(maxsize=1)
def tiny_clip() -> comfy.sd.CLIP:
    clip = comfy.sd.CLIP(_TextTarget(), model_options={"dtype": torch.float32})
    clip.cond_stage_model.load_state_dict(_seeded(clip.cond_stage_model.state_dict(), seed=12), strict=True)
    return clip


@functools.lru_cache(maxsize=1)
def tiny_vae() -> comfy.sd.VAE:
    shapes = comfy.ldm.models.autoencoder.AutoencoderKL(**VAE_CONFIG["params"]).state_dict()
    vae = comfy.sd.VAE(sd=_seeded(shapes, seed=13), config=VAE_CONFIG)
    for part in (vae.first_stage_model.encoder, vae.first_stage_model.decoder):
        part.mid.attn_1 = torch.nn.Identity()
    vae.first_stage_model.decoder = _Upsample(vae.first_stage_model.decoder, 8)
    return vae


class LikenessTestTinyCheckpoint:
    """Stands in for CheckpointLoaderSimple (see the module docstring)."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),)}}

    def load(self, ckpt_name):
        return tiny_model(kind_for(ckpt_name)), tiny_clip(), tiny_vae()


class LikenessTestTinyCLIPVision:
    """Stands in for CLIPVisionLoader: a tiny CLIP vision file (+ its JSON config) from models/clip_vision."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("clip_vision"),)}}

    def load(self, clip_name):
        return (builders.load_tiny_clip_vision(folder_paths.get_full_path_or_raise("clip_vision", clip_name)),)


# ---------------------------------------------------------------- FLUX.1, split files (minimal stand-ins)
# Placeholders with the names and SWAPS keys of the fuller split-file stand-ins being added for the edit-model
# workflows (issue 14); when both are merged, keep those.

@functools.lru_cache(maxsize=1)
def tiny_flux():
    """A private tiny FLUX.1 (4 double, 8 single blocks) that runs on the latent pooled by POOL."""
    model = builders.build_flux.__wrapped__(seed=41)
    dit = model.model.diffusion_model
    base = type(dit)

    class PooledFlux(base):
        def _forward(self, x, *args, **kwargs):
            h, w = x.shape[-2:]
            small = F.adaptive_avg_pool2d(x, (max(2, math.ceil(h / POOL)), max(2, math.ceil(w / POOL))))
            return F.interpolate(super()._forward(small, *args, **kwargs), size=(h, w), mode="nearest")

    dit.__class__ = PooledFlux
    return model


class _TinyFluxText:
    """A text encoder with FLUX's output shapes (T5-like context, CLIP-like pooled vector), seeded by the text."""

    def tokenize(self, text, **kwargs):
        return text

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        gen = torch.Generator().manual_seed(sum(map(ord, tokens)) % (1 << 31))
        context = torch.randn(1, 7, builders.TINY_FLUX["context_in_dim"], generator=gen)
        pooled = torch.randn(1, builders.TINY_FLUX["vec_in_dim"], generator=gen)
        return [[context, {"pooled_output": pooled}]]


class _TinyFluxVAE:
    """Decodes a 16-channel latent by a fixed projection to RGB, upsampled x8."""

    def decode(self, latent):
        weight = torch.linspace(-0.2, 0.2, 48).reshape(3, 16)
        rgb = torch.sigmoid(torch.einsum("bchw,oc->bohw", latent.float(), weight))
        return F.interpolate(rgb, scale_factor=8, mode="nearest").movedim(1, -1)


def _core_inputs(node_id: str) -> dict:
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()


class LikenessTestTinyDiffusionModel:
    """Stands in for UNETLoader: the tiny FLUX.1."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _core_inputs("UNETLoader")

    def load(self, unet_name, weight_dtype="default"):
        return (tiny_flux(),)


class LikenessTestTinyDualTextEncoder:
    """Stands in for DualCLIPLoader (type flux)."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _core_inputs("DualCLIPLoader")

    def load(self, clip_name1, clip_name2, type, device="default"):
        return (_TinyFluxText(),)


class LikenessTestTinyVAE:
    """Stands in for VAELoader: FLUX.1's latent format."""

    CATEGORY = "testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (folder_paths.get_filename_list("vae"),)}}

    def load(self, vae_name):
        return (_TinyFluxVAE(),)


# Which shipped loader each test loader replaces. Every other node of a workflow runs as shipped.
SWAPS = {"CheckpointLoaderSimple": "LikenessTestTinyCheckpoint", "CLIPVisionLoader": "LikenessTestTinyCLIPVision",
         "UNETLoader": "LikenessTestTinyDiffusionModel", "DualCLIPLoader": "LikenessTestTinyDualTextEncoder",
         "VAELoader": "LikenessTestTinyVAE"}

NODE_CLASS_MAPPINGS = {"LikenessTestTinyCheckpoint": LikenessTestTinyCheckpoint,
                       "LikenessTestTinyCLIPVision": LikenessTestTinyCLIPVision,
                       "LikenessTestTinyDiffusionModel": LikenessTestTinyDiffusionModel,
                       "LikenessTestTinyDualTextEncoder": LikenessTestTinyDualTextEncoder,
                       "LikenessTestTinyVAE": LikenessTestTinyVAE}
