"""What model files the user has, and what each one is, read cheaply (safetensors headers, memory-mapped .bin)
and cached by path, modification time and size."""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass

import folder_paths

from ..core import checkpoint
from ..core.errors import LikenessError
from ..core.instantid import IDENTITYNET_NAMES, VARIANT as INSTANTID, ControlNetFile, inspect_controlnet
from ..core.variants import Detected, Encoder, detect, detect_encoder, variant_by_key
from .folders import ADAPTER_FOLDERS, file_version

log = logging.getLogger(__name__)
_cache: dict[tuple, tuple] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Entry:
    folder: str  # model folder name: ipadapter, clip_vision, loras
    name: str  # as listed by ComfyUI (may include a sub-folder)
    path: str
    found: Detected | Encoder | ControlNetFile | None
    problem: str = ""

    def describe(self) -> str:
        if self.problem:
            return f"unusable: {self.problem}"
        if isinstance(self.found, Detected):
            return self.found.summary()
        if isinstance(self.found, (Encoder, ControlNetFile)):
            return self.found.describe()
        return "not recognised"


def _inspect(path: str, reader) -> tuple:
    try:
        key = (*file_version(path), reader.__name__)
    except OSError as e:
        return None, str(e)
    with _lock:
        hit = _cache.get(key)
    if hit is None:
        try:
            hit = (reader(path), "")
        except LikenessError as e:
            hit = (None, str(e))
        except Exception as e:  # a file we cannot parse is reported, never fatal for the listing
            hit = (None, f"{type(e).__name__}: {e}")
        with _lock:
            _cache[key] = hit
    return hit


def _adapter(path: str) -> Detected:
    shapes, dtypes = checkpoint.read_header(path)
    return detect(shapes, os.path.basename(path), dtypes, path)


def _encoder(path: str) -> Encoder | None:
    return detect_encoder(checkpoint.read_shapes(path))


def _entries(folder: str, reader, names=None) -> list[Entry]:
    out = []
    for name in (folder_paths.get_filename_list(folder) if names is None else names):
        path = folder_paths.get_full_path(folder, name)
        if path:
            found, problem = _inspect(path, reader)
            out.append(Entry(folder, name, path, found, problem))
    return out


def adapters() -> list[Entry]:
    out, seen = [], set()
    for folder in ADAPTER_FOLDERS:
        entries = _entries(folder, _adapter, [n for n in folder_paths.get_filename_list(folder) if n not in seen])
        seen.update(e.name for e in entries)
        out += entries
    return out


def encoders() -> list[Entry]:
    return _entries("clip_vision", _encoder)


def faceid_loras() -> list[Entry]:
    names = [n for n in folder_paths.get_filename_list("loras") if "faceid" in os.path.basename(n).lower()]
    return [Entry("loras", n, folder_paths.get_full_path("loras", n) or "", None) for n in names]


def _controlnet(path: str) -> ControlNetFile | None:
    return inspect_controlnet(checkpoint.read_shapes(path))


def identitynets() -> list[Entry]:
    """ControlNets that can be InstantID's IdentityNet, best first: files with cross-attention named for InstantID,
    then files under IdentityNet's published name. Their weights look like any SDXL ControlNet's, so the name
    decides; only .safetensors headers are read."""
    official = variant_by_key(INSTANTID).controlnet_file
    names = [n for n in folder_paths.get_filename_list("controlnet") if n.lower().endswith(".safetensors")]
    found = [e for e in _entries("controlnet", _controlnet, names)
             if isinstance(e.found, ControlNetFile) and e.found.context_width]
    named = [e for e in found if re.search(IDENTITYNET_NAMES, e.name.lower())]
    published = [e for e in found if e not in named and os.path.basename(e.name) == official]
    return named + published


def face_packs() -> list[str]:
    try:
        from .face import pack_names
    except Exception as e:  # insightface/onnxruntime missing: the doctor still lists everything else
        log.warning("Likeness: face model packs not listed (%s)", e)
        return []
    return pack_names()


def searched(folder: str) -> list[str]:
    try:
        return list(folder_paths.get_folder_paths(folder))
    except KeyError:
        return []
