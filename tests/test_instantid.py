"""InstantID: detection, identity tokens, the keypoint image, IdentityNet in the conditioning, the nodes, bad inputs.

Parity with diffusers (tokens, attention, ControlNet residuals) is in tests/test_parity_instantid.py; the example
workflows run in tests/test_workflows.py.
"""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch

import builders
import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_detection
import comfy.ops
import face_models as fm
import folder_paths
import nodes
from conftest import pack
from test_detection import write_sparse_safetensors

pytest.importorskip("insightface")

variants = pack("nodes.core.variants")
adapter_mod = pack("nodes.core.adapter")
instantid = pack("nodes.core.instantid")
references = pack("nodes.core.references")
errors = pack("nodes.core.errors")
core_face = pack("nodes.core.face")
host_face = pack("nodes.host.face")
host_instantid = pack("nodes.host.instantid")
sites_mod = pack("nodes.host.sites")
attention = pack("nodes.core.attention")
instantid_nodes = pack("nodes.instantid")
loaders = pack("nodes.loaders")
folders = pack("nodes.host.folders")

INSTANTID = "ip-adapter.bin"
UNNORM = "ip-adapter-faceid-portrait_sdxl_unnorm.bin"


# ---------------------------------------------------------------- detection on the full-size layout (header only)

def write_header_only(path, shapes: dict, dtypes: tuple[str, str]) -> str:
    """A full-size .safetensors whose data region is a hole: real header, groups stored as `dtypes` says."""
    return write_sparse_safetensors(path, shapes, dtypes)


def published_instantid_shapes() -> dict:
    """InstantX/InstantID ip-adapter.bin, written out from the published layout: a Resampler (dim 1280, depth 4,
    20 heads of 64, 16 queries, 512-wide input, 2048-wide output, ff x4) and to_k_ip/to_v_ip for 70 SDXL sites."""
    shapes = {"image_proj.latents": (1, 16, 1280), "image_proj.proj_in.weight": (1280, 512),
              "image_proj.proj_in.bias": (1280,), "image_proj.proj_out.weight": (2048, 1280),
              "image_proj.proj_out.bias": (2048,), "image_proj.norm_out.weight": (2048,),
              "image_proj.norm_out.bias": (2048,)}
    for i in range(4):
        p = f"image_proj.layers.{i}."
        for norm in ("0.norm1", "0.norm2", "1.0"):
            shapes[f"{p}{norm}.weight"] = shapes[f"{p}{norm}.bias"] = (1280,)
        shapes.update({p + "0.to_q.weight": (1280, 1280), p + "0.to_kv.weight": (2560, 1280),
                       p + "0.to_out.weight": (1280, 1280), p + "1.1.weight": (5120, 1280),
                       p + "1.3.weight": (1280, 5120)})
    widths = [640] * 4 + [1280] * 20 + [1280] * 30 + [640] * 6 + [1280] * 10  # down, up, mid blocks of SDXL
    for n, w in enumerate(widths):
        shapes[f"ip_adapter.{2 * n + 1}.to_k_ip.weight"] = shapes[f"ip_adapter.{2 * n + 1}.to_v_ip.weight"] = (w, 2048)
    return shapes


def test_the_published_layout_is_what_the_builders_write():
    assert published_instantid_shapes() == builders.official_shapes(INSTANTID)


def test_full_size_instantid_is_detected_from_its_header(tmp_path):
    path = write_header_only(tmp_path / "renamed.safetensors", published_instantid_shapes(), ("F32", "F32"))
    assert os.path.getsize(path) > 1.6e9  # the published size; the data is a hole on disk
    det = adapter_mod.read_detection(path)
    assert det.variant.key == "sdxl-instantid" and det.family == "SDXL" and det.tokens == 16
    assert det.input_width == 512 and det.faceid and len(det.layer_ids) == 70 and not det.needs_lora
    assert [v.key for v in det.alternatives] == ["sdxl-faceid-portrait-unnorm"]
    assert "float32" in det.reason or "F32" in det.reason
    text = det.summary()
    assert "InstantID" in text and "antelopev2" in text and "FaceID Portrait (unnorm)" in text


@pytest.mark.parametrize("dtypes, folder, name, expected, why", [
    (("F32", "F16"), "x", "renamed.safetensors", "sdxl-faceid-portrait-unnorm", "F16 attention"),
    (("F16", "F16"), "x", "renamed.safetensors", "sdxl-instantid", "neither"),
    (("F16", "F16"), "x", "ip-adapter-faceid-portrait_sdxl_unnorm.safetensors", "sdxl-faceid-portrait-unnorm",
     "name says"),
    (("F16", "F16"), "instantid", "ip-adapter_fp16.safetensors", "sdxl-instantid", "name says"),
    (("BF16", "BF16"), "x", "my-instantid.safetensors", "sdxl-instantid", "name says"),
])
def test_shared_layout_is_told_apart_by_precision_then_name(tmp_path, dtypes, folder, name, expected, why):
    (tmp_path / folder).mkdir(exist_ok=True)
    path = write_header_only(tmp_path / folder / name, published_instantid_shapes(), dtypes)
    det = adapter_mod.read_detection(path)
    assert det.variant.key == expected
    assert why in det.reason, det.reason


