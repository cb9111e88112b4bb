"""Each edit-model target's sizing rule equals its reference pipeline, for a grid of sizes and counts.

diffusers' own pipelines are the oracle where diffusers has the model: FluxKontextPipeline, Flux2Pipeline and
QwenImageEditPlusPipeline are built with a tiny transformer and no VAE or text encoder, called with a photo of
each size, and stopped at the point where they resize it; the size they resize to is compared. For OmniGen2 and
HiDream-O1, which have no pip package, the oracle is written here from the published code (PIL resizes, so the
size is the size of a real resized image). ComfyUI's own FluxKontextImageScale is compared too.
"""

from __future__ import annotations

import itertools
import math

import PIL.Image
import pytest
import torch

from conftest import pack

targets = pack("nodes.core.edit_targets")

SIZES = [(w, h) for w, h in itertools.product((97, 333, 640, 1000, 1024, 1503, 2048, 3000, 4032), repeat=2)]
SIZES += [(1920, 1080), (1080, 1920), (4000, 3000), (3024, 4032), (512, 2048), (2048, 500), (700, 701)]


class _Stop(Exception):
    """Raised from inside a pipeline once it has chosen a size."""


@pytest.fixture(scope="module")
def diffusers_pipes():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
    flux = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                            attention_head_dim=8, num_attention_heads=1, joint_attention_dim=8,
                                            pooled_projection_dim=8, axes_dims_rope=[2, 2, 4])
    flux2 = diffusers.Flux2Transformer2DModel(in_channels=8, num_layers=1, num_single_layers=1, attention_head_dim=8,
                                              num_attention_heads=1, joint_attention_dim=8, axes_dims_rope=(2, 2, 2, 2))
    return dict(
        kontext=diffusers.FluxKontextPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                                              text_encoder_2=None, tokenizer_2=None, transformer=flux),
        flux2=diffusers.Flux2Pipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                                      transformer=flux2),
        qwen=diffusers.QwenImageEditPlusPipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None,
                                                 processor=None, transformer=None),
    )


def _photo(width, height):
    return PIL.Image.new("RGB", (width, height))


def diffusers_kontext(pipe, width, height):
    seen = []

    def resize(image, height, width, *args, **kwargs):
        seen.append((width, height))
        raise _Stop

    pipe.image_processor.resize = resize
    with pytest.raises(_Stop):
        pipe(image=_photo(width, height), prompt_embeds=torch.zeros(1, 4, 8), pooled_prompt_embeds=torch.zeros(1, 8))
    return seen[0]


def diffusers_flux2(pipe, sizes):
    seen = []

    def preprocess(image, height=None, width=None, **kwargs):
        seen.append((width, height))
        if len(seen) == len(sizes):
            raise _Stop
        return torch.zeros(1, 3, height, width)

    pipe.image_processor.preprocess = preprocess
    with pytest.raises(_Stop):
        pipe(image=[_photo(*s) for s in sizes], prompt_embeds=torch.zeros(1, 4, 8))
    return seen


def diffusers_qwen(pipe, sizes):
    vl, vae = [], []

    def resize(image, height, width, *args, **kwargs):
        vl.append((width, height))
        return image

    def preprocess(image, height=None, width=None, **kwargs):
        vae.append((width, height))
        if len(vae) == len(sizes):
            raise _Stop
        return torch.zeros(1, 3, 2, 2)

    pipe.image_processor.resize, pipe.image_processor.preprocess = resize, preprocess
    with pytest.raises(_Stop):
        pipe(image=[_photo(*s) for s in sizes], prompt_embeds=torch.zeros(1, 4, 8), prompt_embeds_mask=torch.ones(1, 4))
    return vl, vae


def test_kontext_sizes_equal_diffusers_pipeline(diffusers_pipes):
    for w, h in SIZES:
        assert targets.kontext_size(w, h) == diffusers_kontext(diffusers_pipes["kontext"], w, h), (w, h)


def test_flux2_sizes_equal_diffusers_pipeline_for_any_count(diffusers_pipes):
    for group in (SIZES[i:i + k] for k in (1, 2, 4, 10) for i in range(0, len(SIZES) - k, 17)):
        group = [s for s in group if max(s) / min(s) <= 8]  # the pipeline refuses more elongated photos
        if not group:
            continue
        assert [targets.flux2_size(w, h) for w, h in group] == diffusers_flux2(diffusers_pipes["flux2"], group), group


def test_qwen_plus_sizes_equal_diffusers_pipeline(diffusers_pipes):
    for k in (1, 3, 5):
        for i in range(0, len(SIZES) - k, 5):
            group = SIZES[i:i + k]
            vl, vae = diffusers_qwen(diffusers_pipes["qwen"], group)
            assert [targets.qwen_plus_size(w, h) for w, h in group] == vae, group
            assert [targets.qwen_plus_vl_size(w, h) for w, h in group] == vl, group


