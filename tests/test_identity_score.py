"""Likeness Identity Score on synthetic people with known identities, host functions and the real executor.

The face pack here has the test suite's disc detector and a recogniser that sees only colour (`colour_only` in
tests/face_models.py); each person is a different colour pattern painted over a grey face, so photos of one person
have cosines near 0.8 and different people near 0, as with a real recogniser. The oracle for what the node reads
from an output image is insightface's own `FaceAnalysis` on the same files.
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import face_models as fm
import folder_paths
from conftest import pack, run_prompt
from test_faceid_end_to_end import ui_text

insightface = pytest.importorskip("insightface")
from insightface.app import FaceAnalysis  # noqa: E402

host_face = pack("nodes.host.face")
host_check = pack("nodes.host.check")
identity = pack("nodes.core.identity")
errors = pack("nodes.core.errors")
references_mod = pack("nodes.core.references")

PACK = "synth_id"  # colour-only recogniser: identities are colour patterns
OTHER_PACK = fm.PACK  # the suite's usual pack, to make references with another pack


def one(pattern, cx=320):
    return fm.person_face(faces=((cx, 224, pattern),))


def photos_of(person, photos=range(3)):
    return [one(fm.photo_pattern(person, p)) for p in photos]


def nobody():
    return fm.person_face(faces=())


@pytest.fixture(scope="module")
def face_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity_faces")
    fm.write_pack(str(root / "models" / PACK), colour_only=True)
    fm.write_pack(str(root / "models" / OTHER_PACK))
    with fm.model_folder("insightface", str(root)):
        yield root


@pytest.fixture(scope="module")
def face_model(face_root):
    return host_face.load_face_model(PACK, "CPU")


@pytest.fixture(scope="module")
def analysis(face_root):
    app = FaceAnalysis(name=str(face_root / "models" / PACK), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=0, det_size=(640, 640))
    return app


def analyse(app, rgb):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return app.get(np.ascontiguousarray(rgb[..., ::-1]))


def refs_of(face_model, images):
    return host_face.embed_faces(face_model, fm.to_comfy(*images))[0]


@pytest.fixture(scope="module")
def person_a(face_model):
    return refs_of(face_model, photos_of(0))


@pytest.fixture(scope="module")
def person_b(face_model):
    return refs_of(face_model, photos_of(1))


# ---------------------------------------------------------------- what the node reads from an output

def test_output_faces_equal_face_analysis_bit_for_bit(face_model, analysis):
    two = fm.person_face(faces=((480, 224, fm.photo_pattern(1, 7)), (160, 224, fm.photo_pattern(0, 7))))
    for rgb in (one(fm.photo_pattern(0, 5)), two, fm.face_image(faces=((200, 200, 90), (460, 260, 60)), seed=2)):
        expected = sorted(analyse(analysis, rgb), key=lambda f: f.bbox[0] + f.bbox[2])
        vectors, positions, note = host_check.faces_in(face_model, fm.to_comfy(rgb)[0], 0)
        assert len(expected) == vectors.shape[0] == len(positions) >= 1 and note == ""
        for ours, theirs in zip(vectors, expected):
            assert ours.dtype == torch.float32 and np.array_equal(ours.numpy(), theirs.embedding)


def test_the_synthetic_people_behave_like_a_recogniser_sees_people(face_model, person_a, person_b):
    a, b = person_a.face.normed, person_b.face.normed
    same = (a @ a.T)[~torch.eye(3, dtype=torch.bool)]
    assert same.min() > 0.6 and (a @ b.T).abs().max() < 0.3


def test_score_is_the_documented_formula_on_face_analysis_embeddings(face_model, analysis, person_a):
    refs = [analyse(analysis, rgb)[0].normed_embedding.astype(np.float64) for rgb in photos_of(0)]
    loo = [float(np.dot(r, np.mean([o for o in refs if o is not r], axis=0))
                 / np.linalg.norm(np.mean([o for o in refs if o is not r], axis=0))) for r in refs]
    baseline = np.mean(loo)
    centroid = np.mean(refs, axis=0)
    output = one(fm.photo_pattern(0, 9))
    e = analyse(analysis, output)[0].embedding.astype(np.float64)
    expected = max(0.0, np.dot(e, centroid) / np.linalg.norm(e) / np.linalg.norm(centroid) / baseline)
    verdict = host_check.score_faces(face_model, [("references", person_a)], fm.to_comfy(output), 0.0)
    assert verdict.scores[0] == pytest.approx(expected, abs=1e-5)
    assert verdict.people[0].calibration.baseline == pytest.approx(baseline, abs=1e-6)
    assert verdict.people[0].threshold == pytest.approx(min(1.0, 0.4 / baseline), abs=1e-6)


def test_scores_follow_the_likeness_and_best_is_the_closest(face_model, person_a):
    a, b = fm.photo_pattern(0, 11), fm.photo_pattern(1, 11)
    batch = [one(fm.blend_pattern(a, b, 0.8)),  # 0: mostly someone else
             one(fm.blend_pattern(a, b, 0.3)),  # 1: mostly this person
             nobody(),                          # 2: no face at all
             one(a),                            # 3: a new photo of this person
             one(b)]                            # 4: someone else
    verdict = host_check.score_faces(face_model, [("references", person_a)], fm.to_comfy(*batch), 0.0)
    s = verdict.scores
    assert s[3] > s[1] > s[0] > s[4] >= 0.0 and s[2] == 0.0
    assert 0.85 < s[3] < 1.2  # a fresh photo is about as alike as the references are to each other
    assert verdict.best == 3
    assert verdict.passed == [1, 3]
    text = verdict.text()
    assert "Image 2: 0.000 fail. No face found: it scores 0." in text
    assert "Best: image 3" in text and "Passed: 2 of 5 (images 1, 3)." in text
    assert "cosine" in text and "baseline" in text


def test_manual_threshold(face_model, person_a):
    mostly_a = fm.blend_pattern(fm.photo_pattern(0, 11), fm.photo_pattern(1, 11), 0.3)
    batch = fm.to_comfy(one(fm.photo_pattern(0, 11)), one(mostly_a))
    auto = host_check.score_faces(face_model, [("references", person_a)], batch, 0.0)
    strict = host_check.score_faces(face_model, [("references", person_a)], batch, 1.0)
    assert auto.scores == strict.scores and auto.passed == [0, 1] and strict.passed == [0]
    assert "set on the node" in strict.text()


def test_one_reference_uses_the_verification_threshold_as_baseline(face_model):
    single = refs_of(face_model, photos_of(0, [0]))
    verdict = host_check.score_faces(face_model, [("references", single)], fm.to_comfy(one(fm.photo_pattern(0, 3))),
                                     0.0)
    cosine = float(torch.nn.functional.cosine_similarity(
        torch.from_numpy(face_model.embed(*_bgr_and_kps(face_model, one(fm.photo_pattern(0, 3))))),
        single.face.normed[0], dim=0))
    assert verdict.scores[0] == pytest.approx(cosine / 0.4, abs=1e-5)
    assert verdict.people[0].threshold == 1.0
    assert "insightface" in verdict.text() and "one reference" in verdict.text().lower()


def _bgr_and_kps(face_model, rgb):
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    return bgr, face_model.detect(bgr)[0][0].kps


# ---------------------------------------------------------------- two people

def test_two_people_are_assigned_and_a_face_seen_twice_is_a_swap(face_model, person_a, person_b):
    both = fm.person_face(faces=((160, 224, fm.photo_pattern(1, 20)), (480, 224, fm.photo_pattern(0, 20))))
    twice = fm.person_face(faces=((160, 224, fm.photo_pattern(0, 21)), (480, 224, fm.photo_pattern(0, 22))))
    only_b = one(fm.photo_pattern(1, 23))
    inputs = [("references", person_a), ("references_2", person_b)]
    verdict = host_check.score_faces(face_model, inputs, fm.to_comfy(both, twice, only_b), 0.0)
    right, swapped, missing = verdict.images
    assert right.person_faces == (1, 0) and right.passed and not right.flagged  # face 2 (right) is person 1
    assert [f.swap_with for f in swapped.faces].count(0) == 1 and swapped.flagged and not swapped.passed
    assert swapped.score < 0.3
    assert missing.person_faces == (None, 0) and missing.score == 0.0
    lines = verdict.text().splitlines()
    assert lines[3].startswith("Image 0: ") and "Face 1 (x 99-221) -> person 2" in lines[3]
    assert "Face 2 (x 419-541) -> person 1" in lines[3]
    assert "SWAP: closer to person 1" in lines[4]
    assert "No face found for person 1" in lines[5]
    assert verdict.passed == [0] and verdict.best == 0


def test_a_face_of_both_people_is_a_blend(face_model, person_a, person_b):
    both = fm.blend_pattern(fm.photo_pattern(0, 30), fm.photo_pattern(1, 31), 0.5)
    mixed = fm.person_face(faces=((160, 224, both), (480, 224, fm.photo_pattern(1, 30))))
    verdict = host_check.score_faces(face_model, [("references", person_a), ("references_2", person_b)],
                                     fm.to_comfy(mixed), 0.5)
    face = verdict.images[0].faces[0]
    assert face.blend_of == (0, 1) and not verdict.images[0].passed
    assert "BLEND" in verdict.text()


# ---------------------------------------------------------------- batches

def test_64_images_stream_one_at_a_time_through_the_loaded_models(face_model, person_a, monkeypatch):
    images = fm.to_comfy(*([one(fm.photo_pattern(0, 40))] * 64))
    seen = []
    detect = type(face_model).detect

    def counting_detect(self, bgr):
        seen.append(bgr.shape)
        return detect(self, bgr)

    monkeypatch.setattr(type(face_model), "detect", counting_detect)
    monkeypatch.setattr(host_face, "load_face_model", lambda *a, **k: pytest.fail("no model loads while scoring"))
    recogniser = face_model.recogniser.session
    verdict = host_check.score_faces(face_model, [("references", person_a)], images, 0.0)
    assert seen == [(480, 640, 3)] * 64
    assert face_model.recogniser.session is recogniser
    assert len(verdict.scores) == 64 and verdict.passed == list(range(64))
    scores, best, passed, report = host_check.outputs(verdict, images)
    assert passed is images  # everything passed: the batch itself, not a copy
    assert best.shape == (1, 480, 640, 3) and best.data_ptr() == images.data_ptr()  # a view, not a copy


def test_images_too_small_for_a_face_score_zero(face_model, person_a):
    verdict = host_check.score_faces(face_model, [("references", person_a)], torch.rand(2, 8, 8, 3), 0.0)
    assert verdict.scores == [0.0, 0.0] and "too small for face detection" in verdict.text()


# ---------------------------------------------------------------- bad inputs

def test_references_without_face_identities_are_refused(face_model, models_dir):
    import builders

    cv = builders.load_tiny_clip_vision(str(models_dir / "clip_vision" / "tiny-clip-h.safetensors"))
    image_refs = pack("nodes.host.encode").encode_references(cv, fm.to_comfy(one(None)))
    with pytest.raises(errors.IncompatibleError, match=r"`references` hold CLIP image features \(made by Likeness "
                                                       r"Image Encode\).*Likeness Face Embed.*Subject Score"):
        host_check.score_faces(face_model, [("references", image_refs)], fm.to_comfy(one(None)), 0.0)


def test_references_from_another_pack_name_that_pack(face_model, person_a, face_root):
    other = host_face.load_face_model(OTHER_PACK, "CPU")
    made_elsewhere = host_face.embed_faces(other, fm.to_comfy(fm.face_image(seed=1)))[0]
    with pytest.raises(errors.IncompatibleError, match=f"`references_2` were made with face model pack "
                                                       f"`{OTHER_PACK}`, but the face_model connected here is "
                                                       f"`{PACK}`.*Load `{OTHER_PACK}`"):
        host_check.score_faces(face_model, [("references", person_a), ("references_2", made_elsewhere)],
                               fm.to_comfy(one(None)), 0.0)


def test_empty_references_are_refused(face_model, person_a):
    empty = object.__new__(references_mod.References)  # nothing in the pack makes one; a foreign node might
    object.__setattr__(empty, "image", None)
    face = person_a.face
    object.__setattr__(empty, "face", dataclasses.replace(face, normed=face.normed[:0], raw=face.raw[:0],
                                                          keypoints=face.keypoints[:0],
                                                          image_sizes=face.image_sizes[:0]))
    with pytest.raises(errors.InputError, match="`references` are empty"):
        host_check.score_faces(face_model, [("references", empty)], fm.to_comfy(one(None)), 0.0)


def test_an_empty_image_batch_is_refused(face_model, person_a):
    with pytest.raises(errors.InputError, match="non-empty IMAGE batch"):
        host_check.score_faces(face_model, [("references", person_a)], torch.zeros(0, 64, 64, 3), 0.0)


# ---------------------------------------------------------------- through ComfyUI's executor

@pytest.fixture(scope="module")
def inputs_dir(face_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("identity_inputs")
    images = {"a0.png": photos_of(0)[0], "a1.png": photos_of(0)[1], "a2.png": photos_of(0)[2],
              "a_new.png": one(fm.photo_pattern(0, 50)), "b_new.png": one(fm.photo_pattern(1, 50)),
              "nobody.png": nobody(), "b0.png": photos_of(1)[0], "b1.png": photos_of(1)[1],
              "pair.png": fm.person_face(faces=((160, 224, fm.photo_pattern(0, 51)),
                                                (480, 224, fm.photo_pattern(1, 51))))}
    for name, rgb in images.items():
        Image.fromarray(rgb).save(folder / name)
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(folder))
    out = tmp_path_factory.mktemp("identity_output")
    previous_out = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(out))
    yield folder
    folder_paths.set_input_directory(previous)
    folder_paths.set_output_directory(previous_out)


def batch_of(prompt, prefix, names):
    last = None
    for i, name in enumerate(names):
        prompt[f"{prefix}{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if last is not None:
            prompt[f"{prefix}b{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": last,
                                                                              "image2": [f"{prefix}{i}", 0]}}
            last = [f"{prefix}b{i}", 0]
        else:
            last = [f"{prefix}{i}", 0]
    return last


def gate_prompt(outputs, threshold=0.0, refs=("a0.png", "a1.png", "a2.png")):
    prompt = {"fm": {"class_type": "LikenessFaceModelLoader", "inputs": {"model_pack": PACK, "provider": "CPU"}}}
    ref_images = batch_of(prompt, "r", refs)
    prompt["embed"] = {"class_type": "LikenessFaceEmbed", "inputs": {
        "face_model": ["fm", 0], "image": ref_images, "select": "largest", "index": 0, "on_no_face": "error",
        "crop_size": "224"}}
    prompt["score"] = {"class_type": "LikenessIdentityScore", "inputs": {
        "face_model": ["fm", 0], "references": ["embed", 0], "images": batch_of(prompt, "o", outputs),
        "threshold": threshold}}
    # passed -> scaled -> saved: the block must reach past the first node it meets
    prompt["scale"] = {"class_type": "ImageScaleBy", "inputs": {
        "image": ["score", 2], "upscale_method": "nearest-exact", "scale_by": 0.5}}
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": ["scale", 0], "filename_prefix": "gate/passed"}}
    prompt["best"] = {"class_type": "SaveImage", "inputs": {"images": ["score", 1], "filename_prefix": "gate/best"}}
    return prompt


def test_the_gate_saves_only_the_images_that_pass(inputs_dir):
    result = run_prompt(gate_prompt(["b_new.png", "a_new.png", "nobody.png"]))
    assert result.success, result.execution_error()
    outputs = result.executor.history_result["outputs"]
    assert len(outputs["save"]["images"]) == 1 and len(outputs["best"]["images"]) == 1
    name = outputs["save"]["images"][0]["filename"]
    saved = Image.open(os.path.join(folder_paths.get_output_directory(), "gate", name))
    assert saved.size == (320, 240)
    text = ui_text(result, "score")
    assert "Passed: 1 of 3 (image 1)." in text and "Best: image 1" in text


def test_the_gate_blocks_downstream_when_none_passes_without_an_error(inputs_dir):
    result = run_prompt(gate_prompt(["b_new.png", "nobody.png"]))
    assert result.success and result.execution_error() is None
    outputs = result.executor.history_result["outputs"]
    assert "save" not in outputs  # blocked: neither the scale nor the save ran
    assert len(outputs["best"]["images"]) == 1  # the other outputs still flow
    text = ui_text(result, "score")
    assert "No image passed, so the `passed` output is blocked" in text and "did not run" in text
    assert not any(event == "execution_error" for event, _ in result.server.messages)


def test_scores_are_one_float_per_image_for_downstream_nodes(inputs_dir):
    prompt = gate_prompt(["a_new.png", "b_new.png", "nobody.png"])
    prompt["show"] = {"class_type": "PreviewAny", "inputs": {"source": ["score", 0]}}
    result = run_prompt(prompt)
    assert result.success, result.execution_error()
    shown = [data["output"]["text"] for event, data in result.server.messages
             if event == "executed" and data.get("node") == "show"]
    values = [float(t) for texts in shown for t in texts]
    assert len(values) == 3 and values[0] > 0.8 and values[2] == 0.0


def test_two_people_through_the_executor_report_the_assignment(inputs_dir):
    prompt = gate_prompt(["pair.png"])
    prompt["embed_b"] = {"class_type": "LikenessFaceEmbed", "inputs": {
        "face_model": ["fm", 0], "image": batch_of(prompt, "p", ["b0.png", "b1.png"]), "select": "largest",
        "index": 0, "on_no_face": "error", "crop_size": "224"}}
    prompt["score"]["inputs"]["references_2"] = ["embed_b", 0]
    result = run_prompt(prompt)
    assert result.success, result.execution_error()
    text = ui_text(result, "score")
    assert "Face 1 (x 99-221) -> person 1" in text and "Face 2 (x 419-541) -> person 2" in text
    assert "Passed: 1 of 1" in text


def test_image_encode_references_give_a_clear_error_through_the_executor(inputs_dir, models_dir):
    prompt = gate_prompt(["a_new.png"])
    prompt["cv"] = {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": "tiny-clip-h.safetensors"}}
    prompt["encode"] = {"class_type": "LikenessImageEncode", "inputs": {
        "clip_vision": ["cv", 0], "image": ["r0", 0], "crop": "center", "sharpen": 0.0}}
    prompt["score"]["inputs"]["references"] = ["encode", 0]
    err = run_prompt(prompt).execution_error()
    assert err["node_type"] == "LikenessIdentityScore"
    assert "not face identities" in err["exception_message"] and "Traceback" not in err["exception_message"]


def test_threshold_out_of_range_is_refused_at_validation(inputs_dir):
    result = run_prompt(gate_prompt(["a_new.png"], threshold=2.5))
    assert not result.valid and "threshold" in str(result.node_errors)
