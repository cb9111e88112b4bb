"""Reference-image preparation on ComfyUI IMAGE tensors ([B, H, W, C], float RGB in 0-1): square crops at a chosen
position, resizing with a chosen filter, contrast-adaptive sharpening, and noise images for negatives.

The options and their meanings are those of the leading ComfyUI IP-Adapter pack's "Prep Image For ClipVision" and
"IPAdapter Noise" nodes, so its workflows convert one to one; the code is written from the published methods.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

CROP_POSITIONS = ("center", "top", "bottom", "left", "right")
INTERPOLATIONS = ("LANCZOS", "BICUBIC", "HAMMING", "BILINEAR", "BOX", "NEAREST")  # PIL's filters, by their names
NOISE_TYPES = ("fade", "dissolve", "gaussian", "shuffle")


def check_images(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """A non-empty IMAGE batch as float RGB (gray expanded, alpha dropped)."""
    if image.ndim != 4 or image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise InputError(f"{what} should be a non-empty IMAGE batch [batch, height, width, channels]; got shape "
                         f"{tuple(image.shape)}.")
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    return image[..., :3].float()


def crop_square(image: torch.Tensor, position: str) -> torch.Tensor:
    """The largest square of each image, taken at `position` (the centre of the other axis stays centred)."""
    if position not in CROP_POSITIONS:
        raise InputError(f"crop position `{position}` is not one of: {', '.join(CROP_POSITIONS)}.")
    h, w = image.shape[1:3]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    if position == "top":
        top = 0
    elif position == "bottom":
        top = h - side
    elif position == "left":
        left = 0
    elif position == "right":
        left = w - side
    return image[:, top:top + side, left:left + side]


def pad_square(image: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Each image centred on a square canvas of `colour` ([3])."""
    b, h, w, c = image.shape
    side = max(h, w)
    canvas = colour.to(image).view(1, 1, 1, c).expand(b, side, side, c).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, top:top + h, left:left + w] = image
    return canvas


def resize(image: torch.Tensor, size: int | tuple[int, int], interpolation: str) -> torch.Tensor:
    """Resize to `size` (square side, or (height, width)) with one of PIL's filters, on 8-bit images as PIL does."""
    from PIL import Image

    if interpolation not in INTERPOLATIONS:
        raise InputError(f"interpolation `{interpolation}` is not one of: {', '.join(INTERPOLATIONS)}.")
    height, width = (size, size) if isinstance(size, int) else size
    resample = getattr(Image.Resampling, interpolation)
    out = []
    for picture in image.clamp(0, 1):
        pixels = torch.round(picture * 255).to(torch.uint8).cpu().numpy()
        resized = Image.fromarray(pixels).resize((width, height), resample=resample)
        out.append(torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0))
    return torch.stack(out).to(image.device)


def contrast_adaptive_sharpen(image: torch.Tensor, amount: float) -> torch.Tensor:
    """AMD FidelityFX CAS (contrast-adaptive sharpening), per channel, `amount` 0-1.

    Around each pixel e with cross neighbours b, d, f, h and diagonal ones a, c, g, i:
        mn = min(b, d, e, f, h) + min(a, c, g, i)      mx = max(b, d, e, f, h) + max(a, c, g, i)
        amp = sqrt(min(mn, 2 - mx) / mx)               wgt = -amp · (1/8 + amount · (1/5 − 1/8))
        out = (wgt * (b + d + f + h) + e) / (1 + 4 * wgt)
    Pixels flatter than their surroundings get more sharpening, edges less, so it does not ring. Outside the
    image counts as black, which leaves the one-pixel border as it is (as in the other pack)."""
    if amount <= 0:
        return image
    x = F.pad(image.movedim(-1, 1), (1, 1, 1, 1))
    taps = {name: x[..., 1 + dy:x.shape[-2] - 1 + dy, 1 + dx:x.shape[-1] - 1 + dx]
            for name, (dy, dx) in {"a": (-1, -1), "b": (-1, 0), "c": (-1, 1), "d": (0, -1), "e": (0, 0),
                                   "f": (0, 1), "g": (1, -1), "h": (1, 0), "i": (1, 1)}.items()}
    cross = torch.stack([taps[k] for k in "bdefh"])
    diagonal = torch.stack([taps[k] for k in "acgi"])
    mn = cross.amin(0) + diagonal.amin(0)
    mx = cross.amax(0) + diagonal.amax(0)
    amp = torch.sqrt(torch.nan_to_num(torch.minimum(mn, 2 - mx) / mx).clamp_min(0))
    # lerp(1/8, 1/5, amount) written as a single division: 1/8 + amount (1/5 - 1/8) = (5 + 3 amount) / 40
    wgt = -amp * (5 + 3 * amount) / 40
    out = ((taps["b"] + taps["d"] + taps["f"] + taps["h"]) * wgt + taps["e"]) / (1 + 4 * wgt)
    return torch.nan_to_num(out).clamp(0, 1).movedim(1, -1)


