"""ComfyUI side of the edit-model nodes: streaming face detection over candidate photos, VAE encoding of
references, and what the running ComfyUI offers (core nodes, reference methods)."""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import numpy as np
import torch

import comfy.model_management
import comfy.utils

from ..core.edit_targets import (EditTarget, comfy_qwen_vl_size, core_method, describe_latent,
                                 targets_for_latent)
from ..core.errors import IncompatibleError, InputError
from ..core.face import choose_face, normalise, to_bgr_uint8
from ..core.reference_pack import Candidate, sharpness

log = logging.getLogger(__name__)


def each_image(images: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Every image [H, W, C] of a list of IMAGE batches, in order, as views (nothing is copied or changed)."""
    for batch in images:
        if batch is None:
            continue
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
            raise InputError(f"expected IMAGE batches [batch, height, width, channels]; got "
                             f"{tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__}.")
        for i in range(batch.shape[0]):
            yield batch[i]


def scan(images: Sequence[torch.Tensor], face_model=None) -> list[Candidate]:
    """One Candidate per photo. With a face model each photo is detected and embedded in turn (one photo's pixels
    converted at a time), the progress bar moves per photo and Cancel stops between photos."""
    photos = list(each_image(images))
    if not photos:
        raise InputError("no candidate photos: connect an IMAGE (a batch or a list of images) to `images`.")
    out = []
    bar = comfy.utils.ProgressBar(len(photos))
    for i, photo in enumerate(photos):
        comfy.model_management.throw_exception_if_processing_interrupted()
        h, w = int(photo.shape[0]), int(photo.shape[1])
        if face_model is None:
            out.append(Candidate(i, w, h))
        else:
            bgr = to_bgr_uint8(photo, i)
            faces, _ = face_model.detect(bgr)
            face = choose_face(faces, "largest", 0)
            if face is None:
                out.append(Candidate(i, w, h, sharpness=sharpness(photo)))
            else:
                raw = face_model.embed(bgr, face.kps)[None].astype(np.float32)
                box = tuple(float(v) for v in face.bbox)
                out.append(Candidate(i, w, h, box, normalise(raw)[0], sharpness(photo, box)))
            del bgr
        bar.update(1)
    return out


# ---------------------------------------------------------------- VAE

def latent_format(vae) -> tuple[int, int]:
    """(latent channels, spatial dims + 1 for video-style latents) of a ComfyUI VAE."""
    return int(getattr(vae, "latent_channels", 0) or 0), int(getattr(vae, "latent_dim", 2) or 2)


def check_vae_for_references(vae, conditioning=None, target: EditTarget | None = None, who: str = "") -> None:
    """Refuse a VAE whose latents no reference-latent model takes, one that does not fit a known target, or one
    whose latents differ from the reference latents the conditioning already holds."""
    channels, dims = latent_format(vae)
    have = describe_latent(channels, dims)
    prefix = f"{who}: " if who else ""
    if target is not None and target.latent_channels is not None:
        if (channels, dims) != (target.latent_channels, target.latent_dims):
            raise IncompatibleError(
                f"{prefix}{target.name} takes {describe_latent(target.latent_channels, target.latent_dims)} from "
                f"{target.vae_hint}; the VAE gives {have}. Load {target.vae_hint} with a VAE Loader.")
    elif not targets_for_latent(channels, dims):
        from ..core.edit_targets import LATENT_TARGETS

        fits = "; ".join(f"{t.name}: {t.vae_hint} ({describe_latent(t.latent_channels, t.latent_dims)})"
                         for t in LATENT_TARGETS)
        raise IncompatibleError(
            f"{prefix}the VAE gives {have}, which no edit model with reference latents takes. Load the VAE of your "
            f"edit model: {fits}.")
    for cond in conditioning or []:
        for old in (cond[1].get("reference_latents") or []):
            old_channels, old_dims = int(old.shape[1]), old.ndim - 2
            if (old_channels, old_dims) != (channels, dims):
                raise IncompatibleError(
                    f"{prefix}the conditioning already holds reference latents with "
                    f"{describe_latent(old_channels, old_dims)} (from another VAE), and this VAE gives {have}. "
                    "Encode every reference of one model with the same VAE.")


def encode(vae, image: torch.Tensor) -> torch.Tensor:
    """One reference -> its latent, exactly as core VAEEncode makes it."""
    return vae.encode(image[:, :, :, :3])


# ---------------------------------------------------------------- what this ComfyUI has

def _core_mapping() -> dict | None:
    """ComfyUI's node table, or None outside a running ComfyUI (e.g. the doctor's command line)."""
    import sys

    module = sys.modules.get("nodes")
    mapping = getattr(module, "NODE_CLASS_MAPPINGS", None)
    return mapping if isinstance(mapping, dict) else None


def missing_nodes(names: Sequence[str]) -> list[str] | None:
    """The core nodes of `names` this ComfyUI lacks; None when that cannot be known here."""
    mapping = _core_mapping()
    if mapping is None:
        return None
    return [n for n in names if n not in mapping]


def core_reference_methods() -> tuple[str, ...] | None:
    """The methods core's FluxKontextMultiReferenceLatentMethod offers, as it stores them; None when unknown."""
    mapping = _core_mapping()
    if mapping is None:
        return None
    node = mapping.get("FluxKontextMultiReferenceLatentMethod")
    if node is None:
        return ()
    spec = node.INPUT_TYPES().get("required", {}).get("reference_latents_method")
    if not spec:
        return ()
    options = spec[0] if isinstance(spec[0], (list, tuple)) else (spec[1] or {}).get("options", [])
    return tuple(core_method(o) for o in options)


