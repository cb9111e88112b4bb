"""Decoupled cross-attention: text attention plus, for each applied adapter, weight x attention over image tokens.

    out = Attn(q, K_text, V_text) + sum_a mask_a * Attn(q, K_a, V_a)

with K_a = tokens_a W_k^T and V_a = tokens_a W_v^T for the site, and the site weight folded into K_a/V_a
according to the embeds scaling. K_a and V_a are constant over a sampling run, so they are computed once
when the adapter is applied, and copied to the sampling device and dtype when ComfyUI loads the model
(placement.py), never inside the forward.

An ImagePrompt holds the tensors and returns itself from `__deepcopy__`: ComfyUI deep-copies `model_options`
on every `ModelPatcher.clone()`, and the image keys and values must not be copied with it. The attn2 replace
objects that point at it are light; each clone gets its own, which tracks where that clone's model is loaded.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError
from .placement import AllocationPause, DeviceCopies, MovesWithModel, no_pause

EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")
PENALTY_WIDTH = 1280  # sites this wide get the full weight under the "C penalty" modes

SiteKey = tuple  # ("input" | "middle" | "output", block id, transformer block index)
Attention = Callable[..., torch.Tensor]  # ComfyUI's optimized_attention(q, k, v, heads, **kw)


@dataclass(frozen=True)
class SiteKV:
    """Image keys and values of one adapter at one site, for the cond and uncond sides: [tokens, width]."""

    k_cond: torch.Tensor
    v_cond: torch.Tensor
    k_uncond: torch.Tensor
    v_uncond: torch.Tensor


def scale_keys_values(k: torch.Tensor, v: torch.Tensor, weight: float, width: int, scaling: str):
    """Fold the site weight into K and V. All modes are exact rewrites of weighting the attention output
    (V only) or documented variants that also change the attention pattern."""
    if scaling == "V only":
        return k, v * weight
    if scaling == "K+V":
        return k * weight, v * weight
    penalised = weight * width / PENALTY_WIDTH
    if scaling == "K+V w/ C penalty":
        return k * penalised, v * penalised
    if scaling == "K+mean(V) w/ C penalty":
        mean = v.mean(dim=-2, keepdim=True)
        return k * penalised, (v - mean) + mean * penalised
    raise InputError(f"embeds_scaling `{scaling}` is not one of: {', '.join(EMBEDS_SCALING)}.")


def site_keys_values(cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor, w_k: torch.Tensor,
                     w_v: torch.Tensor, weight: float, scaling: str) -> SiteKV:
    """K/V for one site in float32. Tokens are [n, C] (references already concatenated)."""
    w_k, w_v = w_k.float(), w_v.float()
    pairs = []
    for tokens in (cond_tokens, uncond_tokens):
        k, v = F.linear(tokens.float(), w_k), F.linear(tokens.float(), w_v)
        pairs.extend(scale_keys_values(k, v, weight, w_k.shape[0], scaling))
    return SiteKV(*(t.detach().cpu() for t in pairs))


def token_grid(tokens: int, activations_shape: Sequence[int] | None, latent_shape: Sequence[int] | None):
    """(h, w) of the site's token grid."""
    if activations_shape is not None and len(activations_shape) >= 4:
        h, w = int(activations_shape[-2]), int(activations_shape[-1])
        if h * w == tokens:
            return h, w
    if latent_shape is not None and len(latent_shape) >= 4:
        lh, lw = int(latent_shape[-2]), int(latent_shape[-1])
        for down in range(0, 8):
            h, w = math.ceil(lh / 2 ** down), math.ceil(lw / 2 ** down)
            if h * w == tokens:
                return h, w
        h = max(1, round(math.sqrt(tokens * lh / lw)))
        return h, math.ceil(tokens / h)
    h = max(1, int(math.sqrt(tokens)))
    return h, math.ceil(tokens / h)