def test_loaded_files_are_told_apart_like_headers(tmp_path):
    state = sdxl_instantid_state()
    f32 = builders.save_safetensors(str(tmp_path / "a.safetensors"), state)
    mixed = builders.save_safetensors(str(tmp_path / "b.safetensors"), sdxl_instantid_state(kv_dtype=torch.float16))
    nested = tmp_path / "c.bin"
    torch.save({"image_proj": {k[11:]: v for k, v in state.items() if k.startswith("image_proj.")},
                "ip_adapter": {k[11:]: v.half() for k, v in state.items() if k.startswith("ip_adapter.")}}, nested)
    for path, key in ((f32, "sdxl-instantid"), (mixed, "sdxl-faceid-portrait-unnorm"),
                      (str(nested), "sdxl-faceid-portrait-unnorm")):
        assert adapter_mod.read_detection(path).variant.key == key
        assert adapter_mod.load_adapter(path).detected.variant.key == key


def sdxl_instantid_state(seed=0, kv_dtype=torch.float32) -> dict:
    """A tiny InstantID for the tiny SDXL UNet: the published key layout, narrowed."""
    widths = [s.width for s in sites_mod.find_sites(builders.build_unet("sdxl"))]
    state = fm.tiny_faceid_state("portrait-unnorm", widths, seed=seed)  # the same Resampler layout, tiny
    return {k: (v.to(kv_dtype) if k.startswith("ip_adapter.") else v) for k, v in state.items()}


def test_override_on_the_loader(tmp_path):
    path = builders.save_safetensors(str(tmp_path / "face.safetensors"), sdxl_instantid_state())
    with fm.model_folder("ipadapter", str(tmp_path)):
        auto = loaders.LikenessAdapterLoader.execute("face.safetensors").result[0]
        forced = loaders.LikenessAdapterLoader.execute("face.safetensors", "FaceID Portrait (unnorm)").result[0]
    assert auto.detected.variant.key == "sdxl-instantid"
    assert forced.detected.variant.key == "sdxl-faceid-portrait-unnorm"
    assert forced.detected.reason == "set on the loader" and "set on the loader" in forced.detected.summary()
    assert forced.projection is auto.projection and forced.kv_weights is auto.kv_weights  # no copy of the weights
    assert "InstantID" in loaders.LikenessAdapterLoader.INPUT_TYPES()["optional"]["variant"][1]["options"]
    plain = builders.save_safetensors(str(tmp_path / "plain.safetensors"),
                                      builders.tiny_adapter_state("linear", [32] * 16))
    with pytest.raises(errors.AdapterFileError, match="cannot be used as InstantID"):
        adapter_mod.load_adapter(plain).as_variant("InstantID")


def test_the_instantid_folder_is_listed_with_extra_model_paths(tmp_path):
    extra = tmp_path / "elsewhere"
    extra.mkdir()
    builders.save_safetensors(str(extra / "iid.safetensors"), sdxl_instantid_state())
    assert "instantid" in folder_paths.folder_names_and_paths
    with fm.model_folder("instantid", str(extra)):  # as an `instantid:` key in extra_model_paths.yaml adds it
        assert "iid.safetensors" in folders.adapter_files()
        assert folders.adapter_path("iid.safetensors") == str(extra / "iid.safetensors")
        adapter = loaders.LikenessAdapterLoader.execute("iid.safetensors").result[0]
        assert "instantid" in adapter.detected.reason or adapter.detected.variant.key == "sdxl-instantid"
    with pytest.raises(errors.InputError, match="not one of the choices"):
        folders.adapter_path("../elsewhere/iid.safetensors")


# ---------------------------------------------------------------- identity tokens

@pytest.fixture(scope="module")
def iid_adapter(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instantid")
    return adapter_mod.load_adapter(builders.save_safetensors(str(folder / "ip-adapter.safetensors"),
                                                              sdxl_instantid_state(seed=5)))


def face_refs(n=1, seed=0, model="antelopev2", scale=20.0):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, 512, generator=gen) * scale / math.sqrt(512) + 0.3
    return references.References(face=references.FaceIdentity(
        model, torch.nn.functional.normalize(raw, dim=-1), raw, torch.rand(n, 5, 2, generator=gen) * 100,
        torch.tensor([[128, 96]] * n)))


