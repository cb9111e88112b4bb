"""Faces: ComfyUI images to face-detector input, choosing a face, 5-point alignment, and FaceID projection.

The face models themselves (insightface + onnxruntime) live in `nodes/host/face.py`; everything here is
numpy/torch and runs without them.

Alignment follows insightface's `face_align.norm_crop`, the crop every FaceID model was trained on: the five
keypoints are mapped onto the ArcFace template by the least-squares similarity transform of Umeyama (PAMI 1991),
and the image is warped with OpenCV, black outside. Crop sizes that are multiples of 112 scale the template;
multiples of 128 (e.g. 256) scale it by size/128 and shift it right by 8 * size/128, which leaves more margin.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .adapter import Adapter
from .errors import IncompatibleError, InputError, LikenessError
from .references import (FaceIdentity, ImageFeatures, ImageTokens, References, match_count,
                         working_projection)
from .variants import ENCODERS, KOLORS, Layout

log = logging.getLogger(__name__)


class FaceModelError(LikenessError):
    """A face model pack that is missing, incomplete or cannot run, or a missing face library."""


class NoFaceError(InputError):
    """No usable face in a reference image."""


SELECT_MODES = ("largest", "left to right", "right to left", "top to bottom", "most confident")
ON_NO_FACE = ("error", "skip")
CROP_SIZES = (224, 256, 336)  # SD1.5, SDXL, Kolors (ViT-L/14-336)
MIN_SIDE = 16  # below this there is nothing a face detector can use

# Eyes, nose tip and mouth corners in a 112 x 112 ArcFace crop (the published insightface template).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


# ---------------------------------------------------------------- ComfyUI IMAGE -> detector input

def to_bgr_uint8(image: torch.Tensor, index: int = 0, what: str = "reference image") -> np.ndarray:
    """One ComfyUI image [H, W, C] (float RGB in 0-1) -> contiguous uint8 BGR [H, W, 3], what insightface reads.

    Rounding (not truncation) gives back the exact bytes of an 8-bit image that ComfyUI loaded. Gray is
    expanded to three channels and alpha dropped.
    """
    if image.ndim != 3:
        raise InputError(f"{what} {index} should be [height, width, channels]; got shape "
                         f"{tuple(image.shape)}.")
    h, w, c = image.shape
    if c not in (1, 3, 4):
        raise InputError(f"{what} {index} has {c} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA).")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"{what} {index} is {w}x{h} pixels; face detection needs at least "
                         f"{MIN_SIDE}x{MIN_SIDE} (and a face at least about 40 pixels across). Use a larger image.")
    x = image.detach().cpu().float().numpy()
    bgr = x[..., [0, 0, 0]] if c == 1 else x[..., 2::-1]
    # One new buffer, changed in place: numpy's single-threaded passes beat torch's on a busy CPU (4-8x on two
    # cores), and scoring a batch converts every image. Same float32 product and round-half-to-even as before.
    y = np.multiply(bgr, np.float32(255.0), dtype=np.float32, order="C")
    np.nan_to_num(y, copy=False, nan=0.0)
    np.clip(y, 0.0, 255.0, out=y)
    np.rint(y, out=y)
    return y.astype(np.uint8)


def crops_to_image(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 BGR crops of one size -> a ComfyUI IMAGE batch (float RGB 0-1)."""
    stack = np.stack([c[..., ::-1] for c in crops]).astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(stack))


# ---------------------------------------------------------------- detections and the choice of face

@dataclass(frozen=True, eq=False)
class DetectedFace:
    bbox: np.ndarray  # [x1, y1, x2, y2] in image pixels, not clipped to the image
    kps: np.ndarray  # [5, 2]: left eye, right eye, nose, left and right mouth corner
    score: float

    @property
    def area(self) -> float:
        return float(max(self.bbox[2] - self.bbox[0], 0.0) * max(self.bbox[3] - self.bbox[1], 0.0))


def order_faces(faces: Sequence[DetectedFace], select: str) -> list[DetectedFace]:
    """Faces in the order `select` names; `index` 0 is the first. Ties keep the detector's order."""
    keys = {
        "largest": lambda f: -f.area,
        "left to right": lambda f: float(f.bbox[0] + f.bbox[2]),
        "right to left": lambda f: -float(f.bbox[0] + f.bbox[2]),
        "top to bottom": lambda f: float(f.bbox[1] + f.bbox[3]),
        "most confident": lambda f: -f.score,
    }
    key = keys.get(select)
    if key is None:
        raise InputError(f"select `{select}` is not one of: {', '.join(SELECT_MODES)}.")
    return sorted(faces, key=key)


