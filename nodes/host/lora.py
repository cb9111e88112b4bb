"""The FaceID LoRA as ComfyUI weight patches on a clone of the MODEL.

FaceID, FaceID Plus and Plus v2 were trained together with a rank-128 LoRA on every attention projection of the
UNet (`to_q`, `to_k`, `to_v`, `to_out`, in both self- and cross-attention). The h94 `.bin` files carry it next to
the image key/value weights, numbered by attention processor in diffusers order: processor 2n is the
self-attention (attn1) and 2n+1 the cross-attention (attn2) of the n-th cross-attention site, the same n whose
`to_k_ip` is layer 2n+1. Those tensors become patches in ComfyUI's own LoRA representation
(`comfy.lora.load_lora`, diffusers `<name>_lora.up/down` naming, no alpha: scale 1 as in the reference), so the
strength works like any LoRA and the input MODEL is untouched. A file without LoRA tensors falls back to the
official `<adapter name>_lora.safetensors` in the loras folder.
"""

from __future__ import annotations

import functools
import logging
import math
import os

import comfy.lora
import comfy.lora_convert
import folder_paths
from comfy.ldm.modules.attention import SpatialTransformer

from ..core import checkpoint
from ..core.adapter import Adapter
from ..core.errors import AdapterFileError, IncompatibleError
from ..core.lora_fit import lora_family
from ..core.variants import family_name
from .folders import file_version
from .sites import find_sites

log = logging.getLogger(__name__)

PROJECTIONS = (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("out", "to_out.0"))
APPLIED = "likeness_faceid_lora"  # model_options key: adapter name -> strength of the LoRA already on this MODEL
_BLOCKS = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}


def needs_lora(adapter: Adapter) -> bool:
    """FaceID and FaceID Plus (v1, v2) were trained with a LoRA; Portrait and Portrait-unnorm were not."""
    return adapter.detected.needs_lora


def expected_lora_file(adapter: Adapter) -> str:
    return os.path.splitext(adapter.name)[0] + "_lora.safetensors"


def transformer_block_prefixes(model) -> dict[tuple[str, int, int], str]:
    """Site key (block, block id, transformer block index) -> state-dict prefix of that transformer block."""
    unet = model.get_model_object("diffusion_model")
    out = {}
    for name, module in unet.named_modules():
        if not isinstance(module, SpatialTransformer):
            continue
        parts = name.split(".")
        block = _BLOCKS.get(parts[0])
        if block is None:
            continue
        block_id = 0 if block == "middle" else int(parts[1])
        for index in range(len(module.transformer_blocks)):
            out[(block, block_id, index)] = f"diffusion_model.{name}.transformer_blocks.{index}"
    return out


def lora_targets(model) -> dict[str, str]:
    """h94 LoRA name (e.g. `3.to_k`) -> the ComfyUI weight it patches."""
    prefixes = transformer_block_prefixes(model)
    targets = {}
    for site in find_sites(model):
        prefix = prefixes[site.key]
        for processor, attn in ((site.layer_id - 1, "attn1"), (site.layer_id, "attn2")):
            for short, module in PROJECTIONS:
                targets[f"{processor}.to_{short}"] = f"{prefix}.{attn}.{module}.weight"
    return targets


def model_family(model) -> str:
    sites = find_sites(model)
    return family_name(sites[0].context_width, len(sites)) if sites else "a model without cross-attention"


def _shapes(tensors: dict) -> dict:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def adapter_lora_patches(model, adapter: Adapter) -> dict:
    """The adapter file's own LoRA tensors as ComfyUI weight patches for `model`."""
    targets = lora_targets(model)
    expected = {f"{name}_lora.{part}.weight" for name in targets for part in ("up", "down")}
    have = set(adapter.lora)
    if have != expected:
        missing, extra = sorted(expected - have), sorted(have - expected)
        made_for = lora_family(_shapes(adapter.lora)) or "an unknown model"
        raise AdapterFileError(
            f"`{adapter.name}`: its FaceID LoRA does not cover this model's attention layers "
            f"({len(have)} LoRA tensors, {len(expected)} expected; "
            + (f"missing e.g. `{missing[0]}`" if missing else f"unexpected e.g. `{extra[0]}`")
            + f"). The LoRA in the file is for {made_for}; this MODEL is {model_family(model)}. The file is damaged "
            "or made for another UNet layout: use the adapter published for this model.")
    state = model.model_state_dict(filter_prefix="diffusion_model.")
    for name, key in targets.items():
        w = state[key]
        up, down = adapter.lora[f"{name}_lora.up.weight"], adapter.lora[f"{name}_lora.down.weight"]
        if up.ndim != 2 or down.ndim != 2 or up.shape[0] != w.shape[0] or down.shape[1] != w.shape[1] \
                or up.shape[1] != down.shape[0]:
            made_for = lora_family(_shapes(adapter.lora)) or "another model"
            raise IncompatibleError(
                f"`{adapter.name}`: LoRA `{name}` is {tuple(up.shape)} x {tuple(down.shape)} but the model's `{key}` "
                f"is {tuple(w.shape)}. The adapter's LoRA is for {made_for}; this MODEL is {model_family(model)}. "
                "Use the adapter published for this model.")
    return comfy.lora.load_lora(adapter.lora, targets, log_missing=False)


