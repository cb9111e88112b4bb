"""Every FaceID variant projects identities (and face-crop features) to the tokens the reference gives.

The oracle is diffusers: its converter turns the h94 `image_proj` keys into `IPAdapterFaceIDImageProjection`
(FaceID, Portrait), `IPAdapterFaceIDPlusImageProjection` (Plus v1 / v2) and `IPAdapterPlusImageProjection`
(Portrait-unnorm), the classes diffusers ports from tencent-ailab/IP-Adapter. The weights are synthetic, in
the official key layout: the official SD1.5 sizes where they are small enough, tiny ones otherwise (diffusers'
converter assumes depth 4, so the tiny perceivers have 4 layers). The uncond side follows tencent-ailab's
FaceID classes: the projection of a zero identity; for Plus, a zero identity with the encoder's features of an
all-zero normalised image.
"""

from __future__ import annotations

import pytest
import torch

import builders
import face_models as fm
from conftest import pack

diffusers = pytest.importorskip("diffusers")
from diffusers.loaders.unet import UNet2DConditionLoadersMixin  # noqa: E402

adapter_mod = pack("nodes.core.adapter")
core_face = pack("nodes.core.face")
errors = pack("nodes.core.errors")
projection = pack("nodes.core.projection")
refs_mod = pack("nodes.core.references")
variants = pack("nodes.core.variants")

ATOL = 2e-5
SEQ = 9  # crop hidden-state tokens (257 for ViT-H; fewer keeps it fast)
TINY_SD15 = [32] * 6 + [32] * 9 + [32]  # site widths are only needed for detection here


def official(name: str, seed: int = 0):
    """An Adapter with the official file's layout; image_proj tensors seeded, detection from all shapes."""
    shapes = builders.official_shapes(name)
    proj_shapes = {k[len("image_proj."):]: v for k, v in shapes.items() if k.startswith("image_proj.")}
    return _adapter(name, shapes, builders.tensors_for(proj_shapes, seed))


def tiny(layout: str, name: str, seed: int = 0, clip_width: int = 48):
    state = fm.tiny_faceid_state(layout, TINY_SD15, context=64, clip_width=clip_width, seed=seed)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    return _adapter(name, shapes, proj)


def _adapter(name, shapes, proj_state):
    det = variants.detect(shapes, name)
    module = projection.build_projection(det.layout, proj_state)
    return adapter_mod.Adapter(name, det, module, {}), proj_state


def oracle(proj_state):
    return UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers(
        None, {k: v.clone() for k, v in proj_state.items()}, low_cpu_mem_usage=False).eval()


def face_refs(n: int, seed: int = 0, hidden: int | None = None):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, 512, generator=gen) * 16
    face = refs_mod.FaceIdentity("buffalo_l", raw / raw.norm(dim=-1, keepdim=True), raw)
    image = None
    if hidden:
        embed = {1280: 1024, 1664: 1280}.get(hidden, 32)
        enc = refs_mod.EncoderInfo.from_widths(hidden, embed)
        image = refs_mod.ImageFeatures(enc, torch.randn(n, embed, generator=gen),
                                       torch.randn(n, SEQ, hidden, generator=gen),
                                       torch.randn(1, SEQ, hidden, generator=gen), source="encoder.safetensors")
    return refs_mod.References(image=image, face=face)


def close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item()
    assert diff <= atol, diff


@torch.no_grad()
def test_faceid_sd15_official_layout():
    adapter, state = official("ip-adapter-faceid_sd15.bin")
    refs = face_refs(2)
    tokens = refs_mod.project_references(adapter, refs)
    ref = oracle(state)
    assert type(ref).__name__ == "IPAdapterFaceIDImageProjection"
    assert tokens.cond.shape == (2, 4, 768) and tokens.tokens_per_reference == 4
    close(tokens.cond, ref(refs.face.normed))
    close(tokens.uncond, ref(torch.zeros(2, 512)))


@torch.no_grad()
def test_faceid_plus_sd15_official_layout_v1_and_v2():
    adapter, state = official("ip-adapter-faceid-plusv2_sd15.bin", seed=1)
    refs = face_refs(2, seed=1, hidden=1280)
    ref = oracle(state)
    assert type(ref).__name__ == "IPAdapterFaceIDPlusImageProjection"
    for v2, scale in ((False, 1.0), (True, 1.0), (True, 2.5)):
        tokens = refs_mod.project_references(adapter, refs, faceid_plus_v2=v2, faceid_v2_weight=scale)
        ref.shortcut, ref.shortcut_scale = v2, scale
        ref.clip_embeds = refs.image.penultimate[:, None]
        close(tokens.cond, ref(refs.face.normed), 5e-5)
        ref.clip_embeds = refs.image.empty_penultimate.expand(2, -1, -1)[:, None]
        close(tokens.uncond, ref(torch.zeros(2, 512)), 5e-5)


