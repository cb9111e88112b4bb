"""Likeness Subject Score: the score is the calibrated cosine of the core CLIP vision encoder's image embeddings
(CLIP-I), or of DINOv2's class token where ComfyUI's encoder is DINOv2, with the same rules as Identity Score.

The oracle is ComfyUI's own `ClipVisionModel.encode_image` on the same images, and numpy for the formulas.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import builders
import comfy.clip_vision
import face_models as fm
from conftest import pack, run_prompt

host_check = pack("nodes.host.check")
identity = pack("nodes.core.identity")
errors = pack("nodes.core.errors")


def product(shift=0, hue=(200, 40, 40), size=96, seed=0):
    """A coloured box with a round label on a light table: one 'product' photographed slightly differently."""
    rng = np.random.default_rng(seed)
    img = np.full((160, 160, 3), 225, dtype=np.float32)
    x0, y0 = 32 + shift, 32 + shift // 2
    img[y0:y0 + size, x0:x0 + size] = hue
    yy, xx = np.mgrid[:160, :160]
    img[(xx - x0 - size / 2) ** 2 + (yy - y0 - size / 2) ** 2 < (size / 4) ** 2] = (250, 220, 60)
    img += rng.normal(0, 4.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def clip_vision(models_dir):
    return builders.load_tiny_clip_vision(str(models_dir / "clip_vision" / "tiny-clip-h.safetensors"))


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    """A tiny DINOv2 built by ComfyUI's own ClipVisionModel from a `dinov2` config, as its loader builds one."""
    folder = tmp_path_factory.mktemp("dino")
    config = {"hidden_size": 48, "use_mask_token": True, "patch_size": 14, "image_size": 518, "num_channels": 3,
              "num_attention_heads": 4, "mlp_ratio": 4, "model_type": "dinov2", "num_hidden_layers": 2,
              "layer_norm_eps": 1e-6, "qkv_bias": True, "use_swiglu_ffn": False, "layerscale_value": 1.0,
              "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (folder / "dino.json").write_text(json.dumps(config))
    model = comfy.clip_vision.ClipVisionModel(str(folder / "dino.json"))
    gen = torch.Generator().manual_seed(5)
    state = {k: (1.0 + 0.05 * torch.randn(v.shape, generator=gen)) if k.endswith("weight") and v.ndim == 1
             else 0.2 * torch.randn(v.shape, generator=gen) for k, v in model.get_sd().items()}
    model.load_sd(state)
    return model


REFS = [product(shift=s, seed=s) for s in (0, 6, 12)]
OUTPUTS = [product(shift=3, seed=40), product(hue=(40, 60, 200), seed=41), np.full((160, 160, 3), 128, np.uint8),
           product(shift=9, hue=(190, 60, 40), seed=42)]


@torch.no_grad()
def expected_scores(model, refs, outputs, single_baseline=1.0):
    r = model.encode_image(fm.to_comfy(*refs), crop=True)["image_embeds"].double().numpy()
    o = model.encode_image(fm.to_comfy(*outputs), crop=True)["image_embeds"].double().numpy()
    u = r / np.linalg.norm(r, axis=1, keepdims=True)
    k = len(u)
    if k > 1:
        loo = [np.dot(u[i], u[np.arange(k) != i].mean(0)) / np.linalg.norm(u[np.arange(k) != i].mean(0))
               for i in range(k)]
        baseline = float(np.mean(loo))
    else:
        baseline = single_baseline
    c = u.mean(0)
    cos = o @ c / np.linalg.norm(o, axis=1) / np.linalg.norm(c)
    return np.maximum(0, cos / baseline), baseline, c


@pytest.mark.parametrize("encoder", ["clip", "dino"])
def test_scores_are_calibrated_cosines_of_the_core_encoder(encoder, clip_vision, dino):
    model = clip_vision if encoder == "clip" else dino
    verdict = host_check.score_subject(model, fm.to_comfy(*REFS), fm.to_comfy(*OUTPUTS), 0.0)
    scores, baseline, centroid = expected_scores(model, REFS, OUTPUTS)
    assert np.allclose(verdict.scores, scores, atol=1e-4)
    assert verdict.people[0].calibration.baseline == pytest.approx(baseline, abs=1e-5)
    assert verdict.best == int(np.argmax(scores))
    assert ("DINOv2" if encoder == "dino" else "CLIP vision") in verdict.text()


def test_auto_threshold_is_halfway_between_a_blank_image_and_the_references(clip_vision):
    verdict = host_check.score_subject(clip_vision, fm.to_comfy(*REFS), fm.to_comfy(*OUTPUTS), 0.0)
    _, baseline, centroid = expected_scores(clip_vision, REFS, OUTPUTS)
    size = clip_vision.image_size
    pixels = torch.zeros(1, 3, size, size)  # an all-zero normalised image: the flat mean colour
    with torch.no_grad():
        blank = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[2][0].double().numpy()
    blank_cos = float(np.dot(blank, centroid) / np.linalg.norm(blank) / np.linalg.norm(centroid))
    expected = min(1.0, (blank_cos + baseline) / 2 / baseline)
    assert verdict.people[0].threshold == pytest.approx(expected, abs=1e-5)
    assert verdict.passed == [i for i, s in enumerate(verdict.scores) if s >= expected]


def test_one_reference_gives_the_raw_cosine(clip_vision):
    verdict = host_check.score_subject(clip_vision, fm.to_comfy(REFS[0]), fm.to_comfy(*OUTPUTS), 0.5)
    scores, baseline, _ = expected_scores(clip_vision, REFS[:1], OUTPUTS)
    assert baseline == 1.0 and np.allclose(verdict.scores, scores, atol=1e-4)
    assert verdict.passed == [i for i, s in enumerate(scores) if s >= 0.5]
    assert "raw cosine" in verdict.text()


def test_a_large_batch_is_encoded_in_pieces_with_the_same_result(clip_vision, monkeypatch):
    outputs = fm.to_comfy(*[product(shift=i % 10, seed=100 + i) for i in range(19)])
    sizes = []
    encode = type(clip_vision).encode_image

    def counting(self, image, crop=True):
        sizes.append(image.shape[0])
        return encode(self, image, crop=crop)

    monkeypatch.setattr(type(clip_vision), "encode_image", counting)
    verdict = host_check.score_subject(clip_vision, fm.to_comfy(*REFS), outputs, 0.0)
    assert sizes == [3, 8, 8, 3]  # the references, then the outputs a few at a time
    monkeypatch.undo()
    with torch.no_grad():
        whole = clip_vision.encode_image(outputs, crop=True)["image_embeds"]
    _, baseline, centroid = expected_scores(clip_vision, REFS, OUTPUTS[:1])
    cos = torch.nn.functional.cosine_similarity(whole.double(), torch.from_numpy(centroid)[None], dim=-1)
    assert np.allclose(verdict.scores, np.maximum(0, cos.numpy() / baseline), atol=1e-4)


def test_bad_inputs(clip_vision):
    with pytest.raises(errors.InputError, match="references are empty"):
        host_check.score_subject(clip_vision, torch.zeros(0, 64, 64, 3), fm.to_comfy(*OUTPUTS), 0.0)
    with pytest.raises(errors.InputError, match="images should be a non-empty IMAGE batch"):
        host_check.score_subject(clip_vision, fm.to_comfy(*REFS), torch.zeros(0, 64, 64, 3), 0.0)


def test_the_gate_through_the_executor(models_dir, tmp_path, monkeypatch):
    import folder_paths
    from PIL import Image

    for i, rgb in enumerate(REFS + OUTPUTS):
        Image.fromarray(rgb).save(tmp_path / f"p{i}.png")
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(tmp_path))

    def prompt(threshold):
        p = {"cv": {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": "tiny-clip-h.safetensors"}}}
        for i in range(7):
            p[f"l{i}"] = {"class_type": "LoadImage", "inputs": {"image": f"p{i}.png"}}
        p["r"] = {"class_type": "ImageBatch", "inputs": {"image1": ["l0", 0], "image2": ["l1", 0]}}
        p["o"] = {"class_type": "ImageBatch", "inputs": {"image1": ["l3", 0], "image2": ["l4", 0]}}
        p["score"] = {"class_type": "LikenessSubjectScore", "inputs": {
            "clip_vision": ["cv", 0], "references": ["r", 0], "images": ["o", 0], "threshold": threshold}}
        p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["score", 2], "filename_prefix": "subject/ok"}}
        p["best"] = {"class_type": "PreviewImage", "inputs": {"images": ["score", 1]}}
        return p

    everything = run_prompt(prompt(0.01))
    assert everything.success, everything.execution_error()
    assert len(everything.executor.history_result["outputs"]["save"]["images"]) == 2
    nothing = run_prompt(prompt(2.0))
    assert nothing.success and nothing.execution_error() is None
    assert "save" not in nothing.executor.history_result["outputs"]
    assert "best" in nothing.executor.history_result["outputs"]
