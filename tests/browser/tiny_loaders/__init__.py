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
  A file name with "kolors" gives the tiny SDXL layout whose UNet carries a text projection
  (`encoder_hid_proj`), which is how Kolors loader packs build Kolors.
* `LikenessTestTinyCLIPVision` replaces CLIPVisionLoader: a tiny CLIP vision file plus its JSON config,
  written under the official file name.
* `LikenessTestTinyUnifiedLoader` replaces LikenessUnifiedLoader: the shipped node with its three steps that
  read what the model and files are fitted to the tiny ones (the family from the tiny model's config class; the
  adapter and the image encoder under their official names, when the shipped choice by weights finds none,
  which happens for narrowed image adapters). Everything else (the preset table, the FaceID LoRA, the face
  model, the errors) runs as shipped.
* `LikenessTestTinyControlNet` replaces ControlNetLoader for a tiny SDXL ControlNet in IdentityNet's diffusers
  layout, written under the official file name. It loads the file with ComfyUI's own loader
  (`comfy.controlnet.load_controlnet`, the one ControlNetLoader calls), for which two things are needed: ComfyUI
  finds a diffusers ControlNet's config in a table of published models, which is extended by the tiny SDXL
  layout while it loads (`builders.comfy_knows_the_tiny_sdxl`); and the ControlNet runs on the latent pooled
  by 8, as the tiny UNet does, so that its residuals fit that UNet.

For the DiT edit models (FLUX.1 / Kontext, Qwen-Image-Edit, OmniGen2), each loader of the split model files
has a stand-in that picks the tiny model by the file name or type it is given:

* `LikenessTestTinyDiffusionModel` replaces UNETLoader: "qwen" in the file name gives a tiny Qwen-Image,
  "omnigen" a tiny OmniGen2, anything else a tiny FLUX.1 (dev-style, with guidance; Kontext is the same
  model class). ComfyUI's own classes; like the tiny UNet they run on the latent (and on each reference
  latent) average-pooled by 8, for the same reason.
* `LikenessTestTinyTextEncoder` replaces CLIPLoader (type qwen_image or omnigen2) and
  `LikenessTestTinyDualTextEncoder` replaces DualCLIPLoader (type flux): ComfyUI's text encoder classes with
  the real tokenizers, narrowed to the tiny models' widths.
* `LikenessTestTinyVAE` replaces VAELoader: "qwen" in the file name gives the Qwen-Image (Wan 2.1) latent
  format, anything else the FLUX.1 one; both 16 channels and 8x smaller (see builders.PooledVAE).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import types

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
    name = ckpt_name.lower()
    return "kolors" if "kolors" in name else "sdxl" if "xl" in name else "sd15"


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
    # a private copy; the cached one stays as it is
    model = builders.build_unet.__wrapped__("sdxl" if kind == "kolors" else kind, seed=11)
    unet = model.model.diffusion_model
    unet.__class__ = _pooled_class(type(unet))
    if kind == "kolors":  # the SDXL layout with the text projection a Kolors loader pack's UNet carries
        gen = torch.Generator().manual_seed(14)
        proj = torch.nn.Linear(builders.TINY_KOLORS_TEXT, builders.TINY_CONTEXT)
        with torch.no_grad():
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) / builders.TINY_KOLORS_TEXT ** 0.5)
            proj.bias.copy_(0.1 * torch.randn(proj.bias.shape, generator=gen))
        unet.encoder_hid_proj = proj
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


@functools.lru_cache(maxsize=None)
def _pooled_controlnet_class(base: type) -> type:
    class PooledControlNet(base):
        def forward(self, x, hint, *args, **kwargs):
            h, w = x.shape[-2:]
            size = (max(1, math.ceil(h / POOL)), max(1, math.ceil(w / POOL)))
            small = F.adaptive_avg_pool2d(x, size)
            small_hint = F.adaptive_avg_pool2d(hint, (size[0] * 8, size[1] * 8))
            return super().forward(small, small_hint, *args, **kwargs)

    PooledControlNet.__name__ = f"Pooled{base.__name__}"
    return PooledControlNet


