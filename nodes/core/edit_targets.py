"""Edit-model targets: the one table of how each edit model takes reference images.

Per target: how a reference is sized (a pure function of its size, the number of references and, where the
model's budget depends on it, the output size), where that rule comes from, which reference method the model
was trained with and which ones are wrong for it, which core nodes take the prepared references, which core
nodes a ComfyUI must have for the model, and the latent format its VAE gives. LikenessReferencePack, the model
doctor and the help pages read this table; nothing else restates these facts.

Every sizing rule equals the reference pipeline's arithmetic, rounding included (the parity tests compare
with diffusers' own pipelines, and with plain re-implementations of the published code where no pip package
has it). Sizes are (width, height) in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .errors import InputError

# diffusers FluxKontextPipeline (pipeline_flux_kontext.py) PREFERRED_KONTEXT_RESOLUTIONS, (width, height);
# ComfyUI's FluxKontextImageScale uses the same 17 resolutions.
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)
KONTEXT_MULTIPLE = 16  # the pipeline's vae_scale_factor * 2

QWEN_VL_AREA = 384 * 384  # diffusers QwenImageEditPlusPipeline CONDITION_IMAGE_SIZE
QWEN_VAE_AREA = 1024 * 1024  # VAE_IMAGE_SIZE
QWEN_MULTIPLE = 32  # calculate_dimensions rounds both sides to multiples of 32

FLUX2_MAX_AREA = 1024 * 1024  # diffusers Flux2Pipeline: references above 1024² are scaled down to it
FLUX2_MULTIPLE = 16

OMNIGEN2_MAX_PIXELS = 1024 * 1024  # OmniGen2Pipeline defaults: max_pixels, max_input_image_side_length
OMNIGEN2_MAX_SIDE = 1024
OMNIGEN2_MULTIPLE = 16

HIDREAM_PATCH = 32  # HiDream-O1 models/pipeline.py PATCH_SIZE
HIDREAM_DEFAULT_SIDE = 2048  # its default output 2048 x 2048 (inference.py; ComfyUI's empty latent node too)

MEGAPIXEL = 1024 * 1024  # ComfyUI's megapixel (ImageScaleToTotalPixels)


# ---------------------------------------------------------------- sizing rules

def _check_size(width: int, height: int, smallest: int = 16) -> None:
    if width < smallest or height < smallest:
        raise InputError(f"a reference of {width}x{height} pixels is too small for an edit model: each side needs "
                         f"at least {smallest} pixels. Use a larger photo or a looser framing.")


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """FluxKontextPipeline: the aspect of the size floored to multiples of 16 picks the nearest preferred
    resolution (ties: the one listed first by (aspect error, width, height))."""
    _check_size(width, height)
    w, h = width - width % KONTEXT_MULTIPLE, height - height % KONTEXT_MULTIPLE
    aspect = w / h
    _, tw, th = min((abs(aspect - pw / ph), pw, ph) for pw, ph in KONTEXT_RESOLUTIONS)
    return tw // KONTEXT_MULTIPLE * KONTEXT_MULTIPLE, th // KONTEXT_MULTIPLE * KONTEXT_MULTIPLE


def qwen_dimensions(area: int, width: int, height: int) -> tuple[int, int]:
    """QwenImageEditPlusPipeline's calculate_dimensions: that area at the image's aspect, sides rounded to /32."""
    ratio = width / height
    w = math.sqrt(area * ratio)
    h = w / ratio
    return round(w / QWEN_MULTIPLE) * QWEN_MULTIPLE, round(h / QWEN_MULTIPLE) * QWEN_MULTIPLE


def qwen_plus_size(width: int, height: int) -> tuple[int, int]:
    """The VAE input of Qwen-Image-Edit Plus: about 1 MP (1024²) at the image's aspect, sides multiples of 32."""
    _check_size(width, height)
    return qwen_dimensions(QWEN_VAE_AREA, width, height)


def qwen_plus_vl_size(width: int, height: int) -> tuple[int, int]:
    """The vision-language input of Qwen-Image-Edit Plus: a 384² area at the image's aspect, multiples of 32."""
    return qwen_dimensions(QWEN_VL_AREA, width, height)


