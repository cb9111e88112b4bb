"""User mistakes end in messages that say what was expected, what was found, and where; never a raw traceback."""

from __future__ import annotations

import os

import pytest
import torch

import builders
from conftest import pack, run_prompt
from test_end_to_end import modular_prompt, write_adapter

errors = pack("nodes.core.errors")
variants = pack("nodes.core.variants")
adapter_mod = pack("nodes.core.adapter")
apply_core = pack("nodes.core.apply")
sites_mod = pack("nodes.host.sites")


def failure(result):
    assert not result.success
    err = result.execution_error()
    assert err is not None, result.node_errors
    return err


def test_wrong_encoder_names_what_is_needed(models_dir):
    adapter = write_adapter(models_dir, "needs-64-hidden.safetensors", layout="resampler", seed=1)
    err = failure(run_prompt(modular_prompt(adapter, clip="tiny-clip-g.safetensors")))
    assert err["node_type"] == "LikenessProject"
    assert err["exception_type"].endswith("IncompatibleError")
    msg = err["exception_message"]
    assert "needs-64-hidden.safetensors" in msg and "64-wide hidden states" in msg and "96-wide" in msg


def test_vit_h_adapter_with_vit_bigg_encoder_message():
    det = variants.detect(builders.official_shapes("ip-adapter-plus_sdxl_vit-h.safetensors"), "plus.safetensors")
    adapter = adapter_mod.Adapter("ip-adapter-plus_sdxl_vit-h.safetensors", det, torch.nn.Identity(), {})
    refs = pack("nodes.core.references").References.from_images(
        pack("nodes.core.references").EncoderInfo.from_widths(1664, 1280), torch.zeros(1, 1280),
        torch.zeros(1, 257, 1664), torch.zeros(1, 257, 1664), source="CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors")
    with pytest.raises(errors.IncompatibleError) as e:
        pack("nodes.core.references").project_references(adapter, refs)
    msg = str(e.value)
    assert "ViT-H/14" in msg and "1280-wide hidden states" in msg and "ViT-bigG/14" in msg and "1664" in msg
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in msg


def test_sd15_adapter_on_sdxl_model_message():
    det = variants.detect(builders.official_shapes("ip-adapter_sd15.safetensors"), "ip-adapter_sd15.safetensors")
    adapter = adapter_mod.Adapter("ip-adapter_sd15.safetensors", det, torch.nn.Identity(), {})
    sites = sites_mod.find_sites(builders.build_unet("sdxl", tiny=False))
    with pytest.raises(errors.IncompatibleError) as e:
        apply_core.check_adapter_fits(adapter, sites)
    msg = str(e.value)
    assert "ip-adapter_sd15.safetensors" in msg and "SD1.5" in msg and "is SDXL" in msg and "70 sites" in msg


def test_wrong_model_family_through_the_executor(models_dir):
    adapter = write_adapter(models_dir, "tiny-sd15-only.safetensors", kind="sd15", seed=2)
    err = failure(run_prompt(modular_prompt(adapter, kind="sdxl")))
    assert err["node_type"] == "LikenessApply"
    assert "tiny-sd15-only.safetensors" in err["exception_message"] and "70 sites" in err["exception_message"]


@pytest.fixture()
def broken_files(models_dir):
    """Broken files in the shared ipadapter folder, removed again so later tests see a clean folder."""
    made = []
    yield made
    for path in made:
        path.unlink(missing_ok=True)


def test_truncated_adapter_through_the_executor(models_dir, broken_files):
    name = write_adapter(models_dir, "truncated.safetensors", seed=3)
    path = models_dir / "ipadapter" / name
    broken_files.append(path)
    os.truncate(path, os.path.getsize(path) // 2)
    err = failure(run_prompt(modular_prompt(name)))
    assert err["node_type"] == "LikenessAdapterLoader"
    assert "truncated.safetensors" in err["exception_message"] and "download it again" in err["exception_message"]


def test_file_that_is_no_adapter_through_the_executor(models_dir, broken_files):
    broken_files.append(models_dir / "ipadapter" / "a-lora.safetensors")
    builders.save_safetensors(str(broken_files[-1]), {"lora_unet_x.lora_down.weight": torch.zeros(4, 4)})
    err = failure(run_prompt(modular_prompt("a-lora.safetensors")))
    assert "a-lora.safetensors" in err["exception_message"] and "not an IP-Adapter" in err["exception_message"]


def test_odd_sized_mask_works(models_dir):
    adapter = write_adapter(models_dir, "masked.safetensors", seed=4)
    prompt = modular_prompt(adapter, key="masked", width=96, height=64)
    prompt["30"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 37, "height": 91}}
    prompt["13"]["inputs"]["attn_mask"] = ["30", 0]
    result = run_prompt(prompt)
    assert result.success, result.execution_error()


def test_start_after_end_is_refused_before_running(models_dir):
    adapter = write_adapter(models_dir, "window.safetensors", seed=5)
    result = run_prompt(modular_prompt(adapter, start_at=0.8, end_at=0.2))
    assert not result.valid
    errs = [e for node in result.node_errors.values() for e in node["errors"]]
    assert any(e["type"] == "custom_validation_failed" and "start_at (0.8) is after end_at (0.2)" in e["details"]
               for e in errs)


def test_empty_image_batch():
    encode = pack("nodes.host.encode")
    with pytest.raises(errors.InputError, match="non-empty IMAGE batch"):
        encode.prepare_images(torch.zeros(0, 32, 32, 3), "center", 0.0, None, torch.zeros(3))


def test_faceid_adapter_on_the_image_path_says_where_to_go(tmp_path):
    det = variants.detect(builders.official_shapes("ip-adapter-faceid_sd15.bin"), "ip-adapter-faceid_sd15.bin")
    adapter = adapter_mod.Adapter("ip-adapter-faceid_sd15.bin", det, torch.nn.Identity(), {})
    refs = pack("nodes.core.references").References.from_images(
        pack("nodes.core.references").EncoderInfo.from_widths(1280, 1024), torch.zeros(1, 1024),
        torch.zeros(1, 257, 1280), torch.zeros(1, 257, 1280))
    with pytest.raises(errors.IncompatibleError, match="FaceID nodes"):
        pack("nodes.core.references").project_references(adapter, refs)


def test_tokens_from_another_adapter_are_refused(tmp_path):
    from test_patching import make_adapter, tokens_for

    linear = make_adapter(tmp_path, layout="linear", seed=1)
    plus = make_adapter(tmp_path, layout="resampler", seed=2)
    with pytest.raises(errors.IncompatibleError, match="Connect the same adapter to Project and Apply"):
        apply_core.check_tokens_fit(plus, tokens_for(linear))
