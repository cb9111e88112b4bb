"""InstantID (Wang et al. 2024, InstantX/InstantID) on the Likeness pipeline: identity tokens and the keypoint image.

InstantID is two parts trained together for SDXL:

* an IP-Adapter whose Resampler turns the raw antelopev2 identity embedding (512 numbers, not normalised) into
  16 identity tokens, attended to at all 70 cross-attention sites like any adapter (nodes/core/attention.py);
* IdentityNet, an SDXL ControlNet whose hint is a drawing of the face's five keypoints and whose cross-attention
  reads the same identity tokens instead of the text (nodes/host/instantid.py wires it into the conditioning).

This module holds the pure parts: the identity tokens (several photos averaged, the uncond's noise convention)
and the keypoint drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from .adapter import Adapter
from .errors import IncompatibleError, InputError
from .references import FaceIdentity, ImageTokens, References, working_projection
from .variants import VARIANTS, family_name, variant_by_key

VARIANT = "sdxl-instantid"  # its row in the variants table
DEFAULT_NOISE = 0.35
NOISE_SEED_MODULUS = 1_000_000_007


def face_pack() -> str:
    return variant_by_key(VARIANT).face_pack


def is_instantid(adapter: Adapter) -> bool:
    variant = adapter.detected.variant
    return variant is not None and variant.key == VARIANT


def is_instantid_tokens(tokens: ImageTokens) -> bool:
    return tokens.variant == VARIANT


# ---------------------------------------------------------------- IdentityNet files

IDENTITYNET_NAMES = r"instant|identitynet"  # names that mark a ControlNet file as InstantID's


@dataclass(frozen=True)
class ControlNetFile:
    """What a ControlNet file's header shows: its key layout and the width of the context it cross-attends to."""

    layout: str  # "diffusers" (as InstantX published IdentityNet) or "ComfyUI"
    context_width: int | None  # None: no cross-attention

    def describe(self) -> str:
        if self.context_width is None:
            return f"ControlNet ({self.layout} layout) without cross-attention: not IdentityNet"
        return (f"ControlNet ({self.layout} layout) for {family_name(self.context_width)}, "
                f"{self.context_width}-wide cross-attention")


def inspect_controlnet(shapes: Mapping[str, Sequence[int]]) -> ControlNetFile | None:
    """A UNet ControlNet's layout and context width from its tensor shapes, or None for any other file."""
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        layout = "diffusers"
    elif any(k.endswith("input_hint_block.0.weight") for k in shapes):
        layout = "ComfyUI"
    else:
        return None
    context = next((int(shapes[k][1]) for k in sorted(shapes) if k.endswith("attn2.to_k.weight")), None)
    return ControlNetFile(layout, context)


# ---------------------------------------------------------------- identity tokens

def identities_for(adapter: Adapter, refs: References, role: str) -> FaceIdentity:
    """The face identities InstantID can read from `refs`: antelopev2's, 512 wide."""
    pack = face_pack()
    if refs.face is None:
        raise IncompatibleError(
            f"adapter `{adapter.name}` is InstantID: it reads identity embeddings from faces, but the {role} are "
            f"CLIP image features. Embed the photos with Likeness Face Embed and the {pack} face model pack.")
    faces = refs.face
    known_packs = {v.face_pack for v in VARIANTS}
    if faces.model != pack and faces.model in known_packs:
        raise IncompatibleError(
            f"adapter `{adapter.name}` is InstantID, which was trained on {pack}'s raw identity embedding; the "
            f"{role} were embedded with `{faces.model}`, whose recogniser gives embeddings in another space. Load "
            f"the {pack} pack in Likeness Face Model Loader (models/insightface/models/{pack}/) and embed the photos "
            "again.")
    width = faces.raw.shape[-1]
    if width != adapter.detected.input_width:
        raise IncompatibleError(
            f"adapter `{adapter.name}` reads {adapter.detected.input_width}-wide identity embeddings; the {role} hold "
            f"{width}-wide ones from face model `{faces.model}`. Use the {pack} pack.")
    return faces


def uncond_identity(embedding: torch.Tensor, noise: float) -> torch.Tensor:
    """The identity the uncond side is projected from.

    The original InstantID pipeline projects zeros. ComfyUI's InstantID pack (cubiq/ComfyUI_InstantID, whose
    README says it reduces burn) projects uniform noise in [0, noise) instead, drawn by a generator seeded with the
    integer part of the embedding's sum modulo 1,000,000,007, so a face always gets the same uncond; noise 0 is the
    original's zeros. The same numbers come out here from a generator of our own: the global random state is left
    alone.
    """
    if not math.isfinite(noise) or noise < 0:
        raise InputError(f"noise should be 0 or more; got {noise}.")
    if noise == 0:
        return torch.zeros_like(embedding)
    seed = int(embedding.float().sum().item()) % NOISE_SEED_MODULUS
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return noise * torch.rand(embedding.shape, generator=generator, dtype=torch.float32)


def mean_identity(faces: FaceIdentity) -> torch.Tensor:
    """[1, 512]: the average of the raw embeddings, which InstantID reads from several photos of one face."""
    return faces.raw.float().mean(dim=0, keepdim=True)


