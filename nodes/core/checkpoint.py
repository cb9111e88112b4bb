"""Reading model files: safetensors (header-only for detection) and `.bin` with weights-only loading.

Every loader reads through here, so each gets the same checks for free: Git LFS pointers and web pages saved
under a model's name, truncated files, corrupt safetensors headers, pickled code, and NaN/inf weights (checked once
per load; callers cache what they load, so sampling never pays for it). Both h94 adapter containers normalise to
one flat mapping with `image_proj.` and `ip_adapter.` prefixes.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from typing import Mapping

import torch

from .errors import AdapterFileError

GROUP_ALIASES = {"image_proj": "image_proj", "ip_adapter": "ip_adapter", "adapter_modules": "ip_adapter",
                 # PuLID as published: v1/v1.1 `id_adapter` (the ID encoder), PuLID-FLUX `pulid_encoder`
                 "id_adapter": "image_proj", "pulid_encoder": "image_proj"}
# PuLID numbers its attention layers like IP-Adapter does (diffusers processor order, attn2 at odd indices).
_PULID_KV_KEY = re.compile(r"^id_adapter_attn_layers\.(\d+)\.id_to_([kv])\.weight$")


def _name(path: str) -> str:
    return os.path.basename(path)


MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header
_SNIFF = 256  # bytes read to recognise a file that is not a model at all
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def not_a_model(path: str, what: str = "the model") -> str | None:
    """Why the file at `path` is plainly not a model (a Git LFS pointer or a web page), from its first bytes; None
    when it may be one. Both are common results of a download that went wrong, and both deserve their own advice."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    size = os.path.getsize(path)
    if head.startswith(LFS_POINTER):
        return (f"`{_name(path)}` is a Git LFS pointer ({size} bytes), not {what}: the download fetched the small "
                "text file that stands in for the weights. Download the file itself (the download button on its "
                "model page, or `git lfs pull` in a cloned repository) and put it in place of this one.")
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return (f"`{_name(path)}` is a web page ({size} bytes), not {what}: the download saved an HTML page (a "
                "login, error or redirect page?). Download the file again from its model page.")
    return None


def _is_count_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


def _entry_problem(key: str, entry) -> str | None:
    """What is wrong with one tensor's entry of a safetensors header, or None."""
    if not isinstance(entry, dict):
        return f"the entry for tensor `{key}` is a {type(entry).__name__}, not a tensor description"
    missing = [field for field in ("dtype", "shape", "data_offsets") if field not in entry]
    if missing:
        return f"the entry for tensor `{key}` has no {' or '.join(missing)}"
    offsets = entry["data_offsets"]
    if not isinstance(entry["dtype"], str) or not _is_count_list(entry["shape"]) or not _is_count_list(offsets) \
            or len(offsets) != 2 or offsets[0] > offsets[1]:
        return f"the entry for tensor `{key}` has an unreadable dtype, shape or data_offsets"
    return None


def read_safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file, checked entry by entry and against the file's size."""
    problem = not_a_model(path)
    if problem:
        raise AdapterFileError(problem)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise AdapterFileError(f"`{_name(path)}` is empty or truncated ({size} bytes): download it again.")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or 8 + n > size or n > MAX_HEADER:
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
    for key, entry in header.items():
        problem = (None if isinstance(entry, dict) else "its `__metadata__` is not a mapping") \
            if key == "__metadata__" else _entry_problem(key, entry)
        if problem:
            raise AdapterFileError(f"`{_name(path)}` has a corrupt safetensors header: {problem}. The file is damaged "
                                   "or was written by a broken tool; download it again.")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise AdapterFileError(
            f"`{_name(path)}` is truncated: its header describes {8 + n + end:,} bytes but the file has {size:,}. "
            "The download did not finish; download it again.")
    return header


def _normalise_group_key(key: str) -> str | None:
    m = _PULID_KV_KEY.match(key)
    if m:
        return f"ip_adapter.{m.group(1)}.to_{m.group(2)}_ip.weight"
    group, _, rest = key.partition(".")
    group = GROUP_ALIASES.get(group)
    return f"{group}.{rest}" if group and rest else None