def choose_face(faces: Sequence[DetectedFace], select: str, index: int) -> DetectedFace | None:
    ordered = order_faces(faces, select)
    return ordered[index] if 0 <= index < len(ordered) else None


# ---------------------------------------------------------------- alignment

def alignment_template(size: int) -> np.ndarray:
    """The ArcFace template for a `size` x `size` crop (float32, as insightface builds it)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * np.float32(size / 112.0)
    if size % 128 == 0:
        ratio = size / 128.0
        dst = ARCFACE_TEMPLATE * np.float32(ratio)
        dst[:, 0] += np.float32(8.0 * ratio)
        return dst
    raise InputError(f"face crop size {size} is not a multiple of 112 or 128 (e.g. 112, 224, 256).")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking `src` points onto `dst` (Umeyama 1991,
    eqs. 38-43). Returns the 2x3 matrix, or NaNs when the points are degenerate."""
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    sign = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1
    u, s, vt = np.linalg.svd(cov)
    if np.count_nonzero(s > s.max() * dim * np.finfo(float).eps) < dim:
        return np.full((2, 3), np.nan)
    rotation = u @ np.diag(sign) @ vt
    scale = 1.0 / src_c.var(axis=0).sum() * (s @ sign)
    out = np.eye(dim + 1, dtype=np.float64)
    out[:dim, :dim] = rotation
    out[:dim, dim] = dst_mean - scale * (out[:dim, :dim] @ src_mean.T)
    out[:dim, :dim] *= scale
    return out[:2, :]


def alignment_matrix(kps: np.ndarray, size: int) -> np.ndarray:
    kps = np.asarray(kps)
    if kps.shape != (5, 2):
        raise InputError(f"face keypoints should be 5 (x, y) points; got shape {kps.shape}.")
    return similarity_transform(kps, alignment_template(size))


def align_face(bgr: np.ndarray, kps: np.ndarray, size: int) -> np.ndarray:
    """The `size` x `size` aligned crop, as insightface's `norm_crop` makes it (same channel order as `bgr`)."""
    import cv2

    matrix = alignment_matrix(kps, size)
    if not np.all(np.isfinite(matrix)):
        raise InputError("the face keypoints are degenerate (all in one place or on a line); cannot align the face.")
    return cv2.warpAffine(bgr, matrix, (size, size), borderValue=0.0)