@torch.no_grad()
def project_identity(adapter: Adapter, refs: References, negative: References | None = None,
                     device: torch.device | None = None, noise: float = DEFAULT_NOISE) -> ImageTokens:
    """16 identity tokens for the cond side, and for the uncond side (negative references, else `uncond_identity`).

    Several references are averaged first (merge them with Likeness Merge References for another mode or to drop
    outliers), so the tokens always describe one face, as IdentityNet was trained on."""
    det = adapter.detected
    cond_in = mean_identity(identities_for(adapter, refs, "references"))
    if negative is not None:
        uncond_in = mean_identity(identities_for(adapter, negative, "negative references"))
    else:
        uncond_in = uncond_identity(cond_in, noise)
    device = device or torch.device("cpu")
    proj = working_projection(adapter, device)
    cond = proj(cond_in[:, None].to(device)).float().cpu()
    uncond = proj(uncond_in[:, None].to(device)).float().cpu()
    return ImageTokens(adapter.name, det.context_width, cond.shape[1], cond, uncond, VARIANT)


def control_context(tokens: ImageTokens) -> tuple[torch.Tensor, torch.Tensor]:
    """What IdentityNet's cross-attention reads on the cond and uncond sides: [1, tokens, width] each."""
    cond, uncond = tokens.flat()
    return cond[None], uncond[None]


# ---------------------------------------------------------------- the keypoint image

# The IdentityNet hint, after the published method (InstantX/InstantID `draw_kps`): on a black canvas each eye and
# mouth corner is joined to the nose tip by a filled ellipse 8 px across (OpenCV's polygon of the ellipse, one point
# per degree) in that point's colour at 60 % brightness, then every keypoint gets a filled disc of radius 10 in its
# colour. Coordinates are truncated to whole pixels where OpenCV takes integers, as in the original.
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))  # RGB, in keypoint order
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))  # left eye, right eye, left and right mouth corner -> nose tip
LIMB_HALF_WIDTH = 4
LIMB_BRIGHTNESS = 0.6
POINT_RADIUS = 10
MAX_CANVAS = 16384


def _dimmed(colour: Sequence[int]) -> tuple[int, ...]:
    # The original fills a float canvas and truncates canvas * 0.6 to uint8 once; every pixel holds one colour (the
    # fill is not anti-aliased), so truncating the colour gives the same bytes.
    return tuple(int(c * LIMB_BRIGHTNESS) for c in colour)


def draw_keypoints(kps, width: int, height: int) -> np.ndarray:
    """uint8 RGB [height, width, 3]: InstantID's drawing of one face's five keypoints (pixel coordinates)."""
    import cv2

    points = np.asarray(kps)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        raise InputError(f"face keypoints should be 5 finite (x, y) points; got shape {points.shape}.")
    if not (0 < width <= MAX_CANVAS and 0 < height <= MAX_CANVAS):
        raise InputError(f"the keypoint image should be 1 to {MAX_CANVAS} pixels a side; got {width}x{height}.")
    canvas = np.zeros((int(height), int(width), 3), dtype=np.uint8)
    for tip, nose in LIMBS:
        # the detector's float32 coordinates, kept in float32 as the original computes with them
        (x0, y0), (x1, y1) = points[tip], points[nose]
        dx, dy = x0 - x1, y0 - y1
        length = np.sqrt(dx * dx + dy * dy)
        angle = math.degrees(math.atan2(dy, dx))
        centre = (int((x0 + x1) / 2), int((y0 + y1) / 2))
        outline = cv2.ellipse2Poly(centre, (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, outline, _dimmed(KEYPOINT_COLOURS[tip]))
    for (x, y), colour in zip(points, KEYPOINT_COLOURS):
        cv2.circle(canvas, (int(x), int(y)), POINT_RADIUS, colour, -1)
    return canvas


def canvas_size(photo_width: int, photo_height: int, width: int = 0, height: int = 0) -> tuple[int, int]:
    """The keypoint image's size: the photo's, or `width` x `height`; one of them 0 keeps the photo's aspect."""
    if width and height:
        return int(width), int(height)
    if width:
        return int(width), max(1, round(photo_height * width / photo_width))
    if height:
        return max(1, round(photo_width * height / photo_height)), int(height)
    return int(photo_width), int(photo_height)


def keypoint_images(keypoints: torch.Tensor, image_sizes: torch.Tensor, width: int = 0,
                    height: int = 0) -> torch.Tensor:
    """A ComfyUI IMAGE [N, H, W, 3]: the drawing of each face, its keypoints scaled from its photo to the canvas.

    The faces of one batch come from photos of one size; faces from photos of different sizes need a canvas size."""
    drawings = []
    for kps, (photo_w, photo_h) in zip(keypoints.float().numpy(), image_sizes.long().tolist()):
        w, h = canvas_size(photo_w, photo_h, width, height)
        if (w, h) != (photo_w, photo_h):
            kps = kps * np.array([w / photo_w, h / photo_h], dtype=np.float32)
        drawings.append(draw_keypoints(kps, w, h))
    if len({d.shape for d in drawings}) > 1:
        raise InputError("the faces come from photos of different sizes, so their keypoint images cannot form one "
                         "batch; set width and height.")
    return torch.from_numpy(np.stack(drawings).astype(np.float32) / 255.0)