def prepare_for_encoder(image: torch.Tensor, crop: str = "center", size: int = 224, interpolation: str = "LANCZOS",
                        sharpening: float = 0.0) -> torch.Tensor:
    """Square crop at `crop` (or `pad`: black bars), resize to `size` with `interpolation`, then CAS."""
    image = check_images(image)
    if crop == "pad":
        image = pad_square(image, torch.zeros(3))
    else:
        image = crop_square(image, crop)
    return contrast_adaptive_sharpen(resize(image, size, interpolation), sharpening)


# ---------------------------------------------------------------- noise images (negatives)

def gaussian_blur(image: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur of [B, H, W, C] with an odd kernel size; sigma = 0.3 ((k - 1) / 2 - 1) + 0.8 (the usual
    rule for a kernel size without a sigma); the edges are reflected."""
    if kernel <= 1:
        return image
    kernel += 1 - kernel % 2
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    half = kernel // 2
    taps = torch.exp(-0.5 * (torch.arange(-half, half + 1, dtype=torch.float32) / sigma) ** 2)
    taps = (taps / taps.sum()).to(image)
    x = image.movedim(-1, 1)
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > half else "replicate"
    x = F.conv2d(F.pad(x, (half, half, 0, 0), mode=mode), taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.conv2d(F.pad(x, (0, 0, half, half), mode=mode), taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return x.movedim(1, -1)


def elastic_warp(image: torch.Tensor, alpha: float, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Elastic deformation (Simard et al. 2003): a random displacement field, smoothed with a Gaussian of `sigma`
    pixels and scaled to `alpha` pixels, moves every pixel; sigma 0 scatters the pixels."""
    b, h, w, _ = image.shape
    field = torch.rand(b, h, w, 2, generator=generator) * 2 - 1
    if sigma > 0:
        field = gaussian_blur(field, int(8 * sigma + 1))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], dim=-1)[None] + field * alpha * torch.tensor([2 / max(w, 1), 2 / max(h, 1)])
    out = F.grid_sample(image.movedim(-1, 1), grid.to(image), mode="bilinear", padding_mode="reflection",
                        align_corners=True)
    return out.movedim(1, -1)


def noise_seed(image: torch.Tensor) -> int:
    """The same image always gives the same noise: the seed comes from the image's pixel sum."""
    return int(float(image.double().sum())) % 1000000007


def noise_image(kind: str, strength: float, blur: int, image: torch.Tensor | None = None,
                size: int = 224) -> torch.Tensor:
    """A noisy version of `image` (or of a black square) to use as a negative reference.

    fade      image · (1 − s) + U · s                 (U uniform noise in 0-1)
    dissolve  each value replaced by U with probability s
    gaussian  image + s · N                          (N standard normal noise)
    shuffle   the image elastically scattered (alpha 75 px, sigma (1 − s) · 3.5 px) and flipped both ways, then
              x · (1 − n) + n with n = 0.75 · s · N
    The result is clipped to 0-1 and then blurred with a `blur`-pixel Gaussian (0: none)."""
    if kind not in NOISE_TYPES:
        raise InputError(f"noise type `{kind}` is not one of: {', '.join(NOISE_TYPES)}.")
    if image is None:
        base = torch.zeros(1, size, size, 3)
    else:
        base = resize(crop_square(check_images(image, "image_optional"), "center"), size, "BICUBIC")
    generator = torch.Generator().manual_seed(noise_seed(base))
    base = base.float().cpu()
    if kind == "fade":
        out = base * (1 - strength) + torch.rand(base.shape, generator=generator) * strength
    elif kind == "dissolve":
        keep = (torch.rand(base.shape, generator=generator) >= strength).float()
        out = base * keep + torch.rand(base.shape, generator=generator) * (1 - keep)
    elif kind == "gaussian":
        out = base + torch.randn(base.shape, generator=generator) * strength
    else:
        warped = elastic_warp(base, 75.0, (1 - strength) * 3.5, generator).flip(1).flip(2)
        n = torch.randn(base.shape, generator=generator) * (strength * 0.75)
        out = warped * (1 - n) + n
    out = out.clamp(0, 1)
    return gaussian_blur(out, blur) if blur > 0 else out