def normalise(raw: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm, one row at a time as insightface's `normed_embedding` does it."""
    return np.stack([row / np.linalg.norm(row) for row in raw])


# ---------------------------------------------------------------- FaceID projection

def plus_version_hint(adapter: Adapter) -> tuple[bool, str]:
    """Whether a FaceID Plus file is v2 (shortcut on), guessed from its name: v1 and v2 have one layout."""
    name = re.sub(r"[^a-z0-9]", "", adapter.name.lower())
    if "plusv2" in name:
        return True, "the file name says plusv2"
    if adapter.detected.family == "SDXL":
        return True, "only a Plus v2 was published for SDXL"
    if adapter.detected.family == KOLORS:
        return True, "Kolors FaceID Plus uses the v2 shortcut"
    if "plusv1" in name or "plus" in name:
        return False, "the file name says plus without v2"
    return True, "the file name gives no hint; v2 is the current release"


def uses_raw_identity(adapter: Adapter) -> bool:
    """Portrait-unnorm (a resampler over the identity) was trained on the raw, un-normalised embedding."""
    return adapter.detected.layout is Layout.RESAMPLER


def _faces_of(adapter: Adapter, refs: References, role: str) -> FaceIdentity:
    det = adapter.detected
    if refs.face is None:
        raise IncompatibleError(
            f"adapter `{adapter.name}` is a {det.summary().split(';')[0]} adapter: it reads identity embeddings "
            f"from faces, but the {role} are CLIP image features. Make them with Likeness Face Embed (the FaceID "
            "nodes), or load an image adapter such as ip-adapter_sd15.safetensors.")
    if refs.face.normed.shape[-1] != det.input_width:
        raise IncompatibleError(
            f"adapter `{adapter.name}` reads {det.input_width}-wide identity embeddings; the {role} hold "
            f"{refs.face.normed.shape[-1]}-wide ones from face model `{refs.face.model}`. Use a model pack whose "
            "recogniser gives 512-wide embeddings, such as buffalo_l.")
    return refs.face


def _crop_features(adapter: Adapter, refs: References, role: str) -> ImageFeatures:
    width = adapter.projection.perceiver_resampler.proj_in.in_features
    enc = adapter.detected.encoder or next((e for e in ENCODERS if e.hidden_width == width), None)
    need = f"{enc.name} ({width}-wide hidden states), e.g. {enc.file_hint}" if enc else f"{width}-wide hidden states"
    if refs.image is None:
        raise IncompatibleError(
            f"adapter `{adapter.name}` (FaceID Plus) also reads CLIP features of the aligned face crops, but the "
            f"{role} have none. Connect a Load CLIP Vision node with {need} to clip_vision on Likeness Face Embed.")
    if refs.image.encoder.hidden_width != width:
        raise IncompatibleError(
            f"adapter `{adapter.name}` (FaceID Plus) needs face crops encoded with {need}; the {role} were encoded "
            f"with {refs.image.encoder.describe()}. Load the encoder it needs and connect it to clip_vision on "
            "Likeness Face Embed.")
    return refs.image


@torch.no_grad()
def project_faces(adapter: Adapter, refs: References, negative: References | None = None,
                  device: torch.device | None = None, plus_v2: bool | None = None,
                  v2_weight: float = 1.0) -> ImageTokens:
    """Identity embeddings (and, for Plus, crop features) -> image tokens, one set per face.

    Uncond, as in the reference implementation: the projection of a zero identity; for Plus, a zero identity
    with the encoder's features of an all-zero normalised image. `negative` face references replace both. For
    Plus, `negative` may also be image references (Likeness Image Encode, no face): their CLIP features replace
    the crops' side and the identity stays zero, which is what the leading pack's FaceID nodes do with a
    negative image. `plus_v2` None means "guess from the file name" (see `plus_version_hint`).
    """
    det = adapter.detected
    faces = _faces_of(adapter, refs, "references")
    image_only = negative is not None and negative.face is None and negative.image is not None
    if image_only and det.layout is not Layout.FACEID_PLUS:
        raise IncompatibleError(
            f"adapter `{adapter.name}` is a {det.summary().split(';')[0]} adapter: it reads only identity "
            "embeddings, so a negative of CLIP image features (Likeness Image Encode) means nothing to it. Give "
            "Likeness Project a negative made by Likeness Face Embed, or none (a zero identity).")
    neg = None if negative is None or image_only else _faces_of(adapter, negative, "negative references")
    n = faces.count
    raw = uses_raw_identity(adapter)
    cond_id = faces.raw if raw else faces.normed
    uncond_id = torch.zeros_like(cond_id) if neg is None else match_count(neg.raw if raw else neg.normed, n)
    device = device or torch.device("cpu")
    proj = working_projection(adapter, device)

    def run(*inputs, **kw):
        return proj(*(t.to(device, torch.float32) for t in inputs), **kw).float().cpu()

    if det.layout is Layout.FACEID_PLUS:
        crops = _crop_features(adapter, refs, "references")
        if negative is None:
            uncond_crops = match_count(crops.empty_penultimate, n)
        else:
            uncond_crops = match_count(_crop_features(adapter, negative, "negative references").penultimate, n)
        shortcut = plus_version_hint(adapter)[0] if plus_v2 is None else bool(plus_v2)
        kw = dict(shortcut=shortcut, shortcut_scale=float(v2_weight))
        cond = run(cond_id, crops.penultimate, **kw)
        uncond = run(uncond_id, uncond_crops, **kw)
    elif det.layout is Layout.RESAMPLER:
        cond, uncond = run(cond_id[:, None]), run(uncond_id[:, None])
    else:
        cond, uncond = run(cond_id), run(uncond_id)
    return ImageTokens(adapter.name, det.tokens_width, cond.shape[1], cond, uncond,
                       det.variant.key if det.variant else "")
