"""Reference-image preparation: crop positions, resize filters, CAS sharpening, noise negatives, and their nodes."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import pack, run_prompt

images = pack("nodes.core.images")
errors = pack("nodes.core.errors")
host_encode = pack("nodes.host.encode")


def ramp_image(h, w, b=1):
    ys = torch.linspace(0, 1, h)[:, None].expand(h, w)
    xs = torch.linspace(0, 1, w)[None, :].expand(h, w)
    return torch.stack([ys, xs, (ys + xs) / 2], dim=-1)[None].repeat(b, 1, 1, 1)


@pytest.mark.parametrize("position, rows, cols", [("center", (20, 50), (0, 30)), ("top", (0, 30), (0, 30)),
                                                  ("bottom", (40, 70), (0, 30))])
def test_crop_positions_on_a_tall_image(position, rows, cols):
    image = ramp_image(70, 30)
    out = images.crop_square(image, position)
    assert torch.equal(out, image[:, rows[0]:rows[1], cols[0]:cols[1]])


@pytest.mark.parametrize("position, cols", [("left", (0, 20)), ("right", (40, 60)), ("center", (20, 40)),
                                            ("top", (20, 40))])
def test_crop_positions_on_a_wide_image(position, cols):
    image = ramp_image(20, 60)
    assert torch.equal(images.crop_square(image, position), image[:, :, cols[0]:cols[1]])


def test_encode_crops_at_the_chosen_edge():
    image = ramp_image(70, 30)
    mean = torch.tensor([0.5, 0.5, 0.5])
    out = host_encode.prepare_images(image, "bottom", 0.0, None, mean)
    assert torch.equal(out, image[:, 40:70])
    assert "top" in host_encode.CROP_MODES and "squash" in host_encode.CROP_MODES


def cas_by_the_formula(image, amount):
    """AMD FidelityFX CAS pixel by pixel, written from the published algorithm (black outside the image)."""
    b, h, w, c = image.shape
    out = torch.empty_like(image)
    p = torch.nn.functional.pad(image.permute(0, 3, 1, 2), (1, 1, 1, 1)).permute(0, 2, 3, 1)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                for ch in range(c):
                    at = lambda dy, dx: float(p[n, y + 1 + dy, x + 1 + dx, ch])  # noqa: E731
                    cross = [at(-1, 0), at(0, -1), at(0, 0), at(0, 1), at(1, 0)]
                    diag = [at(-1, -1), at(-1, 1), at(1, -1), at(1, 1)]
                    mn, mx = min(cross) + min(diag), max(cross) + max(diag)
                    amp = 0.0 if mx == 0 else math.sqrt(max(min(mn, 2 - mx) / mx, 0.0))
                    wgt = -amp * (1 / 8 + amount * (1 / 5 - 1 / 8))
                    v = ((cross[0] + cross[1] + cross[3] + cross[4]) * wgt + cross[2]) / (1 + 4 * wgt)
                    out[n, y, x, ch] = min(max(v, 0.0), 1.0)
    return out


@pytest.mark.parametrize("amount", [0.3, 1.0])
def test_cas_follows_its_formula(amount):
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 7, 9, 3, generator=gen) * 0.6 + 0.2
    got = images.contrast_adaptive_sharpen(image, amount)
    torch.testing.assert_close(got, cas_by_the_formula(image, amount), atol=1e-5, rtol=1e-5)
    assert torch.equal(images.contrast_adaptive_sharpen(image, 0.0), image)
    inner = (slice(None), slice(1, -1), slice(1, -1))
    assert (got[inner] - image[inner]).abs().max() > 1e-3, "sharpening changed nothing"


def test_cas_keeps_flat_images_flat():
    flat = torch.full((1, 8, 8, 3), 0.4)
    torch.testing.assert_close(images.contrast_adaptive_sharpen(flat, 1.0)[:, 1:-1, 1:-1], flat[:, 1:-1, 1:-1])


@pytest.mark.parametrize("interpolation", images.INTERPOLATIONS)
def test_prepare_for_encoder_size_and_filter(interpolation):
    image = ramp_image(90, 40, b=2)
    out = images.prepare_for_encoder(image, "top", 32, interpolation, 0.0)
    assert out.shape == (2, 32, 32, 3) and out.min() >= 0 and out.max() <= 1
    # the top square of a vertical ramp holds only its upper part
    assert float(out[0, -1, :, 0].mean()) < 0.5
    padded = images.prepare_for_encoder(image, "pad", 32, interpolation, 0.0)
    assert float(padded[0, 16, 0].max()) == 0.0, "pad adds black bars at the sides"


def test_filters_differ_where_they_should():
    image = ramp_image(40, 40)
    image[:, ::2] = 1 - image[:, ::2]  # stripes: filters disagree on them
    nearest = images.resize(image, 17, "NEAREST")
    lanczos = images.resize(image, 17, "LANCZOS")
    assert (nearest - lanczos).abs().max() > 0.05


@pytest.mark.parametrize("kind", images.NOISE_TYPES)
def test_noise_types(kind):
    source = ramp_image(30, 50)
    out = images.noise_image(kind, 0.5, 0, source, size=24)
    assert out.shape == (1, 24, 24, 3) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, images.noise_image(kind, 0.5, 0, source, size=24)), "the same image gives the same noise"
    base = images.resize(images.crop_square(source, "center"), 24, "BICUBIC")
    if kind != "shuffle":
        assert torch.allclose(images.noise_image(kind, 0.0, 0, source, size=24), base, atol=1e-6)
    assert (out - base).abs().mean() > 0.02


def test_noise_formulas_without_an_image():
    fade = images.noise_image("fade", 1.0, 0, None, size=64)
    assert abs(float(fade.mean()) - 0.5) < 0.05, "fade at full strength is uniform noise"
    dissolve = images.noise_image("dissolve", 0.25, 0, None, size=64)
    assert abs(float((dissolve > 0).float().mean()) - 0.25) < 0.03, "a quarter of the values replaced"
    gauss = images.noise_image("gaussian", 0.2, 0, None, size=64)
    assert abs(float((gauss > 0).float().mean()) - 0.5) < 0.05  # black plus N(0, 0.2), clipped at 0
    blurred = images.noise_image("fade", 1.0, 5, None, size=64)
    assert blurred.std() < fade.std() * 0.6


def test_gaussian_blur_keeps_a_constant_and_smooths_an_impulse():
    flat = torch.full((1, 9, 9, 3), 0.3)
    torch.testing.assert_close(images.gaussian_blur(flat, 5), flat)
    impulse = torch.zeros(1, 9, 9, 1)
    impulse[0, 4, 4] = 1
    out = images.gaussian_blur(impulse, 5)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5) and float(out[0, 4, 4]) < 0.5


def test_bad_options_say_what_is_allowed():
    with pytest.raises(errors.InputError, match="not one of: center, top"):
        images.crop_square(ramp_image(4, 4), "middle")
    with pytest.raises(errors.InputError, match="LANCZOS"):
        images.resize(ramp_image(4, 4), 2, "CUBIC")
    with pytest.raises(errors.InputError, match="non-empty IMAGE"):
        images.prepare_for_encoder(torch.zeros(0, 4, 4, 3))


def test_the_nodes_run_in_a_graph(tmp_path):
    import folder_paths
    from PIL import Image

    Image.fromarray((ramp_image(48, 32)[0].numpy() * 255).astype("uint8")).save(
        tmp_path / "likeness_prep_test.png")
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "likeness_prep_test.png"}},
            "2": {"class_type": "LikenessPrepImage", "inputs": {"image": ["1", 0], "interpolation": "BICUBIC",
                                                               "crop_position": "bottom", "sharpening": 0.3}},
            "3": {"class_type": "LikenessNoiseImage", "inputs": {"type": "shuffle", "strength": 0.6, "blur": 3,
                                                                "image_optional": ["2", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
            "5": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        }
        result = run_prompt(prompt)
        assert result.success, result.error or result.execution_error()
    finally:
        folder_paths.set_input_directory(previous)
