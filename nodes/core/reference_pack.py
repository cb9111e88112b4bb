"""Choosing, framing and sizing reference photos for edit models (LikenessReferencePack). Pure torch/numpy.

Choosing, with a face model (the order of the steps is the order of the report):
  1. photos without a face are dropped;
  2. outliers are dropped: a photo whose identity embedding has a cosine below `outlier_threshold` to the
     mean of the others' (the rule of LikenessMergeReferences; needs 3 or more photos);
  3. near-duplicates are dropped: of two photos whose identities have a cosine of DUPLICATE_COSINE or more,
     the one of lower quality goes;
  4. `count` photos are picked greedily: first the one of highest quality, then each time the one with the
     largest  quality × (1 − cosine to its most similar already-picked photo),  so that every pick is both good
     and unlike the picks before it (greedy max-min diversity, weighted by quality).
Quality is  (sharpness / the sharpest photo's) × (face size / the largest face's): sharpness is the variance
of the Laplacian of the face region resampled to SHARPNESS_SIDE² gray pixels, face size the shorter side of
the detected face box in pixels. The picks keep the order of the input.

Without a face model the first `count` photos are kept, in order.

Framing crops around the detected face box (x1, y1, x2, y2; width fw, height fh; centre cx, cy):
  face                a square of side FACE_MARGIN × max(fw, fh) centred on the face box
  head and shoulders  HEAD_SHOULDERS_WIDTH × fw wide, from HEAD_SHOULDERS_ABOVE × fh above the face box to
                      HEAD_SHOULDERS_BELOW × fh below it, centred on cx
  as is               the whole photo
A box larger than the photo is shrunk (keeping its aspect) to fit, then moved inside the photo; without a face
the box is the whole photo. The target's sizing rule then gives the output size from the box's size; the box
is trimmed to that exact aspect around the face centre and resampled (bicubic, antialiased when shrinking), so
no reference is stretched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .merge import MIN_REFERENCES_FOR_OUTLIERS, leave_one_out_similarity

FRAMINGS = ("face", "head and shoulders", "as is")
FACE_MARGIN = 1.6
HEAD_SHOULDERS_WIDTH = 3.2
HEAD_SHOULDERS_ABOVE = 0.8
HEAD_SHOULDERS_BELOW = 1.6
DUPLICATE_COSINE = 0.95
SHARPNESS_SIDE = 128
DEFAULT_OUTLIER_THRESHOLD = 0.3


# ---------------------------------------------------------------- what is known about each photo

@dataclass(frozen=True, eq=False)
class Candidate:
    """One candidate photo: its size and, when a face model ran, its face."""

    index: int  # position among all candidates (0-based)
    width: int
    height: int
    face_box: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 in pixels
    identity: np.ndarray | None = None  # unit identity embedding
    sharpness: float = 0.0

    @property
    def label(self) -> str:
        return f"photo {self.index + 1}"

    @property
    def face_size(self) -> float:
        if self.face_box is None:
            return 0.0
        x1, y1, x2, y2 = self.face_box
        return float(max(0.0, min(x2 - x1, y2 - y1)))


@dataclass
class Verdict:
    """What happened to one photo."""

    candidate: Candidate
    kept: bool = False
    reason: str = ""
    quality: float = 0.0
    similarity: float | None = None  # to the mean of the others, when outliers were checked


@dataclass
class Selection:
    verdicts: list[Verdict]
    picked: list[Candidate]  # in input order
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- measures

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)


def sharpness(image: torch.Tensor, box: tuple[float, float, float, float] | None = None) -> float:
    """Variance of the Laplacian of the (face) region of one image [H, W, C] (0-1), resampled to a fixed size so
    that photos of different resolutions compare."""
    h, w = image.shape[:2]
    if box is not None:
        x1, y1, x2, y2 = _clip_box(box, w, h)
        image = image[y1:y2, x1:x2]
    gray = image[..., :3].float().mean(dim=-1)[None, None]
    gray = F.interpolate(gray, size=(SHARPNESS_SIDE, SHARPNESS_SIDE), mode="area")
    return float(F.conv2d(gray, _LAPLACIAN).var())


def _clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    x1, y1 = max(0, int(math.floor(x1))), max(0, int(math.floor(y1)))
    x2, y2 = min(width, int(math.ceil(x2))), min(height, int(math.ceil(y2)))
    if x2 - x1 < 2 or y2 - y1 < 2:
        return 0, 0, width, height
    return x1, y1, x2, y2


def _cosines(vectors: np.ndarray) -> np.ndarray:
    units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return units @ units.T


def qualities(candidates: Sequence[Candidate]) -> list[float]:
    top_sharp = max((c.sharpness for c in candidates), default=0.0)
    top_face = max((c.face_size for c in candidates), default=0.0)
    out = []
    for c in candidates:
        s = c.sharpness / top_sharp if top_sharp > 0 else 1.0
        f = c.face_size / top_face if top_face > 0 else 1.0
        out.append(s * f)
    return out


# ---------------------------------------------------------------- choosing

def select(candidates: Sequence[Candidate], count: int, drop_outliers: bool = True,
           outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD, with_faces: bool = True) -> Selection:
    """Choose up to `count` photos by the rules in the module docstring."""
    if count < 1:
        raise InputError(f"count is {count}; choose at least 1 reference.")
    verdicts = [Verdict(c) for c in candidates]
    if not with_faces:
        for v in verdicts[:count]:
            v.kept, v.reason = True, "kept (no face model: the first photos in order)"
        for v in verdicts[count:]:
            v.reason = f"not needed (count is {count})"
        return Selection(verdicts, [v.candidate for v in verdicts[:count]])

    active = []
    for v in verdicts:
        if v.candidate.identity is None:
            v.reason = "dropped: no face found"
        else:
            active.append(v)
    notes = []
    if drop_outliers and active:
        if len(active) < MIN_REFERENCES_FOR_OUTLIERS:
            notes.append(f"outlier check skipped: it needs at least {MIN_REFERENCES_FOR_OUTLIERS} photos with a "
                         f"face, and {len(active)} had one.")
        else:
            sims = leave_one_out_similarity(torch.from_numpy(np.stack([v.candidate.identity for v in active])))
            for v, s in zip(active, sims.tolist()):
                v.similarity = s
            for v in active:
                if v.similarity < outlier_threshold:
                    v.reason = (f"dropped: identity unlike the others (similarity {v.similarity:.3f} < "
                                f"{outlier_threshold:g})")
            active = [v for v in active if v.similarity >= outlier_threshold]

    for v, q in zip(active, qualities([v.candidate for v in active])):
        v.quality = q
    if active:
        cos = _cosines(np.stack([v.candidate.identity for v in active]))
        order = sorted(range(len(active)), key=lambda i: (-active[i].quality, i))
        unique = []
        for i in order:
            twin = next((j for j in unique if cos[i, j] >= DUPLICATE_COSINE), None)
            if twin is None:
                unique.append(i)
            else:
                active[i].reason = (f"dropped: near-duplicate of {active[twin].candidate.label} (identity cosine "
                                    f"{cos[i, twin]:.3f} ≥ {DUPLICATE_COSINE:g}), which is sharper or shows a larger "
                                    "face")
        chosen = _max_min_pick(unique, cos, [v.quality for v in active], count)
        for rank, i in enumerate(chosen, 1):
            active[i].kept, active[i].reason = True, f"kept (pick {rank}, quality {active[i].quality:.2f})"
        for i in unique:
            if i not in chosen:
                active[i].reason = (f"not chosen: {count} picked were sharper, showed larger faces or differed more "
                                    f"(quality {active[i].quality:.2f})")
    picked = [v.candidate for v in verdicts if v.kept]
    return Selection(verdicts, picked, notes)


def _max_min_pick(pool: list[int], cos: np.ndarray, quality: list[float], count: int) -> list[int]:
    if not pool:
        return []
    chosen = [max(pool, key=lambda i: (quality[i], -i))]
    while len(chosen) < min(count, len(pool)):
        rest = [i for i in pool if i not in chosen]

        def score(i):
            nearest = max(cos[i, j] for j in chosen)
            return quality[i] * (1.0 - nearest), -i

        chosen.append(max(rest, key=score))
    return chosen


# ---------------------------------------------------------------- framing and sizing

def framing_box(framing: str, width: int, height: int,
                face_box: tuple[float, float, float, float] | None) -> tuple[float, float, float, float]:
    """The crop box (x1, y1, x2, y2) for a framing, inside the photo."""
    if framing not in FRAMINGS:
        raise InputError(f"framing `{framing}` is not one of: {', '.join(FRAMINGS)}.")
    if framing == "as is" or face_box is None:
        return 0.0, 0.0, float(width), float(height)
    x1, y1, x2, y2 = (float(v) for v in face_box)
    fw, fh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if framing == "face":
        side = FACE_MARGIN * max(fw, fh)
        bw, bh, top = side, side, cy - side / 2
    else:
        bw = HEAD_SHOULDERS_WIDTH * fw
        top = y1 - HEAD_SHOULDERS_ABOVE * fh
        bh = (y2 + HEAD_SHOULDERS_BELOW * fh) - top
    shrink = min(1.0, width / bw, height / bh)
    if shrink < 1.0:  # keep the aspect, around the face centre
        top = cy - (cy - top) * shrink
        bw, bh = bw * shrink, bh * shrink
    left = cx - bw / 2
    left = min(max(left, 0.0), width - bw)
    top = min(max(top, 0.0), height - bh)
    return left, top, left + bw, top + bh


def trim_to_aspect(box: tuple[float, float, float, float], aspect: float,
                   centre: tuple[float, float] | None = None) -> tuple[float, float, float, float]:
    """The largest box of the given width/height aspect inside `box`, as close to `centre` as it fits."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    cx, cy = centre if centre is not None else ((x1 + x2) / 2, (y1 + y2) / 2)
    if bw / bh > aspect:
        nw = bh * aspect
        left = min(max(cx - nw / 2, x1), x2 - nw)
        return left, y1, left + nw, y2
    nh = bw / aspect
    top = min(max(cy - nh / 2, y1), y2 - nh)
    return x1, top, x2, top + nh


def pixel_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    left, top = int(round(x1)), int(round(y1))
    right, bottom = max(left + 1, int(round(x2))), max(top + 1, int(round(y2)))
    return max(0, left), max(0, top), min(width, right), min(height, bottom)


def crop_and_resize(image: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int]) -> torch.Tensor:
    """One image [H, W, C] -> a new [1, h, w, 3] tensor: the box, resampled to size (width, height). The input is
    never written to."""
    x1, y1, x2, y2 = box
    region = image[y1:y2, x1:x2, :3].float()
    tw, th = size
    if (x2 - x1, y2 - y1) == (tw, th):
        return region.clone()[None]
    chw = region.movedim(-1, 0)[None]
    shrinking = tw < (x2 - x1) or th < (y2 - y1)
    out = F.interpolate(chw, size=(th, tw), mode="bicubic", align_corners=False, antialias=shrinking)
    return out.clamp(0.0, 1.0).movedim(1, -1).contiguous()