def resize_mask(mask: torch.Tensor, h: int, w: int, tokens: int) -> torch.Tensor:
    """[M, H, W] mask -> [M, tokens, 1] on the site's grid (bilinear; padded or cut if the grid is not exact)."""
    m = F.interpolate(mask[:, None].float(), size=(h, w), mode="bilinear", align_corners=False)
    m = m.reshape(mask.shape[0], h * w)
    if h * w < tokens:
        m = torch.cat([m, m[:, -1:].expand(-1, tokens - h * w)], dim=1)
    return m[:, :tokens, None]


def image_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v per head, for the few image tokens of one adapter.

    Plain PyTorch SDPA rather than the host's attention backend: the image branch has 4-257 keys, where a
    backend's fixed per-call cost (sub-quadratic chunking on CPU, sage/xformers quirks) dominates."""
    b, n, width = q.shape
    d = width // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    v = v.view(b, -1, heads, d).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, width)


ImageKV = tuple
"""What one adapter attends to at one site: (k [G, tokens, width], v [G, tokens, width], mask [1 or G, L, 1] or
None). The b query rows of a site call fall into G groups of consecutive rows that share K/V (the cond/uncond
chunks of ComfyUI's batch), so K/V are G rows, not b: `fold` views q as [G, L, width] with L = b / G * n."""

# One pass for several adapters pays from this many queries on (measured on CPU, benchmarks/RESULTS.md); below
# it, one SDPA call per adapter is cheaper. The score tensor of one pass is capped so full-face adapters at
# high resolution fall back to per-adapter calls instead of allocating gigabytes.
GROUPED_MIN_QUERIES = 256
GROUPED_MAX_SCORES = 1 << 24


def fold(q: torch.Tensor, groups: int) -> torch.Tensor:
    """[b, n, width] queries as [groups, b / groups * n, width] (a view: rows of one group are consecutive)."""
    return q if q.shape[0] == groups else q.reshape(groups, -1, q.shape[-1])


def grouped_image_attention(q: torch.Tensor, parts: Sequence[ImageKV], heads: int) -> torch.Tensor:
    """sum_a mask_a * softmax(q k_a^T / sqrt(d)) v_a for adapters with the same number of image tokens.

    q is [G, L, width], laid out like the parts' K/V. One matmul gives every adapter's scores, the softmax runs
    per adapter, and the second matmul also does the sum over adapters; the queries are read in place, once per
    row, instead of once per adapter."""
    b, n, width = q.shape
    d = width // heads
    count, tokens = len(parts), parts[0][0].shape[1]
    k = torch.cat([p[0] for p in parts], 1).view(b, count * tokens, heads, d).permute(0, 2, 3, 1) * d ** -0.5
    v = torch.cat([p[1] for p in parts], 1).view(b, count * tokens, heads, d).transpose(1, 2)
    masks = None
    if any(p[2] is not None for p in parts):
        ones = q.new_ones(1, 1, 1)
        masks = torch.cat([(ones if p[2] is None else p[2]).expand(b, n, 1) for p in parts], 2)  # [b, n, adapters]
    out = q.new_empty(b, n, width)
    for row in range(b):
        scores = torch.bmm(q[row].view(n, heads, d).transpose(0, 1), k[row])  # [heads, n, adapters * tokens]
        probs = scores.view(heads, n, count, tokens).softmax(-1)
        if masks is not None:
            probs = probs * masks[row].view(1, n, count, 1)
        out[row].view(n, heads, d).transpose(0, 1).copy_(torch.bmm(probs.view(heads, n, count * tokens), v[row]))
    return out


