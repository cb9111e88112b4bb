"""Installing an ImagePrompt on a clone of the user's MODEL."""

from __future__ import annotations

import comfy.ldm.modules.attention as comfy_attention

from ..core.attention import DecoupledCrossAttention, ImagePrompt
from ..core.errors import InputError
from ..core.schedules import window_problem


def _attention(*args, **kwargs):
    # Looked up at call time so a backend chosen after import (or by another pack) is honoured.
    return comfy_attention.optimized_attention(*args, **kwargs)


def sigma_window(model, start_at: float, end_at: float) -> tuple[float, float]:
    problem = window_problem(start_at, end_at)
    if problem:
        raise InputError(problem)
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_at)), float(sampling.percent_to_sigma(end_at))


def install(model, prompt: ImagePrompt):
    """Return a clone of `model` whose cross-attention sites also attend to `prompt`. `model` is untouched."""
    patched = model.clone()
    replaces = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for key in prompt.site_kv:
        previous = replaces.get(key) or replaces.get(key[:2])
        if isinstance(previous, DecoupledCrossAttention):
            replace = previous.stacked(prompt)
        else:
            replace = DecoupledCrossAttention(key, (prompt,), _attention, base=previous)
        patched.set_model_attn2_replace(replace, key[0], key[1], key[2])
    return patched