def test_kontext_sizes_match_comfyui_fluxkontextimagescale():
    """Core picks by the aspect of the photo as it is; diffusers by its aspect after flooring both sides to /16.
    Likeness follows diffusers, which agrees with core except where the floor crosses a midpoint between two
    preferred aspects."""
    import nodes

    scale = nodes.NODE_CLASS_MAPPINGS["FluxKontextImageScale"]
    disagree = []
    for w, h in SIZES[::3]:
        out = scale.execute(torch.zeros(1, h, w, 3))[0]
        core = (out.shape[2], out.shape[1])
        if core != targets.kontext_size(w, h):
            disagree.append((w, h))
            floored = (w - w % 16) / (h - h % 16)
            assert min(targets.KONTEXT_RESOLUTIONS, key=lambda r: abs(floored - r[0] / r[1])) == \
                targets.kontext_size(w, h)
    assert len(disagree) <= 2, disagree


# ---------------------------------------------------------------- OmniGen2 and HiDream-O1, from their published code

def omnigen2_reference(width, height, max_pixels=1024 * 1024, max_side=1024, multiple=16):
    """VectorSpaceLab/OmniGen2 omnigen2/pipelines/image_processor.py get_new_height_width, pipeline defaults."""
    side_ratio = max_side / height if height > width else max_side / width
    ratio = min((max_pixels / (height * width)) ** 0.5, side_ratio, 1.0)
    return int(width * ratio) // multiple * multiple, int(height * ratio) // multiple * multiple


def hidream_reference(photo: PIL.Image.Image, count, out_w=2048, out_h=2048, patch=32):
    """HiDream-ai/HiDream-O1-Image models/pipeline.py + utils.resize_pilimage, run on a real PIL image."""
    longest = max(out_w, out_h)
    factor = {1: (1, 1), 2: (48, 64)}.get(count) or ((1, 2) if count <= 4 else (24, 64) if count <= 8 else (1, 4))
    budget = longest * factor[0] // factor[1]
    while min(photo.size) >= 2 * budget:
        photo = photo.resize(tuple(x // 2 for x in photo.size), resample=PIL.Image.BOX)
    w, h = photo.size
    scale = math.sqrt(budget * budget / (w * h))
    options = [(round(w * scale) // patch * patch, round(h * scale) // patch * patch),
               (round(w * scale) // patch * patch, math.floor(h * scale) // patch * patch),
               (math.floor(w * scale) // patch * patch, round(h * scale) // patch * patch),
               (math.floor(w * scale) // patch * patch, math.floor(h * scale) // patch * patch)]
    size = next(s for s in sorted(options, key=lambda s: s[0] * s[1], reverse=True) if s[0] * s[1] <= budget ** 2)
    s1, s2 = w / size[0], h / size[1]
    if s1 < s2:
        photo = photo.resize([size[0], round(h / s1)], resample=PIL.Image.BICUBIC)
        top = (round(h / s1) - size[1]) // 2
        photo = photo.crop((0, top, size[0], top + size[1]))
    else:
        photo = photo.resize([round(w / s2), size[1]], resample=PIL.Image.BICUBIC)
        left = (round(w / s2) - size[0]) // 2
        photo = photo.crop((left, 0, left + size[0], size[1]))
    return photo.size


def test_omnigen2_sizes_equal_the_published_processor():
    for w, h in SIZES:
        assert targets.omnigen2_size(w, h) == omnigen2_reference(w, h), (w, h)


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 8, 9, 10])
def test_hidream_o1_sizes_equal_the_published_pipeline(count):
    for w, h in SIZES[::3]:
        if max(w, h) / min(w, h) > 6:
            continue
        for out_side in (1024, 2048):
            expected = hidream_reference(_photo(w, h), count, out_side, out_side)
            assert targets.hidream_o1_size(w, h, count, out_side) == expected, (w, h, count, out_side)


def test_hidream_o1_budget_shrinks_with_the_count():
    sides = [targets.hidream_o1_budget(k, 2048) for k in range(1, 11)]
    assert sides == [2048, 1536, 1024, 1024, 768, 768, 768, 768, 512, 512]
    assert targets.BY_KEY["hidream o1"].size(2000, 2000, 10, 2048) == (512, 512)


def test_every_target_states_its_rule_source_and_node():
    for t in targets.TARGETS:
        assert t.rule and t.source and t.takes, t.key
    assert targets.BY_KEY["as is"].size(123, 456) == (123, 456)


def test_the_help_page_states_every_rule_and_source_of_the_table():
    from conftest import PACK

    page = (PACK / "web" / "docs" / "LikenessReferencePack.md").read_text()
    for t in targets.TARGETS:
        assert f"| `{t.key}` | {t.name} | {t.rule} | {t.source} | {t.takes} |" in page, t.key
