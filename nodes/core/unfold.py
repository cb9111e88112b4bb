"""Batch unfold and per-frame weights: reference i drives latent i, and latent i can have its own weight.

A sampler runs the latents of a batch (or of an animation's context window) side by side, once per cond/uncond
chunk. Here the image keys and values are laid out row by row: latent f of the full batch attends to reference
min(f, R - 1) (the last reference repeats, extra references are unused) with the site weight of frame
min(f, F - 1). Under context windows the rows of a call are the window's frames, read from the transformer options:
AnimateDiff-Evolved's `ad_params["sub_idxs"]` or ComfyUI's own `context_window.index_list`.
"""

from __future__ import annotations

import threading
from typing import Mapping, Sequence

import torch

from .attention import ImagePrompt, SiteKey, SiteKV, resize_mask, scale_keys_values, token_grid
from .errors import InputError


def latent_indices(extra: Mapping, per: int) -> list[int]:
    """Which latents of the full batch the `per` rows of each chunk are: a context window's frames, else 0..per-1."""
    ad = extra.get("ad_params")
    sub = ad.get("sub_idxs") if isinstance(ad, Mapping) else None
    if sub is None:
        window = extra.get("context_window")
        if window is not None and getattr(window, "dim", 0) == 0:
            sub = getattr(window, "index_list", None)
    if sub is None:
        return list(range(per))
    sub = [int(i) for i in sub]
    if len(sub) != per:
        raise InputError(f"the context window lists {len(sub)} frames, but the cross-attention got {per} latents "
                         "per cond/uncond chunk.")
    return sub


def chunk_rows(extra: Mapping, batch: int) -> tuple[tuple[int, ...], int]:
    """(cond/uncond chunk order, latents per chunk) for a call with `batch` query rows."""
    chunks = tuple(1 if c == 1 else 0 for c in (extra.get("cond_or_uncond") or (0,)))
    if batch % len(chunks):
        raise InputError(f"a batch of {batch} rows cannot be split into the {len(chunks)} cond/uncond chunks.")
    return chunks, batch // len(chunks)


def mask_rows(mask: torch.Tensor, tokens: int, extra: Mapping, chunks: Sequence[int], per: int, device,
              dtype) -> torch.Tensor:
    """[b, tokens, 1]: latent f uses mask min(f, M - 1) on this site's grid, for every chunk."""
    h, w = token_grid(tokens, extra.get("activations_shape"), extra.get("original_shape"))
    site_mask = resize_mask(mask, h, w, tokens).to(device, dtype)
    rows = torch.tensor(latent_indices(extra, per), device=site_mask.device).clamp(max=site_mask.shape[0] - 1)
    return site_mask[rows].repeat(len(chunks), 1, 1)


class FramePrompt(ImagePrompt):
    """An ImagePrompt whose keys and values differ by latent: K/V per reference ([R, tokens, width] for each side;
    R = 1 when every latent sees all references), and optionally per-frame site weights, applied per row when
    the call runs (K/V are then stored unweighted; a plain weight is folded in when the prompt is built).

    It keeps its own device copies (`place` / `release`, called when the host moves the model's patches; made on
    first use otherwise) and answers `keys_values` with K/V laid out row by row along the queries' batch."""

    def __init__(self, site_kv: Mapping[SiteKey, SiteKV], sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None = None, label: str = "",
                 frame_weights: Mapping[SiteKey, torch.Tensor] | None = None, scaling: str = "V only"):
        super().__init__(site_kv, sigma_start, sigma_end, mask, label)
        self.frame_weights = None if frame_weights is None else {k: w.float().cpu() for k, w in frame_weights.items()}
        self.scaling = scaling
        self._rows_lock = threading.Lock()
        self._row_copies: dict = {}  # (device, dtype) -> {site key: SiteKV}

    def place(self, device, dtype) -> dict:
        """Copies of the per-reference K/V on `device` in `dtype`, made once."""
        key = (torch.device(device), dtype)
        hit = self._row_copies.get(key)
        if hit is None:
            with self._rows_lock:
                hit = self._row_copies.get(key)
                if hit is None:
                    hit = {k: SiteKV(*(t.to(device=device, dtype=dtype) for t in (kv.k_cond, kv.v_cond, kv.k_uncond,
                                                                                   kv.v_uncond)))
                           for k, kv in self.site_kv.items()}
                    self._row_copies = {**self._row_copies, key: hit}
        return hit

    def release(self, device=None) -> None:
        """Drop the copies on `device` (all device copies when None)."""
        with self._rows_lock:
            self._row_copies = {k: c for k, c in self._row_copies.items()
                                if device is not None and k[0] != torch.device(device)}

    @property
    def placed_device(self) -> torch.device | None:
        copies = self._row_copies
        return next(iter(copies))[0] if copies else None

    def keys_values(self, key: SiteKey, q: torch.Tensor, extra: Mapping, *args, **kwargs):
        """K [b, tokens, width], V and mask [b, n, 1] for the b query rows of this call (or None where the prompt
        does not act now)."""
        if key not in self.site_kv or not self.is_active(extra):
            return None
        chunks, per = chunk_rows(extra, q.shape[0])
        frames = latent_indices(extra, per)
        kv = self.place(q.device, q.dtype)[key]
        refs = torch.tensor(frames, device=q.device).clamp(max=kv.k_cond.shape[0] - 1)
        weight = None
        if self.frame_weights is not None:
            table = self.frame_weights[key]
            rows = torch.tensor(frames).clamp(max=table.shape[0] - 1)
            weight = table[rows].to(q.device, q.dtype).view(per, 1, 1)
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
            mask = mask_rows(self.mask, q.shape[1], extra, chunks, per, q.device, q.dtype)
        return torch.cat(ks), torch.cat(vs), mask
