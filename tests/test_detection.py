"""Adapter families are detected from key names and shapes alone, on full-size official layouts."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

import builders
from conftest import pack

variants = pack("nodes.core.variants")
checkpoint = pack("nodes.core.checkpoint")
adapter_mod = pack("nodes.core.adapter")
errors = pack("nodes.core.errors")

# file -> (variant key, family, tokens per reference, encoder needed or None for face-id inputs)
EXPECTED = {
    "ip-adapter_sd15.safetensors": ("sd15", "SD1.5", 4, "ViT-H/14"),
    "ip-adapter_sd15_light_v11.bin": ("sd15", "SD1.5", 4, "ViT-H/14"),
    "ip-adapter_sd15_vit-G.safetensors": ("sd15-vit-g", "SD1.5", 4, "ViT-bigG/14"),
    "ip-adapter-plus_sd15.safetensors": ("sd15-plus", "SD1.5", 16, "ViT-H/14"),
    "ip-adapter-plus-face_sd15.safetensors": ("sd15-plus", "SD1.5", 16, "ViT-H/14"),
    "ip_plus_composition_sd15.safetensors": ("sd15-plus", "SD1.5", 16, "ViT-H/14"),
    "ip-adapter-full-face_sd15.safetensors": ("sd15-full-face", "SD1.5", 0, "ViT-H/14"),
    "ip-adapter_sdxl.safetensors": ("sdxl", "SDXL", 4, "ViT-bigG/14"),
    "ip-adapter_sdxl_vit-h.safetensors": ("sdxl-vit-h", "SDXL", 4, "ViT-H/14"),
    "ip-adapter-plus_sdxl_vit-h.safetensors": ("sdxl-plus", "SDXL", 16, "ViT-H/14"),
    "ip-adapter-plus-face_sdxl_vit-h.safetensors": ("sdxl-plus", "SDXL", 16, "ViT-H/14"),
    "ip-adapter-faceid_sd15.bin": ("sd15-faceid", "SD1.5", 4, None),
    "ip-adapter-faceid-plusv2_sd15.bin": ("sd15-faceid-plus", "SD1.5", 4, "ViT-H/14"),
    "ip-adapter-faceid-portrait-v11_sd15.bin": ("sd15-faceid-portrait", "SD1.5", 16, None),
    "ip-adapter-faceid_sdxl.bin": ("sdxl-faceid", "SDXL", 4, None),
    "ip-adapter-faceid-plusv2_sdxl.bin": ("sdxl-faceid-plus", "SDXL", 4, "ViT-H/14"),
    "ip-adapter-faceid-portrait_sdxl.bin": ("sdxl-faceid-portrait", "SDXL", 16, None),
    "ip-adapter-faceid-portrait_sdxl_unnorm.bin": ("sdxl-faceid-portrait-unnorm", "SDXL", 16, None),
    "ip-adapter.bin": ("sdxl-instantid", "SDXL", 16, None),  # same shapes as the line above: see test_instantid.py
}


DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def write_sparse_safetensors(path, shapes: dict, dtype="F16") -> str:
    """A full-size safetensors file whose data region is a hole: the header is real, no data is written. `dtype`
    is one for all tensors, or (image_proj's, the others') for adapters stored in two precisions."""
    header, offset = {}, 0
    for k, shape in sorted(shapes.items()):
        kind = dtype if isinstance(dtype, str) else dtype[0 if k.startswith("image_proj.") else 1]
        n = DTYPE_BYTES[kind]
        for d in shape:
            n *= d
        header[k] = {"dtype": kind, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
    os.truncate(path, 8 + len(raw) + offset)
    return str(path)


def test_every_official_file_is_listed():
    assert set(EXPECTED) == set(builders.OFFICIAL_FILES)


@pytest.mark.parametrize("name", builders.OFFICIAL_FILES)
def test_detects_official_layouts_from_shapes(name):
    key, family, tokens, encoder = EXPECTED[name]
    det = variants.detect(builders.official_shapes(name), name)
    assert det.variant is not None and det.variant.key == key
    assert det.family == family
    assert det.tokens == tokens
    assert (det.encoder.name if det.encoder else None) == encoder
    assert len(det.layer_ids) == {"SD1.5": 16, "SDXL": 70}[family]
    assert det.faceid == det.variant.faceid
    assert det.has_lora == (name in ("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid-plusv2_sd15.bin",
                                     "ip-adapter-faceid_sdxl.bin", "ip-adapter-faceid-plusv2_sdxl.bin"))


@pytest.mark.parametrize("name", [n for n in builders.OFFICIAL_FILES if n.endswith(".safetensors")])
def test_detects_full_size_files_from_the_header_only(tmp_path, name):
    path = write_sparse_safetensors(tmp_path / "renamed-model.safetensors", builders.official_shapes(name))
    det = adapter_mod.read_detection(path)
    assert det.variant.key == EXPECTED[name][0]
    assert "renamed-model" not in det.summary()  # names play no part


def test_variant_summary_tells_encoder_and_shared_layouts():
    det = variants.detect(builders.official_shapes("ip-adapter-plus-face_sdxl_vit-h.safetensors"), "x")
    text = det.summary()
    assert "SDXL" in text and "ViT-H/14" in text and "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in text
    assert "ip-adapter-plus-face_sdxl_vit-h.safetensors" in text
    faceid = variants.detect(builders.official_shapes("ip-adapter-faceid_sd15.bin"), "x").summary()
    assert "FaceID" in faceid


def test_bin_and_safetensors_load_the_same(tmp_path):
    widths = [32] * 16
    state = builders.tiny_adapter_state("resampler", widths, input_width=64, tokens=16, seed=3)
    st = builders.save_safetensors(str(tmp_path / "a.safetensors"), state)
    nested = {"image_proj": {k[11:]: v for k, v in state.items() if k.startswith("image_proj.")},
              "ip_adapter": {k[11:]: v for k, v in state.items() if k.startswith("ip_adapter.")}}
    torch.save(nested, tmp_path / "a.bin")
    a = adapter_mod.load_adapter(st)
    b = adapter_mod.load_adapter(str(tmp_path / "a.bin"))
    assert a.detected == b.detected
    x = torch.randn(2, 17, 64)
    assert torch.equal(a.projection(x), b.projection(x))
    for i in a.kv_weights:
        assert torch.equal(a.kv_weights[i][0], b.kv_weights[i][0])


def test_unknown_file_names_itself(tmp_path):
    path = builders.save_safetensors(str(tmp_path / "some-lora.safetensors"),
                                     {"lora_unet_down.alpha": torch.ones(1), "lora_unet_up.weight": torch.ones(2, 2)})
    with pytest.raises(errors.AdapterFileError, match="some-lora.safetensors.*not an IP-Adapter"):
        adapter_mod.load_adapter(path)


def test_truncated_file_is_refused_with_a_clear_message(tmp_path):
    state = builders.tiny_adapter_state("linear", [32] * 16, seed=1)
    path = builders.save_safetensors(str(tmp_path / "cut.safetensors"), state)
    os.truncate(path, os.path.getsize(path) - 100)
    with pytest.raises(errors.AdapterFileError, match="cut.safetensors.*truncated.*download it again"):
        adapter_mod.load_adapter(path)
    with pytest.raises(errors.AdapterFileError, match="truncated"):
        adapter_mod.read_detection(path)


def test_file_that_is_not_safetensors(tmp_path):
    path = tmp_path / "page.safetensors"
    path.write_text("<html>Sign in to download</html>")
    with pytest.raises(errors.AdapterFileError, match="page.safetensors"):
        adapter_mod.load_adapter(str(path))


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_bin_with_code_is_refused_without_running_it(tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    torch.save({"image_proj": {"x": _Payload()}}, tmp_path / "evil.bin")
    with pytest.raises(errors.AdapterFileError, match="evil.bin.*weights-only"):
        adapter_mod.load_adapter(str(tmp_path / "evil.bin"))
    assert not os.path.exists(_Payload.marker)


def test_mismatched_projection_and_layers_are_reported(tmp_path):
    state = builders.tiny_adapter_state("linear", [32] * 16, seed=1)
    state["image_proj.norm.weight"] = torch.ones(48)
    state["image_proj.norm.bias"] = torch.ones(48)
    with pytest.raises(errors.AdapterFileError, match="mixes two adapters or is damaged"):
        variants.detect({k: tuple(v.shape) for k, v in state.items()}, "mixed.safetensors")
