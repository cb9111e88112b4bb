"""Likeness Reference Pack: choosing, framing and sizing references for edit models.

The choosing rules are checked twice: on crafted candidates (identity vectors and measures set by hand, so each
rule is isolated), and end to end on synthetic face photos run through the synthetic insightface-compatible ONNX
pack of tests/face_models.py. That recogniser's embedding is a random projection of the aligned crop's pixels,
so every synthetic face is fairly similar to every other (cosines around 0.6); the end-to-end outlier test sets
outlier_threshold for it, as the tooltip says to do for another face model.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import comfy.model_management
import comfy.utils
import face_models as fm
import nodes
from conftest import pack

rp = pack("nodes.core.reference_pack")
targets = pack("nodes.core.edit_targets")
node_module = pack("nodes.edit.reference_pack")
host_face = pack("nodes.host.face")
errors = pack("nodes.core.errors")
face_errors = pack("nodes.core.face")
ReferencePack = nodes.NODE_CLASS_MAPPINGS["LikenessReferencePack"]


# ---------------------------------------------------------------- the rules, on crafted candidates

def unit(*values):
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def candidate(i, identity, sharp=1.0, face=100.0):
    return rp.Candidate(i, 640, 480, (100.0, 100.0, 100.0 + face, 100.0 + face), identity, sharp)


PERSON = [unit(1, 0.3, 0, 0), unit(1, 0, 0.3, 0), unit(1, -0.3, 0, 0.1), unit(1, 0, -0.3, 0.2)]
IMPOSTOR = unit(0, 0, 0, 1)


def test_an_impostor_is_dropped_as_an_outlier():
    cands = [candidate(i, v) for i, v in enumerate(PERSON)] + [candidate(4, IMPOSTOR)]
    sel = rp.select(cands, 5)
    assert [c.index for c in sel.picked] == [0, 1, 2, 3]
    assert sel.verdicts[4].reason.startswith("dropped: identity unlike the others")


def test_of_two_near_duplicates_only_one_is_kept():
    twin = PERSON[0] + 0.01 * unit(0, 1, 1, 0)
    cands = [candidate(0, PERSON[0], sharp=1.0), candidate(1, twin / np.linalg.norm(twin), sharp=0.9),
             candidate(2, PERSON[1]), candidate(3, PERSON[2])]
    sel = rp.select(cands, 4)
    assert [c.index for c in sel.picked] == [0, 2, 3]
    assert "near-duplicate of photo 1" in sel.verdicts[1].reason


def test_the_sharper_of_a_blurred_and_sharp_pair_is_kept():
    cands = [candidate(0, PERSON[0], sharp=0.1), candidate(1, PERSON[0], sharp=2.0), candidate(2, PERSON[2])]
    sel = rp.select(cands, 2)
    assert [c.index for c in sel.picked] == [1, 2]
    assert "near-duplicate of photo 2" in sel.verdicts[0].reason


def test_picks_prefer_quality_and_then_difference():
    similar, different = unit(1, 0.3, 0.45, 0), unit(1, 0, 0, 1)  # cosines to PERSON[0]: 0.92 and 0.68
    cands = [candidate(0, PERSON[0], face=200), candidate(1, similar, face=190), candidate(2, different, face=150)]
    sel = rp.select(cands, 2)
    assert [c.index for c in sel.picked] == [0, 2], [v.reason for v in sel.verdicts]
    assert sel.verdicts[1].reason.startswith("not chosen")


def test_without_a_face_model_the_first_photos_are_kept_in_order():
    sel = rp.select([rp.Candidate(i, 64, 64) for i in range(5)], 3, with_faces=False)
    assert [c.index for c in sel.picked] == [0, 1, 2]


def test_framing_boxes_follow_the_documented_margins():
    face = (300.0, 200.0, 400.0, 320.0)  # 100 x 120
    x1, y1, x2, y2 = rp.framing_box("face", 1000, 1000, face)
    assert (x2 - x1, y2 - y1) == pytest.approx((rp.FACE_MARGIN * 120, rp.FACE_MARGIN * 120))
    assert ((x1 + x2) / 2, (y1 + y2) / 2) == pytest.approx((350, 260))
    x1, y1, x2, y2 = rp.framing_box("head and shoulders", 1000, 1000, face)
    assert x2 - x1 == pytest.approx(rp.HEAD_SHOULDERS_WIDTH * 100)
    assert y1 == pytest.approx(200 - rp.HEAD_SHOULDERS_ABOVE * 120)
    assert y2 == pytest.approx(320 + rp.HEAD_SHOULDERS_BELOW * 120)
    x1, y1, x2, y2 = rp.framing_box("head and shoulders", 500, 400, (20.0, 10.0, 120.0, 130.0))  # at the corner
    assert 0 <= x1 and 0 <= y1 and x2 <= 500 and y2 <= 400
    assert (x2 - x1) / (y2 - y1) == pytest.approx(rp.HEAD_SHOULDERS_WIDTH * 100 /
                                                  ((rp.HEAD_SHOULDERS_ABOVE + 1 + rp.HEAD_SHOULDERS_BELOW) * 120))
    assert rp.framing_box("as is", 640, 480, face) == (0.0, 0.0, 640.0, 480.0)


# ---------------------------------------------------------------- the node, on synthetic face photos

@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    with fm.insightface_folder(tmp_path_factory):
        yield host_face.load_face_model(fm.PACK, "CPU")


def photo(cx=320, cy=220, r=80, background=(20, 24, 30), skin=(250, 236, 222), seed=1, blur=0.0, width=640,
          height=480):
    rgb = fm.face_image(width=width, height=height, faces=((cx, cy, r),), background=background, skin=skin, seed=seed)
    if blur:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
    return fm.to_comfy(rgb)


def person():
    """Four photos of one synthetic person, framed differently."""
    return [photo(seed=1), photo(300, 250, 90, seed=2), photo(290, 230, 70, (18, 26, 28), seed=4),
            photo(330, 240, 85, (22, 22, 28), seed=6)]


def run(images, **kw):
    args = dict(target="flux kontext", count=3, framing="head and shoulders", drop_outliers=True)
    args.update(kw)
    values = {k: [v] for k, v in args.items()}
    out = ReferencePack.execute(images=images, **values)
    return out.args[0], out.args[1]


def test_the_node_drops_an_impostor_photo(face_model):
    impostor = photo(320, 220, 80, (60, 10, 60), skin=(180, 250, 120), seed=5)
    refs, report = run(person() + [impostor], count=5, face_model=face_model, outlier_threshold=0.75)
    assert len(refs) == 4
    assert "photo 5: dropped: identity unlike the others" in report


def test_the_node_keeps_one_of_two_near_duplicates_and_the_sharper_of_a_blurred_pair(face_model):
    a, b = photo(seed=1), photo(300, 250, 90, seed=2)
    duplicate = (a + 0.003 * torch.rand(a.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = photo(300, 250, 90, seed=2, blur=2.5)
    refs, report = run([blurred, a, duplicate, b], count=4, face_model=face_model, drop_outliers=False)
    assert len(refs) == 2
    assert "photo 1: dropped: near-duplicate of photo 4" in report
    assert ("photo 3: dropped: near-duplicate of photo 2" in report) != ("photo 2: dropped: near-duplicate of "
                                                                         "photo 3" in report)
    assert "WARNING: 4 references were asked for but only 2 photos are usable" in report


def test_references_are_framed_around_the_face_and_sized_by_the_target(face_model):
    images = person()
    before = [i.clone() for i in images]
    for target, framing in (("flux kontext", "face"), ("qwen image edit plus", "head and shoulders"),
                            ("omnigen2", "face"), ("flux2", "head and shoulders"), ("hidream o1", "face"),
                            ("as is", "face")):
        refs, report = run(images, target=target, framing=framing, count=4, face_model=face_model)
        t = targets.BY_KEY[target]
        assert len(refs) == 4
        for ref in refs:
            assert ref.ndim == 4 and ref.shape[0] == 1 and ref.shape[-1] == 3
            if target == "flux kontext":
                assert (ref.shape[2], ref.shape[1]) in targets.KONTEXT_RESOLUTIONS
            if framing == "face":  # a square crop
                h, w = ref.shape[1:3]
                assert abs(w / h - 1) < 0.1, (target, w, h)
        if target == "hidream o1":  # 4 references at a 2048 output: a 1024 side budget, sides /32
            assert all(r.shape[1] % 32 == 0 and r.shape[2] % 32 == 0 and r.shape[1] * r.shape[2] <= 1024 ** 2
                       for r in refs)
        assert t.source.split(" ")[0] in report
    assert all(torch.equal(a, b) for a, b in zip(images, before)), "an input image was changed"


def test_the_face_is_in_the_middle_of_a_face_crop(face_model):
    refs, _ = run([photo(200, 170, 100, width=800, height=600)], target="as is", framing="face", count=1,
                  face_model=face_model)
    ref = refs[0][0]
    gray = ref.mean(dim=-1)
    ys, xs = torch.nonzero(gray > 0.7, as_tuple=True)  # the bright disc
    h, w = gray.shape
    assert abs(xs.float().mean().item() - w / 2) < 0.1 * w and abs(ys.float().mean().item() - h / 2) < 0.1 * h


def test_a_list_of_photos_of_different_sizes(face_model):
    images = [photo(), photo(400, 300, 120, width=900, height=700, seed=3)]
    refs, report = run(images, count=2, face_model=face_model, target="omnigen2")
    assert len(refs) == 2 and "2 reference(s) for OmniGen2" in report


def test_without_a_face_model_the_first_photos_are_used_whole():
    images = [torch.rand(1, 96 + 8 * i, 128, 3) for i in range(4)]
    refs, report = run(images, count=2, target="as is")
    assert [r.shape for r in refs] == [images[0].shape, images[1].shape]
    assert torch.equal(refs[0], images[0]) and refs[0].data_ptr() != images[0].data_ptr()
    assert "needs face_model" in report


def test_no_face_anywhere_names_the_photos(face_model):
    blank = [torch.full((1, 200, 200, 3), 0.1) for _ in range(3)]
    with pytest.raises(face_errors.NoFaceError, match="photo 1, photo 2, photo 3"):
        run(blank, framing="face", face_model=face_model)


def test_every_photo_dropped_says_how_many_and_why(face_model):
    images = [photo(seed=1), photo(300, 250, 90, seed=2), photo(330, 240, 85, (22, 22, 28), seed=6)]
    with pytest.raises(errors.InputError, match=r"every photo was dropped \(3 of 3\).*3 dropped: identity unlike"):
        run(images, face_model=face_model, outlier_threshold=0.99)


def test_omnigen2_takes_at_most_five(face_model):
    images = [torch.rand(1, 64, 64, 3) for _ in range(7)]
    refs, report = run(images, target="omnigen2", count=7, framing="as is")
    assert len(refs) == 5 and "takes at most 5 references" in report


def test_models_this_comfyui_lacks_get_references_and_the_node_that_takes_them():
    images = [torch.rand(1, 200, 300, 3)]
    for target, node in (("flux2", "EmptyFlux2LatentImage"), ("hidream o1", "HiDreamO1ReferenceImages")):
        refs, report = run(images, target=target, count=1, framing="as is")
        assert len(refs) == 1
        assert f"This ComfyUI lacks {node}" in report and "feed them to" in report


def test_sixty_four_photos_stream_with_progress_and_cancel(face_model, monkeypatch):
    images = [photo(320 + (i % 7) * 5, 220, 80 + i % 5, seed=i) for i in range(64)]
    seen = []
    detected = []
    real_detect = type(face_model).detect

    def counting_detect(self, bgr):
        detected.append(bgr.shape)
        return real_detect(self, bgr)

    def hook(value, total, preview, node_id=None):
        seen.append((value, total))
        if value == 5:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(type(face_model), "detect", counting_detect)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            run(images, count=4, face_model=face_model)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert seen[:5] == [(k, 64) for k in range(1, 6)]
    assert len(detected) == 5, "detection went on after Cancel"
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda *a, **k: seen.append(a[:2]))
    seen.clear()
    refs, report = run(images, count=4, face_model=face_model, drop_outliers=False)
    assert len(refs) == 4 and seen[-1] == (64, 64) and len(seen) == 64
