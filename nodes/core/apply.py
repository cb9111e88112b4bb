"""Turning an adapter plus image tokens into an ImagePrompt for a model's cross-attention sites."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .adapter import Adapter
from .attention import ImagePrompt, SiteKV, site_keys_values
from .errors import IncompatibleError, InputError
from .frames import frame_weights_list
from .references import ImageTokens
from .schedules import Boosts, Site, site_plan
from .unfold import FramePrompt
from .variants import KOLORS, family_name

TextProjection = tuple  # (weight [context, text width], bias [context] or None): a UNet's own encoder_hid_proj

NO_KOLORS_SUPPORT = (
    "This ComfyUI has no Kolors support of its own (its supported models list no Kolors); Kolors runs through a "
    "Kolors loader pack, such as ComfyUI-Kolors-MZ, whose MODEL carries the UNet's `encoder_hid_proj`. Load the "
    "Kolors UNet with it and connect that MODEL.")


def check_base_model(adapter: Adapter, base_model: str | None, text_projection: TextProjection | None,
                     model_name: str = "the MODEL") -> None:
    """Kolors adapters need a Kolors UNet; tokens in the text encoder's space need the UNet's text projection."""
    det = adapter.detected
    if base_model is None:
        return
    if det.family == KOLORS and base_model != KOLORS:
        raise IncompatibleError(f"adapter `{adapter.name}` is for Kolors, but {model_name} is {base_model}. "
                                + NO_KOLORS_SUPPORT)
    if det.needs_text_projection:
        if text_projection is None:
            raise IncompatibleError(
                f"adapter `{adapter.name}` makes {det.tokens_width}-wide tokens in the text encoder's space, which "
                f"the UNet's own text projection (`encoder_hid_proj`) maps to its {det.context_width}-wide "
                f"attention; {model_name} ({base_model}) has none. " + NO_KOLORS_SUPPORT)
        weight = text_projection[0]
        if tuple(weight.shape) != (det.context_width, det.tokens_width):
            raise IncompatibleError(
                f"adapter `{adapter.name}` needs a text projection from {det.tokens_width} to "
                f"{det.context_width} wide, but the UNet's `encoder_hid_proj` maps {weight.shape[1]} to "
                f"{weight.shape[0]}. Use the Kolors model the adapter was made for.")


def project_text_space(tokens: torch.Tensor, text_projection: TextProjection, weight_kolors: float) -> torch.Tensor:
    """Tokens made in the text encoder's space -> the attention's context: weight_kolors · (t W^T + b), the UNet's
    encoder_hid_proj scaled as a whole (the leading pack's `weight_kolors`)."""
    weight, bias = text_projection
    weight = weight.to(tokens.device, torch.float32)
    bias = None if bias is None else bias.to(tokens.device, torch.float32)
    return F.linear(tokens.float(), weight, bias) * weight_kolors


def check_adapter_fits(adapter: Adapter, sites: Sequence[Site], model_name: str = "the MODEL") -> None:
    """Refuse an adapter whose layers do not match the model's cross-attention sites."""
    det = adapter.detected
    if not sites:
        raise IncompatibleError(
            f"{model_name} has no UNet cross-attention sites Likeness can patch (is it a DiT model such as FLUX "
            f"or SD3?). Adapter `{adapter.name}` is for {det.family}.")
    context = {s.context_width for s in sites}
    model_family = family_name(sites[0].context_width, len(sites))
    if context != {det.context_width} or len(sites) != len(det.layer_ids):
        raise IncompatibleError(
            f"adapter `{adapter.name}` is for {det.family} ({det.context_width}-wide cross-attention, "
            f"{len(det.layer_ids)} sites) but {model_name} is {model_family} "
            f"({'/'.join(map(str, sorted(context)))}-wide context, {len(sites)} sites). "
            f"Load an adapter made for {model_family}.")
    for site, layer_id, width in zip(sites, det.layer_ids, det.layer_widths):
        if site.width != width:
            raise IncompatibleError(
                f"adapter `{adapter.name}` layer {layer_id} is {width} wide but the model's cross-attention at "
                f"{site.key} is {site.width} wide: the adapter was made for a different UNet layout.")


def check_tokens_fit(adapter: Adapter, tokens: ImageTokens) -> None:
    det = adapter.detected
    expected = det.tokens or tokens.tokens_per_reference  # per-token MLP: one per encoder token
    if (tokens.adapter_name != adapter.name or tokens.context_width != det.tokens_width
            or tokens.tokens_per_reference != expected):
        raise IncompatibleError(
            f"the image tokens were made by adapter `{tokens.adapter_name}` ({tokens.tokens_per_reference} tokens "
            f"per reference, {tokens.context_width} wide) but Apply got adapter `{adapter.name}`, which expects "
            f"{expected} tokens of width {det.tokens_width}. Connect the same adapter to Project and Apply.")


def build_image_prompt(adapter: Adapter, tokens: ImageTokens, sites: Sequence[Site], weight,
                       weight_type: str, embeds_scaling: str, sigma_start: float, sigma_end: float,
                       mask: torch.Tensor | None = None, device: torch.device | None = None, *,
                       boosts: Boosts = Boosts(), layer_weights: dict[int, float] | None = None,
                       base_model: str | None = None, text_projection: TextProjection | None = None,
                       weight_kolors: float = 1.0, unfold_batch: bool = False, zero_tokens: int = 0,
                       combine=None) -> ImagePrompt:
    """Precompute every site's image keys and values once; sites at weight 0 get nothing.

    `weight` is a number, or a list with one weight per latent (frame). At the sites a precise weight type swaps,
    the cond side attends to zero tokens (K = V = 0, so its image term is exactly 0) and the uncond side to the
    reference's tokens. With `unfold_batch`, reference i drives latent i instead of every latent seeing all.
    `zero_tokens` zero tokens follow the image tokens (PuLID's methods); `combine` is the prompt's combine rule (see
    ImagePrompt), which works on one identity for every latent."""
    check_adapter_fits(adapter, sites)
    check_base_model(adapter, base_model, text_projection)
    check_tokens_fit(adapter, tokens)
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3 or mask.shape[-1] == 0 or mask.shape[-2] == 0 or mask.shape[0] == 0:
            raise InputError(f"attn_mask should be a MASK [batch, height, width]; got shape {tuple(mask.shape)}.")
    frame_list = frame_weights_list(weight)
    per_frame = frame_list is not None and len(set(frame_list)) > 1
    if frame_list is not None and not per_frame:
        weight = frame_list[0]  # one value for every frame: no different from a plain weight
    plans = [site_plan(sites, w, weight_type, boosts, layer_weights) for w in (frame_list if per_frame else [weight])]
    device = device or torch.device("cpu")
    if combine is not None and (unfold_batch or per_frame):
        raise InputError("PuLID gives every latent the same identity: turn unfold_batch off and give one weight, "
                         "not a per-frame list.")
    if combine is not None and plans[0].swapped:
        raise InputError(f"weight_type `{weight_type}` swaps cond and uncond at some layers, which PuLID's combine "
                         "rules do not take; pick another weight_type for a PuLID adapter.")
    if unfold_batch:
        cond, uncond = tokens.cond.to(device), tokens.uncond.to(device)  # [N, T, C]: one row per reference
    else:
        cond, uncond = (t.to(device)[None] for t in tokens.flat())  # [1, N * T, C]: every latent sees all
    if adapter.detected.needs_text_projection:
        cond, uncond = (project_text_space(t, text_projection, weight_kolors) for t in (cond, uncond))
    if zero_tokens:
        cond, uncond = (torch.cat([t, t.new_zeros(*t.shape[:-2], zero_tokens, t.shape[-1])], dim=-2)
                        for t in (cond, uncond))
    site_kv, frame_weights = {}, {}
    for site, layer_id in zip(sites, adapter.detected.layer_ids):
        weights = [plan.weights[site.key] for plan in plans]
        if not any(weights):
            continue
        w_k, w_v = adapter.kv_weights[layer_id]
        folded = weights[0] if not per_frame else 1.0
        kv = _row_keys_values(cond, uncond, w_k.to(device), w_v.to(device), folded, embeds_scaling, per_frame)
        site_kv[site.key] = swap_sides(kv) if site.key in plans[0].swapped else kv
        if per_frame:
            frame_weights[site.key] = torch.tensor(weights, dtype=torch.float32)
    if not (unfold_batch or per_frame):
        flat = {key: SiteKV(*(t[0] for t in (kv.k_cond, kv.v_cond, kv.k_uncond, kv.v_uncond)))
                for key, kv in site_kv.items()}
        return ImagePrompt(flat, sigma_start, sigma_end, mask, label=adapter.name, combine=combine)
    return FramePrompt(site_kv, sigma_start, sigma_end, mask, label=adapter.name,
                       frame_weights=frame_weights if per_frame else None, scaling=embeds_scaling)


def _row_keys_values(cond: torch.Tensor, uncond: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor, weight: float,
                     scaling: str, raw: bool) -> SiteKV:
    """K/V of [R, T, C] token rows, [R, T, width] each. `raw`: unweighted (per-frame weights apply later)."""
    if raw:
        w_k, w_v = w_k.float(), w_v.float()
        return SiteKV(*(F.linear(t.float(), w).detach().cpu() for t, w in ((cond, w_k), (cond, w_v), (uncond, w_k),
                                                                          (uncond, w_v))))
    rows = [site_keys_values(c, u, w_k, w_v, weight, scaling) for c, u in zip(cond, uncond)]
    return SiteKV(*(torch.stack([getattr(r, f) for r in rows]) for f in ("k_cond", "v_cond", "k_uncond", "v_uncond")))


def swap_sides(kv: SiteKV) -> SiteKV:
    """The precise weight types' swap: the uncond side attends to the reference, the cond side to zero tokens."""
    return SiteKV(torch.zeros_like(kv.k_cond), torch.zeros_like(kv.v_cond), kv.k_cond, kv.v_cond)
