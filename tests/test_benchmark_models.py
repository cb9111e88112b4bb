"""The buffalo_l-shaped face models that benchmarks/bench_face.py times: published sizes, routed by insightface as
the real files are, and the detector answers what the test stand-in answers while running SCRFD-10G beside it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import face_models as fm

insightface = pytest.importorskip("insightface")
onnx = pytest.importorskip("onnx")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import face_arch  # noqa: E402


@pytest.mark.parametrize("cls, size, params, gflops", [
    (face_arch.SCRFD10G, (480, 640), 4.23, 10.0),  # SCRFD README figures are at VGA
    (face_arch.IResNet50, (112, 112), 43.6, 6.3),  # arcface_torch model table
])
def test_benchmark_networks_have_the_published_size(cls, size, params, gflops):
    got_params, got_gflops = face_arch.size_figures(cls, *size)
    assert got_params == pytest.approx(params, rel=0.01)
    assert got_gflops == pytest.approx(gflops, rel=0.03)


def test_benchmark_detector_is_routed_as_scrfd_and_answers_like_the_stand_in(tmp_path):
    from insightface.model_zoo import get_model

    path = str(tmp_path / face_arch.DETECTOR_FILE)
    onnx.save(face_arch.with_stand_in(face_arch.scrfd_onnx()), path)
    stand_in_path = str(tmp_path / "stand_in.onnx")
    onnx.save(fm.detector_model(), stand_in_path)
    detectors = [get_model(p, providers=["CPUExecutionProvider"]) for p in (path, stand_in_path)]
    assert [type(d).__name__ for d in detectors] == ["SCRFD", "SCRFD"]
    assert detectors[0].use_kps and detectors[0].fmc == 3 and detectors[0]._num_anchors == 2
    image = fm.face_image(faces=((320, 200, 80),))[..., ::-1].copy()  # BGR, as insightface reads
    for d in detectors:
        d.prepare(0, input_size=(640, 640), det_thresh=0.5)
    (boxes, kps), (want_boxes, want_kps) = (d.detect(image, input_size=(640, 640)) for d in detectors)
    assert len(boxes) == 1
    np.testing.assert_array_equal(boxes, want_boxes)
    np.testing.assert_array_equal(kps, want_kps)
    assert os.path.getsize(path) > 15e6  # SCRFD-10G's weights are in the file, not optimised away