_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def dtype_name(dtype: torch.dtype) -> str:
    """A torch dtype under its safetensors name (F32, F16, BF16...)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def read_header(path: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(key -> shape, key -> dtype name), without reading tensor data for safetensors (a memory-mapped load for
    .bin, not checked for NaN: only shapes and dtypes are wanted)."""
    if path.lower().endswith(".safetensors"):
        header = read_safetensors_header(path)
        shapes, dtypes = {}, {}
        for k, v in header.items():
            if k == "__metadata__":
                continue
            nk = _normalise_group_key(k) or k
            shapes[nk] = tuple(v["shape"])
            dtypes[nk] = v["dtype"]
        return shapes, dtypes
    state = load_state_dict(path, mmap=True, finite=False)
    return {k: tuple(t.shape) for k, t in state.items()}, {k: dtype_name(t.dtype) for k, t in state.items()}


def read_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape, without reading tensor data for safetensors (a memory-mapped load for .bin)."""
    return read_header(path)[0]


def load_state_dict(path: str, mmap: bool = False, finite: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of an adapter file, keyed `image_proj.<k>` / `ip_adapter.<k>` (other keys kept as they are)."""
    return {(_normalise_group_key(k) or k): v for k, v in load_file(path, mmap=mmap, finite=finite).items()}


def load_file(path: str, mmap: bool = False, finite: bool = True) -> dict[str, torch.Tensor]:
    """Every tensor of a model file, safetensors or `.bin` (weights-only), with its key as stored (a `.bin`'s
    nested groups flattened to `group.key`). Every problem is an AdapterFileError that names the file and says what
    to do: Git LFS pointers and web pages, truncation, corrupt headers, pickled code, and (unless `finite` is
    False) NaN or infinite weights, which would otherwise turn every image black without a word."""
    name = _name(path)
    problem = not_a_model(path)
    if problem:
        raise AdapterFileError(problem)
    if path.lower().endswith(".safetensors"):
        read_safetensors_header(path)  # clear messages for truncation and bad headers before the library's own
        import safetensors.torch

        try:
            flat = safetensors.torch.load_file(path, device="cpu")
        except Exception as e:  # the library's errors are terse; say what to do
            raise AdapterFileError(f"`{name}` could not be read as safetensors ({e}); download it again.") from None
    else:
        flat = _tensors_of(_load_bin(path, mmap), name)
    if finite:
        key = first_nonfinite(flat)
        if key is not None:
            raise AdapterFileError(
                f"`{name}` is damaged: tensor `{key}` holds NaN or infinite values, which would make every image "
                "black. Download the file again; if you converted or merged it yourself, redo that step.")
    return flat


def _load_bin(path: str, mmap: bool):
    name = _name(path)
    try:
        return _torch_load(path, mmap)
    except pickle.UnpicklingError as e:
        raise AdapterFileError(
            f"`{name}` was refused: it holds Python objects other than tensors, and Likeness only loads .bin files "
            f"in weights-only mode so that no code inside a file can run ({str(e).splitlines()[0]}). "
            "Use the .safetensors version of this file.") from None
    except Exception as e:
        raise AdapterFileError(
            f"`{name}` could not be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "It may be truncated or not a PyTorch file; download it again.") from None


def _tensors_of(obj, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise AdapterFileError(f"`{name}` holds a {type(obj).__name__}, not a dictionary of tensors.")
    flat: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            for sk, sv in v.items():
                if isinstance(sv, torch.Tensor):
                    flat[f"{k}.{sk}"] = sv
        elif isinstance(v, torch.Tensor):
            flat[str(k)] = v
    return flat


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or infinite. The smallest and largest elements answer it in one pass without a
    temporary the size of the tensor: both reductions propagate NaN, and an infinity is an extreme."""
    if tensor.numel() == 0 or not (tensor.is_floating_point() or tensor.is_complex()):
        return True
    if tensor.is_complex():
        return bool(torch.isfinite(tensor).all())
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The key of the first tensor holding NaN or inf, or None."""
    for key, tensor in tensors.items():
        if isinstance(tensor, torch.Tensor) and not all_finite(tensor):
            return key
    return None


def _torch_load(path: str, mmap: bool):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as e:
        if mmap and "mmap" in str(e):  # legacy (non-zip) files cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
        raise
