"""Decoupled cross-attention: text attention plus, for each applied adapter, weight x attention over image tokens.

    out = Attn(q, K_text, V_text) + sum_a mask_a * Attn(q, K_a, V_a)

with K_a = tokens_a W_k^T and V_a = tokens_a W_v^T for the site, and the site weight folded into K_a/V_a
according to the embeds scaling. K_a and V_a are constant over a sampling run, so they are computed once
when the adapter is applied and cast once per device and dtype, never per step.

The objects here are immutable once built and return themselves from `__deepcopy__`: ComfyUI deep-copies
`model_options` on every `ModelPatcher.clone()`, and the image keys and values must not be copied with it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .errors import InputError

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

    def to(self, device, dtype) -> "SiteKV":
        return SiteKV(*(t.to(device=device, dtype=dtype) for t in (self.k_cond, self.v_cond, self.k_uncond,
                                                                    self.v_uncond)))


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


ImageKV = tuple  # (k [b, tokens, width], v [b, tokens, width], mask [b, n, 1] or None), laid out along q's batch

# One pass for several adapters pays from this many queries on (measured on CPU, benchmarks/RESULTS.md); below
# it, one SDPA call per adapter is cheaper. The score tensor of one pass is capped so full-face adapters at
# high resolution fall back to per-adapter calls instead of allocating gigabytes.
GROUPED_MIN_QUERIES = 256
GROUPED_MAX_SCORES = 1 << 24


def grouped_image_attention(q: torch.Tensor, parts: Sequence[ImageKV], heads: int) -> torch.Tensor:
    """sum_a mask_a * softmax(q k_a^T / sqrt(d)) v_a for adapters with the same number of image tokens.

    One matmul gives every adapter's scores, the softmax runs per adapter, and the second matmul also does the
    sum over adapters; the queries are read in place, once per batch row, instead of once per adapter."""
    b, n, width = q.shape
    d = width // heads
    count, tokens = len(parts), parts[0][0].shape[1]
    k = torch.cat([p[0] for p in parts], 1).view(b, count * tokens, heads, d).permute(0, 2, 3, 1) * d ** -0.5
    v = torch.cat([p[1] for p in parts], 1).view(b, count * tokens, heads, d).transpose(1, 2)
    masks = None
    if any(p[2] is not None for p in parts):
        masks = torch.cat([q.new_ones(b, n, 1) if p[2] is None else p[2] for p in parts], 2)  # [b, n, adapters]
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
    """The summed image term of several adapters at one site: grouped passes where they pay, else one
    attention call per adapter. Sums in place where no autograd graph is recorded."""
    by_tokens: dict[int, list] = {}
    for p in parts:
        by_tokens.setdefault(p[0].shape[1], []).append(p)
    n = q.shape[1]
    total = None
    for tokens, group in by_tokens.items():
        if len(group) > 1 and n >= GROUPED_MIN_QUERIES and heads * n * tokens * len(group) <= GROUPED_MAX_SCORES:
            terms = [grouped_image_attention(q, group, heads)]
        else:
            terms = [_masked(image_attention(q, k, v, heads), mask) for k, v, mask in group]
        for term in terms:
            if total is None:
                total = term
            elif torch.is_grad_enabled():
                total = total + term
            else:
                total.add_(term)
    return total


class ImagePrompt:
    """One applied adapter: its K/V per site, active window (in sigmas) and optional attention mask.

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
        self._lock = threading.Lock()
        self._placed: tuple | None = None  # ((device, dtype), {key: SiteKV})
        self._batched: dict = {}
        self._window: tuple | None = None  # (sigmas tensor, active?)

    def __deepcopy__(self, memo):
        return self

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

    def kv_on(self, key: SiteKey, device, dtype) -> SiteKV:
        placed = self._placed
        if placed is None or placed[0] != (device, dtype):
            with self._lock:
                placed = self._placed
                if placed is None or placed[0] != (device, dtype):
                    placed = ((device, dtype), {k: kv.to(device, dtype) for k, kv in self.site_kv.items()})
                    self._placed = placed
                    self._batched = {}
        return placed[1][key]

    @property
    def placed_device(self) -> torch.device | None:
        """Where the K/V copies used in sampling live now, or None before the first use."""
        placed = self._placed
        return None if placed is None else placed[0][0]

    def release(self) -> None:
        """Drop device copies (the model went back to its offload device)."""
        with self._lock:
            self._placed, self._batched = None, {}

    def batched(self, key: SiteKey, q: torch.Tensor, extra: Mapping):
        """K, V and mask laid out along q's batch: rows follow `cond_or_uncond` (0 = cond, 1 = uncond)."""
        chunks = tuple(extra.get("cond_or_uncond") or (0,))
        batch, tokens = q.shape[0], q.shape[1]
        cache_key = (key, chunks, batch, tokens, q.device, q.dtype)
        hit = self._batched.get(cache_key)
        if hit is not None:
            return hit
        kv = self.kv_on(key, q.device, q.dtype)
        if batch % len(chunks):
            raise InputError(f"a batch of {batch} rows cannot be split into the {len(chunks)} cond/uncond chunks.")
        per = batch // len(chunks)
        ks = [(kv.k_uncond if c == 1 else kv.k_cond).expand(per, -1, -1) for c in chunks]
        vs = [(kv.v_uncond if c == 1 else kv.v_cond).expand(per, -1, -1) for c in chunks]
        k, v = torch.cat(ks).contiguous(), torch.cat(vs).contiguous()
        mask = None
        if self.mask is not None:
            h, w = token_grid(tokens, extra.get("activations_shape"), extra.get("original_shape"))
            site_mask = resize_mask(self.mask, h, w, tokens).to(q.device, q.dtype)
            rows = torch.arange(per).clamp(max=site_mask.shape[0] - 1)  # latent i uses mask i (last repeats)
            mask = site_mask[rows].repeat(len(chunks), 1, 1)
        hit = (k, v, mask)
        if len(self._batched) > 256:
            self._batched = {}
        self._batched[cache_key] = hit
        return hit

    def keys_values(self, key: SiteKey, q: torch.Tensor, extra: Mapping) -> ImageKV | None:
        """What this adapter attends to at `key` for these queries, or None where it does not act now."""
        if key not in self.site_kv or not self.is_active(extra):
            return None
        return self.batched(key, q, extra)