class LikenessTestTinyControlNet:
    """Stands in for ControlNetLoader (see the module docstring)."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": (folder_paths.get_filename_list("controlnet"),)}}

    def load(self, control_net_name):
        import comfy.controlnet

        with builders.comfy_knows_the_tiny_sdxl():
            net = comfy.controlnet.load_controlnet(folder_paths.get_full_path_or_raise("controlnet", control_net_name))
        net.control_model.__class__ = _pooled_controlnet_class(type(net.control_model))
        return (net,)


_FAMILIES = {"SD15": "SD1.5", "SDXL": "SDXL"}  # ComfyUI's model config class -> the unified loader's family


@functools.lru_cache(maxsize=None)
def _tiny_unified_class(shipped: type) -> type:
    """The shipped unified loader with its three model-reading steps fitted to the tiny models."""

    class TinyUnified(shipped):
        @classmethod
        def family_of(cls, model):
            # a tiny UNet has the real site layout but a narrowed context, which the shipped loader (rightly)
            # does not take for SD1.5 / SDXL: read the family from the config class it was built with (and
            # Kolors from the text projection its UNet carries, as the shipped loader does)
            family = _FAMILIES[type(model.model.model_config).__name__]
            unet = model.get_model_object("diffusion_model")
            return "Kolors" if family == "SDXL" and hasattr(unet, "encoder_hid_proj") else family

        @classmethod
        def find_adapter(cls, preset, family):
            # a narrowed resampler or linear adapter reads a tiny encoder's width, which no published row has, so
            # the shipped choice by weights finds only the tiny FaceID files (their face embedding is 512 wide as
            # published): the others are taken under the official file name the preset names
            unified = sys.modules[shipped.__module__]
            try:
                return super().find_adapter(preset, family)
            except unified.MissingModelError:
                file = unified.choice_for(preset, family).file
                path = next(filter(None, (folder_paths.get_full_path(f, file) for f in ("ipadapter", "instantid"))),
                            None)
                if path is None:
                    raise
                return types.SimpleNamespace(name=file, path=path)

        @classmethod
        def find_encoder(cls, needed):
            # the tiny encoders lie under the official file names, which the presets name (as .safetensors)
            name = os.path.splitext(needed.file_hint)[0] + ".safetensors"
            path = folder_paths.get_full_path("clip_vision", name)
            if path is None:
                return super().find_encoder(needed)  # the shipped "put it here" message
            return types.SimpleNamespace(name=name, path=path)

        @classmethod
        def open_encoder(cls, entry):
            return builders.load_tiny_clip_vision(entry.path)

    return TinyUnified


class LikenessTestTinyUnifiedLoader:
    """Stands in for LikenessUnifiedLoader: the shipped node, which picks and loads the files of a preset, run on
    the tiny models (see `_tiny_unified_class`). Everything else it does (choosing the adapter by its weights,
    the FaceID LoRA, the face model, the errors) runs as shipped."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "LIKENESS_ADAPTER", "CLIP_VISION", "LIKENESS_FACE_MODEL", "CONTROL_NET")
    FUNCTION = "load"

    @staticmethod
    def _shipped():
        import nodes

        return nodes.NODE_CLASS_MAPPINGS["LikenessUnifiedLoader"]

    @classmethod
    def INPUT_TYPES(cls):
        return cls._shipped().INPUT_TYPES()

    def load(self, **inputs):
        out = _tiny_unified_class(self._shipped()).execute(**inputs)
        return {"ui": out.ui.as_dict() if out.ui is not None else {}, "result": tuple(out.args)}


# ---------------------------------------------------------------- DiT edit models, split files

def _pool_spatial(t: torch.Tensor) -> torch.Tensor:
    size = [max(1, math.ceil(d / POOL)) for d in t.shape[-2:]]
    if t.ndim == 5:
        return F.adaptive_avg_pool3d(t, (t.shape[2], *size))
    return F.adaptive_avg_pool2d(t, size)