def comfy_qwen_vl_size(width: int, height: int, side: int = 384) -> tuple[int, int]:
    """ComfyUI's TextEncodeQwenImageEditPlus: the VL image scaled to a side² area, sides rounded to pixels."""
    scale = math.sqrt(side * side / (width * height))
    return round(width * scale), round(height * scale)


def comfy_qwen_latent_size(width: int, height: int) -> tuple[int, int]:
    """ComfyUI's TextEncodeQwenImageEditPlus: the VAE image scaled to 1024², sides rounded to multiples of 8."""
    scale = math.sqrt(QWEN_VAE_AREA / (width * height))
    return round(width * scale / 8.0) * 8, round(height * scale / 8.0) * 8


def flux2_size(width: int, height: int) -> tuple[int, int]:
    """Flux2Pipeline: above 1024² the image is scaled to that area (sides truncated), then both sides are
    floored to multiples of 16 (a centre crop)."""
    _check_size(width, height, 64)  # Flux2ImageProcessor.check_image_input refuses sides under 64
    if width * height > FLUX2_MAX_AREA:
        scale = math.sqrt(FLUX2_MAX_AREA / (width * height))
        width, height = int(width * scale), int(height * scale)
    return width // FLUX2_MULTIPLE * FLUX2_MULTIPLE, height // FLUX2_MULTIPLE * FLUX2_MULTIPLE


def omnigen2_size(width: int, height: int) -> tuple[int, int]:
    """OmniGen2ImageProcessor.get_new_height_width with the pipeline's defaults: never upscaled, at most 1024²
    pixels and 1024 on the longer side, sides truncated then floored to multiples of 16."""
    _check_size(width, height)
    side_ratio = OMNIGEN2_MAX_SIDE / height if height > width else OMNIGEN2_MAX_SIDE / width
    pixel_ratio = (OMNIGEN2_MAX_PIXELS / (height * width)) ** 0.5
    ratio = min(pixel_ratio, side_ratio, 1.0)
    m = OMNIGEN2_MULTIPLE
    return int(width * ratio) // m * m, int(height * ratio) // m * m


def hidream_o1_budget(count: int, output_side: int) -> int:
    """HiDream-O1 models/pipeline.py: each reference's side budget shrinks with the number of references K."""
    if count <= 1:
        return output_side
    if count == 2:
        return output_side * 48 // 64
    if count <= 4:
        return output_side // 2
    if count <= 8:
        return output_side * 24 // 64
    return output_side // 4


def hidream_o1_size(width: int, height: int, count: int, output_side: int) -> tuple[int, int]:
    """HiDream-O1 models/utils.py resize_pilimage(image, budget, 32): halve while the short side is at least
    twice the budget, then the largest of four roundings (round/floor of each side, to /32) whose area fits
    in budget²."""
    _check_size(width, height, HIDREAM_PATCH)
    budget = hidream_o1_budget(count, output_side)
    while min(width, height) >= 2 * budget:
        width, height = width // 2, height // 2
    m = HIDREAM_PATCH
    area = budget * budget
    scale = math.sqrt(area / (width * height))
    w_round, h_round = round(width * scale) // m * m, round(height * scale) // m * m
    w_floor, h_floor = math.floor(width * scale) // m * m, math.floor(height * scale) // m * m
    candidates = sorted([(w_round, h_round), (w_round, h_floor), (w_floor, h_round), (w_floor, h_floor)],
                        key=lambda s: s[0] * s[1], reverse=True)
    chosen = next((s for s in candidates if s[0] * s[1] <= area), candidates[-1])
    if chosen[0] < m or chosen[1] < m:
        raise InputError(f"a reference of {width}x{height} is too narrow for HiDream-O1 at a {budget}-pixel budget: "
                         f"it would be under one {m}-pixel patch across. Use a less elongated framing.")
    return chosen


# ---------------------------------------------------------------- the table

@dataclass(frozen=True)
class ModelVariant:
    """A released model of a target family: how to recognise its file, and the method it needs."""

    name: str
    file_hint: str  # a lower-case piece of the usual file name
    method: str | None  # the reference_latents_method it needs; None: the model's default


