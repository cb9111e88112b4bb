"""Reading adapter checkpoints: safetensors (header-only for detection) and `.bin` with weights-only loading.

Both h94 containers normalise to one flat mapping with `image_proj.` and `ip_adapter.` prefixes.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from typing import Mapping

import torch

from .errors import AdapterFileError

GROUP_ALIASES = {"image_proj": "image_proj", "ip_adapter": "ip_adapter", "adapter_modules": "ip_adapter"}


def _name(path: str) -> str:
    return os.path.basename(path)


def read_safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file, checked against the file's size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterFileError(f"`{_name(path)}` is empty or truncated ({size} bytes): download it again.")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or 8 + n > size:
            raise AdapterFileError(
                f"`{_name(path)}` is not a readable .safetensors file: its header claims {n} bytes but the file "
                f"has {size}. It is truncated or not a safetensors file (a Git LFS pointer or an HTML page?); "
                "download it again.")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterFileError(f"`{_name(path)}` has a corrupt safetensors header ({e}); download it again.") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"`{_name(path)}` has a corrupt safetensors header; download it again.")
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise AdapterFileError(
            f"`{_name(path)}` is truncated: its header describes {8 + n + end:,} bytes but the file has {size:,}. "
            "The download did not finish; download it again.")
    return header


def _normalise_group_key(key: str) -> str | None:
    group, _, rest = key.partition(".")
    group = GROUP_ALIASES.get(group)
    return f"{group}.{rest}" if group and rest else None


_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype under its safetensors name (F32, F16, BF16...)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def read_header(path: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(key -> shape, key -> dtype name), without reading tensor data for safetensors."""
    if path.lower().endswith(".safetensors"):
        header = read_safetensors_header(path)
        shapes, dtypes = {}, {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            nk = _normalise_group_key(k) or k
            shapes[nk] = tuple(int(d) for d in v["shape"])
            dtypes[nk] = str(v.get("dtype", ""))
        return shapes, dtypes
    state = load_state_dict(path, mmap=True)
    return {k: tuple(t.shape) for k, t in state.items()}, {k: dtype_name(t.dtype) for k, t in state.items()}


def read_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape, without reading tensor data for safetensors."""
    return read_header(path)[0]


def load_state_dict(path: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of an adapter file, keyed `image_proj.<k>` / `ip_adapter.<k>` (other keys kept as they are)."""
    name = _name(path)
    if path.lower().endswith(".safetensors"):
        read_safetensors_header(path)  # clear messages for truncation before the library's own
        import safetensors.torch

        try:
            flat = safetensors.torch.load_file(path, device="cpu")
        except Exception as e:  # the library's errors are terse; say what to do
            raise AdapterFileError(f"`{name}` could not be read as safetensors ({e}); download it again.") from None
        return {(_normalise_group_key(k) or k): v for k, v in flat.items()}
    try:
        obj = _torch_load(path, mmap)
    except pickle.UnpicklingError as e:
        raise AdapterFileError(
            f"`{name}` was refused: it holds Python objects other than tensors, and Likeness only loads .bin files "
            f"in weights-only mode so that no code inside a file can run ({str(e).splitlines()[0]}). "
            "Use the .safetensors version of this adapter.") from None
    except Exception as e:
        raise AdapterFileError(
            f"`{name}` could not be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "It may be truncated or not a PyTorch file; download it again.") from None
    if not isinstance(obj, Mapping):
        raise AdapterFileError(f"`{name}` holds a {type(obj).__name__}, not a dictionary of tensors.")
    flat: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping) and k in GROUP_ALIASES:
            for sk, sv in v.items():
                if isinstance(sv, torch.Tensor):
                    flat[f"{GROUP_ALIASES[k]}.{sk}"] = sv
        elif isinstance(v, torch.Tensor):
            flat[_normalise_group_key(k) or k] = v
    return flat


def _torch_load(path: str, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as e:
        if mmap and "mmap" in str(e):  # legacy (non-zip) files cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
        raise

