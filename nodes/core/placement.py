"""Device copies of what a patch needs, made when the host moves a model's patches, never inside the forward.

ComfyUI moves the patches of a model it loads for sampling: `.to(load_device)` and then `.to(model_dtype)` on
every patch object (`ModelPatcher.model_patches_to`, from `LoadedModel.model_load`), and `.to(offload_device)`
when it unloads the model (`ModelPatcher.detach`). A patch object here follows that protocol:

- the first call names the device its model was loaded on; the second, the dtype it computes in. Then every
  tensor the patch reads while sampling is copied to that device and dtype, once, before the first step;
- a move to another device (an offload, or a load elsewhere) releases the copies on the device left, and only
  those: with several GPUs, each device keeps its own copies side by side;
- inside the forward, the copies are looked up, not made. A host that never calls `.to()` still works: the copies
  are then made on first use, inside the host's allocation pause where it has one.

The big tensors live on a shared holder (an `ImagePrompt`) whose `DeviceCopies` keeps one copy per device and
dtype; the small patch objects in `model_options` remember which device their model is on.
"""

from __future__ import annotations

import copy
import threading
from contextlib import nullcontext
from typing import Callable, Iterable

import torch

AllocationPause = Callable[[], "object"]  # returns a context manager; nullcontext where the host has none


def device_key(device) -> torch.device:
    """`torch.device` with an index for accelerators, so `cuda` and `cuda:0` name one set of copies."""
    device = torch.device(device)
    if device.index is None and device.type not in ("cpu", "meta"):
        backend = getattr(torch, device.type, None)
        current = getattr(backend, "current_device", None)
        if current is not None:
            try:
                return torch.device(device.type, current())
            except (RuntimeError, AssertionError):  # backend present but not usable: keep the name as given
                pass
    return device


def compute_dtype(dtype: torch.dtype) -> bool:
    """Whether activations can be in `dtype` (fp8 storage dtypes, for one, are cast to another before compute)."""
    return dtype.is_floating_point and dtype.itemsize >= 2


class DeviceCopies:
    """One copy per (device, dtype) of a holder's tensors, built by `make(device, dtype)`.

    Readers look copies up without a lock (the table is replaced, never edited in place); building and releasing
    take the lock, so two threads never build the same copy twice."""

    def __init__(self, make: Callable[[torch.device, torch.dtype], object]):
        self._make = make
        self._copies: dict = {}
        self._lock = threading.Lock()

    def get(self, device, dtype):
        return self._copies.get((device, dtype))

    def ensure(self, device, dtype):
        key = (device_key(device), dtype)
        hit = self._copies.get(key)
        if hit is None:
            with self._lock:
                hit = self._copies.get(key)
                if hit is None:
                    hit = self._make(*key)
                    self._copies = {**self._copies, key: hit}
        return hit

    def release(self, device) -> None:
        device = device_key(device)
        with self._lock:
            self._copies = {k: c for k, c in self._copies.items() if k[0] != device}

    def clear(self) -> None:
        with self._lock:
            self._copies = {}

    def placed(self) -> list:
        """(device, dtype) of every copy held now."""
        return list(self._copies)


class MovesWithModel:
    """Base of the callables the pack installs in a model: follows ComfyUI's `.to()` protocol (module docstring).

    Subclasses list their holders (objects with `place(device, dtype)` and `release(device)`) in `holders()`,
    and set `cast_dtype` when the model computes in another dtype than it stores (ComfyUI's manual cast)."""

    cast_dtype: torch.dtype | None = None
    _device: torch.device | None = None  # where ComfyUI last moved this model's patches

    def holders(self) -> Iterable:
        return ()

    def to(self, device_or_dtype):
        if isinstance(device_or_dtype, torch.dtype):
            dtype = self.cast_dtype or device_or_dtype
            if self._device is not None and compute_dtype(dtype):
                for holder in self.holders():
                    holder.place(self._device, dtype)
            return self
        try:
            device = device_key(device_or_dtype)
        except (TypeError, RuntimeError):  # something other than a device or dtype: nothing to move
            return self
        left, self._device = self._device, device
        if left is not None and left != device:
            for holder in self.holders():
                holder.release(left)
        return self

    def __deepcopy__(self, memo):
        # ComfyUI deep-copies model_options on every clone: the clone gets its own light patch object (its model
        # is not loaded yet), sharing the holders and their tensors.
        twin = copy.copy(self)
        twin._device = None
        return twin


def no_pause():
    return nullcontext()
