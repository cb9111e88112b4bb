"""Turning an adapter plus image tokens into an ImagePrompt for a model's cross-attention sites."""

from __future__ import annotations

from typing import Sequence

import torch

from .adapter import Adapter
from .attention import ImagePrompt, site_keys_values
from .errors import IncompatibleError, InputError
from .references import ImageTokens
from .schedules import Site, site_weights
from .variants import family_name


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
    if (tokens.adapter_name != adapter.name or tokens.context_width != det.context_width
            or tokens.tokens_per_reference != expected):
        raise IncompatibleError(
            f"the image tokens were made by adapter `{tokens.adapter_name}` ({tokens.tokens_per_reference} tokens "
            f"per reference, {tokens.context_width} wide) but Apply got adapter `{adapter.name}`, which expects "
            f"{expected} tokens of width {det.context_width}. Connect the same adapter to Project and Apply.")


def build_image_prompt(adapter: Adapter, tokens: ImageTokens, sites: Sequence[Site], weight: float,
                       weight_type: str, embeds_scaling: str, sigma_start: float, sigma_end: float,
                       mask: torch.Tensor | None = None, device: torch.device | None = None, zero_tokens: int = 0,
                       combine=None) -> ImagePrompt:
    """Precompute every site's image keys and values once; sites at weight 0 get nothing. `zero_tokens` zero
    tokens follow the image tokens (PuLID's methods); `combine` is the prompt's combine rule (see ImagePrompt)."""
    check_adapter_fits(adapter, sites)
    check_tokens_fit(adapter, tokens)
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim != 3 or mask.shape[-1] == 0 or mask.shape[-2] == 0 or mask.shape[0] == 0:
            raise InputError(f"attn_mask should be a MASK [batch, height, width]; got shape {tuple(mask.shape)}.")
    weights = site_weights(sites, weight, weight_type)
    device = device or torch.device("cpu")
    cond, uncond = (t.to(device) for t in tokens.flat())
    if zero_tokens:
        cond, uncond = (torch.cat([t, t.new_zeros(zero_tokens, t.shape[-1])]) for t in (cond, uncond))
    site_kv = {}
    for site, layer_id in zip(sites, adapter.detected.layer_ids):
        w = weights[site.key]
        if w == 0:
            continue
        w_k, w_v = adapter.kv_weights[layer_id]
        site_kv[site.key] = site_keys_values(cond, uncond, w_k.to(device), w_v.to(device), w, embeds_scaling)
    return ImagePrompt(site_kv, sigma_start, sigma_end, mask, label=adapter.name, combine=combine)
