"""PuLID-FLUX through ComfyUI's DiT block replaces, with no forward replaced.

The reference (ToTheBeginning/PuLID, flux/model.py) adds, after double blocks 0, 2, 4, ... and single blocks 0, 4,
8, ... (in a single block, to the image part of the joint sequence only),

    img <- img + weight * CA_i(identity tokens, img)

with CA_i the i-th cross-attention module of the file. Here each insertion is a `patches_replace["dit"]` entry on a
clone of the MODEL. It calls the replace that was there before (another pack's, or an earlier Apply's that is not
ours) or else the block itself, then adds the terms of every PuLID apply on that block, all computed from the
block's output and summed, so two applies add like two identities would. A mask multiplies the term per image
token; the sigma window switches the term off outside it.

What is constant over a run is computed once: the identity keys and values of every module (norm1, to_kv) when the
node runs, and their copies on the sampling device and dtype when ComfyUI moves the patches there (`.to()`), never
per step. The tensors live in an `IdentityInsertion` that every clone shares (`__deepcopy__` returns it).

A single block sees text and image tokens joined; the text length and the image's token grid (for the mask) come
from `FluxCallShape`, a DIFFUSION_MODEL wrapper that records them for the duration of one forward call in a context
variable, reset when the call returns.
"""

from __future__ import annotations

import contextvars
import copy
import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from .attention import ImagePrompt, resize_mask, token_grid
from .errors import InputError
from .pulid_encoders import PulidFluxCrossAttention

log = logging.getLogger(__name__)

BlockKey = tuple  # ("double_block" | "single_block", index)


# ------------------------------------------------------------------ per-call shapes

@dataclass
class FluxCall:
    """What one forward call of the DiT knows and its blocks do not."""

    grid: tuple[int, int] | None  # image tokens per column and row of the latent being denoised
    text_tokens: int | None


_CALL: contextvars.ContextVar = contextvars.ContextVar("likeness_flux_call", default=None)


def current_call() -> FluxCall | None:
    return _CALL.get()