@dataclass(frozen=True)
class EditTarget:
    key: str  # LikenessReferencePack's `target` value
    name: str
    sizing: Callable[..., tuple[int, int]] | None  # (width, height, count, output_side) -> (width, height)
    rule: str  # the sizing rule in words
    source: str  # where the rule comes from
    takes: str  # which nodes take the prepared references
    core_nodes: tuple[str, ...]  # core nodes a ComfyUI needs for this model (absent: too old)
    comfyui_version: str  # which ComfyUI has them (verified for 0.3.64; later ones from the upstream change)
    methods: tuple[str, ...] = ()  # reference_latents_method values the model reads (empty: none)
    default_method: str | None = None
    wrong_methods: tuple[tuple[str, str], ...] = ()  # (method, why it is wrong for this model)
    variants: tuple[ModelVariant, ...] = ()
    latent_channels: int | None = None  # of the VAE whose latents the model takes (None: no VAE)
    latent_dims: int = 2  # 3: video-style latents [B, C, T, H, W]
    vae_hint: str = ""
    max_references: int | None = None
    hard_limit: bool = False  # the model cannot take more than max_references
    uses_output_size: bool = False

    def size(self, width: int, height: int, count: int = 1, output_side: int = HIDREAM_DEFAULT_SIDE) -> tuple[int, int]:
        if self.sizing is None:
            return width, height
        if self.uses_output_size:
            return self.sizing(width, height, count, output_side)
        return self.sizing(width, height)


