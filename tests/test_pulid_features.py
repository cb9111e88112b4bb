"""PuLID's image side: EVA-CLIP found by its weights and run by timm, facexlib's BiSeNet parsing from a local file,
the face whitened and greyed as PuLID does, and Likeness Face Embed's id_encoder input end to end. Nothing is
downloaded."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import face_models as fm
import folder_paths
import pulid_models as pm
from conftest import pack, run_prompt
from test_detection import write_sparse_safetensors

pytest.importorskip("insightface")
pytest.importorskip("timm")
pytest.importorskip("facexlib")

eva_clip = pack("nodes.core.eva_clip")
face_parsing = pack("nodes.core.face_parsing")
references_io = pack("nodes.core.references_io")
merge = pack("nodes.core.merge")
host_id = pack("nodes.host.id_encoder")
host_face = pack("nodes.host.face")


def test_eva02_clip_l_336_is_detected_from_the_published_layout(tmp_path):
    path = write_sparse_safetensors(tmp_path / "eva.safetensors", pm.eva_shapes_full())
    config = host_id.read_eva_config(path)
    assert (config.width, config.depth, config.image_size, config.patch, config.embed_width) == (1024, 24, 336, 14,
                                                                                                 768)
    assert config.heads == 16 and config.mlp_hidden == 2730 and config.tokens == 577
    assert config.describe().startswith("EVA02-CLIP-L-14-336")


def test_a_clip_vision_file_is_not_taken_for_eva_clip(models_dir):
    with pytest.raises(host_id.IDEncoderError, match="tiny-clip-h.safetensors.*not an EVA-CLIP.*OpenAI/LAION CLIP.*"
                                                     "EVA02_CLIP_L_336_psz14_s6B.pt"):
        host_id.read_eva_config(str(models_dir / "clip_vision" / "tiny-clip-h.safetensors"))


def test_eva_features_are_the_hidden_states_pulid_reads(tmp_path):
    state = pm.tiny_eva_state(seed=3)
    config = eva_clip.detect_eva_clip({k: tuple(v.shape) for k, v in state.items()})
    model = eva_clip.build_eva_clip(state, config)
    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    embeds, hidden = eva_clip.eva_features(model, pixels)
    assert embeds.shape == (2, 32) and hidden.shape == (2, 5, 17, 64)
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(2))
    # run the tower block by block: PuLID takes the tokens entering blocks 4, 8, 12, 16 and 20
    with torch.no_grad():
        x, rope = model._pos_embed(model.patch_embed(pixels))
        entering = {}
        for i, block in enumerate(model.blocks):
            entering[i] = x
            x = block(x, rope=rope)
        pooled = model.head(model.norm(x)[:, 0])
    for level, block in enumerate((4, 8, 12, 16, 20)):
        torch.testing.assert_close(hidden[:, level], entering[block], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(embeds, F.normalize(pooled, dim=-1), rtol=1e-5, atol=1e-6)


def test_pixels_are_resized_bicubically_and_normalised_as_eva_clip():
    config = eva_clip.EvaConfig(64, 24, 14, 56, 170, 32, "visual.")
    rgb = torch.rand(1, 3, 512, 512)
    out = eva_clip.eva_pixels(rgb, config)
    expected = F.interpolate(rgb, size=(56, 56), mode="bicubic", align_corners=False, antialias=True)
    expected = (expected - torch.tensor(eva_clip.EVA_MEAN).view(1, 3, 1, 1)) / torch.tensor(eva_clip.EVA_STD).view(
        1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


class FixedParser(torch.nn.Module):
    """Stands in for BiSeNet's classes: returns logits that put `labels` [H, W] at every pixel."""

    def __init__(self, labels: torch.Tensor):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.labels = labels
        self.seen = None

    def forward(self, x):
        self.seen = x
        logits = F.one_hot(self.labels, 19).permute(2, 0, 1)[None].float().expand(x.shape[0], -1, -1, -1)
        return logits * self.scale, None, None


