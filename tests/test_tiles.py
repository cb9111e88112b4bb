"""Tiled references (each tile applied to its own mask region) and the CLIP-vision enhancer."""

from __future__ import annotations

import pytest
import torch

import builders
from conftest import pack
from test_patching import make_adapter

tiles = pack("nodes.core.tiles")
tiled_node = pack("nodes.tiled")
host_encode = pack("nodes.host.encode")
sites_mod = pack("nodes.host.sites")
errors = pack("nodes.core.errors")


@pytest.mark.parametrize("h, w, resized, cut, boxes", [
    (512, 512, (512, 512), None, [(0, 0), (0, 256), (256, 0), (256, 256)]),  # square: 2 x 2
    (500, 600, (512, 512), None, [(0, 0), (0, 256), (256, 0), (256, 256)]),  # near square: cropped first
    (768, 512, (384, 256), None, [(0, 0), (128, 0)]),  # 2:3 portrait: two tiles overlapping by 128
    (300, 900, (256, 768), None, [(0, 0), (0, 256), (0, 512)]),  # 1:3 exactly three, no overlap
    (100, 650, (256, 1664), (256, 1024), [(0, 0), (0, 256), (0, 512), (0, 768)]),  # beyond 1:4: cut to four
    (400, 700, (256, 448), None, [(0, 0), (0, 192)]),  # 448 px in two tiles: overlap 64
])
def test_tile_layout(h, w, resized, cut, boxes):
    layout = tiles.tiling(h, w)
    assert layout.resized == resized and layout.cut == cut and list(layout.boxes) == boxes


def test_each_tile_has_its_own_mask_region():
    image = torch.rand(2, 90, 60, 3, generator=torch.Generator().manual_seed(0))  # 2:3
    cut, masks, layout = tiles.cut_tiles(image)
    assert len(cut) == len(masks) == 2 and all(t.shape == (2, 256, 256, 3) for t in cut)
    (h, w) = layout.size
    for (top, left), mask in zip(layout.boxes, masks):
        assert mask.shape == (1, h, w)
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[top:top + 256, left:left + 256] = True
        assert torch.all(mask[0][inside] == 1) and torch.all(mask[0][~inside] == 0)
    union = torch.stack(masks).amax(0)
    assert torch.all(union == 1), "the tiles cover the whole reference"


def test_tile_masks_keep_the_attention_mask_inside_their_region():
    image = torch.rand(1, 64, 192, 3)  # 1:3
    attn = torch.zeros(1, 64, 192)
    attn[:, :, :96] = 1  # the left half only
    _, masks, layout = tiles.cut_tiles(image, attn)
    assert [m.sum() > 0 for m in masks] == [True, True, False], "the right tile gets nothing of the left half"
    assert float(masks[0].max()) == 1 and float(masks[1][:, :, 384 + 8:].max()) == 0


def test_tiles_are_sharpened_when_asked():
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    plain, _, _ = tiles.cut_tiles(image)
    sharp, _, _ = tiles.cut_tiles(image, sharpening=0.8)
    assert (plain[0] - sharp[0]).abs().max() > 1e-3


def test_apply_tiled_installs_one_masked_prompt_per_tile(tmp_path, models_dir):
    model = builders.build_unet("sd15")
    adapter = make_adapter(tmp_path, layout="resampler", seed=4)
    clip = builders.load_tiny_clip_vision(str(models_dir / "clip_vision" / "tiny-clip-h.safetensors"))
    image = torch.rand(1, 48, 144, 3, generator=torch.Generator().manual_seed(2))  # 1:3: three tiles
    patched, tile_images, masks, layout = tiled_node.apply_tiled(model, adapter, clip, image, 0.8)
    assert tile_images.shape == (3, 256, 256, 3) and masks.shape == (3, 256, 768)
    site = sites_mod.find_sites(model)[0]
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"][site.key]
    assert len(replace.prompts) == 3
    for prompt, mask in zip(replace.prompts, masks):
        assert torch.equal(prompt.mask, mask[None])
    assert "patches_replace" not in model.model_options["transformer_options"]