class FluxCallShape:
    """DIFFUSION_MODEL wrapper: records the latent's token grid and the text length while the call runs."""

    def __deepcopy__(self, memo):
        return self

    def __call__(self, executor, *args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        context = args[2] if len(args) > 2 else kwargs.get("context")
        patch = getattr(getattr(executor, "class_obj", None), "patch_size", 2) or 2
        grid = None
        if isinstance(x, torch.Tensor) and x.ndim >= 4:
            h, w = int(x.shape[-2]), int(x.shape[-1])
            grid = ((h + patch // 2) // patch, (w + patch // 2) // patch)
        text = int(context.shape[1]) if isinstance(context, torch.Tensor) and context.ndim == 3 else None
        token = _CALL.set(FluxCall(grid, text))
        try:
            return executor(*args, **kwargs)
        finally:
            _CALL.reset(token)


# ------------------------------------------------------------------ one apply

@dataclass(frozen=True)
class PlacedModule:
    """One cross-attention module and its identity keys/values on one device in one dtype."""

    module: PulidFluxCrossAttention
    keys: tuple[torch.Tensor, torch.Tensor]  # cond, uncond [T, inner]
    values: tuple[torch.Tensor, torch.Tensor]
    device: torch.device
    dtype: torch.dtype

    def fits(self, x: torch.Tensor) -> bool:
        return x.device == self.device and x.dtype == self.dtype


class IdentityInsertion:
    """One PuLID-FLUX apply: its modules, the blocks they follow, their identity keys/values (cond and uncond, in
    float32 on the CPU), weight, sigma window and mask."""

    def __init__(self, modules: Sequence[PulidFluxCrossAttention], blocks: Sequence[BlockKey], cond: torch.Tensor,
                 uncond: torch.Tensor, weight: float, sigma_start: float, sigma_end: float,
                 mask: torch.Tensor | None = None, label: str = ""):
        if len(modules) != len(blocks):
            raise ValueError(f"{len(modules)} modules for {len(blocks)} blocks")
        self.modules, self.blocks = tuple(modules), tuple(blocks)
        self.weight = float(weight)
        self.sigma_start, self.sigma_end = float(sigma_start), float(sigma_end)
        self.mask = None if mask is None else mask.detach().float().cpu()
        self.label = label
        self.keys_values = tuple(self._identity_keys_values(m, cond, uncond) for m in self.modules)
        self._window: tuple | None = None  # (sigmas tensor, active?)

    def __deepcopy__(self, memo):
        return self

    @staticmethod
    @torch.no_grad()
    def _identity_keys_values(module: PulidFluxCrossAttention, cond: torch.Tensor, uncond: torch.Tensor):
        work = module if next(module.parameters()).dtype == torch.float32 else copy.deepcopy(module).float()
        kc, vc = work.identity_keys_values(cond.float()[None])
        ku, vu = work.identity_keys_values(uncond.float()[None])
        return (kc[0].cpu(), ku[0].cpu()), (vc[0].cpu(), vu[0].cpu())

    # The same window test as an image prompt's (sigma_start, sigma_end, _window): once per step, not per block.
    is_active = ImagePrompt.is_active

    @torch.no_grad()
    def placed(self, index: int, device, dtype) -> PlacedModule:
        """Module `index` and its keys/values on `device` in `dtype` (the stored objects when they already are)."""
        device = torch.device(device)
        module = self.modules[index]
        param = next(module.parameters())
        if param.device != device or param.dtype != dtype:
            module = copy.deepcopy(module).to(device=device, dtype=dtype)
        (kc, ku), (vc, vu) = self.keys_values[index]
        keys = tuple(t.to(device=device, dtype=dtype) for t in (kc, ku))
        values = tuple(t.to(device=device, dtype=dtype) for t in (vc, vu))
        return PlacedModule(module, keys, values, device, dtype)

    def term(self, placed: PlacedModule, image: torch.Tensor, options: Mapping,
             call: FluxCall | None) -> torch.Tensor:
        """weight x mask x CA(identity, image) for image tokens [b, n, dim] laid out by `cond_or_uncond`."""
        chunks = tuple(options.get("cond_or_uncond") or (0,))
        b = image.shape[0]
        if b % len(chunks):
            raise InputError(f"a batch of {b} rows cannot be split into the {len(chunks)} cond/uncond chunks.")
        per = b // len(chunks)
        k = torch.cat([placed.keys[min(c, 1)][None].expand(per, -1, -1) for c in chunks])
        v = torch.cat([placed.values[min(c, 1)][None].expand(per, -1, -1) for c in chunks])
        out = placed.module.attend(image, k, v)
        if self.weight != 1.0:
            out = out * self.weight
        if self.mask is not None:
            out = out * self.mask_on(image.shape[1], call, per, len(chunks)).to(out.device, out.dtype)
        return out

    def mask_on(self, tokens: int, call: FluxCall | None, per: int, chunks: int) -> torch.Tensor:
        """[b, tokens, 1]: the mask on the image's token grid; tokens past the grid (reference images) get 0."""
        grid = call.grid if call is not None and call.grid is not None else token_grid(tokens, None, None)
        h, w = grid
        cells = min(h * w, tokens)
        m = resize_mask(self.mask, h, w, h * w)[:, :cells]
        if cells < tokens:
            m = torch.cat([m, m.new_zeros(m.shape[0], tokens - cells, 1)], dim=1)
        rows = torch.arange(per).clamp(max=m.shape[0] - 1)  # latent i uses mask i (the last one repeats)
        return m[rows].repeat(chunks, 1, 1)


# ------------------------------------------------------------------ the block replace

def _float_dtype(value) -> bool:
    return isinstance(value, torch.dtype) and value.is_floating_point and torch.finfo(value).bits >= 16


class FluxBlockInsertion:
    """The dit replace of one block: the block (or the replace installed before) and then every PuLID apply's
    term. Accepts and passes on extra arguments. Immutable: `.to()` and `stacked` return new objects."""

    def __init__(self, key: BlockKey, entries: Sequence[tuple[IdentityInsertion, int]], base: Callable | None = None,
                 device=None, dtype=None, placed: Sequence[PlacedModule] = ()):
        self.key = tuple(key)
        self.entries = tuple(entries)
        self.base = base
        self.device, self.dtype = device, dtype
        self.placed = tuple(placed)
        self._computed: dict = {}  # copies for a compute dtype the host did not announce (fp8 weights)

    def __deepcopy__(self, memo):
        return self

    def stacked(self, insertion: IdentityInsertion, index: int) -> "FluxBlockInsertion":
        return FluxBlockInsertion(self.key, self.entries + ((insertion, index),), self.base)

    def to(self, device_or_dtype):
        """ComfyUI moves patches to the sampling device, then to the model's dtype, and only to the device when it
        offloads: the modules and identity keys/values are copied at the dtype step, once per load, never in the
        forward; a device step drops the copies."""
        device, dtype, placed = self.device, self.dtype, ()
        if isinstance(device_or_dtype, torch.dtype):
            if not _float_dtype(device_or_dtype):  # e.g. fp8 weights: the compute dtype is seen in the forward
                return self
            dtype = device_or_dtype
            if device is not None:
                placed = tuple(ins.placed(i, device, dtype) for ins, i in self.entries)
        else:
            device = torch.device(device_or_dtype)
        base = self.base.to(device_or_dtype) if hasattr(self.base, "to") else self.base
        return FluxBlockInsertion(self.key, self.entries, base, device, dtype, placed)

    def _placed(self, j: int, x: torch.Tensor) -> PlacedModule:
        if j < len(self.placed) and self.placed[j].fits(x):
            return self.placed[j]
        insertion, index = self.entries[j]
        if self.device is None:  # never moved by the host (a direct call): made here, not kept on a shared object
            return insertion.placed(index, x.device, x.dtype)
        # Moved to a device whose compute dtype differs from the weights' (fp8 weights compute in bf16): made on the
        # first step and kept by this object, which only this loaded clone holds and its offload replaces.
        key = (j, x.device, x.dtype)
        hit = self._computed.get(key)
        if hit is None:
            hit = self._computed[key] = insertion.placed(index, x.device, x.dtype)
        return hit

    def __call__(self, args, extra, *more, **kwargs):
        options = args.get("transformer_options") or extra.get("transformer_options") or {}
        if self.base is not None:
            out = self.base(args, extra, *more, **kwargs)
        else:
            out = extra["original_block"](args, *more, **kwargs)
        call = current_call()
        single = self.key[0] == "single_block"
        if not single and call is not None and isinstance(args.get("txt"), torch.Tensor):
            call.text_tokens = int(args["txt"].shape[1])
        active = [j for j, (insertion, _) in enumerate(self.entries) if insertion.is_active(options)]
        if not active:
            return out
        img = out["img"]
        text = 0
        if single:
            text = call.text_tokens if call is not None else None
            if text is None:
                _warn_once("Likeness: PuLID-FLUX skipped a single block: the text length of this call is unknown "
                           "(the model was called without its forward wrappers).")
                return out
        image = img[:, text:]
        total = None
        for j in active:
            term = self.entries[j][0].term(self._placed(j, image), image, options, call)
            total = term if total is None else total + term
        image = image + total.to(image.dtype)
        result = dict(out)
        result["img"] = torch.cat([img[:, :text], image], dim=1) if single else image
        return result


_warned: set = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def flux_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A MASK input as [M, H, W] (or None), with a clear error for other shapes."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or 0 in mask.shape:
        raise InputError(f"attn_mask should be a MASK [batch, height, width]; got shape {tuple(mask.shape)}.")
    return mask.float()