def find_lora_file(adapter: Adapter) -> str | None:
    wanted = expected_lora_file(adapter).lower()
    for name in folder_paths.get_filename_list("loras"):
        if os.path.basename(name).lower() == wanted:
            return folder_paths.get_full_path("loras", name)
    return None


@functools.lru_cache(maxsize=2)
def _lora_file(version: tuple) -> dict:
    """A LoRA file's tensors, read and checked (corrupt, truncated, NaN/inf...) once per file version."""
    return comfy.lora_convert.convert_lora(checkpoint.load_file(version[0]))


def _patch_fits(patch, weight) -> bool:
    """Whether a LoRA patch's up x down product has the shape of the weight it patches (other patch kinds are
    ComfyUI's to check)."""
    factors = getattr(patch, "weights", None)
    if getattr(patch, "name", None) != "lora" or not factors or factors[3] is not None or factors[5] is not None:
        return True
    up, down = factors[0], factors[1]
    return up.shape[0] == weight.shape[0] and math.prod(down.shape[1:]) == math.prod(weight.shape[1:])


def lora_fit_problem(lora: dict, patches: dict, model) -> tuple[int, str] | None:
    """(how many of the LoRA's weights do not fit `model`, an example), or None when every one has a weight of
    its shape: ComfyUI would otherwise apply the ones that fit and only log the rest."""
    used = set()
    for patch in patches.values():
        used.update(getattr(patch, "loaded_keys", ()))
    unused = sorted(k for k in lora if k not in used and not k.endswith((".alpha", ".dora_scale")))
    state = model.model_state_dict()
    misshapen = sorted(key for key, patch in patches.items()
                       if isinstance(key, str) and key in state and not _patch_fits(patch, state[key]))
    if not unused and not misshapen:
        return None
    return len(unused) + len(misshapen), (unused or misshapen)[0]


def _file_lora_patches(model, adapter: Adapter, path: str) -> dict:
    name = os.path.basename(path)
    lora = _lora_file(file_version(path))
    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    problem = lora_fit_problem(lora, patches, model) if patches else (len(lora), next(iter(lora), ""))
    if problem:
        bad, example = problem
        made_for = lora_family(_shapes(lora)) or "another model"
        fits = model_family(model)
        raise IncompatibleError(
            f"LoRA `{name}` (for adapter `{adapter.name}`) does not fit this MODEL: {bad} of its {len(lora)} tensors "
            f"have no weight of their shape in it (e.g. `{example}`), so it would only be half applied. The LoRA is "
            f"for {made_for}; this MODEL and the adapter are {fits}. Put the LoRA published with `{adapter.name}` in "
            f"models/loras as `{expected_lora_file(adapter)}`, or set faceid_lora_strength to 0.")
    return patches


def apply_faceid_lora(model, adapter: Adapter, strength: float):
    """A clone of `model` with the FaceID LoRA at `strength`; `model` itself when none applies (strength 0, an
    adapter trained without one, or a MODEL that already carries this adapter's LoRA: from the Unified Loader
    or an earlier Apply in a chain, where a second copy would double it)."""
    if strength == 0 or not needs_lora(adapter):
        return model
    already = model.model_options.get(APPLIED, {})
    if adapter.name in already:
        log.info("Likeness: the MODEL already carries the FaceID LoRA of `%s` (strength %s); not applied again",
                 adapter.name, already[adapter.name])
        return model
    if adapter.lora:
        patches, source = adapter_lora_patches(model, adapter), f"the LoRA inside `{adapter.name}`"
    else:
        path = find_lora_file(adapter)
        if path is None:
            folders = ", ".join(folder_paths.get_folder_paths("loras"))
            raise IncompatibleError(
                f"adapter `{adapter.name}` was trained with a LoRA, but the file holds no LoRA tensors and "
                f"`{expected_lora_file(adapter)}` is not in the loras folders ({folders}). Download that file from "
                "h94/IP-Adapter-FaceID into models/loras, or set faceid_lora_strength to 0 if you load the LoRA "
                "with your own LoRA loader.")
        patches, source = _file_lora_patches(model, adapter, path), f"`{os.path.basename(path)}`"
    patched = model.clone()
    applied = patched.add_patches(patches, strength)
    if len(applied) != len(patches):
        raise IncompatibleError(f"{source}: only {len(applied)} of {len(patches)} LoRA weights exist in this MODEL, "
                                f"which is {model_family(model)}; use the adapter and LoRA published for it.")
    patched.model_options[APPLIED] = {**already, adapter.name: strength}
    log.info("Likeness: FaceID LoRA from %s on %d weights at strength %s", source, len(applied), strength)
    return patched
