"""Tiles: a non-square reference cut into square tiles, each with the attention-mask region it stands for; and the
CLIP-vision enhancer, which encodes an n x n grid of an image and merges the tiles' features back spatially.

Both follow the leading ComfyUI IP-Adapter pack's "IPAdapter Tiled" and "ClipVision Enhancer" so its workflows
convert with the same meaning; the code is written from their described behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError
from .images import check_images, contrast_adaptive_sharpen, resize

TILE = 256  # tile side in pixels (the encoder resizes it to its own input size)
MAX_TILES_ALONG = 4  # along the long side; a longer reference is cut to 1:4 around its centre
MAX_ENHANCE_TILES = 16


@dataclass(frozen=True)
class Tiling:
    """Where the tiles of a reference sit, in the resized reference's pixels."""

    resized: tuple[int, int]  # (height, width) the reference is resized to, after an optional centre crop
    square_crop: bool  # near-square references are centre-cropped to a square first
    cut: tuple[int, int] | None  # (height, width) of the centre crop that keeps at most 4 tiles along, or None
    boxes: tuple[tuple[int, int], ...]  # (top, left) of each TILE x TILE tile, row by row

    @property
    def size(self) -> tuple[int, int]:
        return self.cut or self.resized


def tiling(height: int, width: int) -> Tiling:
    """The tile layout for a `height` x `width` reference.

    * 0.75 < h/w < 1.33: centre-cropped to a square and resized to 2 x 2 tiles (512 x 512).
    * otherwise the short side is resized to 256 and the long side in proportion; beyond 1:4 the middle 256 x 1024
      is kept.
    Tiles are spread evenly: n = ceil(side / 256) tiles along a side, overlapping by (n * 256 - side) / (n - 1)."""
    ratio = height / width
    if 0.75 < ratio < 1.33:
        resized, square = (2 * TILE, 2 * TILE), True
    elif height < width:
        resized, square = (TILE, int(TILE * width / height)), False
    else:
        resized, square = (int(TILE * height / width), TILE), False
    cut = None
    if ratio > MAX_TILES_ALONG or ratio < 1 / MAX_TILES_ALONG:
        cut = (TILE, TILE * MAX_TILES_ALONG) if height < width else (TILE * MAX_TILES_ALONG, TILE)
    h, w = cut or resized

    def starts(side: int) -> list[int]:
        n = math.ceil(side / TILE)
        overlap = max(0.0, (n * TILE - side) / (n - 1 if n > 1 else 1))
        return [int(i * (TILE - overlap)) for i in range(n)]

    boxes = tuple((top, left) for top in starts(h) for left in starts(w))
    return Tiling(resized, square, cut, boxes)


def _centre_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[..., H, W] cut to its middle h x w."""
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


def cut_tiles(image: torch.Tensor, mask: torch.Tensor | None = None,
              sharpening: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor], Tiling]:
    """IMAGE [B, H, W, C] (and an optional MASK) -> one [B, 256, 256, 3] image per tile and one [M, h, w] mask per
    tile: zero everywhere but on that tile's footprint, where it keeps `mask` (1 without one). The masks are in the
    resized reference's pixels, so the reference and the generated picture should share an aspect ratio."""
    image = check_images(image)
    b, oh, ow, _ = image.shape
    if mask is None:
        mask = torch.ones(1, oh, ow)
    elif mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or 0 in mask.shape:
        raise InputError(f"attn_mask should be a MASK [batch, height, width]; got shape {tuple(mask.shape)}.")
    layout = tiling(oh, ow)
    mask = F.interpolate(mask[:, None].float(), size=(oh, ow), mode="bilinear", align_corners=False)[:, 0]
    if layout.square_crop:
        side = min(oh, ow)
        image = _centre_crop(image.movedim(-1, 1), side, side).movedim(1, -1)
        mask = _centre_crop(mask, side, side)
    image = resize(image, layout.resized, "LANCZOS")
    mask = F.interpolate(mask[:, None], size=layout.resized, mode="bilinear", align_corners=False)[:, 0]
    if layout.cut is not None:
        image = _centre_crop(image.movedim(-1, 1), *layout.cut).movedim(1, -1)
        mask = _centre_crop(mask, *layout.cut)
    image = contrast_adaptive_sharpen(image, sharpening)
    tiles, masks = [], []
    for top, left in layout.boxes:
        tiles.append(image[:, top:top + TILE, left:left + TILE])
        region = torch.zeros_like(mask)
        region[:, top:top + TILE, left:left + TILE] = mask[:, top:top + TILE, left:left + TILE]
        masks.append(region.clamp(0, 1))
    return tiles, masks, layout


# ---------------------------------------------------------------- the CLIP-vision enhancer

def grid_tiles(image: torch.Tensor, n: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * n * n, H // n, W // n, C]: each image's n x n grid, row by row, images in order."""
    b, h, w, c = image.shape
    th, tw = h // n, w // n
    if th == 0 or tw == 0:
        raise InputError(f"enhance_tiles {n} is more than the image's {w}x{h} pixels can be split into.")
    x = image[:, :th * n, :tw * n].reshape(b, n, th, n, tw, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * n * n, th, tw, c)


def merge_hidden_grid(hidden: torch.Tensor, n: int) -> torch.Tensor:
    """Hidden states of each image's n x n tiles [B * n², 1 + g², D] -> [B, 1 + g², D]: the class tokens averaged,
    the g x g patch tokens of the tiles laid out as one (n g) x (n g) grid and average-pooled back to g x g."""
    count, tokens, d = hidden.shape
    g = math.isqrt(tokens - 1)
    if g * g != tokens - 1:
        raise InputError(f"the encoder's {tokens} hidden states are not a class token plus a square grid of patches.")
    x = hidden.view(count // (n * n), n, n, 1 + g * g, d)
    cls = x[..., 0, :].mean(dim=(1, 2))
    patches = x[..., 1:, :].reshape(-1, n, n, g, g, d).permute(0, 5, 1, 3, 2, 4).reshape(-1, d, n * g, n * g)
    pooled = F.adaptive_avg_pool2d(patches, (g, g)).flatten(2).transpose(1, 2)
    return torch.cat([cls[:, None], pooled], dim=1)


def merge_embeds_grid(embeds: torch.Tensor, n: int) -> torch.Tensor:
    """Pooled image embeddings of each image's n x n tiles [B * n², E] -> [B, E]. As in the other pack, an embedding
    whose width is a square (ViT-H: 1024 = 32²) is laid out as a 32 x 32 map, the tiles' maps are stitched and
    pooled back; other widths (ViT-bigG 1280, ViT-L 768), where that pack fails, are averaged over the tiles."""
    count, e = embeds.shape
    side = math.isqrt(e)
    if side * side != e:
        return embeds.view(count // (n * n), n * n, e).mean(dim=1)
    x = embeds.view(-1, n, n, side, side).permute(0, 1, 3, 2, 4).reshape(-1, 1, n * side, n * side)
    return F.adaptive_avg_pool2d(x, (side, side)).flatten(1)


def enhanced_features(full: torch.Tensor, tiled: torch.Tensor, ratio: float) -> torch.Tensor:
    """The whole image's features and the merged tiles' features of B images -> the references.

    One image: two references, the whole image's features times `ratio` and the tiles' (a merge mode can average
    them later). Several images: one reference each, `ratio · whole + (1 − ratio) · tiles`."""
    if full.shape[0] > 1:
        return full * ratio + tiled * (1 - ratio)
    return torch.cat([full * ratio, tiled])