def _unpool(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if out.ndim == 5:
        return F.interpolate(out, size=like.shape[2:], mode="nearest")
    return F.interpolate(out, size=like.shape[-2:], mode="nearest")


@functools.lru_cache(maxsize=None)
def _pooled_dit_class(base: type, entry: str, ref_position: int | None) -> type:
    """`base` whose `entry` method (the one behind the DIFFUSION_MODEL wrappers) runs on pooled latents."""

    def pooled(self, x, *args, **kwargs):
        args = list(args)
        if ref_position is not None and len(args) > ref_position and args[ref_position] is not None:
            args[ref_position] = [_pool_spatial(r) for r in args[ref_position]]
        if kwargs.get("ref_latents") is not None:
            kwargs["ref_latents"] = [_pool_spatial(r) for r in kwargs["ref_latents"]]
        out = getattr(super(cls, self), entry)(_pool_spatial(x), *args, **kwargs)
        return _unpool(out, x)

    cls = type(f"Pooled{base.__name__}", (base,), {entry: pooled})
    return cls


# entry method, and where ref_latents sits among its positional arguments after x
_DIT_ENTRIES = {"flux": ("_forward", 4), "qwen": ("_forward", 4), "omnigen2": ("forward", None)}


def dit_kind(unet_name: str) -> str:
    name = unet_name.lower()
    if "qwen" in name:
        return "qwen"
    if "omnigen" in name:
        return "omnigen2"
    return "flux"


@functools.lru_cache(maxsize=4)
def tiny_dit(kind: str):
    build = {"flux": builders.build_flux, "qwen": builders.build_qwen_image, "omnigen2": builders.build_omnigen2}
    model = build[kind].__wrapped__(seed=41)  # a private copy; the cached one stays as it is
    dit = model.model.diffusion_model
    entry, ref_position = _DIT_ENTRIES[kind]
    dit.__class__ = _pooled_dit_class(type(dit), entry, ref_position)
    return model


def _core_inputs(node_id: str) -> dict:
    import nodes

    return nodes.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()


class LikenessTestTinyDiffusionModel:
    """Stands in for UNETLoader (see the module docstring)."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _core_inputs("UNETLoader")

    def load(self, unet_name, weight_dtype="default"):
        return (tiny_dit(dit_kind(unet_name)),)


_TEXT_ENCODERS = {"qwen_image": builders.tiny_qwen_image_text_encoder,
                  "omnigen2": builders.tiny_omnigen2_text_encoder, "flux": builders.tiny_flux_text_encoder}


def _text_encoder(kind: str):
    if kind not in _TEXT_ENCODERS:
        raise ValueError(f"the tiny text encoders cover types {', '.join(_TEXT_ENCODERS)}; got {kind}")
    return _TEXT_ENCODERS[kind]()


class LikenessTestTinyTextEncoder:
    """Stands in for CLIPLoader (types qwen_image and omnigen2)."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _core_inputs("CLIPLoader")

    def load(self, clip_name, type="stable_diffusion", device="default"):
        return (_text_encoder(type),)


class LikenessTestTinyDualTextEncoder:
    """Stands in for DualCLIPLoader (type flux)."""

    CATEGORY = "testing"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return _core_inputs("DualCLIPLoader")

    def load(self, clip_name1, clip_name2, type, device="default"):
        return (_text_encoder(type),)


class LikenessTestTinyVAE:
    """Stands in for VAELoader: the Qwen-Image latent format for a file name with "qwen", else FLUX.1's."""

    CATEGORY = "testing"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (folder_paths.get_filename_list("vae"),)}}

    def load(self, vae_name):
        return (builders.tiny_qwen_vae() if "qwen" in vae_name.lower() else builders.tiny_flux_vae(),)


# Which shipped loader each test loader replaces. Every other node of a workflow runs as shipped.
SWAPS = {"CheckpointLoaderSimple": "LikenessTestTinyCheckpoint", "CLIPVisionLoader": "LikenessTestTinyCLIPVision",
         "UNETLoader": "LikenessTestTinyDiffusionModel", "CLIPLoader": "LikenessTestTinyTextEncoder",
         "DualCLIPLoader": "LikenessTestTinyDualTextEncoder", "VAELoader": "LikenessTestTinyVAE",
         "ControlNetLoader": "LikenessTestTinyControlNet", "LikenessUnifiedLoader": "LikenessTestTinyUnifiedLoader"}

NODE_CLASS_MAPPINGS = {"LikenessTestTinyCheckpoint": LikenessTestTinyCheckpoint,
                       "LikenessTestTinyCLIPVision": LikenessTestTinyCLIPVision,
                       "LikenessTestTinyDiffusionModel": LikenessTestTinyDiffusionModel,
                       "LikenessTestTinyTextEncoder": LikenessTestTinyTextEncoder,
                       "LikenessTestTinyDualTextEncoder": LikenessTestTinyDualTextEncoder,
                       "LikenessTestTinyVAE": LikenessTestTinyVAE,
                       "LikenessTestTinyControlNet": LikenessTestTinyControlNet,
                       "LikenessTestTinyUnifiedLoader": LikenessTestTinyUnifiedLoader}