def cubiq_uncond(embedding, noise):
    """ComfyUI_InstantID's uncond, as its code does it (global seed, rand_like), in a forked random state."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.sum(embedding).item()) % 1000000007)
        return noise * torch.rand_like(embedding)


def test_uncond_noise_follows_the_comfyui_instantid_convention():
    emb = face_refs(seed=3).face.raw[:1]
    before = torch.random.get_rng_state()
    ours = instantid.uncond_identity(emb, 0.35)
    assert torch.equal(torch.random.get_rng_state(), before)  # the global random state is left alone
    assert torch.equal(ours, cubiq_uncond(emb[:, None], 0.35).reshape(1, 512))
    assert torch.equal(ours, instantid.uncond_identity(emb.clone(), 0.35))  # deterministic
    assert not torch.equal(ours, instantid.uncond_identity(face_refs(seed=4).face.raw[:1], 0.35))
    assert ours.min() >= 0 and ours.max() < 0.35
    assert torch.equal(instantid.uncond_identity(emb, 0.0), torch.zeros(1, 512))  # the original pipeline
    with pytest.raises(errors.InputError):
        instantid.uncond_identity(emb, -1.0)


def resampler_reference(adapter, identity):
    proj = copy.deepcopy(adapter.projection).float()
    with torch.no_grad():
        return proj(identity[:, None].float())


def test_tokens_are_the_resampler_of_the_mean_raw_embedding(iid_adapter):
    refs = face_refs(3, seed=1)
    tokens = references.project_references(iid_adapter, refs, noise=0.2)
    mean = refs.face.raw.mean(dim=0, keepdim=True)
    assert tokens.cond.shape == tokens.uncond.shape == (1, 16, builders.TINY_CONTEXT)
    assert tokens.variant == "sdxl-instantid" and instantid.is_instantid_tokens(tokens)
    torch.testing.assert_close(tokens.cond, resampler_reference(iid_adapter, mean), rtol=0, atol=1e-6)
    torch.testing.assert_close(tokens.uncond, resampler_reference(iid_adapter, instantid.uncond_identity(mean, 0.2)),
                               rtol=0, atol=1e-6)
    zero = references.project_references(iid_adapter, refs, noise=0.0)
    torch.testing.assert_close(zero.uncond, resampler_reference(iid_adapter, torch.zeros(1, 512)), rtol=0, atol=1e-6)
    default = references.project_references(iid_adapter, refs)
    torch.testing.assert_close(default.uncond, resampler_reference(
        iid_adapter, instantid.uncond_identity(mean, instantid.DEFAULT_NOISE)), rtol=0, atol=1e-6)
    negative = face_refs(2, seed=9)
    with_negative = references.project_references(iid_adapter, refs, negative)
    torch.testing.assert_close(with_negative.uncond, resampler_reference(
        iid_adapter, negative.face.raw.mean(0, keepdim=True)), rtol=0, atol=1e-6)


def test_raw_not_normalised_embedding_is_used(iid_adapter):
    refs = face_refs(seed=2, scale=25.0)
    doubled = references.References(face=references.FaceIdentity(
        "antelopev2", refs.face.normed, refs.face.raw * 2, refs.face.keypoints, refs.face.image_sizes))
    a = references.project_references(iid_adapter, refs).cond
    b = references.project_references(iid_adapter, doubled).cond
    assert (a - b).abs().max() > 1e-3  # the length of the raw embedding matters; normed is the same for both


def test_buffalo_l_references_are_refused_with_what_to_do(iid_adapter):
    with pytest.raises(errors.IncompatibleError) as e:
        references.project_references(iid_adapter, face_refs(model="buffalo_l"))
    text = str(e.value)
    assert "antelopev2" in text and "buffalo_l" in text and "models/insightface/models/antelopev2" in text
    image_refs = references.References.from_images(references.EncoderInfo.from_widths(64, 32), torch.zeros(1, 32),
                                                   torch.zeros(1, 5, 64), torch.zeros(1, 5, 64))
    with pytest.raises(errors.IncompatibleError, match="Face Embed"):
        references.project_references(iid_adapter, image_refs)


def test_project_node_reports_instantid_and_takes_noise(iid_adapter):
    project = pack("nodes.project").LikenessProject
    out = project.execute(iid_adapter, face_refs(2), noise=0.0)
    text = json.dumps(out.ui.as_dict() if hasattr(out.ui, "as_dict") else str(out.ui))
    assert "InstantID" in text and "average of 2" in text and "zeros" in text
    assert "noise" in project.INPUT_TYPES()["optional"]


# ---------------------------------------------------------------- the keypoint image, pixel for pixel

def reference_drawing(kps, width, height):
    """The published method (InstantX/InstantID, `draw_kps`), step by step: limbs filled on a float canvas in full
    colour, the canvas scaled by 0.6 and cast to bytes, then the five discs."""
    import cv2

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]
    kps = np.array(kps)
    canvas = np.zeros([height, width, 3])
    for a, b in [[0, 2], [1, 2], [3, 2], [4, 2]]:
        xs, ys = kps[[a, b]][:, 0], kps[[a, b]][:, 1]
        length = ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), 4), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas.copy(), polygon, colours[a])
    canvas = (canvas * 0.6).astype(np.uint8)
    for (x, y), colour in zip(kps, colours):
        canvas = cv2.circle(canvas.copy(), (int(x), int(y)), 10, colour, -1)
    return canvas


KEYPOINT_SETS = {
    "frontal": ([[38.29, 51.69], [73.53, 51.50], [56.02, 71.74], [41.55, 92.37], [70.73, 92.20]], 112, 112),
    "large": ([[300.7, 210.2], [410.1, 205.9], [355.5, 270.3], [315.2, 330.8], [398.6, 327.4]], 640, 480),
    "rotated": ([[200.25, 140.75], [260.5, 180.25], [215.9, 205.1], [170.3, 230.6], [215.2, 262.4]], 400, 320),
    "at the edge": ([[-4.6, 10.2], [30.9, 3.3], [12.1, 25.7], [2.5, 40.9], [28.7, 44.4]], 64, 48),
}


@pytest.mark.parametrize("name", list(KEYPOINT_SETS))
def test_keypoint_drawing_equals_the_published_method(name):
    kps, w, h = KEYPOINT_SETS[name]
    for dtype in (np.float32, np.float64):
        points = np.array(kps, dtype=dtype)
        ours = instantid.draw_keypoints(points, w, h)
        theirs = reference_drawing(points, w, h)
        assert ours.dtype == np.uint8 and ours.shape == (h, w, 3)
        assert np.array_equal(ours, theirs)
    colours = {tuple(c) for c in ours.reshape(-1, 3)}
    assert (153, 0, 0) in colours or name == "at the edge"  # the limbs are drawn at 60 %
    assert {(255, 0, 0), (0, 255, 0), (0, 0, 255)} <= colours


def test_keypoint_images_scale_to_a_canvas():
    kps = torch.tensor([KEYPOINT_SETS["large"][0]], dtype=torch.float32)
    sizes = torch.tensor([[640, 480]])
    same = instantid.keypoint_images(kps, sizes)
    assert same.shape == (1, 480, 640, 3)
    assert np.array_equal((same[0].numpy() * 255).round().astype(np.uint8),
                          reference_drawing(kps[0].numpy(), 640, 480))
    half = instantid.keypoint_images(kps, sizes, 320, 0)
    assert half.shape == (1, 240, 320, 3)
    expected = reference_drawing(kps[0].numpy() * np.float32(0.5), 320, 240)
    assert np.array_equal((half[0].numpy() * 255).round().astype(np.uint8), expected)
    with pytest.raises(errors.InputError, match="5 finite"):
        instantid.draw_keypoints(np.zeros((4, 2)), 10, 10)


# ---------------------------------------------------------------- faces and poses from photos

@pytest.fixture(scope="module")
def antelope(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface_instantid")
    fm.write_pack(str(root / "models" / "antelopev2"), style="antelopev2")
    with fm.model_folder("insightface", str(root)):
        yield host_face.load_face_model("antelopev2", "CPU")


def test_face_embed_outputs_the_keypoint_image_of_each_face(antelope):
    photos = fm.to_comfy(fm.face_image(faces=((320, 200, 80),), seed=1), fm.face_image(faces=((250, 260, 70),),
                                                                                          seed=2))
    out = pack("nodes.face").LikenessFaceEmbed.execute(antelope, photos, "largest", 0, "error", "224")
    refs, crops, keypoints = out.result
    assert keypoints.shape == (2, 480, 640, 3)
    assert refs.face.model == "antelopev2" and refs.face.keypoints.shape == (2, 5, 2)
    for i in range(2):
        faces, _ = antelope.detect(core_face.to_bgr_uint8(photos[i]))
        kps = core_face.choose_face(faces, "largest", 0).kps
        assert np.array_equal(refs.face.keypoints[i].numpy(), kps)
        assert np.array_equal((keypoints[i].numpy() * 255).round().astype(np.uint8), reference_drawing(kps, 640, 480))


def test_face_keypoints_node_takes_the_pose_from_another_photo(antelope):
    pose = fm.to_comfy(fm.face_image(640, 480, faces=((200, 150, 60), (450, 300, 90)), seed=8))
    node = instantid_nodes.LikenessFaceKeypoints
    largest = node.execute(antelope, pose, "largest", 0, 0, 0).result[0]
    left = node.execute(antelope, pose, "left to right", 0, 0, 0).result[0]
    assert largest.shape == left.shape == (1, 480, 640, 3)
    assert not torch.equal(largest, left)
    faces, _ = antelope.detect(core_face.to_bgr_uint8(pose[0]))
    kps = core_face.choose_face(faces, "largest", 0).kps
    resized = node.execute(antelope, pose, "largest", 0, 1024, 768).result[0]
    assert resized.shape == (1, 768, 1024, 3)
    expected = reference_drawing(kps * np.array([1024 / 640, 768 / 480], dtype=np.float32), 1024, 768)
    assert np.array_equal((resized[0].numpy() * 255).round().astype(np.uint8), expected)


def test_no_face_in_the_pose_image_is_a_clear_error(antelope):
    blank = torch.full((1, 240, 320, 3), 0.1)
    with pytest.raises(core_face.NoFaceError, match=r"pose image 0 \(320x240\) has no face.*another person"):
        instantid_nodes.LikenessFaceKeypoints.execute(antelope, blank, "largest", 0, 0, 0)


def test_missing_antelopev2_says_where_it_goes(tmp_path):
    root = tmp_path / "insightface"
    (root / "antelopev2").mkdir(parents=True)  # unpacked one level too high: a common mistake
    fm.write_pack(str(root / "antelopev2"), style="antelopev2")
    saved = folder_paths.folder_names_and_paths["insightface"]
    folder_paths.folder_names_and_paths["insightface"] = ([str(root)], saved[1])  # the only folder searched
    try:
        with pytest.raises(core_face.FaceModelError) as e:
            host_face.find_pack("antelopev2")
    finally:
        folder_paths.folder_names_and_paths["insightface"] = saved
    text = str(e.value)
    assert os.path.join(str(root), "models", "antelopev2", "*.onnx") in text
    assert "scrfd_10g_bnkps.onnx" in text and "glintr100.onnx" in text
    assert f"move it into {os.path.join(str(root), 'models')}" in text
    assert "antelopev2/antelopev2" in text  # the nested-folder mistake is named (and tolerated)


# ---------------------------------------------------------------- IdentityNet in the conditioning

def tiny_identitynet():
    with builders.comfy_knows_the_tiny_sdxl():
        return comfy.controlnet.load_controlnet_state_dict(builders.tiny_identitynet_state(seed=3))


@pytest.fixture(scope="module")
def identitynet():
    return tiny_identitynet()


def conditioning_pair():
    return builders.conditioning("sdxl", seed=1), builders.conditioning("sdxl", seed=2)


def test_control_carries_the_identity_tokens_and_leaves_the_input_alone(iid_adapter, identitynet):
    tokens = references.project_references(iid_adapter, face_refs(seed=4))
    positive, negative = conditioning_pair()
    previous = comfy.controlnet.ControlNet()
    negative[0][1]["control"] = positive[0][1]["control"] = previous
    snapshot = copy.copy(positive[0][1]), copy.copy(negative[0][1])
    hint = torch.rand(1, 64, 64, 3)
    pos, neg = host_instantid.apply_identity_control(positive, negative, identitynet, tokens, hint, 0.7, 0.1, 0.9)
    assert positive[0][1] == snapshot[0] and negative[0][1] == snapshot[1]  # the inputs are not mutated
    assert pos[0][0] is positive[0][0]
    cond_ctx, uncond_ctx = pos[0][1]["cross_attn_controlnet"], neg[0][1]["cross_attn_controlnet"]
    assert torch.equal(cond_ctx, tokens.cond.reshape(1, 16, -1)) and torch.equal(uncond_ctx, tokens.uncond.reshape(
        1, 16, -1))
    control = pos[0][1]["control"]
    assert control is neg[0][1]["control"]  # one control for both sides, so cond and uncond batch together
    assert control is not identitynet and control.control_model is identitynet.control_model  # shared weights
    assert control.previous_controlnet is previous
    assert control.strength == 0.7 and control.timestep_percent_range == (0.1, 0.9)
    assert torch.equal(control.cond_hint_original, hint.movedim(-1, 1))
    assert pos[0][1]["control_apply_to_uncond"] is False
    same = host_instantid.apply_identity_control(positive, negative, identitynet, tokens, hint, 0.0, 0.0, 1.0)
    assert same[0] is positive and same[1] is negative


def test_controlnets_that_cannot_be_identitynet_are_refused(iid_adapter, identitynet):
    tokens = references.project_references(iid_adapter, face_refs(seed=4))
    positive, negative = conditioning_pair()
    hint = torch.rand(1, 64, 64, 3)
    # a full-size SD1.5 ControlNet (shapes only): 768-wide cross-attention
    sd15 = comfy.model_detection.convert_config(dict(builders.SD15_LAYOUT, model_channels=320, context_dim=768,
                                                     num_heads=8))
    sd15.pop("out_channels")
    with torch.device("meta"):
        meta = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, **sd15)
    with pytest.raises(errors.IncompatibleError) as e:
        host_instantid.apply_identity_control(positive, negative, comfy.controlnet.ControlNet(meta), tokens, hint,
                                              0.8, 0.0, 1.0)
    assert "SD1.5" in str(e.value) and "768" in str(e.value) and "diffusion_pytorch_model.safetensors" in str(e.value)
    no_attention = comfy.model_detection.convert_config(dict(builders.TINY_SDXL_UNET, transformer_depth=[0] * 6,
                                                             transformer_depth_middle=0,
                                                             transformer_depth_output=[0] * 9))
    no_attention.pop("out_channels")
    small = comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, **no_attention)
    with pytest.raises(errors.IncompatibleError, match="no cross-attention"):
        host_instantid.check_controlnet(comfy.controlnet.ControlNet(small), tokens)
    with pytest.raises(errors.IncompatibleError, match="T2IAdapter"):
        host_instantid.check_controlnet(comfy.controlnet.T2IAdapter(torch.nn.Identity(), 1, 8, "nearest-exact"),
                                        tokens)
    other = references.ImageTokens("plus.safetensors", builders.TINY_CONTEXT, 16, tokens.cond, tokens.uncond,
                                   "sdxl-plus")
    with pytest.raises(errors.IncompatibleError, match="not InstantID"):
        host_instantid.apply_identity_control(positive, negative, identitynet, other, hint, 0.8, 0.0, 1.0)


def sample_sdxl(model, positive, negative, steps=2, size=16, seed=3):
    latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
    return nodes.common_ksampler(model, seed, steps, 4.0, "euler", "normal", positive, negative, latent)[0]["samples"]


def test_sampling_feeds_identitynet_the_identity_tokens_as_its_context(iid_adapter):
    """A real sampling run: the ControlNet's forward is observed, and the sampler's cond/uncond order recorded."""
    net = tiny_identitynet()
    tokens = references.project_references(iid_adapter, face_refs(seed=6))
    positive, negative = conditioning_pair()
    hint = torch.rand(1, 64, 64, 3)
    pos, neg = host_instantid.apply_identity_control(positive, negative, net, tokens, hint, 1.0, 0.0, 1.0)
    seen, order = [], []
    handle = net.control_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["context"].detach().clone()), with_kwargs=True)
    model = builders.build_unet("sdxl").clone()

    def record(apply_model, args):
        order.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(record)
    try:
        controlled = sample_sdxl(model, pos, neg)
    finally:
        handle.remove()
    assert len(seen) == len(order) == 2  # two steps, cond and uncond batched together
    for context, chunks in zip(seen, order):
        assert sorted(chunks) == [0, 1]
        for row, chunk in enumerate(chunks):
            expected = tokens.cond if chunk == 0 else tokens.uncond
            torch.testing.assert_close(context[row], expected.reshape(16, -1), rtol=0, atol=0)
    plain = sample_sdxl(builders.build_unet("sdxl"), positive, negative)
    assert (controlled - plain).abs().max() > 1e-3  # the residuals reach the UNet


def test_mask_limits_where_identitynet_acts(iid_adapter):
    net = tiny_identitynet()
    tokens = references.project_references(iid_adapter, face_refs(seed=6))
    positive, negative = conditioning_pair()
    hint = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0
    pos, neg = host_instantid.apply_identity_control(positive, negative, net, tokens, hint, 1.0, 0.0, 1.0, mask=mask)
    control = pos[0][1]["control"]
    assert isinstance(control, host_instantid.MaskedControl) and control is neg[0][1]["control"]
    model = builders.build_unet("sdxl")
    control.pre_run(model.model, model.model.model_sampling.percent_to_sigma)
    x = torch.randn(2, 4, 8, 8)
    sigma = torch.full((2,), 5.0)
    cond = {"c_crossattn": torch.zeros(2, 7, 64), "crossattn_controlnet": torch.cat([tokens.cond, tokens.uncond]),
            "y": torch.zeros(2, builders.TINY_SDXL_UNET["adm_in_channels"])}
    residuals = control.get_control(x, sigma, cond, 2, {})
    plain = control.inner.get_control(x, sigma, cond, 2, {})
    for ours, full in zip(residuals["output"], plain["output"]):
        width = ours.shape[-1]
        assert ours[..., width // 2:].abs().max() == 0
        torch.testing.assert_close(ours[..., : width // 2 - 1], full[..., : width // 2 - 1])
    control.cleanup()


# ---------------------------------------------------------------- the one-node path

def test_one_node_equals_the_modular_nodes(iid_adapter, antelope, identitynet):
    photos = fm.to_comfy(fm.face_image(faces=((320, 200, 80),), seed=1), fm.face_image(faces=((300, 220, 85),),
                                                                                          seed=4))
    pose = fm.to_comfy(fm.face_image(faces=((200, 300, 70),), seed=9))
    positive, negative = conditioning_pair()
    model = builders.build_unet("sdxl")
    one = instantid_nodes.LikenessInstantID.execute(model, positive, negative, iid_adapter, identitynet, antelope,
                                                    photos, 0.8, 0.6, 0.0, 1.0, 0.3, pose_image=pose).result
    refs = pack("nodes.face").LikenessFaceEmbed.execute(antelope, photos, "largest", 0, "error", "224").result[0]
    tokens = pack("nodes.project").LikenessProject.execute(iid_adapter, refs, noise=0.3).result[0]
    patched = pack("nodes.apply").LikenessApply.execute(model, iid_adapter, tokens, 0.8, "linear", 0.0, 1.0,
                                                        "V only").result[0]
    keypoints = instantid_nodes.LikenessFaceKeypoints.execute(antelope, pose, "largest", 0, 0, 0).result[0]
    pos, neg = instantid_nodes.LikenessInstantIDControl.execute(positive, negative, identitynet, tokens, keypoints,
                                                                0.6, 0.0, 1.0).result
    assert torch.equal(one[1][0][1]["cross_attn_controlnet"], pos[0][1]["cross_attn_controlnet"])
    assert torch.equal(one[2][0][1]["cross_attn_controlnet"], neg[0][1]["cross_attn_controlnet"])
    assert torch.equal(one[1][0][1]["control"].cond_hint_original, pos[0][1]["control"].cond_hint_original)
    assert one[1][0][1]["control"].strength == 0.6
    torch.testing.assert_close(sample_sdxl(one[0], one[1], one[2], steps=1), sample_sdxl(patched, pos, neg, steps=1),
                               rtol=0, atol=0)
    assert "patches_replace" not in model.model_options["transformer_options"] and not model.patches  # untouched
    assert "cross_attn_controlnet" not in positive[0][1] and "control" not in negative[0][1]
    without_pose = instantid_nodes.LikenessInstantID.execute(model, positive, negative, iid_adapter, identitynet,
                                                             antelope, photos, 0.8, 0.6, 0.0, 1.0, 0.3).result
    expected = instantid.keypoint_images(refs.face.keypoints[:1], refs.face.image_sizes[:1]).movedim(-1, 1)
    assert torch.equal(without_pose[1][0][1]["control"].cond_hint_original, expected)


def test_one_node_errors(iid_adapter, antelope, identitynet, tmp_path):
    photo = fm.to_comfy(fm.face_image(seed=1))
    positive, negative = conditioning_pair()
    run = instantid_nodes.LikenessInstantID.execute
    published = variants.detect(builders.official_shapes(INSTANTID), INSTANTID)  # full size, shapes only
    full_size = adapter_mod.Adapter(INSTANTID, published, torch.nn.Identity(), {})
    with pytest.raises(errors.IncompatibleError, match=r"is for SDXL .* but the MODEL is SD1\.5"):
        run(builders.build_unet("sd15", tiny=False), positive, negative, full_size, identitynet, antelope, photo, 0.8,
            0.8, 0.0, 1.0, 0.35)
    plus = adapter_mod.load_adapter(builders.save_safetensors(
        str(tmp_path / "plus.safetensors"), builders.tiny_adapter_state(
            "resampler", [s.width for s in sites_mod.find_sites(builders.build_unet("sdxl"))], input_width=64,
            tokens=16)))
    with pytest.raises(errors.IncompatibleError, match="not InstantID"):
        run(builders.build_unet("sdxl"), positive, negative, plus, identitynet, antelope, photo, 0.8, 0.8, 0.0, 1.0,
            0.35)
    # the unified loader's control_net output when no IdentityNet file was found: where to put it, before any work
    with pytest.raises(pack("nodes.core.presets").MissingModelError) as e:
        run(builders.build_unet("sdxl"), positive, negative, iid_adapter, None, antelope, photo, 0.8, 0.8, 0.0, 1.0,
            0.35)
    text = str(e.value)
    assert "diffusion_pytorch_model.safetensors" in text and "InstantX/InstantID" in text, text
    assert "models/controlnet" in text and all(f in text for f in folder_paths.get_folder_paths("controlnet")), text
    with pytest.raises(pack("nodes.core.presets").MissingModelError, match="models/controlnet"):
        instantid_nodes.LikenessInstantIDControl.execute(positive, negative, None, references.project_references(
            iid_adapter, face_refs(seed=4)), torch.rand(1, 64, 64, 3), 0.8, 0.0, 1.0)


def test_identity_tokens_and_keys_are_shared_across_clones(iid_adapter):
    tokens = references.project_references(iid_adapter, face_refs(seed=7))
    model = builders.build_unet("sdxl")
    patched = pack("nodes.apply").apply_tokens(model, iid_adapter, tokens, 0.8)
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replaces) == 70
    clone = patched.clone()
    deep = copy.deepcopy(patched.model_options)
    for key, replace in replaces.items():  # each clone a light replace of its own; the prompt's K/V are shared
        for other in (clone.model_options, deep):
            copied = other["transformer_options"]["patches_replace"]["attn2"][key]
            assert copied.prompts[0] is replace.prompts[0]
            assert copied.prompts[0].site_kv[key].k_cond.data_ptr() == replace.prompts[0].site_kv[key].k_cond.data_ptr()
    prompts = {p for r in replaces.values() for p in r.prompts}
    assert len(prompts) == 1  # one set of K/V for all 70 sites, computed once
    assert "patches_replace" not in model.model_options["transformer_options"]


# ---------------------------------------------------------------- the unified loader and the doctor

@pytest.fixture()
def instantid_folders(tmp_path):
    """Fresh adapter, controlnet and insightface folders (the only ones searched), as extra_model_paths.yaml adds."""
    kinds = ("ipadapter", "instantid", "controlnet", "insightface")
    saved = {k: folder_paths.folder_names_and_paths[k] for k in kinds}
    for kind in kinds:
        (tmp_path / kind).mkdir()
        folder_paths.folder_names_and_paths[kind] = ([str(tmp_path / kind)], saved[kind][1])
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.filename_list_cache.clear()


def test_instantid_preset_finds_adapter_antelopev2_and_identitynet(instantid_folders):
    root = instantid_folders
    # a converted (float16) full-size InstantID in models/instantid: the folder names it
    write_header_only(root / "instantid" / "ip-adapter.safetensors", published_instantid_shapes(), ("F16", "F16"))
    (root / "controlnet" / "instantid").mkdir()
    tiny = builders.tiny_identitynet_state(seed=2)
    builders.save_safetensors(str(root / "controlnet" / "instantid" / "diffusion_pytorch_model.safetensors"), tiny)
    builders.save_safetensors(str(root / "controlnet" / "canny_sdxl.safetensors"), tiny)  # any other ControlNet
    fm.write_pack(str(root / "insightface" / "models" / "antelopev2"), style="antelopev2")
    fm.write_pack(str(root / "insightface" / "models" / "buffalo_l"))
    folder_paths.filename_list_cache.clear()
    catalog = pack("nodes.host.catalog")
    assert [e.name.replace(os.sep, "/") for e in catalog.identitynets()] == [
        "instantid/diffusion_pytorch_model.safetensors"]
    unified = pack("nodes.unified")
    model = builders.build_unet("sdxl", tiny=False)
    with builders.comfy_knows_the_tiny_sdxl():
        out = unified.LikenessUnifiedLoader.execute(model, "INSTANTID", 0.6, "buffalo_l")
    returned, adapter, clip_vision, face_model, control_net = out.args
    assert returned is model and clip_vision is None  # InstantID has no LoRA and reads no CLIP features
    assert instantid.is_instantid(adapter) and face_model.pack == "antelopev2"
    assert isinstance(control_net, comfy.controlnet.ControlNet)
    text = str(out.ui.as_dict()) if hasattr(out.ui, "as_dict") else str(out.ui)
    assert "replaced" in text and "instantid" in text
    (root / "controlnet" / "instantid" / "diffusion_pytorch_model.safetensors").unlink()
    folder_paths.filename_list_cache.clear()
    out = unified.LikenessUnifiedLoader.execute(model, "INSTANTID", 0.6, "antelopev2")
    assert out.args[4] is None
    text = str(out.ui.as_dict()) if hasattr(out.ui, "as_dict") else str(out.ui)
    assert "no IdentityNet ControlNet found" in text and "InstantX/InstantID" in text


def test_instantid_preset_missing_adapter_and_doctor(instantid_folders):
    presets = pack("nodes.core.presets")
    unified = pack("nodes.unified")
    with pytest.raises(presets.MissingModelError) as e:
        unified.choose_adapter("INSTANTID", "SDXL")
    text = str(e.value)
    assert "ip-adapter.bin" in text and "huggingface.co/InstantX/InstantID" in text and "models/instantid" in text
    assert str(instantid_folders / "instantid") in text and str(instantid_folders / "ipadapter") in text
    with pytest.raises(presets.MissingModelError, match="exists only for SDXL"):
        presets.choice_for("INSTANTID", "SD1.5")
    report = pack("nodes.doctor").report()
    assert "InstantID (SDXL)" in report and "non-commercial research" in report and "consent" in report
    assert "missing: ip-adapter.bin from huggingface.co/InstantX/InstantID -> models/instantid" in report
    assert "missing: diffusion_pytorch_model.safetensors" in report and "antelopev2 missing" in report
    assert f"instantid: {instantid_folders / 'instantid'}" in report and "controlnet: " in report
    write_header_only(instantid_folders / "instantid" / "ip-adapter.safetensors", published_instantid_shapes(),
                      ("F32", "F32"))
    fm.write_pack(str(instantid_folders / "insightface" / "models" / "antelopev2"), style="antelopev2")
    folder_paths.filename_list_cache.clear()
    report = pack("nodes.doctor").report()
    assert "  adapter: ip-adapter.safetensors" in report and "antelopev2 found" in report
    row = next(line for line in report.splitlines() if "INSTANTID" in line)
    assert row.startswith("  OK ") and "ControlNet not found" in row


# ---------------------------------------------------------------- several photos: merge and saved references

def test_merge_keeps_keypoints_row_by_row_and_drops_outliers():
    merge = pack("nodes.core.merge")
    a, b = face_refs(2, seed=1), face_refs(1, seed=2)
    gathered = merge.gather([("references_1", a), ("references_2", b)])
    face = gathered.references.face
    assert torch.equal(face.keypoints, torch.cat([a.face.keypoints, b.face.keypoints]))
    concat, _ = merge.merge_references(gathered, "concat", weights=(1, 0, 1))
    assert torch.equal(concat.face.keypoints, face.keypoints[[0, 2]])
    same = face_refs(3, seed=5, scale=1.0)  # three nearly equal identities, and one far away
    far = references.References(face=references.FaceIdentity(
        "antelopev2", -same.face.normed[:1], -same.face.raw[:1], same.face.keypoints[:1] + 7,
        same.face.image_sizes[:1]))
    merged, report = merge.merge_references(merge.gather([("a", same), ("b", far)]), "average", outlier_threshold=0.3)
    assert report.dropped_as_outliers == (3,) and merged.count == 1
    torch.testing.assert_close(merged.face.raw, same.face.raw.mean(0, keepdim=True))
    assert torch.equal(merged.face.keypoints, same.face.keypoints[:1])  # the pose of the first kept photo
    without = references.References(face=references.FaceIdentity("antelopev2", same.face.normed, same.face.raw))
    assert merge.gather([("a", same), ("b", without)]).references.face.keypoints is None


def test_saved_references_keep_raw_identity_and_keypoints(tmp_path, iid_adapter):
    io_core = pack("nodes.core.references_io")
    refs = face_refs(3, seed=11)
    path = io_core.save_references(refs, str(tmp_path / "alice.safetensors"))
    import safetensors

    with safetensors.safe_open(path, framework="pt") as f:
        meta = f.metadata()
    assert meta["format_version"] == "2" and meta["face.keypoints"] == "5"
    loaded = io_core.load_references(path)
    assert torch.equal(loaded.face.raw, refs.face.raw) and torch.equal(loaded.face.keypoints, refs.face.keypoints)
    assert torch.equal(loaded.face.image_sizes, refs.face.image_sizes) and loaded.face.model == "antelopev2"
    torch.testing.assert_close(references.project_references(iid_adapter, loaded).cond,
                               references.project_references(iid_adapter, refs).cond, rtol=0, atol=0)
    # files saved before keypoints existed (format 1, identities only) still load
    old = references.References(face=references.FaceIdentity("buffalo_l", refs.face.normed, refs.face.raw))
    old_path = io_core.save_references(old, str(tmp_path / "old.safetensors"))
    with safetensors.safe_open(old_path, framework="pt") as f:
        assert f.metadata()["format_version"] == "1" and "face.keypoints" not in f.keys()
    assert io_core.load_references(old_path).face.keypoints is None


def test_damaged_keypoints_are_refused(tmp_path):
    import safetensors.torch

    io_core = pack("nodes.core.references_io")
    tensors, meta = io_core.to_tensors_and_metadata(face_refs(2, seed=3))
    tensors["face.image_sizes"] = tensors["face.image_sizes"].float()
    safetensors.torch.save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(errors.ReferencesFileError, match="face.image_sizes"):
        io_core.load_references(str(tmp_path / "bad.safetensors"))
    tensors, meta = io_core.to_tensors_and_metadata(face_refs(2, seed=3))
    tensors["face.keypoints"] = tensors["face.keypoints"][:1]
    safetensors.torch.save_file(tensors, str(tmp_path / "bad2.safetensors"), metadata=meta)
    with pytest.raises(errors.ReferencesFileError, match="face.keypoints"):
        io_core.load_references(str(tmp_path / "bad2.safetensors"))


def test_the_multi_photo_workflow_drops_its_outlier(antelope):
    """The example's photos and merge settings: the third photo (another person) is left out."""
    from PIL import Image

    from conftest import PACK
    from test_workflows import _load, widget_values

    workflow = _load(PACK / "workflows" / "likeness_instantid_multi_photo_pose.json")
    merge_node = next(n for n in workflow["nodes"] if n["type"] == "LikenessMergeReferences")
    settings = widget_values(merge_node)
    photos = [np.array(Image.open(PACK / "workflows" / "inputs" / f"likeness_face_{i}.png").convert("RGB"))
              for i in (1, 2, 3)]
    refs = host_face.embed_faces(antelope, fm.to_comfy(*photos))[0]
    out = pack("nodes.merge").LikenessMergeReferences.execute(
        settings["mode"], settings["weights"], settings["drop_outliers"], settings["outlier_threshold"],
        references_1=refs)
    merged = out.result[0]
    assert merged.count == 1
    torch.testing.assert_close(merged.face.raw, refs.face.raw[:2].mean(0, keepdim=True))
    text = str(out.ui.as_dict() if hasattr(out.ui, "as_dict") else out.ui)
    assert "2 of 3 references kept" in text and "dropped as outliers" in text