# ---------------------------------------------------------------- conditioning

def with_reference_latents(conditioning, latents: list, method: str | None):
    """The conditioning with `latents` appended under reference_latents and the method set, as chained core
    ReferenceLatent nodes and FluxKontextMultiReferenceLatentMethod leave it (a new list; the input is kept)."""
    import node_helpers

    for latent in latents:
        conditioning = node_helpers.conditioning_set_values(conditioning, {"reference_latents": [latent]},
                                                            append=True)
    if method is not None:
        conditioning = node_helpers.conditioning_set_values(conditioning,
                                                            {"reference_latents_method": core_method(method)})
    return conditioning


QWEN_PICTURE = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
_QWEN_IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>{}"


def qwen_edit_template(clip) -> str:
    """The system template core TextEncodeQwenImageEditPlus uses: the Qwen-Image tokenizer's image template
    without its single image slot (the node writes one "Picture N:" slot per image into the prompt)."""
    tokenizer = getattr(clip, "tokenizer", None)
    template = getattr(tokenizer, "llama_template_images", None)
    if not isinstance(template, str) or _QWEN_IMAGE_SLOT not in template:
        raise IncompatibleError(
            "clip is not the Qwen2.5-VL text encoder of Qwen-Image: Likeness Qwen Edit Encode needs "
            "qwen_2.5_vl_7b*.safetensors loaded with a Load CLIP node set to type qwen_image.")
    return template.replace(_QWEN_IMAGE_SLOT, "{}")


def qwen_edit_conditioning(clip, vae, prompt: str, images: Sequence[torch.Tensor], vl_side: int,
                           latent_size) -> tuple[list, list[tuple[int, int]], list[tuple[int, int]]]:
    """Core TextEncodeQwenImageEditPlus for any number of images: each image [H, W, C] is scaled to a vl_side²
    area for the vision-language tokens and to `latent_size(width, height)` (None: as it is) for its reference
    latent, and gets a "Picture N:" slot. Returns the conditioning and the VL and latent sizes used."""
    import node_helpers

    template = qwen_edit_template(clip)
    images_vl, ref_latents, vl_sizes, latent_sizes = [], [], [], []
    image_prompt = ""
    for i, image in enumerate(images):
        samples = image[None].movedim(-1, 1)
        height, width = samples.shape[2], samples.shape[3]
        vl_w, vl_h = comfy_qwen_vl_size(width, height, vl_side)
        images_vl.append(comfy.utils.common_upscale(samples, vl_w, vl_h, "area", "disabled").movedim(1, -1))
        wanted = latent_size(width, height)
        if wanted is None:  # as given
            scaled, (lat_w, lat_h) = samples, (width, height)
        else:
            lat_w, lat_h = wanted
            scaled = comfy.utils.common_upscale(samples, lat_w, lat_h, "area", "disabled")
        ref_latents.append(vae.encode(scaled.movedim(1, -1)[:, :, :, :3]))
        vl_sizes.append((vl_w, vl_h))
        latent_sizes.append((lat_w, lat_h))
        image_prompt += QWEN_PICTURE.format(i + 1)
    tokens = clip.tokenize(image_prompt + prompt, images=images_vl, llama_template=template)
    conditioning = clip.encode_from_tokens_scheduled(tokens)
    if ref_latents:
        conditioning = node_helpers.conditioning_set_values(conditioning, {"reference_latents": ref_latents},
                                                            append=True)
    return conditioning, vl_sizes, latent_sizes
