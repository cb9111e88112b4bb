"""PuLID's ID encoder: EVA-CLIP (models/clip_vision) and facexlib's BiSeNet face parsing (models/facexlib), loaded
from local files only, and the parsed-face features of aligned faces.

Nothing is downloaded: facexlib's own loader would fetch its weights, so the parsing network is built from
facexlib's class and loaded from the file the user put in models/facexlib. A missing file is a "put it here"
error that names the file, where to download it and which folders were searched.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

import comfy.model_management
import comfy.model_patcher
import folder_paths

from ..core import checkpoint
from ..core.errors import AdapterFileError, LikenessError
from ..core.eva_clip import EvaConfig, build_eva_clip, detect_eva_clip, eva_features, eva_pixels
from ..core.face_parsing import build_parser, face_only
from ..core.references import ParsedFaceFeatures
from ..core.variants import EVA_CLIP, detect_encoder
from . import folders

log = logging.getLogger(__name__)

EVA_FILE = EVA_CLIP.file_hint
EVA_URL = "https://huggingface.co/QuanSun/EVA-CLIP/blob/main/EVA02_CLIP_L_336_psz14_s6B.pt"
PARSING_FILE = "parsing_bisenet.pth"
PARSING_URL = "https://github.com/xinntao/facexlib/releases/download/v0.2.0/parsing_bisenet.pth"
PARSING_FOLDER = "facexlib"
BATCH = 4  # parsed faces per EVA-CLIP pass


class IDEncoderError(LikenessError):
    """A missing or wrong EVA-CLIP or face parsing file."""


def _listed(folder: str) -> list[str]:
    try:
        return folder_paths.get_filename_list(folder)
    except KeyError:
        return []


def _searched(folder: str) -> str:
    try:
        return ", ".join(folder_paths.get_folder_paths(folder)) or "(none)"
    except KeyError:
        return "(not registered)"


def eva_choices() -> list[str]:
    """The clip_vision files, and the published EVA-CLIP file name before it is downloaded (choosing it then says
    where it goes)."""
    return sorted(set(_listed("clip_vision")) | {EVA_FILE})


def parsing_choices() -> list[str]:
    return sorted(set(_listed(PARSING_FOLDER)) | {PARSING_FILE})


def _path(folder: str, name: str, choices: list[str], what: str, file: str, url: str) -> str:
    folders.check_listed(name, choices, what, f"models/{folder}")
    path = folder_paths.get_full_path(folder, name) if name in _listed(folder) else None
    if path is None:
        raise IDEncoderError(
            f"{what} `{name}` was not found. Download {file} from {url} and put it in models/{folder} (or a folder "
            f"listed under `{folder}:` in extra_model_paths.yaml), then refresh the page. Searched: "
            f"{_searched(folder)}.")
    return path


def eva_path(name: str) -> str:
    return _path("clip_vision", name, eva_choices(), "EVA-CLIP encoder", f"{EVA_FILE} (EVA02-CLIP-L-14-336)", EVA_URL)


def parsing_path(name: str) -> str:
    return _path(PARSING_FOLDER, name, parsing_choices(), "face parsing model",
                 f"{PARSING_FILE} (facexlib's BiSeNet)", PARSING_URL)


def read_eva_config(path: str) -> EvaConfig:
    """The EVA-CLIP tower a file holds, from its shapes; a clear error for any other kind of file."""
    name = os.path.basename(path)
    try:
        shapes = checkpoint.read_shapes(path)
    except AdapterFileError as e:
        raise IDEncoderError(str(e).replace("adapter", "encoder")) from None
    config = detect_eva_clip(shapes)
    if config is None:
        other = detect_encoder(shapes)
        found = f"an OpenAI/LAION CLIP vision model ({other.describe()})" if other else f"{len(shapes)} tensors " \
            f"of another kind ({', '.join(sorted({k.split('.')[0] for k in shapes})[:5])})"
        raise IDEncoderError(
            f"`{name}` is not an EVA-CLIP vision tower: it holds {found}. PuLID reads EVA02-CLIP-L-14-336; download "
            f"{EVA_FILE} from {EVA_URL} into models/clip_vision and choose it in Likeness ID Encoder Loader.")
    return config


def _working_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cpu" or not comfy.model_management.should_use_fp16(device):
        return torch.float32
    return torch.float16


@dataclass(frozen=True, eq=False)
class IDEncoder:
    """PuLID's image side: EVA-CLIP and the face parsing network, each as a ModelPatcher that ComfyUI loads to the
    GPU and offloads like its own models."""

    eva_name: str
    config: EvaConfig
    eva: comfy.model_patcher.ModelPatcher
    parsing_name: str
    parser: comfy.model_patcher.ModelPatcher

    def __deepcopy__(self, memo):
        return self

    def describe(self) -> str:
        return f"`{self.eva_name}`: {self.config.describe()}; face parsing `{self.parsing_name}` (BiSeNet)"

    @torch.no_grad()
    def parsed_face_features(self, crops: Sequence[np.ndarray], progress=None) -> tuple[ParsedFaceFeatures,
                                                                                        torch.Tensor]:
        """FFHQ-aligned 512 px BGR uint8 crops -> PuLID's EVA-CLIP features, and the parsed faces (RGB, 0-1,
        [N, H, W, 3]) as EVA-CLIP saw them before resizing."""
        comfy.model_management.load_models_gpu([self.eva, self.parser])
        device = self.eva.load_device
        embeds, hidden, shown = [], [], []
        for start in range(0, len(crops), BATCH):
            chunk = np.stack([c[..., ::-1] for c in crops[start:start + BATCH]]).astype(np.float32) / 255.0
            rgb = torch.from_numpy(np.ascontiguousarray(chunk)).movedim(-1, 1).to(device)
            faces = face_only(self.parser.model, rgb).float()
            e, h = eva_features(self.eva.model, eva_pixels(faces, self.config))
            embeds.append(e.cpu())
            hidden.append(h.cpu())
            shown.append(faces.movedim(1, -1).cpu())
            if progress is not None:
                progress(len(chunk))
        features = ParsedFaceFeatures(self.config.describe(), torch.cat(embeds), torch.cat(hidden), self.eva_name)
        return features, torch.cat(shown)


_cache: "weakref.WeakValueDictionary[tuple, IDEncoder]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def fingerprint(eva_name: str, parsing_name: str) -> tuple:
    out = []
    for resolve, name in ((eva_path, eva_name), (parsing_path, parsing_name)):
        try:
            out.append(folders.file_version(resolve(name)))
        except (LikenessError, OSError):  # the loader's run reports it
            out.append(name)
    return tuple(out)


def load_id_encoder(eva_name: str, parsing_name: str) -> IDEncoder:
    """One IDEncoder per pair of file versions, shared by every loader node that names them."""
    eva_file, parsing_file = eva_path(eva_name), parsing_path(parsing_name)
    key = (folders.file_version(eva_file), folders.file_version(parsing_file))
    with _cache_lock:
        encoder = _cache.get(key)
        if encoder is None:
            encoder = _load(eva_name, eva_file, parsing_name, parsing_file)
            _cache[key] = encoder
    return encoder


def _built(path: str, build, mismatch: str):
    """build(state dict of the file at `path`), with the file's problems as IDEncoderErrors (`mismatch` says what
    to do when the tensors do not fit; {} takes the library's words)."""
    try:
        return build(checkpoint.load_state_dict(path, mmap=True))
    except AdapterFileError as e:  # unreadable, truncated, or holding code: the message names the file
        raise IDEncoderError(str(e).replace("this adapter", "this file")) from None
    except (RuntimeError, KeyError, ValueError) as e:
        raise IDEncoderError(mismatch.replace("{}", str(e).splitlines()[0][:300])) from None


def _load(eva_name: str, eva_file: str, parsing_name: str, parsing_file: str) -> IDEncoder:
    config = read_eva_config(eva_file)
    device = comfy.model_management.get_torch_device()
    offload = comfy.model_management.unet_offload_device()
    dtype = _working_dtype(device)
    eva = _built(eva_file, lambda state: build_eva_clip(state, config).to(dtype),
                 f"`{eva_name}` looks like {config.describe()} but its tensors do not fit that layout ({{}}). The file "
                 f"is damaged; download it again from {EVA_URL}.")
    parser = _built(parsing_file, build_parser,
                    f"`{parsing_name}` is not facexlib's BiSeNet face parsing model ({{}}). Download {PARSING_FILE} "
                    f"from {PARSING_URL} into models/{PARSING_FOLDER}.")
    encoder = IDEncoder(eva_name, config, comfy.model_patcher.ModelPatcher(eva, device, offload), parsing_name,
                        comfy.model_patcher.ModelPatcher(parser, device, offload))
    log.info("Likeness: ID encoder %s", encoder.describe())
    return encoder