def test_background_clothes_ears_neck_and_hat_turn_white_and_the_rest_grey():
    labels = torch.arange(19).repeat_interleave(2).reshape(2, 19)  # every class, two pixels each
    rgb = torch.rand(1, 3, 2, 19)
    parser = FixedParser(labels)
    out = face_parsing.face_only(parser, rgb)
    grey = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    white = torch.isin(labels, torch.tensor([0, 7, 8, 9, 14, 15, 16, 18]))
    for c in range(3):
        torch.testing.assert_close(out[0, c], torch.where(white, torch.ones_like(grey[0]), grey[0]))
    assert not white[labels == 17].any()  # hair is kept, as in PuLID's list
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    torch.testing.assert_close(parser.seen, (rgb - mean) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))


def test_alignment_puts_the_keypoints_on_the_ffhq_template():
    rng = np.random.default_rng(0)
    angle, scale, shift = 0.2, 0.6, np.array([-20.0, -60.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    kps = face_parsing.FFHQ_TEMPLATE @ rot.T + shift  # the template seen through a similarity transform
    image = np.zeros((480, 480, 3), np.uint8)
    for x, y in kps:
        image[int(round(y)) - 2:int(round(y)) + 3, int(round(x)) - 2:int(round(x)) + 3] = 255
    crop = face_parsing.align_ffhq(image, kps + rng.normal(0, 0.01, kps.shape))
    assert crop.shape == (512, 512, 3)
    for x, y in face_parsing.FFHQ_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].min() > 100  # the marker landed on its template point
    assert tuple(crop[0, 0]) == face_parsing.BORDER_BGR  # outside the photo: facexlib's grey


def test_the_published_bisenet_layout_loads_and_parses(tmp_path):
    path = pm.write_parsing(str(tmp_path))
    parser = face_parsing.build_parser(pack("nodes.core.checkpoint").load_state_dict(path))
    out = face_parsing.face_only(parser, torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    assert torch.all((out == 1) | (out[:, :1] == out[:, 1:2]))  # white, or the same grey in every channel


# ---------------------------------------------------------------- loading from the model folders, and errors

@pytest.fixture(scope="module")
def pulid_setup(models_dir, tmp_path_factory):
    inputs = tmp_path_factory.mktemp("pulid_inputs")
    for name, spec in {"face_a.png": dict(faces=((320, 200, 80),), seed=41),
                       "face_b.png": dict(faces=((300, 240, 85),), seed=42)}.items():
        Image.fromarray(fm.face_image(**spec)).save(inputs / name)
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(inputs))
    try:
        with fm.insightface_folder(tmp_path_factory), pm.pulid_folders(tmp_path_factory) as root:
            yield root
    finally:
        folder_paths.set_input_directory(previous)


def test_missing_files_say_what_to_download_and_where(pulid_setup, monkeypatch):
    monkeypatch.setattr(host_id, "_listed", lambda folder: [])
    with pytest.raises(host_id.IDEncoderError) as e:
        host_id.load_id_encoder(pm.EVA_FILE, pm.PARSING_FILE)
    text = str(e.value)
    assert "EVA02_CLIP_L_336_psz14_s6B.pt" in text and "huggingface.co/QuanSun/EVA-CLIP" in text
    assert "models/clip_vision" in text and str(pulid_setup / "clip_vision") in text
    monkeypatch.setattr(host_id, "_listed", lambda folder: [pm.EVA_FILE] if folder == "clip_vision" else [])
    with pytest.raises(host_id.IDEncoderError, match=r"parsing_bisenet.pth.*github.com/xinntao/facexlib.*"
                                                     r"models/facexlib"):
        host_id.load_id_encoder(pm.EVA_FILE, pm.PARSING_FILE)


def test_a_file_that_is_not_bisenet_is_named(pulid_setup, tmp_path):
    torch.save({"conv.weight": torch.ones(2, 2)}, pulid_setup / "facexlib" / "other.pth")
    folder_paths.filename_list_cache.pop("facexlib", None)
    with pytest.raises(host_id.IDEncoderError, match="other.pth.*not facexlib's BiSeNet.*parsing_bisenet.pth"):
        host_id.load_id_encoder(pm.EVA_FILE, "other.pth")


def face_embed_prompt(photos, id_encoder=True, pack_name=fm.PACK):
    prompt = {
        "30": {"class_type": "LikenessFaceModelLoader", "inputs": {"model_pack": pack_name, "provider": "CPU"}},
        "31": {"class_type": "LikenessIDEncoderLoader", "inputs": {"clip_name": pm.EVA_FILE,
                                                                   "parsing_model": pm.PARSING_FILE}},
        "34": {"class_type": "LikenessFaceEmbed", "inputs": {
            "face_model": ["30", 0], "image": None, "select": "largest", "index": 0, "on_no_face": "error",
            "crop_size": "224"}},
        "50": {"class_type": "LikenessSaveReferences", "inputs": {"references": ["34", 0],
                                                                  "filename_prefix": "pulid-refs"}},
    }
    if id_encoder:
        prompt["34"]["inputs"]["id_encoder"] = ["31", 0]
    fm.load_photos(prompt, photos, "34")
    return prompt


def test_face_embed_with_an_id_encoder_carries_pulid_features(pulid_setup, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    import facexlib.parsing
    import facexlib.utils

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(facexlib.utils, "load_file_from_url", no_download)
    monkeypatch.setattr(facexlib.parsing, "load_file_from_url", no_download)
    result = run_prompt(face_embed_prompt(["face_a.png", "face_b.png"]))
    assert result.success, result.execution_error() or result.node_errors
    saved = sorted(glob.glob(os.path.join(folder_paths.get_output_directory(), "**", "pulid-refs*"), recursive=True))
    refs = references_io.load_references(saved[-1])
    parsed = refs.parsed_face
    assert parsed is not None and parsed.hidden.shape == (2, 5, 17, 64) and parsed.embeds.shape == (2, 32)
    assert refs.face.raw.shape == (2, 512) and pm.EVA_FILE in parsed.source
    torch.testing.assert_close(parsed.embeds.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(parsed.hidden[0], parsed.hidden[1])  # two different faces

    # the same faces by hand: FFHQ alignment from the face model's keypoints, parsing, EVA-CLIP
    face_model = host_face.load_face_model(fm.PACK, "CPU")
    encoder = host_id.load_id_encoder(pm.EVA_FILE, pm.PARSING_FILE)
    crops = []
    for name in ("face_a.png", "face_b.png"):
        rgb = np.array(Image.open(folder_paths.get_annotated_filepath(name)).convert("RGB"))
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        faces, _ = face_model.detect(bgr)
        crops.append(face_parsing.align_ffhq(bgr, max(faces, key=lambda f: f.area).kps))
    expected, shown = encoder.parsed_face_features(crops)
    torch.testing.assert_close(parsed.hidden, expected.hidden)
    assert shown.shape == (2, 512, 512, 3)

    merged, _ = merge.merge_references(merge.gather([("a", refs)]), "average")
    assert merged.parsed_face.hidden.shape == (1, 5, 17, 64)
    torch.testing.assert_close(merged.parsed_face.embeds.norm(dim=-1), torch.ones(1))


def test_face_embed_without_id_encoder_has_no_pulid_features(pulid_setup):
    result = run_prompt(face_embed_prompt(["face_a.png"], id_encoder=False))
    assert result.success, result.execution_error()


def test_the_doctor_lists_what_pulid_needs(pulid_setup):
    doctor = pack("nodes.doctor")
    text = doctor.report()
    section = text[text.index("PuLID:"):text.index("Folders searched:")]
    lines = {line.split(":")[0].strip(): line for line in section.splitlines() if ":" in line}
    assert pm.EVA_FILE in lines["EVA-CLIP"] and pm.PARSING_FILE in lines["face parsing"], section
    assert "antelopev2 face model pack -> models/insightface/models/antelopev2" in section  # the tests' pack is synth_l
    assert "PuLID is not ready" in section
    assert "facexlib: " in text and str(pulid_setup / "facexlib") in text
    encoders = {line.split(":")[0].strip(): line for line in text.splitlines() if pm.EVA_FILE in line}
    assert "EVA02-CLIP" in encoders[pm.EVA_FILE] or any("EVA02-CLIP" in v for v in encoders.values())
