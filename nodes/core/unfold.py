"""Batch unfold and per-frame weights: reference i drives latent i, and latent i can have its own weight.

A sampler runs the latents of a batch (or of an animation's context window) side by side, once per cond/uncond
chunk. Here the image keys and values are laid out row by row: latent f of the full batch attends to reference
min(f, R - 1) (the last reference repeats, extra references are unused) with the site weight of frame
min(f, F - 1). Under context windows the rows of a call are the window's frames, read from the transformer options:
AnimateDiff-Evolved's `ad_params["sub_idxs"]` or ComfyUI's own `context_window.index_list`.
"""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import torch

from .attention import (ImageKV, ImagePrompt, SiteKey, SiteKV, resize_mask, scale_keys_values, token_grid,
                        window_frames)
from .errors import InputError
from .placement import DeviceCopies, no_pause


def latent_indices(extra: Mapping, per: int) -> list[int]:
    """Which latents of the full batch the `per` rows of each chunk are: a context window's frames, else 0..per-1."""
    frames = window_frames(extra)
    if frames is None:
        return list(range(per))
    if len(frames) != per:
        raise InputError(f"the context window lists {len(frames)} frames, but the cross-attention got {per} latents "
                         "per cond/uncond chunk.")
    return list(frames)


def chunk_rows(extra: Mapping, batch: int) -> tuple[tuple[int, ...], int]:
    """(cond/uncond chunk order, latents per chunk) for a call with `batch` query rows."""
    chunks = tuple(1 if c == 1 else 0 for c in (extra.get("cond_or_uncond") or (0,)))
    if batch % len(chunks):
        raise InputError(f"a batch of {batch} rows cannot be split into the {len(chunks)} cond/uncond chunks.")
    return chunks, batch // len(chunks)


class PlacedFrames:
    """A FramePrompt's K/V per reference, frame weights and mask on one device in one dtype, made before sampling;
    and the row-by-row layouts sampling derives from them, once per run and call layout (not per step)."""

    LAYOUT_LIMIT = 1024  # site calls remembered; a long animation's windows stay well below it

    def __init__(self, site_kv: Mapping[SiteKey, SiteKV], frame_weights: Mapping[SiteKey, torch.Tensor] | None,
                 mask: torch.Tensor | None, scaling: str, device, dtype):
        self.device, self.dtype, self.scaling = device, dtype, scaling
        self.kv = {key: SiteKV(*(t.to(device=device, dtype=dtype)
                                 for t in (kv.k_cond, kv.v_cond, kv.k_uncond, kv.v_uncond)))
                   for key, kv in site_kv.items()}
        self.weights = None if frame_weights is None else {key: w.to(device=device, dtype=dtype)
                                                           for key, w in frame_weights.items()}
        self.mask = None if mask is None else mask.to(device)  # float32: resized per grid, then cast
        self.layouts: dict = {}  # (site, chunks, per, tokens, grid, frames) -> ImageKV

    def tensors(self) -> list[torch.Tensor]:
        held = [t for kv in self.kv.values() for t in (kv.k_cond, kv.v_cond, kv.k_uncond, kv.v_uncond)]
        held += list((self.weights or {}).values()) + ([self.mask] if self.mask is not None else [])
        return held + [t for value in self.layouts.values() for t in value if t is not None]

    def layout(self, key: SiteKey, q: torch.Tensor, extra: Mapping, pause) -> ImageKV:
        """K [b, tokens, width], V and mask [b, n, 1] for the b query rows of one site call, built on the first call
        of a run with this layout (a context window's frames are part of it) and looked up on later steps."""
        chunks, per = chunk_rows(extra, q.shape[0])
        frames = tuple(latent_indices(extra, per))
        tokens = q.shape[1]
        grid = None if self.mask is None else token_grid(tokens, extra.get("activations_shape"),
                                                          extra.get("original_shape"))
        cache_key = (key, chunks, per, tokens, grid, frames)
        hit = self.layouts.get(cache_key)
        if hit is None:
            with pause():
                hit = self._rows(key, chunks, frames, tokens, grid)
            if len(self.layouts) >= self.LAYOUT_LIMIT:
                self.layouts = {}
            self.layouts[cache_key] = hit
        return hit

    def _rows(self, key: SiteKey, chunks: tuple, frames: tuple, tokens: int, grid) -> ImageKV:
        kv = self.kv[key]
        refs = torch.tensor(frames, device=self.device).clamp(max=kv.k_cond.shape[0] - 1)
        weight = None
        if self.weights is not None:
            table = self.weights[key]
            weight = table[torch.tensor(frames, device=self.device).clamp(max=table.shape[0] - 1)].view(-1, 1, 1)
        ks, vs = [], []
        for c in chunks:
            k = (kv.k_uncond if c == 1 else kv.k_cond).index_select(0, refs)
            v = (kv.v_uncond if c == 1 else kv.v_cond).index_select(0, refs)
            if weight is not None:
                k, v = scale_keys_values(k, v, weight, k.shape[-1], self.scaling)
            ks.append(k)
            vs.append(v)
        mask = None
        if self.mask is not None:
            site_mask = resize_mask(self.mask, *grid, tokens)
            rows = torch.tensor(frames, device=site_mask.device).clamp(max=site_mask.shape[0] - 1)
            mask = site_mask[rows].repeat(len(chunks), 1, 1).to(self.dtype)
        return torch.cat(ks), torch.cat(vs), mask


class FramePrompt(ImagePrompt):
    """An ImagePrompt whose keys and values differ by latent: K/V per reference ([R, tokens, width] for each side;
    R = 1 when every latent sees all references), and optionally per-frame site weights, applied per row (K/V are
    then stored unweighted; a plain weight is folded in when the prompt is built).

    Its device copies follow the host's moves like an ImagePrompt's (placement.py); `keys_values` lays K/V out
    row by row along the queries' batch, one group per row (see attention.ImageKV)."""

    def __init__(self, site_kv: Mapping[SiteKey, SiteKV], sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None = None, label: str = "",
                 frame_weights: Mapping[SiteKey, torch.Tensor] | None = None, scaling: str = "V only"):
        super().__init__(site_kv, sigma_start, sigma_end, mask, label)
        self.frame_weights = None if frame_weights is None else {k: w.float().cpu() for k, w in frame_weights.items()}
        self.scaling = scaling
        self.copies = DeviceCopies(functools.partial(PlacedFrames, self.site_kv, self.frame_weights, self.mask,
                                                     scaling))

    def keys_values(self, key: SiteKey, q: torch.Tensor, extra: Mapping, pause=no_pause, *args, **kwargs):
        """What this prompt attends to at `key` for these queries (see PlacedFrames.layout), or None where it does
        not act now."""
        if key not in self.site_kv or not self.is_active(extra):
            return None
        placed = self.copies.get(q.device, q.dtype)
        if placed is None:  # the host did not move the patches before sampling
            with pause():
                placed = self.place(q.device, q.dtype)
        return placed.layout(key, q, extra, pause)
