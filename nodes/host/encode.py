"""Encoding reference images with a ComfyUI CLIP vision model into References."""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

import comfy.model_management
import comfy.utils

from ..core.errors import InputError
from ..core.checkpoint import all_finite
from ..core.images import crop_square, pad_square
from ..core.references import EncoderInfo, References, check_reference_count
from ..core.tiles import enhanced_features, grid_tiles, merge_embeds_grid, merge_hidden_grid

CROP_MODES = ("center", "pad", "squash", "top", "bottom", "left", "right")
SQUARE_CROPS = ("top", "bottom", "left", "right")  # cut here; `center` is left to the encoder's own crop


def _encoder_mean(clip_vision, device, dtype) -> torch.Tensor:
    mean = getattr(clip_vision, "image_mean", [0.48145466, 0.4578275, 0.40821073])
    return torch.tensor(mean, device=device, dtype=dtype)


def prepare_images(image: torch.Tensor, crop: str, sharpen: float, mask: torch.Tensor | None,
                   mean: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] -> RGB [B,H',W',3]: masked-out areas and padding take the encoder's mean colour, so they
    normalise to zero (no signal) rather than to black."""
    if image.ndim != 4 or image.shape[0] == 0:
        raise InputError(f"image should be a non-empty IMAGE batch [batch, height, width, channels]; "
                         f"got shape {tuple(image.shape)}.")
    check_reference_count(image.shape[0], "the image batch")
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    image = image[..., :3].float()
    if sharpen > 0:
        image = sharpen_images(image, sharpen)
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[None]
        m = F.interpolate(mask[:, None].float(), size=image.shape[1:3], mode="bilinear", align_corners=False)
        m = m.movedim(1, -1).to(image.device)
        rows = torch.arange(image.shape[0]).clamp(max=m.shape[0] - 1)
        m = m[rows]
        image = image * m + mean.view(1, 1, 1, 3) * (1 - m)
    if crop == "pad":
        image = pad_square(image, mean)
    elif crop in SQUARE_CROPS:
        image = crop_square(image, crop)
    elif crop not in CROP_MODES:
        raise InputError(f"crop `{crop}` is not one of: {', '.join(CROP_MODES)}.")
    return image


def sharpen_images(image: torch.Tensor, amount: float) -> torch.Tensor:
    """Unsharp mask: add `amount` x the difference to a 3x3 box blur (CLIP sees 224 px, so detail helps)."""
    x = image.movedim(-1, 1)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (x + amount * (x - blurred)).clamp(0, 1).movedim(1, -1)


@torch.no_grad()  # ComfyUI runs nodes under inference mode; direct callers must not build autograd graphs either
def encode_references(clip_vision, image: torch.Tensor, crop: str = "center", sharpen: float = 0.0,
                      mask: torch.Tensor | None = None, batch_size: int = 0, source: str = "",
                      enhance_tiles: int = 1, enhance_ratio: float = 1.0) -> References:
    """Encode each prepared image; with `enhance_tiles` n > 1 also each image's n x n tiles, merged spatially and
    combined with the whole image by `enhance_ratio` (core.tiles.enhanced_features)."""
    image = prepare_images(image, crop, sharpen, mask, _encoder_mean(clip_vision, image.device, torch.float32))
    n = image.shape[0]
    tiles = grid_tiles(image, enhance_tiles) if enhance_tiles > 1 else None
    bar = comfy.utils.ProgressBar(n + (0 if tiles is None else tiles.shape[0]))
    embeds_t, hidden_t = _encode(clip_vision, image, crop, batch_size, bar)
    if tiles is not None:
        tile_embeds, tile_hidden = _encode(clip_vision, tiles, crop, batch_size, bar)
        embeds_t = enhanced_features(embeds_t, merge_embeds_grid(tile_embeds, enhance_tiles), enhance_ratio)
        hidden_t = enhanced_features(hidden_t, merge_hidden_grid(tile_hidden, enhance_tiles), enhance_ratio)
    if not (all_finite(embeds_t) and all_finite(hidden_t)):
        raise InputError(f"the image encoder{f' `{source}`' if source else ''} gave NaN or infinite features for "
                         "these images: its file is damaged, or the images hold NaN values. Load the encoder file "
                         "again (download it again if this persists) and check the nodes that make the images.")
    encoder = EncoderInfo.from_widths(hidden_t.shape[-1], embeds_t.shape[-1], source)
    return References.from_images(encoder, embeds_t, hidden_t, empty_image_features(clip_vision), source)


def _encode(clip_vision, image: torch.Tensor, crop: str, batch_size: int, bar) -> tuple[torch.Tensor, torch.Tensor]:
    n = image.shape[0]
    step = n if batch_size <= 0 else batch_size
    embeds, hidden = [], []
    for start in range(0, n, step):
        # Cancel from the queue is honoured between batches: each image is encoded exactly once.
        comfy.model_management.throw_exception_if_processing_interrupted()
        out = clip_vision.encode_image(image[start:start + step], crop=(crop == "center"))
        embeds.append(out["image_embeds"].float().cpu())
        hidden.append(out["penultimate_hidden_states"].float().cpu())
        bar.update(min(step, n - start))
    return torch.cat(embeds), torch.cat(hidden)


_empty_features: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@torch.no_grad()
def empty_image_features(clip_vision) -> torch.Tensor:
    """Penultimate features of an all-zero normalised image: the reference uncond for hidden-state adapters.
    Computed once per encoder, not once per encode."""
    cached = _empty_features.get(clip_vision)
    if cached is None:
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        size = getattr(clip_vision, "image_size", 224)
        pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
        cached = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[1].float().cpu()
        _empty_features[clip_vision] = cached
    return cached
