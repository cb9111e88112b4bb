"""PuLID on a MODEL: which kind of model it is (an SDXL UNet or a FLUX DiT), and PuLID-FLUX installed as dit block
replaces and one forward wrapper on a clone. The MODEL given is never changed."""

from __future__ import annotations

import functools

import comfy.model_management
import comfy.patcher_extension

from ..core.adapter import Adapter
from ..core.apply import build_image_prompt, check_tokens_fit
from ..core.errors import IncompatibleError, InputError
from ..core.pulid import pulid_term, zero_tokens
from ..core.schedules import Boosts, parse_layer_weights
from ..core.pulid_flux import FluxBlockInsertion, FluxCallShape, IdentityInsertion, flux_mask
from ..core.variants import FLUX, pulid_flux_blocks
from .patch import install, sigma_window
from .sites import find_sites

CALL_SHAPE_KEY = "likeness_flux_call_shape"


def flux_layout(model) -> tuple[int, int, int] | None:
    """(double blocks, single blocks, hidden width) of a FLUX-style DiT, or None for other models."""
    dit = model.get_model_object("diffusion_model")
    double, single = getattr(dit, "double_blocks", None), getattr(dit, "single_blocks", None)
    width = getattr(dit, "hidden_size", None)
    if double is None or single is None or width is None:
        return None
    return len(double), len(single), int(width)


def check_pulid_fits(adapter: Adapter, model, sites_count: int) -> None:
    """PuLID-FLUX only on FLUX, PuLID for SDXL only on UNets; the file's modules must match the model's blocks."""
    det = adapter.detected
    layout = flux_layout(model)
    title = det.variant.title if det.variant else "PuLID"
    if det.family == FLUX:
        if layout is None:
            raise IncompatibleError(
                f"adapter `{adapter.name}` is {title}, for FLUX, but the MODEL is not a FLUX DiT"
                f"{f' (a UNet with {sites_count} cross-attention sites, e.g. SDXL)' if sites_count else ''}. Load a "
                "FLUX.1 model (Load Diffusion Model), or use a PuLID file for SDXL (pulid_v1.1.safetensors).")
        double, single, width = layout
        blocks = pulid_flux_blocks(double, single)
        if len(blocks) != len(det.layer_ids) or width != det.layer_widths[0]:
            raise IncompatibleError(
                f"adapter `{adapter.name}` has {len(det.layer_ids)} cross-attention modules {det.layer_widths[0]} "
                f"wide, but the MODEL ({double} double and {single} single blocks, {width} wide) takes "
                f"{len(blocks)} {width} wide (one after every 2nd double and every 4th single block). PuLID-FLUX "
                "was made for FLUX.1 [dev] (19 double, 38 single blocks, 3072 wide).")
    elif layout is not None:
        raise IncompatibleError(
            f"adapter `{adapter.name}` is {title}, for {det.family}, but the MODEL is a FLUX DiT ({layout[0]} double "
            f"and {layout[1]} single blocks). Use pulid_flux_v0.9.1.safetensors (models/pulid) with FLUX.")


def install_flux(model, insertion: IdentityInsertion):
    """A clone of `model` whose blocks insertion.blocks also add its identity terms. Replaces already there are
    kept and called: another pack's run first, an earlier PuLID apply's terms add to this one's."""
    patched = model.clone()
    replaces = patched.model_options["transformer_options"].get("patches_replace", {}).get("dit", {})
    for index, key in enumerate(insertion.blocks):
        previous = replaces.get(key)
        if isinstance(previous, FluxBlockInsertion):
            replace = previous.stacked(insertion, index)
        else:
            replace = FluxBlockInsertion(key, ((insertion, index),), base=previous)
        patched.set_model_patch_replace(replace, "dit", key[0], key[1])
    wrappers = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    if not patched.get_wrappers(wrappers, CALL_SHAPE_KEY):
        patched.add_wrapper_with_key(wrappers, CALL_SHAPE_KEY, FluxCallShape())
    return patched


def flux_insertion(adapter: Adapter, model, cond, uncond, weight: float, sigma_start: float, sigma_end: float,
                   mask=None) -> IdentityInsertion:
    double, single, _ = flux_layout(model)
    return IdentityInsertion(adapter.flux_modules, pulid_flux_blocks(double, single), cond, uncond, weight,
                             sigma_start, sigma_end, mask, label=adapter.name)


def apply_pulid(model, adapter: Adapter, tokens, weight: float, weight_type: str = "linear", start_at: float = 0.0,
                end_at: float = 1.0, embeds_scaling: str = "V only", attn_mask=None, method: str = "fidelity", *,
                unfold_batch: bool = False, layer_weights: str = "", boosts: Boosts = Boosts()):
    """Likeness Apply for PuLID adapters: PuLID-FLUX as block insertions on FLUX, PuLID v1 / v1.1 at the attn2
    sites of SDXL with the method's zero tokens and combine rule (and Likeness Apply's weight_type, layer_weights
    and boosts there)."""
    check_tokens_fit(adapter, tokens)
    sites = find_sites(model) if flux_layout(model) is None else []
    check_pulid_fits(adapter, model, len(sites))
    sigma_start, sigma_end = sigma_window(model, start_at, end_at)
    cond, uncond = tokens.flat()
    if adapter.detected.family == FLUX:
        if unfold_batch or not isinstance(weight, (int, float)) or (layer_weights or "").strip():
            raise InputError("PuLID-FLUX adds one identity at one weight after its blocks: turn unfold_batch off, "
                             "give one weight (not a per-frame list) and leave layer_weights empty.")
        insertion = flux_insertion(adapter, model, cond, uncond, weight, sigma_start, sigma_end, flux_mask(attn_mask))
        return install_flux(model, insertion)
    prompt = build_image_prompt(adapter, tokens, sites, weight, weight_type, embeds_scaling, sigma_start, sigma_end,
                                attn_mask, device=comfy.model_management.get_torch_device(),
                                boosts=boosts, layer_weights=parse_layer_weights(layer_weights),
                                unfold_batch=unfold_batch, zero_tokens=zero_tokens(method, adapter.detected.layout),
                                combine=functools.partial(pulid_term, method))
    return install(model, prompt, sites)