# ---------------------------------------------------------------- the enhancer

def test_grid_tiles_order():
    image = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6, 1)
    grid = tiles.grid_tiles(image, 2)
    assert grid.shape == (8, 2, 3, 1)
    assert torch.equal(grid[1], image[0, :2, 3:]) and torch.equal(grid[2], image[0, 2:, :3])
    assert torch.equal(grid[7], image[1, 2:, 3:])


def merged_by_hand(hidden, n):
    """The enhancer's merge written out: class tokens averaged; patch grids stitched; each n x n block averaged."""
    count, tokens, d = hidden.shape
    g = int(round((tokens - 1) ** 0.5))
    out = []
    for b in range(count // (n * n)):
        own = hidden[b * n * n:(b + 1) * n * n]
        big = torch.zeros(n * g, n * g, d)
        for i in range(n):
            for j in range(n):
                big[i * g:(i + 1) * g, j * g:(j + 1) * g] = own[i * n + j, 1:].view(g, g, d)
        pooled = torch.zeros(g, g, d)
        for y in range(g):
            for x in range(g):
                pooled[y, x] = big[y * n:(y + 1) * n, x * n:(x + 1) * n].mean(dim=(0, 1))
        out.append(torch.cat([own[:, 0].mean(0, keepdim=True), pooled.view(g * g, d)]))
    return torch.stack(out)


@pytest.mark.parametrize("n", [2, 3])
def test_hidden_state_merge(n):
    hidden = torch.randn(2 * n * n, 1 + 16, 5, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(tiles.merge_hidden_grid(hidden, n), merged_by_hand(hidden, n))


def test_embedding_merge():
    embeds = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))  # 16 = 4 x 4
    as_hidden = torch.cat([torch.zeros(4, 1, 1), embeds[:, :, None]], dim=1)
    torch.testing.assert_close(tiles.merge_embeds_grid(embeds, 2), merged_by_hand(as_hidden, 2)[:, 1:, 0])
    odd = torch.randn(8, 12)  # not a square width: the tiles are averaged
    torch.testing.assert_close(tiles.merge_embeds_grid(odd, 2), odd.view(2, 4, 12).mean(1))


def test_enhanced_features_by_ratio():
    full, tiled = torch.ones(1, 3), torch.full((1, 3), 5.0)
    assert torch.equal(tiles.enhanced_features(full, tiled, 0.4), torch.tensor([[0.4] * 3, [5.0] * 3]))
    full2, tiled2 = torch.ones(2, 3), torch.full((2, 3), 5.0)
    torch.testing.assert_close(tiles.enhanced_features(full2, tiled2, 0.25), torch.full((2, 3), 4.0))


def test_encode_with_the_enhancer(models_dir):
    clip = builders.load_tiny_clip_vision(str(models_dir / "clip_vision" / "tiny-clip-h.safetensors"))
    images = torch.rand(2, 56, 56, 3, generator=torch.Generator().manual_seed(3))
    plain = host_encode.encode_references(clip, images)
    kept = host_encode.encode_references(clip, images, enhance_tiles=2, enhance_ratio=1.0)
    torch.testing.assert_close(kept.image.penultimate, plain.image.penultimate)
    only_tiles = host_encode.encode_references(clip, images, enhance_tiles=2, enhance_ratio=0.0)
    by_hand = host_encode.encode_references(clip, tiles.grid_tiles(images, 2))
    torch.testing.assert_close(only_tiles.image.penultimate, tiles.merge_hidden_grid(by_hand.image.penultimate, 2))
    one = host_encode.encode_references(clip, images[:1], enhance_tiles=3, enhance_ratio=0.5)
    assert one.count == 2, "one image gives the whole image and its tiles as two references"
    torch.testing.assert_close(one.image.penultimate[0], plain.image.penultimate[0] * 0.5)