@torch.no_grad()
def test_plus_v2_is_id_tokens_plus_scaled_v1():
    adapter, _ = tiny("plus", "ip-adapter-faceid-plus_sd15.bin", seed=2)
    refs = face_refs(1, seed=2, hidden=48)
    v1 = refs_mod.project_references(adapter, refs, faceid_plus_v2=False).cond
    v2 = refs_mod.project_references(adapter, refs, faceid_plus_v2=True, faceid_v2_weight=1.7).cond
    id_tokens = projection.FaceIDProjection.forward(adapter.projection, refs.face.normed)
    close(v2, id_tokens + 1.7 * v1, 1e-5)


@pytest.mark.parametrize("name", ["ip-adapter-faceid-portrait-v11_sd15.bin", "tiny-portrait_sdxl.bin"])
@torch.no_grad()
def test_portrait_several_faces_are_concatenated(name):
    adapter, state = official(name) if name.endswith("sd15.bin") else tiny("portrait", name, seed=3)
    refs = face_refs(5, seed=3)
    tokens = refs_mod.project_references(adapter, refs)
    ref = oracle(state)
    assert tokens.tokens_per_reference == 16
    close(tokens.cond, ref(refs.face.normed))
    close(tokens.uncond, ref(torch.zeros(5, 512)))
    cond, uncond = tokens.flat()
    assert cond.shape == (80, tokens.context_width)  # 16 tokens x 5 faces, one attention over all of them
    close(cond, torch.cat(list(ref(refs.face.normed)), dim=0))


@torch.no_grad()
def test_portrait_unnorm_reads_the_raw_embedding():
    adapter, state = tiny("portrait-unnorm", "ip-adapter-faceid-portrait_sdxl_unnorm.bin", seed=4)
    assert adapter.detected.layout is variants.Layout.RESAMPLER and core_face.uses_raw_identity(adapter)
    refs = face_refs(2, seed=4)
    tokens = refs_mod.project_references(adapter, refs)
    ref = oracle(state)
    assert type(ref).__name__ == "IPAdapterPlusImageProjection"
    close(tokens.cond, ref(refs.face.raw[:, None]))
    close(tokens.uncond, ref(torch.zeros(2, 1, 512)))
    assert not torch.allclose(tokens.cond, ref(refs.face.normed[:, None]), atol=1e-3)


@torch.no_grad()
def test_negative_face_references_replace_the_uncond():
    adapter, state = tiny("plus", "ip-adapter-faceid-plusv2_sd15.bin", seed=5)
    refs, neg = face_refs(3, seed=5, hidden=48), face_refs(1, seed=6, hidden=48)
    tokens = refs_mod.project_references(adapter, refs, neg)
    ref = oracle(state)
    ref.shortcut, ref.shortcut_scale = True, 1.0
    ref.clip_embeds = neg.image.penultimate.expand(3, -1, -1)[:, None]
    close(tokens.uncond, ref(neg.face.normed.expand(3, -1)))


@torch.no_grad()
def test_plus_takes_a_plain_image_negative_as_the_leading_pack_does():
    """A negative image without a face (Image Encode references): its CLIP features on the crops' side, a zero
    identity, as the leading pack's FaceID nodes use `image_negative` with FaceID Plus."""
    adapter, state = tiny("plus", "ip-adapter-faceid-plusv2_sd15.bin", seed=7)
    refs = face_refs(3, seed=7, hidden=48)
    gen = torch.Generator().manual_seed(8)
    neg = refs_mod.References.from_images(refs_mod.EncoderInfo.from_widths(48, 32), torch.randn(2, 32, generator=gen),
                                          torch.randn(2, SEQ, 48, generator=gen), torch.randn(1, SEQ, 48, generator=gen))
    tokens = refs_mod.project_references(adapter, refs, neg, faceid_plus_v2=True, faceid_v2_weight=1.5)
    ref = oracle(state)
    ref.shortcut, ref.shortcut_scale = True, 1.5
    ref.clip_embeds = torch.cat([neg.image.penultimate, neg.image.penultimate[-1:]])[:, None]  # 2 negatives, 3 faces
    close(tokens.uncond, ref(torch.zeros(3, 512)), 5e-5)
    ref.clip_embeds = refs.image.penultimate[:, None]
    close(tokens.cond, ref(refs.face.normed), 5e-5)
    default = refs_mod.project_references(adapter, refs, faceid_plus_v2=True, faceid_v2_weight=1.5)
    assert not torch.allclose(default.uncond, tokens.uncond, atol=1e-3)  # the negative image changed it
    with pytest.raises(errors.IncompatibleError, match="only identity embeddings.*Likeness Face Embed"):
        refs_mod.project_references(tiny("faceid", "ip-adapter-faceid_sd15.bin")[0], face_refs(1), neg)