class DecoupledCrossAttention:
    """The attn2 replace for one site: text attention (or a replace another pack installed first) plus the
    contribution of every ImagePrompt applied to this model, in the order applied."""

    def __init__(self, key: SiteKey, prompts: Sequence[ImagePrompt], attention: Attention,
                 base: Callable | None = None):
        self.key = key
        self.prompts = tuple(prompts)
        self.attention = attention
        self.base = base

    def __deepcopy__(self, memo):
        return self

    def stacked(self, prompt: ImagePrompt) -> "DecoupledCrossAttention":
        return DecoupledCrossAttention(self.key, self.prompts + (prompt,), self.attention, self.base)

    def to(self, device_or_dtype):
        # ComfyUI calls this when the model is loaded (device, then dtype) and offloaded; device copies of
        # K/V are made lazily on first use in a run, so only an offload needs handling here.
        if isinstance(device_or_dtype, (str, torch.device)) and torch.device(device_or_dtype).type == "cpu":
            for p in self.prompts:
                if p.placed_device is not None and p.placed_device.type != "cpu":
                    p.release()
        return self

    def __call__(self, q, k, v, extra):
        if self.base is not None:
            out = self.base(q, k, v, extra)
        else:
            out = self.attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                 transformer_options=extra)
        parts, terms = [], []
        for prompt in self.prompts:
            kv = prompt.keys_values(self.key, q, extra)
            if kv is None:
                continue
            if prompt.combine is None:
                parts.append(kv)
            else:  # computed from the text attention's output before anything is added to it
                terms.append(prompt.combine(q, out, kv, extra["n_heads"]))
        if not parts and not terms:
            return out
        image = image_attention_sum(q, parts, extra["n_heads"]) if parts else None
        for term in terms:
            image = term if image is None else image + term
        if self.base is None and not torch.is_grad_enabled():  # the text attention's output is ours to add to
            return out.add_(image)
        return out + image