TARGETS = (
    EditTarget(
        key="flux kontext", name="FLUX.1 Kontext [dev]",
        sizing=kontext_size,
        rule="the nearest of Kontext's 17 preferred resolutions (672x1568 ... 1024x1024 ... 1568x672) by aspect "
             "ratio, the aspect taken after flooring both sides to multiples of 16",
        source="diffusers FluxKontextPipeline (PREFERRED_KONTEXT_RESOLUTIONS); the same list as ComfyUI's "
               "FluxKontextImageScale",
        takes="Likeness Reference Latents (method offset), or core VAEEncode + ReferenceLatent per reference",
        core_nodes=("ReferenceLatent", "FluxKontextMultiReferenceLatentMethod"),
        comfyui_version="ComfyUI 0.3.64 and later",
        methods=("offset", "index", "uxo"), default_method="offset",
        wrong_methods=(("index", "Kontext [dev] was trained with one reference; `index` gives each reference its "
                                 "own position index, which only a model trained for several references uses "
                                 "(Comfy-Org/ComfyUI#9356). Use `offset`, which places them like one stitched "
                                 "image."),),
        variants=(ModelVariant("FLUX.1 Kontext [dev]", "kontext", "offset"),),
        latent_channels=16, vae_hint="ae.safetensors (the FLUX.1 VAE)"),
    EditTarget(
        key="qwen image edit plus", name="Qwen-Image-Edit Plus (2509, 2511)",
        sizing=qwen_plus_size,
        rule="about 1 MP (an area of 1024²) at the photo's aspect, both sides rounded to multiples of 32; the "
             "vision-language copy is made from it at a 384² area",
        source="diffusers QwenImageEditPlusPipeline (VAE_IMAGE_SIZE, CONDITION_IMAGE_SIZE, calculate_dimensions)",
        takes="Likeness Qwen Edit Encode (any number of references; core TextEncodeQwenImageEditPlus has 3 slots)",
        core_nodes=("TextEncodeQwenImageEditPlus",), comfyui_version="ComfyUI 0.3.64 and later",
        methods=("index", "offset", "index_timestep_zero"), default_method="index",
        variants=(ModelVariant("Qwen-Image-Edit 2509", "2509", "index"),
                  ModelVariant("Qwen-Image-Edit 2511", "2511", "index_timestep_zero")),
        latent_channels=16, latent_dims=3, vae_hint="qwen_image_vae.safetensors", max_references=3),
    EditTarget(
        key="omnigen2", name="OmniGen2",
        sizing=omnigen2_size,
        rule="never enlarged; scaled down to at most 1024² pixels and 1024 on the longer side, both sides "
             "truncated and floored to multiples of 16",
        source="OmniGen2 (VectorSpaceLab/OmniGen2) OmniGen2Pipeline defaults and "
               "OmniGen2ImageProcessor.get_new_height_width",
        takes="Likeness Reference Latents, or core VAEEncode + ReferenceLatent per reference",
        core_nodes=("ReferenceLatent",), comfyui_version="ComfyUI 0.3.64 and later",
        variants=(ModelVariant("OmniGen2", "omnigen2", None),),
        latent_channels=16, vae_hint="ae.safetensors (the FLUX.1 VAE)", max_references=5, hard_limit=True),
    EditTarget(
        key="flux2", name="FLUX.2 [dev] / [klein]",
        sizing=flux2_size,
        rule="scaled down to an area of 1024² when larger (sides truncated), then both sides floored to "
             "multiples of 16; the cap does not depend on the output size",
        source="diffusers Flux2Pipeline (Flux2ImageProcessor._resize_to_target_area); BFL's own sampling code "
               "allows 2024² for a single reference",
        takes="Likeness Reference Latents (or core ReferenceLatent per reference) in a ComfyUI with FLUX.2",
        core_nodes=("EmptyFlux2LatentImage", "ReferenceLatent"),
        comfyui_version="ComfyUI 0.3.71 and later (Comfy-Org/ComfyUI#10879)",
        variants=(ModelVariant("FLUX.2", "flux2", None), ModelVariant("FLUX.2", "flux-2", None),
                  ModelVariant("FLUX.2", "flux.2", None)),
        latent_channels=32, vae_hint="flux2-vae.safetensors", max_references=10),
    EditTarget(
        key="hidream o1", name="HiDream-O1-Image",
        sizing=hidream_o1_size, uses_output_size=True,
        rule="a side budget of the output's longest side × 1 (1 reference), × 48/64 (2), × 1/2 (3-4), × 24/64 "
             "(5-8) or × 1/4 (9-10); the largest size of at most budget² pixels with sides multiples of 32",
        source="HiDream-ai/HiDream-O1-Image models/pipeline.py (generate_image) and models/utils.py "
               "(resize_pilimage)",
        takes="core HiDreamO1ReferenceImages (image_1, image_2, ... in order) in a ComfyUI with HiDream-O1",
        core_nodes=("HiDreamO1ReferenceImages",), comfyui_version="ComfyUI from May 2026 (Comfy-Org/ComfyUI#13817)",
        variants=(ModelVariant("HiDream-O1-Image", "hidream_o1", None),
                  ModelVariant("HiDream-O1-Image", "hidream-o1", None)),
        max_references=10),
    EditTarget(
        key="as is", name="as is (no resizing)",
        sizing=None,
        rule="the framed photo at its own size",
        source="-",
        takes="any node that takes IMAGE",
        core_nodes=(), comfyui_version="-"),
)

BY_KEY = {t.key: t for t in TARGETS}
TARGET_KEYS = tuple(t.key for t in TARGETS)
REFERENCE_METHODS = ("offset", "index", "uxo/uno")  # LikenessReferenceLatents' choices, as core's method node
LATENT_TARGETS = tuple(t for t in TARGETS if t.latent_channels is not None)


def target(key: str) -> EditTarget:
    found = BY_KEY.get(key)
    if found is None:
        raise InputError(f"target `{key}` is not one of: {', '.join(TARGET_KEYS)}.")
    return found


def core_method(method: str) -> str:
    """The value core's FluxKontextMultiReferenceLatentMethod stores for a method choice."""
    return "uxo" if ("uxo" in method or "uso" in method) else method


def variant_for_file(file_name: str) -> tuple[EditTarget, ModelVariant] | None:
    """The target and released model a diffusion-model file name points to, if any."""
    name = file_name.lower()
    for t in TARGETS:
        for v in t.variants:
            if v.file_hint in name:
                return t, v
    return None


def targets_for_latent(channels: int, dims: int) -> list[EditTarget]:
    return [t for t in LATENT_TARGETS if t.latent_channels == channels and t.latent_dims == dims]


def describe_latent(channels: int, dims: int) -> str:
    kind = "video-style " if dims == 3 else ""
    return f"{channels}-channel {kind}latents"
