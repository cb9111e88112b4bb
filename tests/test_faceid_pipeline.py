"""Faces in, identity embeddings out: parity with insightface itself on synthetic model packs (no downloads).

The oracle is insightface's own `FaceAnalysis` on the same .onnx files and the same image, and its
`face_align.norm_crop` for the aligned crops. Likeness must give the same boxes, keypoints, scores, raw and
normalised embeddings and crops, bit for bit, starting from a ComfyUI IMAGE (float RGB 0-1).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

import face_models as fm
from conftest import pack

insightface = pytest.importorskip("insightface")
from insightface.app import FaceAnalysis  # noqa: E402
from insightface.utils import face_align  # noqa: E402

core_face = pack("nodes.core.face")
host_face = pack("nodes.host.face")
errors = pack("nodes.core.errors")


@pytest.fixture(scope="module")
def face_root(tmp_path_factory):
    with fm.insightface_folder(tmp_path_factory) as root:
        yield root


@pytest.fixture(scope="module")
def face_model(face_root):
    return host_face.load_face_model(fm.PACK, "CPU")


@pytest.fixture(scope="module")
def analysis(face_root):
    app = FaceAnalysis(name=str(face_root / "models" / fm.PACK), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    return app


def norm_crop(bgr, kps, size):
    with warnings.catch_warnings():  # scikit-image deprecates the call insightface makes
        warnings.simplefilter("ignore", FutureWarning)
        return face_align.norm_crop(bgr, kps, size)


def reference_faces(analysis, rgb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return analysis.get(np.ascontiguousarray(rgb[..., ::-1]))


IMAGES = {
    "one face": dict(faces=((320, 200, 80),), seed=1),
    "two faces": dict(faces=((200, 200, 90), (460, 260, 60)), seed=2),
    "portrait 480x640": dict(width=480, height=640, faces=((240, 300, 95),), seed=3),
    "face at the edge": dict(faces=((600, 240, 85),), seed=4),
}


def test_the_synthetic_pack_is_routed_like_a_real_one(analysis):
    assert type(analysis.models["detection"]).__name__ in ("SCRFD", "RetinaFace")
    assert type(analysis.models["recognition"]).__name__ == "ArcFaceONNX"


@pytest.mark.parametrize("name", list(IMAGES))
def test_detections_and_embeddings_equal_insightface(name, face_model, analysis):
    rgb = fm.face_image(**IMAGES[name])
    expected = reference_faces(analysis, rgb)
    assert expected, "the synthetic detector should find the face"
    bgr = core_face.to_bgr_uint8(fm.to_comfy(rgb)[0])
    faces, size = face_model.detect(bgr)
    assert size == 640 and len(faces) == len(expected)
    for ours, theirs in zip(faces, expected):
        assert np.array_equal(ours.bbox, theirs.bbox[:4])
        assert np.array_equal(ours.kps, theirs.kps)
        assert ours.score == float(theirs.det_score)
        raw = face_model.embed(bgr, ours.kps)
        assert raw.dtype == np.float32 and np.array_equal(raw, theirs.embedding)
        assert np.array_equal(core_face.normalise(raw[None])[0], theirs.normed_embedding)


@pytest.mark.parametrize("size", [112, 224, 256])
def test_crops_equal_norm_crop_for_detected_faces(size, face_model, analysis):
    rgb = fm.face_image(**IMAGES["two faces"])
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for face in reference_faces(analysis, rgb):
        assert np.array_equal(core_face.align_face(bgr, face.kps, size), norm_crop(bgr, face.kps, size))


def test_alignment_equals_insightface_for_rotated_and_scaled_faces():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (500, 700, 3), dtype=np.uint8)
    for _ in range(60):
        angle, scale, centre = rng.uniform(-1.2, 1.2), rng.uniform(0.4, 3.0), rng.uniform(120, 420, 2)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        kps = ((core_face.ARCFACE_TEMPLATE - 56.0) @ rot.T * scale + centre + rng.normal(0, 2.0, (5, 2)))
        kps = kps.astype(np.float32)
        for size in (112, 224, 256):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                expected_matrix = face_align.estimate_norm(kps, size)
            assert np.array_equal(core_face.alignment_matrix(kps, size), expected_matrix)
            assert np.array_equal(core_face.align_face(img, kps, size), norm_crop(img, kps, size))


def test_bad_crop_size_and_degenerate_keypoints():
    with pytest.raises(errors.InputError, match="multiple of 112 or 128"):
        core_face.alignment_template(200)
    with pytest.raises(errors.InputError, match="degenerate"):
        core_face.align_face(np.zeros((50, 50, 3), np.uint8), np.full((5, 2), 10.0, np.float32), 112)


# ---------------------------------------------------------------- ComfyUI IMAGE -> insightface input

def test_comfy_image_converts_back_to_the_exact_bgr_bytes():
    rgb = fm.face_image(seed=5)
    bgr = core_face.to_bgr_uint8(fm.to_comfy(rgb)[0])
    assert bgr.dtype == np.uint8 and bgr.flags["C_CONTIGUOUS"] and bgr.shape == rgb.shape
    assert np.array_equal(bgr, rgb[..., ::-1])


def test_channel_order_matters_so_the_check_above_is_not_vacuous(face_model):
    rgb = fm.face_image(seed=6)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    faces, _ = face_model.detect(bgr)
    assert not np.array_equal(face_model.embed(bgr, faces[0].kps), face_model.embed(rgb, faces[0].kps))


def test_embed_faces_from_a_comfy_image_equals_face_analysis(face_model, analysis):
    rgb = [fm.face_image(**IMAGES["one face"]), fm.face_image(faces=((330, 220, 75),), seed=9)]
    refs, crops, summary = host_face.embed_faces(face_model, fm.to_comfy(*rgb))
    assert refs.count == 2 and refs.image is None and refs.face.model == fm.PACK
    for i, image in enumerate(rgb):
        largest = max(reference_faces(analysis, image), key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        assert torch.equal(refs.face.raw[i], torch.from_numpy(largest.embedding))
        assert torch.equal(refs.face.normed[i], torch.from_numpy(largest.normed_embedding))
        crop = norm_crop(np.ascontiguousarray(image[..., ::-1]), largest.kps, 224)
        assert torch.equal(crops[i], torch.from_numpy(crop[..., ::-1].astype(np.float32) / 255.0))
    assert crops.shape == (2, 224, 224, 3)
    assert "2 face(s) from 2 image(s)" in summary and "not FaceID Plus" in summary


# ---------------------------------------------------------------- several faces

def three_faces():
    # left: the most confident; middle: the largest, but less confident (too bright for the detector); right: small
    return fm.face_image(width=960, height=480, faces=((160, 240, 120), (470, 240, 170), (790, 220, 85)), seed=11)


def test_select_orders(face_model):
    bgr = core_face.to_bgr_uint8(fm.to_comfy(three_faces())[0])
    faces, _ = face_model.detect(bgr)
    assert len(faces) == 3
    centre_x = lambda f: (f.bbox[0] + f.bbox[2]) / 2  # noqa: E731
    left_to_right = core_face.order_faces(faces, "left to right")
    assert [centre_x(f) for f in left_to_right] == sorted(centre_x(f) for f in faces)
    assert core_face.order_faces(faces, "right to left") == left_to_right[::-1]
    largest = core_face.choose_face(faces, "largest", 0)
    assert largest.area == max(f.area for f in faces)
    confident = core_face.choose_face(faces, "most confident", 0)
    assert confident.score == max(f.score for f in faces)
    assert largest is not confident, "the test image should separate size from confidence"
    assert largest is left_to_right[1] and confident is left_to_right[0]
    assert core_face.choose_face(faces, "largest", 2).area == min(f.area for f in faces)
    assert core_face.choose_face(faces, "largest", 3) is None
    with pytest.raises(errors.InputError, match="select `biggest`"):
        core_face.order_faces(faces, "biggest")


def test_select_and_index_pick_the_face_whose_embedding_is_returned(face_model):
    image = fm.to_comfy(three_faces())
    bgr = core_face.to_bgr_uint8(image[0])
    faces, _ = face_model.detect(bgr)
    for select, index in (("largest", 0), ("left to right", 0), ("left to right", 2), ("most confident", 0)):
        refs, _, _ = host_face.embed_faces(face_model, image, select, index)
        expected = face_model.embed(bgr, core_face.choose_face(faces, select, index).kps)
        assert np.array_equal(refs.face.raw[0].numpy(), expected), (select, index)


# ---------------------------------------------------------------- unusual images

def test_grayscale_image_works_like_its_three_channel_version(face_model):
    gray = fm.face_image(seed=12).mean(axis=-1, keepdims=True).round().astype(np.uint8)
    one = host_face.embed_faces(face_model, fm.to_comfy(gray))[0]
    three = host_face.embed_faces(face_model, fm.to_comfy(np.repeat(gray, 3, axis=-1)))[0]
    assert torch.equal(one.face.raw, three.face.raw)


def test_rgba_image_works_and_ignores_alpha(face_model):
    rgb = fm.face_image(seed=13)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 77, np.uint8)], axis=-1)
    assert torch.equal(host_face.embed_faces(face_model, fm.to_comfy(rgba))[0].face.raw,
                       host_face.embed_faces(face_model, fm.to_comfy(rgb))[0].face.raw)


def test_tiny_image_gets_a_clear_error(face_model):
    with pytest.raises(errors.InputError, match=r"reference image 0 is 8x8 pixels.*at least 16x16"):
        host_face.embed_faces(face_model, torch.rand(1, 8, 8, 3))


def test_two_channel_image_gets_a_clear_error(face_model):
    with pytest.raises(errors.InputError, match="2 channels"):
        host_face.embed_faces(face_model, torch.rand(1, 64, 64, 2))


def test_huge_image_works(face_model, analysis):
    big = fm.face_image(width=4000, height=3000, faces=((2000, 1500, 500),), seed=14)
    refs, crops, _ = host_face.embed_faces(face_model, fm.to_comfy(big))
    expected = reference_faces(analysis, big)
    assert len(expected) == 1 and torch.equal(refs.face.raw[0], torch.from_numpy(expected[0].embedding))


def test_close_up_face_is_found_at_a_smaller_detection_size(face_model, analysis):
    close_up = fm.face_image(faces=((320, 240, 300),), seed=15)
    assert reference_faces(analysis, close_up) == [], "FaceAnalysis at 640 misses it (as real detectors do)"
    faces, size = face_model.detect(np.ascontiguousarray(close_up[..., ::-1]))
    assert len(faces) == 1 and size < 640


# ---------------------------------------------------------------- no face

def blank(h=240, w=320):
    return np.full((h, w, 3), 25, np.uint8)


def test_no_face_error_names_the_image_and_what_to_try(face_model):
    images = fm.to_comfy(fm.face_image(seed=16), fm.face_image(width=640, height=480, faces=(), seed=17))
    with pytest.raises(errors.InputError) as e:
        host_face.embed_faces(face_model, images, on_no_face="error")
    msg = str(e.value)
    assert isinstance(e.value, core_face.NoFaceError)
    assert "reference image 1" in msg and "640x480" in msg and "crop closer" in msg and "on_no_face" in msg


def test_skip_drops_images_without_a_face(face_model):
    faces = fm.face_image(seed=18)
    images = fm.to_comfy(fm.face_image(faces=(), seed=19), faces, fm.face_image(faces=(), seed=20))
    refs, crops, summary = host_face.embed_faces(face_model, images, on_no_face="skip")
    alone, _, _ = host_face.embed_faces(face_model, fm.to_comfy(faces))
    assert refs.count == 1 and crops.shape[0] == 1 and torch.equal(refs.face.raw, alone.face.raw)
    assert "skipped image(s) without a face: 0, 2" in summary


def test_all_skipped_is_a_clear_error(face_model):
    with pytest.raises(errors.InputError, match="none of the 2 reference image"):
        host_face.embed_faces(face_model, fm.to_comfy(blank(), blank()), on_no_face="skip")


def test_index_past_the_faces_found(face_model):
    with pytest.raises(errors.InputError, match=r"has 1 face\(s\) but index is 3.*from 0 to 0"):
        host_face.embed_faces(face_model, fm.to_comfy(fm.face_image(seed=21)), index=3)
    refs, _, _ = host_face.embed_faces(face_model, fm.to_comfy(fm.face_image(seed=21), three_faces()[:, :640]),
                                       index=1, on_no_face="skip")
    assert refs.count == 1


# ---------------------------------------------------------------- model packs

def test_missing_pack_says_where_the_files_go(face_root):
    with pytest.raises(core_face.FaceModelError) as e:
        host_face.load_face_model("buffalo_l", "CPU")
    msg = str(e.value)
    assert os.path.join("models", "buffalo_l", "*.onnx") in msg and "det_10g.onnx" in msg and "w600k_r50.onnx" in msg
    assert str(face_root) in msg


def test_empty_pack_folder(face_root):
    (face_root / "models" / "empty_pack").mkdir(exist_ok=True)
    with pytest.raises(core_face.FaceModelError, match=r"empty_pack has no \.onnx files.*\*\.onnx"):
        host_face.load_face_model("empty_pack", "CPU")
    assert "empty_pack" in host_face.pack_names()


def test_nested_pack_folder_is_used(face_root, face_model, analysis):
    fm.write_pack(str(face_root / "models" / "antelopev2" / "antelopev2"), extra=False)
    nested = host_face.load_face_model("antelopev2", "CPU")
    assert nested.directory.endswith(os.path.join("antelopev2", "antelopev2"))
    rgb = fm.face_image(seed=22)
    assert torch.equal(host_face.embed_faces(nested, fm.to_comfy(rgb))[0].face.raw,
                       host_face.embed_faces(face_model, fm.to_comfy(rgb))[0].face.raw)


def test_pack_without_recogniser(face_root):
    fm.write_pack(str(face_root / "models" / "no_rec"), recogniser=False)
    with pytest.raises(core_face.FaceModelError, match=r"`no_rec` .* has no face recognition model: its files are "
                                                       r"2d106det\.onnx, det_10g\.onnx"):
        host_face.load_face_model("no_rec", "CPU")


def test_damaged_model_file(face_root):
    folder = face_root / "models" / "damaged"
    fm.write_pack(str(folder))
    with open(folder / "w600k_r50.onnx", "r+b") as f:
        f.truncate(100)
    with pytest.raises(core_face.FaceModelError,
                       match=r"w600k_r50\.onnx` could not be opened.*download the pack again"):
        host_face.load_face_model("damaged", "CPU")


def test_loaded_models_are_shared(face_model):
    assert host_face.load_face_model(fm.PACK, "CPU") is face_model


# ---------------------------------------------------------------- providers and the runtime check

def test_reports_the_provider_that_runs(face_root):
    import onnxruntime

    model = host_face.load_face_model(fm.PACK, "CUDA")
    assert model.providers_used == (model.detector.session.get_providers()[0],)
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert model.providers_used == ("CPUExecutionProvider",)
        assert "CUDA was asked for" in model.describe() and "running on the CPU" in model.describe()
    auto = host_face.load_face_model(fm.PACK, "auto")  # the tests run ComfyUI with --cpu
    assert auto.providers_used == ("CPUExecutionProvider",) and "asked: auto" in auto.describe()


def test_runtime_conflict_message(monkeypatch):
    installed = {"onnxruntime", "onnxruntime-gpu"}
    monkeypatch.setattr(host_face, "_installed", lambda name: name in installed)
    monkeypatch.setattr(host_face, "active_runtime", lambda: "onnxruntime")
    msg = host_face.runtime_conflict()
    assert "onnxruntime-gpu is shadowed" in msg and "--force-reinstall --no-deps onnxruntime-gpu" in msg
    assert "\n" not in msg
    monkeypatch.setattr(host_face, "active_runtime", lambda: "onnxruntime-gpu")
    assert host_face.runtime_conflict() is None
    installed.discard("onnxruntime-gpu")
    assert host_face.runtime_conflict() is None


def test_active_runtime_reads_the_installed_build():
    import onnxruntime

    name = host_face.active_runtime()
    assert name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-rocm",
                    "onnxruntime-openvino")
    gpu_build = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert (name == "onnxruntime-gpu") == gpu_build