def _masked(term: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return term if mask is None else term * mask


def image_attention_sum(q: torch.Tensor, parts: Sequence[ImageKV], heads: int) -> torch.Tensor:
    """The summed image term of several adapters at one site, [b, n, width]: grouped passes where they pay,
    else one attention call per adapter. Sums in place where no autograd graph is recorded."""
    by_layout: dict[tuple, list] = {}
    for p in parts:
        by_layout.setdefault((p[0].shape[1], p[0].shape[0]), []).append(p)
    total = None
    for (tokens, groups), group in by_layout.items():
        qg = fold(q, groups)
        n = qg.shape[1]
        if len(group) > 1 and n >= GROUPED_MIN_QUERIES and heads * n * tokens * len(group) <= GROUPED_MAX_SCORES:
            terms = [grouped_image_attention(qg, group, heads)]
        else:
            terms = [_masked(image_attention(qg, k, v, heads), mask) for k, v, mask in group]
        for term in terms:
            # adapters folded into different row groups (e.g. one unfolded per latent, one shared) sum in q's shape
            term = term if term.shape == q.shape else term.reshape(q.shape)
            if total is None:
                total = term
            elif torch.is_grad_enabled():
                total = total + term
            else:
                total.add_(term)
    return total


def chunk_slice(chunks: tuple) -> tuple[int, int] | None:
    """Where rows in this cond/uncond order sit in a [cond, uncond, cond] stack, as (start, count); None when no
    slice of it fits (ComfyUI's orders, (0,), (1,), (0, 1), (1, 0) and (0, 1, 0), all do)."""
    if any(a == b for a, b in zip(chunks, chunks[1:])):
        return None
    start = 0 if chunks[0] == 0 else 1
    return (start, len(chunks)) if start + len(chunks) <= 3 else None


def window_frames(extra: Mapping) -> tuple[int, ...] | None:
    """The latents of the full batch that a call's rows are, under an animation's context window:
    AnimateDiff-Evolved's `ad_params["sub_idxs"]`, or ComfyUI's own `context_window` over the batch axis. None
    outside a window."""
    ad = extra.get("ad_params")
    sub = ad.get("sub_idxs") if isinstance(ad, Mapping) else None
    if sub is None:
        window = extra.get("context_window")
        if window is not None and getattr(window, "dim", 0) == 0:
            sub = getattr(window, "index_list", None)
    return None if sub is None else tuple(int(i) for i in sub)


class PlacedPrompt:
    """An ImagePrompt's K/V and mask on one device in one dtype, made before sampling; and what sampling derives
    from them once per run (a mask on each site's grid, K/V for an unusual cond/uncond order)."""

    DERIVED_LIMIT = 256

    def __init__(self, site_kv: Mapping[SiteKey, SiteKV], mask: torch.Tensor | None, device, dtype):
        self.device, self.dtype = device, dtype
        self.kv = {key: (torch.stack([kv.k_cond, kv.k_uncond, kv.k_cond]).to(device=device, dtype=dtype),
                         torch.stack([kv.v_cond, kv.v_uncond, kv.v_cond]).to(device=device, dtype=dtype))
                   for key, kv in site_kv.items()}
        self.mask = None if mask is None else mask.to(device)  # float32: resized per grid, then cast
        self.derived: dict = {}
        self.layouts: dict = {}  # (site, chunks, batch, tokens, grid) -> ImageKV: views and derived tensors

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor made for this copy (views of the placed stacks are not new tensors and not listed)."""
        held = [t for pair in self.kv.values() for t in pair] + ([self.mask] if self.mask is not None else [])
        return held + [t for value in self.derived.values() for t in value if t is not None]

    def _remember(self, key, value):
        if len(self.derived) >= self.DERIVED_LIMIT:
            self.derived = {}
        self.derived[key] = value
        return value

    def layout(self, key: SiteKey, chunks: tuple, batch: int, tokens: int, extra: Mapping, pause) -> ImageKV:
        """K, V and mask for one site call (see ImageKV). The first call of a run with this batch layout builds
        them (views of the placed stacks; the mask on this site's grid); later steps only look them up."""
        # A mask depends on the site's grid, which two latent shapes with the same token count do not share.
        grid = None if self.mask is None else token_grid(tokens, extra.get("activations_shape"),
                                                          extra.get("original_shape"))
        # Under an animation's context windows the rows are those frames of the full batch: a batch of masks follows.
        frames = None if self.mask is None or self.mask.shape[0] < 2 else window_frames(extra)
        hit = self.layouts.get((key, chunks, batch, tokens, grid, frames))
        if hit is None:
            rows = tuple(1 if c == 1 else 0 for c in chunks)
            if batch % len(rows):
                raise InputError(f"a batch of {batch} rows cannot be split into the {len(rows)} cond/uncond "
                                 "chunks.")
            k, v = self.for_chunks(key, rows, pause)
            mask = None if self.mask is None else self.mask_for(key, batch // len(rows), tokens, extra, pause, frames)
            hit = (k, v, mask)
            if len(self.layouts) >= self.DERIVED_LIMIT:
                self.layouts = {}
            self.layouts[(key, chunks, batch, tokens, grid, frames)] = hit
        return hit

    def for_chunks(self, key: SiteKey, chunks: tuple, pause) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V for the chunks of a batch, [len(chunks), tokens, width]: views of the placed stack."""
        k, v = self.kv[key]
        where = chunk_slice(chunks)
        if where is not None:
            start, count = where
            return k[start:start + count], v[start:start + count]
        hit = self.derived.get(("chunks", key, chunks))
        if hit is None:
            with pause():
                rows = torch.tensor([1 if c == 1 else 0 for c in chunks], device=k.device)
                hit = self._remember(("chunks", key, chunks), (k.index_select(0, rows), v.index_select(0, rows)))
        return hit

    def mask_for(self, key: SiteKey, per: int, tokens: int, extra: Mapping, pause,
                 frames: tuple[int, ...] | None = None) -> torch.Tensor:
        """[1, per * tokens, 1]: latent i of every chunk uses mask i (the last one repeats), on this site's grid;
        under a context window (`frames`, the window's latents in the full batch) latent f uses mask f."""
        h, w = token_grid(tokens, extra.get("activations_shape"), extra.get("original_shape"))
        if frames is not None and len(frames) != per:
            raise InputError(f"the context window lists {len(frames)} frames, but the cross-attention got {per} "
                             "latents per cond/uncond chunk.")
        cache_key = ("mask", key, per, tokens, h, w, frames)
        hit = self.derived.get(cache_key)
        if hit is None:
            with pause():
                site_mask = resize_mask(self.mask, h, w, tokens)
                rows = (torch.arange(per) if frames is None else torch.tensor(frames)).to(site_mask.device)
                rows = rows.clamp(max=site_mask.shape[0] - 1)
                hit = self._remember(cache_key, (site_mask[rows].reshape(1, per * tokens, 1).to(self.dtype),))
        return hit[0]


class ImagePrompt:
    """One applied adapter: its K/V per site, active window (in sigmas) and optional attention mask.

    Everything mutable belongs to the object: its device copies (one per device and dtype, see placement.py)
    and the cache of the current step's window test. Two prompts share nothing.

    `combine`, when set, turns the adapter's attention output into its term at a site from the text attention's
    output (PuLID's rules): combine(q, out, keys_values, heads) -> [b, n, width]. Without it the term is the
    attention output itself, summed with the other adapters'."""

    def __init__(self, site_kv: Mapping[SiteKey, SiteKV], sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None = None, label: str = "", combine: Callable | None = None):
        self.site_kv = dict(site_kv)
        self.combine = combine
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self.mask = None if mask is None else mask.detach().float().cpu()
        self.label = label
        # The factory holds the tensors, not the prompt: no reference cycle, so a dropped prompt frees its GPU
        # copies at once rather than at the next garbage collection.
        self.copies = DeviceCopies(functools.partial(PlacedPrompt, self.site_kv, self.mask))
        self._window: tuple | None = None  # (sigmas tensor, active?)

    def __deepcopy__(self, memo):
        return self

    def place(self, device, dtype) -> PlacedPrompt:
        """Copies of K/V for sampling on `device` in `dtype` (made once; kept until that device is released)."""
        return self.copies.ensure(device, dtype)

    def release(self, device) -> None:
        """Drop the copies on `device` (its model was offloaded or moved elsewhere)."""
        self.copies.release(device)

    def is_active(self, extra: Mapping) -> bool:
        sigmas = extra.get("sigmas")
        if sigmas is None:
            return True
        window = self._window
        if window is not None and window[0] is sigmas:
            return window[1]
        s = float(sigmas.reshape(-1)[0])
        active = self.sigma_start >= s >= self.sigma_end
        self._window = (sigmas, active)
        return active

    def keys_values(self, key: SiteKey, q: torch.Tensor, extra: Mapping, pause=no_pause) -> ImageKV | None:
        """What this adapter attends to at `key` for these queries (see ImageKV), or None where it does not act
        now. Rows follow `cond_or_uncond` (0 = cond, 1 = uncond; all cond when absent)."""
        if key not in self.site_kv or not self.is_active(extra):
            return None
        placed = self.copies.get(q.device, q.dtype)
        if placed is None:  # the host did not move the patches before sampling (or computes in another dtype)
            with pause():
                placed = self.place(q.device, q.dtype)
        return placed.layout(key, tuple(extra.get("cond_or_uncond") or (0,)), q.shape[0], q.shape[1], extra, pause)


def _extra_options(extra, kwargs: Mapping) -> Mapping:
    if extra is None:  # passed by name, or not at all
        extra = kwargs.get("extra_options", kwargs.get("transformer_options"))
    return extra if extra is not None else {}


class DecoupledCrossAttention(MovesWithModel):
    """The attn2 replace for one site: text attention (or a replace another pack installed first) plus the
    contribution of every ImagePrompt applied to this model, in the order applied.

    Tolerant by design (see host/patch.py): extra arguments are ignored, and missing `extra_options` keys fall
    back: `n_heads` to the site's head count recorded at install, `cond_or_uncond` to all cond, `sigmas` to
    active, the shapes to the grid guess of `token_grid`."""

    def __init__(self, key: SiteKey, prompts: Sequence[ImagePrompt], attention: Attention,
                 base: Callable | None = None, heads: int | None = None, cast_dtype: torch.dtype | None = None,
                 allocation_pause: AllocationPause = no_pause):
        self.key = key
        self.prompts = tuple(prompts)
        self.attention = attention
        self.base = base
        self.heads = heads
        self.cast_dtype = cast_dtype
        self.allocation_pause = allocation_pause

    def stacked(self, prompt: ImagePrompt) -> "DecoupledCrossAttention":
        twin = copy.copy(self)
        twin.prompts = self.prompts + (prompt,)
        return twin

    def holders(self):
        return self.prompts

    def heads_for(self, extra: Mapping) -> int:
        heads = extra.get("n_heads") or self.heads
        if not heads:
            raise InputError(f"the cross-attention at {self.key} got no head count from ComfyUI and none was "
                             "recorded when Likeness was applied. Re-apply the adapter to this MODEL.")
        return int(heads)

    def __call__(self, q, k, v, extra=None, *args, **kwargs):
        extra = _extra_options(extra, kwargs)
        heads = self.heads_for(extra)
        if "n_heads" not in extra:  # a base replace from another pack may read it
            extra = {**extra, "n_heads": heads}
        if self.base is not None:
            out = self.base(q, k, v, extra)
        else:
            out = self.attention(q, k, v, heads, attn_precision=extra.get("attn_precision"),
                                 transformer_options=extra)
        parts, terms = [], []
        for prompt in self.prompts:
            kv = prompt.keys_values(self.key, q, extra, self.allocation_pause)
            if kv is None:
                continue
            if prompt.combine is None:
                parts.append(kv)
            else:  # computed from the text attention's output before anything is added to it
                terms.append(prompt.combine(q, out, kv, heads))
        if not parts and not terms:
            return out
        image = image_attention_sum(q, parts, heads) if parts else None
        for term in terms:
            image = term if image is None else image + term
        if self.base is None and not torch.is_grad_enabled():  # the text attention's output is ours to add to
            return out.add_(image)
        return out + image
