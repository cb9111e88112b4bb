"""Installing an ImagePrompt on a clone of the user's MODEL, and the rules every patch the pack installs follows.

Rules for every callable the pack puts in a model (attn2 replaces today; "dit" block replaces, wrappers and
whatever comes next follow them too), because ComfyUI's calling conventions grow over time:

1. **Tolerant calls.** Accept and ignore extra positional and keyword arguments (`def __call__(self, q, k, v,
   extra=None, *args, **kwargs)`), and take the options dict by name too when it is not passed positionally.
2. **Optional keys have fallbacks.** Read `extra_options` / `transformer_options` with `.get`. Whatever can be
   known when the patch is built is recorded then (the site's head count from its attention module, the
   model's compute dtype), so a missing `n_heads` is no error; a missing `cond_or_uncond` means all rows are
   cond; missing `sigmas` means active; missing shapes fall back to the grid guess.
3. **Nothing is allocated inside the forward but the output itself.** Device copies of what the patch reads are
   made in the patch's `.to()` (see core/placement.py: `MovesWithModel` does it for a subclass that lists its
   holders), kept per device and released per device. What must still be made while sampling is wrapped in
   `allocation_pause()`.
4. **Clones share the big tensors.** Holders of tensors return themselves from `__deepcopy__`; the callables
   in `model_options` are light and may be copied per clone.
5. **Stable extension points only**: `patches_replace`, conditioning keys, wrappers, weight patches through
   `add_patches`; never a model's `forward` or module attributes.
"""

from __future__ import annotations

import functools
import importlib
import logging
from contextlib import nullcontext

import comfy.ldm.modules.attention as comfy_attention

from ..core.attention import DecoupledCrossAttention, ImagePrompt
from ..core.errors import InputError
from ..core.schedules import window_problem
from .sites import find_sites

log = logging.getLogger(__name__)


def _attention(*args, **kwargs):
    # Looked up at call time so a backend chosen after import (or by another pack) is honoured.
    return comfy_attention.optimized_attention(*args, **kwargs)


@functools.cache
def _core_allocation_pause():
    """Core's context manager that pauses allocation recording (the Comfy compiler's malloc graph, CUDA-graph
    capture), or None on a ComfyUI without one (0.3.x)."""
    try:
        prefetch = importlib.import_module("comfy.model_prefetch")
    except Exception:  # absent, or present without its native parts: nothing to pause
        return None
    return getattr(prefetch, "pause_malloc_graph", None)


def allocation_pause():
    """Wrap anything made while sampling in this, so core's recorded allocation pattern stays the same step to
    step; a no-op where core has no such helper."""
    pause = _core_allocation_pause()
    return nullcontext() if pause is None else pause()


def uses_dynamic_vram(model) -> bool:
    """Whether ComfyUI streams this MODEL's weights with dynamic VRAM (`ModelPatcher.is_dynamic()`, newer
    ComfyUI); False where the method does not exist."""
    is_dynamic = getattr(model, "is_dynamic", None)
    try:
        return bool(is_dynamic()) if callable(is_dynamic) else False
    except Exception:  # a patcher subclass that cannot answer: treat as the classic loader
        return False


def sigma_window(model, start_at: float, end_at: float) -> tuple[float, float]:
    problem = window_problem(start_at, end_at)
    if problem:
        raise InputError(problem)
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_at)), float(sampling.percent_to_sigma(end_at))


def install(model, prompt: ImagePrompt, sites=None):
    """Return a clone of `model` whose cross-attention sites also attend to `prompt`. `model` is untouched."""
    heads = {s.key: s.heads for s in (sites if sites is not None else find_sites(model))}
    cast_dtype = getattr(getattr(model, "model", None), "manual_cast_dtype", None)
    patched = model.clone()
    replaces = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for key in prompt.site_kv:
        previous = replaces.get(key) or replaces.get(key[:2])
        if isinstance(previous, DecoupledCrossAttention):
            replace = previous.stacked(prompt)
        else:
            replace = DecoupledCrossAttention(key, (prompt,), _attention, base=previous, heads=heads.get(key),
                                              cast_dtype=cast_dtype, allocation_pause=allocation_pause)
        patched.set_model_attn2_replace(replace, key[0], key[1], key[2])
    log.debug("Likeness: `%s` on %d sites (dynamic VRAM: %s)", prompt.label, len(prompt.site_kv),
              uses_dynamic_vram(model))
    return patched
