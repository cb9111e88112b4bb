"""PuLID's face image for EVA-CLIP: the face aligned to the FFHQ 512 px template, parsed, background and hair painted
white and the rest turned grey (ToTheBeginning/PuLID, pipeline*.py `get_id_embedding`).

* Alignment: the five keypoints (eyes, nose tip, mouth corners) mapped onto facexlib's FFHQ template by OpenCV's
  partial affine fit (LMEDS) and warped with a grey border, as facexlib's `FaceRestoreHelper.align_warp_face` does.
  The keypoints are those of the face the face model chose, so the EVA features and the identity embedding describe
  the same face (PuLID's reference runs a second detector, RetinaFace, and takes the face nearest the centre).
* Parsing: facexlib's BiSeNet (19 CelebAMask-HQ classes) on the ImageNet-normalised crop; the classes PuLID treats
  as background (background, neck, clothes, ears, earring, necklace, hat; hair is not in the list, so it stays)
  become white, the rest the ITU-R 601 grey of the crop.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from .errors import InputError, LikenessError

FFHQ_SIZE = 512
FFHQ_TEMPLATE = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                          [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
BORDER_BGR = (135, 133, 132)  # facexlib's grey outside the photo
BACKGROUND_CLASSES = (0, 16, 18, 7, 8, 9, 14, 15)  # background, clothes, hat, ears, earring, neck, necklace
PARSING_MEAN = (0.485, 0.456, 0.406)
PARSING_STD = (0.229, 0.224, 0.225)
PARSING_CLASSES = 19


def align_ffhq(bgr: np.ndarray, kps: np.ndarray, size: int = FFHQ_SIZE) -> np.ndarray:
    """The `size` px FFHQ-aligned crop of the face with keypoints `kps` [5, 2] (same channel order as `bgr`)."""
    import cv2

    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (5, 2):
        raise InputError(f"face keypoints should be 5 (x, y) points; got shape {kps.shape}.")
    matrix = cv2.estimateAffinePartial2D(kps, FFHQ_TEMPLATE * (size / FFHQ_SIZE), method=cv2.LMEDS)[0]
    if matrix is None or not np.all(np.isfinite(matrix)):
        raise InputError("the face keypoints are degenerate (all in one place or on a line); cannot align the face.")
    return cv2.warpAffine(bgr, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=BORDER_BGR)


def build_parser(state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    """facexlib's BiSeNet, loaded strictly from a `parsing_bisenet.pth` state dict."""
    try:
        from facexlib.parsing.bisenet import BiSeNet
    except ImportError as e:
        raise LikenessError(
            f"PuLID's face parsing needs the facexlib package, which could not be imported ({e}). Install the pack's "
            "requirements (requirements.txt) with the Python that runs ComfyUI.") from None
    model = BiSeNet(num_class=PARSING_CLASSES)
    model.load_state_dict(dict(state), strict=True)
    return model.float().eval().requires_grad_(False)


def to_gray(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> the luma of each pixel in all three channels."""
    y = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
    return y.repeat(1, 3, 1, 1)


@torch.no_grad()
def face_only(parser: torch.nn.Module, rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in 0-1 (aligned faces) -> the same in grey, with what PuLID counts as background white."""
    param = next(parser.parameters())
    x = rgb.to(device=param.device, dtype=param.dtype)
    mean = torch.tensor(PARSING_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PARSING_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    labels = parser((x - mean) / std)[0].argmax(dim=1, keepdim=True)
    background = torch.zeros_like(labels, dtype=torch.bool)
    for c in BACKGROUND_CLASSES:
        background |= labels == c
    return torch.where(background, torch.ones_like(x), to_gray(x))