def test_plus_version_hint_from_the_file_name():
    hint = lambda name: core_face.plus_version_hint(tiny("plus", name)[0])  # noqa: E731
    assert hint("ip-adapter-faceid-plusv2_sd15.bin") == (True, "the file name says plusv2")
    assert hint("ip-adapter-faceid-plus_sd15.bin")[0] is False
    assert hint("IP-Adapter FaceID Plus V2.safetensors")[0] is True
    assert hint("my-face-adapter.safetensors") == (True, "the file name gives no hint; v2 is the current release")
    det = variants.detect(builders.official_shapes("ip-adapter-faceid-plusv2_sdxl.bin"), "x.bin")
    renamed = adapter_mod.Adapter("faceid-plus_sdxl.bin", det, torch.nn.Identity(), {})
    assert core_face.plus_version_hint(renamed) == (True, "only a Plus v2 was published for SDXL")


# ---------------------------------------------------------------- mistakes

def test_image_references_on_a_faceid_adapter():
    adapter, _ = tiny("faceid", "ip-adapter-faceid_sd15.bin")
    image_refs = refs_mod.References.from_images(refs_mod.EncoderInfo.from_widths(48, 32), torch.zeros(1, 32),
                                                 torch.zeros(1, SEQ, 48), torch.zeros(1, SEQ, 48))
    with pytest.raises(errors.IncompatibleError, match="Likeness Face Embed"):
        refs_mod.project_references(adapter, image_refs)


def test_plus_without_crop_features_says_to_connect_clip_vision():
    adapter, _ = official("ip-adapter-faceid-plusv2_sd15.bin")
    with pytest.raises(errors.IncompatibleError) as e:
        refs_mod.project_references(adapter, face_refs(1))
    msg = str(e.value)
    assert "ip-adapter-faceid-plusv2_sd15.bin" in msg and "clip_vision on Likeness Face Embed" in msg
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in msg and "1280-wide" in msg


def test_plus_with_the_wrong_encoder():
    adapter, _ = official("ip-adapter-faceid-plusv2_sd15.bin")
    with pytest.raises(errors.IncompatibleError) as e:
        refs_mod.project_references(adapter, face_refs(1, hidden=1664))
    msg = str(e.value)
    assert "ViT-H/14" in msg and "ViT-bigG/14" in msg and "1664" in msg


def test_identity_of_the_wrong_width():
    adapter, _ = tiny("faceid", "ip-adapter-faceid_sd15.bin")
    raw = torch.randn(1, 128)
    refs = refs_mod.References(face=refs_mod.FaceIdentity("small_pack", raw / raw.norm(), raw))
    with pytest.raises(errors.IncompatibleError, match="512-wide identity embeddings.*128-wide.*small_pack"):
        refs_mod.project_references(adapter, refs)


@torch.no_grad()
@pytest.mark.parametrize("layout", ["faceid", "plus"])
def test_fp16_faceid_files_project_like_fp32(layout):
    """Official FaceID files are fp16; the projection is held as stored and computed in float32."""
    adapter, state = tiny(layout, f"ip-adapter-faceid-{layout}_sd15.bin", seed=9)
    half_state = {k: v.half() for k, v in state.items()}
    half = adapter_mod.Adapter(adapter.name, adapter.detected,
                               projection.build_projection(adapter.detected.layout, half_state), {})
    assert next(half.projection.parameters()).dtype == torch.float16
    refs = face_refs(2, seed=9, hidden=48 if layout == "plus" else None)
    kw = {"faceid_plus_v2": True} if layout == "plus" else {}
    want = refs_mod.project_references(adapter, refs, **kw)
    got = refs_mod.project_references(half, refs, **kw)
    assert got.cond.dtype == torch.float32
    close(got.cond, want.cond, 5e-2)
