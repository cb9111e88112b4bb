"""What model files the user has, and what each one is, read cheaply (safetensors headers, memory-mapped .bin,
ONNX graphs without running them) and cached by path, modification time and size. A file that cannot be read is
listed with its problem, never dropped and never counted as usable."""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass

import folder_paths

from ..core import checkpoint
from ..core.errors import AdapterFileError, LikenessError
from ..core.eva_clip import EvaConfig, detect_eva_clip
from ..core.instantid import IDENTITYNET_NAMES, VARIANT as INSTANTID, ControlNetFile, inspect_controlnet
from ..core.lora_fit import lora_family
from ..core.variants import Detected, Encoder, detect, detect_encoder, variant_by_key
from .folders import ADAPTER_FOLDERS, file_version

log = logging.getLogger(__name__)
_cache: dict[tuple, tuple] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Entry:
    folder: str  # model folder name: ipadapter, instantid, pulid, clip_vision, loras, controlnet, insightface
    name: str  # as listed by ComfyUI (may include a sub-folder)
    path: str
    # str: what a LoRA or face pack was read as; EvaConfig: PuLID's EVA-CLIP; ControlNetFile: InstantID's IdentityNet
    found: Detected | Encoder | EvaConfig | ControlNetFile | str | None
    problem: str = ""

    @property
    def usable(self) -> bool:
        return not self.problem and self.found is not None

    def describe(self) -> str:
        if self.problem:
            return f"unusable: {self.problem}"
        if isinstance(self.found, Detected):
            return self.found.summary()
        if isinstance(self.found, (Encoder, EvaConfig, ControlNetFile)):
            return self.found.describe()
        if isinstance(self.found, str):
            return self.found
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


def _encoder(path: str) -> Encoder | EvaConfig | None:
    shapes = checkpoint.read_shapes(path)
    return detect_encoder(shapes) or detect_eva_clip(shapes)


def _entries(folder: str, reader, names=None) -> list[Entry]:
    out = []
    for name in (folder_paths.get_filename_list(folder) if names is None else names):
        path = folder_paths.get_full_path(folder, name)
        if path:
            found, problem = _inspect(path, reader)
            out.append(Entry(folder, name, path, found, problem))
    return out


def adapters() -> list[Entry]:
    """Every file of the adapter folders (ipadapter, instantid, pulid); a name in two folders once, as the
    loaders list it (the first folder wins)."""
    out, seen = [], set()
    for folder in ADAPTER_FOLDERS:
        entries = _entries(folder, _adapter, [n for n in folder_paths.get_filename_list(folder) if n not in seen])
        seen.update(e.name for e in entries)
        out += entries
    return out


def encoders() -> list[Entry]:
    return _entries("clip_vision", _encoder)


def face_parsing_files() -> list[str]:
    try:
        return folder_paths.get_filename_list("facexlib")
    except KeyError:
        return []


def _lora(path: str) -> str:
    family = lora_family(checkpoint.read_shapes(path))
    if family is None:
        raise AdapterFileError(f"`{os.path.basename(path)}` holds no LoRA weights for UNet cross-attention, so it "
                               "is not a FaceID LoRA.")
    return f"LoRA for {family}"


def faceid_loras() -> list[Entry]:
    names = [n for n in folder_paths.get_filename_list("loras") if "faceid" in os.path.basename(n).lower()]
    return _entries("loras", _lora, names)


def _onnx(path: str) -> str:
    """A face model file is read and its graph checked (cheap: nothing runs); returns its file name."""
    problem = checkpoint.not_a_model(path)
    if problem:
        raise AdapterFileError(problem)
    try:
        import onnx
    except ImportError:  # installed with insightface; without it the loader would fail anyway
        raise AdapterFileError("the onnx package is missing, so face models cannot be checked; install the "
                               "pack's requirements.") from None
    try:
        onnx.checker.check_model(path)
    except Exception as e:  # protobuf and checker errors: the file is damaged or not ONNX
        raise AdapterFileError(f"`{os.path.basename(path)}` is not a readable ONNX model ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else ''}); download the pack again.") from None
    return os.path.basename(path)


def face_pack_entries() -> list[Entry]:
    """Every face model pack, its .onnx files checked; a pack with a broken file is unusable."""
    try:
        from .face import pack_files
    except Exception as e:  # insightface/onnxruntime missing: the doctor still lists everything else
        log.warning("Likeness: face model packs not listed (%s)", e)
        return []
    out = []
    for pack in face_packs():
        try:
            folder, files = pack_files(pack)
        except LikenessError as e:
            out.append(Entry("insightface", pack, "", None, str(e)))
            continue
        broken = [problem for _found, problem in (_inspect(path, _onnx) for path in files) if problem]
        found = ", ".join(os.path.basename(path) for path in files)
        out.append(Entry("insightface", pack, folder, found, broken[0] if broken else ""))
    return out


def _controlnet(path: str) -> ControlNetFile | None:
    return inspect_controlnet(checkpoint.read_shapes(path))


def identitynet_candidates() -> list[Entry]:
    """ControlNet files named as InstantID's IdentityNet (InstantID in the name or the folder, or the published
    file name), read (broken ones carry their problem); named ones first. Their weights look like any SDXL
    ControlNet's, so the name decides which files are read at all; only .safetensors headers are read."""
    official = variant_by_key(INSTANTID).controlnet_file
    names = [n for n in folder_paths.get_filename_list("controlnet") if n.lower().endswith(".safetensors")]
    named = [n for n in names if re.search(IDENTITYNET_NAMES, n.lower())]
    published = [n for n in names if n not in named and os.path.basename(n) == official]
    return _entries("controlnet", _controlnet, named + published)


def identitynets() -> list[Entry]:
    """The IdentityNet candidates that are readable SDXL ControlNets with cross-attention, best first."""
    return [e for e in identitynet_candidates() if isinstance(e.found, ControlNetFile) and e.found.context_width]


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
