"""Every FaceID variant through ComfyUI's real executor: LoadImage -> Likeness Face Model Loader -> Face Embed ->
Project -> Apply (with the FaceID LoRA) -> KSampler on tiny SD1.5 and SDXL UNets, and the LoRA as weight patches.
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

import builders
import comfy.lora
import comfy.utils
import face_models as fm
import folder_paths
from conftest import CAPTURED, pack, run_prompt
from test_end_to_end import sampling_prompt, tiny_sites

pytest.importorskip("insightface")

adapter_mod = pack("nodes.core.adapter")
lora_mod = pack("nodes.host.lora")

PHOTOS = {
    "face_a.png": dict(faces=((320, 200, 80),), seed=31),
    "face_b.png": dict(faces=((300, 240, 85),), seed=32),
    "no_face.png": dict(faces=(), seed=33),
}


@pytest.fixture(scope="module")
def face_setup(models_dir, tmp_path_factory):
    inputs = tmp_path_factory.mktemp("face_inputs")
    for name, spec in PHOTOS.items():
        Image.fromarray(fm.face_image(**spec)).save(inputs / name)
    loras = tmp_path_factory.mktemp("loras")
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(inputs))
    try:
        with fm.insightface_folder(tmp_path_factory), fm.model_folder("loras", str(loras)):
            yield models_dir, loras
    finally:
        folder_paths.set_input_directory(previous)


def write_faceid(models_dir, name, kind, layout, seed=0, lora=None):
    widths = [s.width for s in tiny_sites(kind)]
    state = fm.tiny_faceid_state(layout, widths, clip_width=64, seed=seed, lora=lora)
    builders.save_safetensors(str(models_dir / "ipadapter" / name), state)
    return name


def faceid_prompt(adapter, kind="sd15", key="faceid", photos=("face_a.png",), clip=False, weight=1.0,
                  lora_strength=None, plus_version=None, v2_weight=None, on_no_face="error"):
    prompt = sampling_prompt(kind=kind, key=key, model_from=("13", 0), steps=1)
    prompt.update({
        "30": {"class_type": "LikenessFaceModelLoader", "inputs": {"model_pack": fm.PACK, "provider": "CPU"}},
        "11": {"class_type": "LikenessAdapterLoader", "inputs": {"adapter_name": adapter}},
        "34": {"class_type": "LikenessFaceEmbed", "inputs": {
            "face_model": ["30", 0], "image": None, "select": "largest", "index": 0, "on_no_face": on_no_face,
            "crop_size": "224"}},
        "14": {"class_type": "LikenessProject", "inputs": {"adapter": ["11", 0], "references": ["34", 0]}},
        "13": {"class_type": "LikenessApply", "inputs": {
            "model": ["1", 0], "adapter": ["11", 0], "tokens": ["14", 0], "weight": weight, "weight_type": "linear",
            "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}},
    })
    fm.load_photos(prompt, photos, "34")
    if clip:
        prompt["10"] = {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": "tiny-clip-h.safetensors"}}
        prompt["34"]["inputs"]["clip_vision"] = ["10", 0]
    if lora_strength is not None:
        prompt["13"]["inputs"]["faceid_lora_strength"] = lora_strength
    if plus_version is not None:
        prompt["14"]["inputs"]["faceid_plus_version"] = plus_version
    if v2_weight is not None:
        prompt["14"]["inputs"]["faceid_v2_weight"] = v2_weight
    return prompt


def ui_text(result, node_id):
    for event, data in result.server.messages:
        if event == "executed" and data.get("node") == node_id:
            return " ".join(data["output"].get("text", []))
    return ""


def plain(kind):
    key = f"plain-{kind}"
    if key not in CAPTURED:
        assert run_prompt(sampling_prompt(kind=kind, key=key, steps=1)).success
    return CAPTURED[key]


VARIANTS = {  # id: (kind, layout, file name, photos, needs clip_vision)
    "sd15-faceid": ("sd15", "faceid", "faceid_sd15-tiny.safetensors", 1, False),
    "sd15-faceid-plus-v1": ("sd15", "plus", "faceid-plus_sd15-tiny.safetensors", 1, True),
    "sd15-faceid-plusv2": ("sd15", "plus", "faceid-plusv2_sd15-tiny.safetensors", 1, True),
    "sd15-faceid-portrait": ("sd15", "portrait", "faceid-portrait_sd15-tiny.safetensors", 2, False),
    "sdxl-faceid": ("sdxl", "faceid", "faceid_sdxl-tiny.safetensors", 1, False),
    "sdxl-faceid-plusv2": ("sdxl", "plus", "faceid-plusv2_sdxl-tiny.safetensors", 1, True),
    "sdxl-faceid-portrait": ("sdxl", "portrait", "faceid-portrait_sdxl-tiny.safetensors", 3, False),
    "sdxl-faceid-portrait-unnorm": ("sdxl", "portrait-unnorm", "faceid-portrait_sdxl_unnorm-tiny.safetensors", 1,
                                    False),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_faceid_variant_runs_and_changes_the_result(variant, face_setup):
    models_dir, _ = face_setup
    kind, layout, name, photos, clip = VARIANTS[variant]
    write_faceid(models_dir, name, kind, layout, seed=len(variant))
    result = run_prompt(faceid_prompt(name, kind=kind, key=variant, photos=("face_a.png", "face_b.png",
                                                                            "face_a.png")[:photos], clip=clip))
    assert result.success, result.execution_error() or result.node_errors
    assert CAPTURED[variant].shape == plain(kind).shape and torch.isfinite(CAPTURED[variant]).all()
    assert not torch.equal(CAPTURED[variant], plain(kind))
    assert f"{photos} face(s) from {photos} image(s)" in ui_text(result, "34")
    if layout == "plus":
        text = ui_text(result, "14")
        assert ("v2" in variant) == ("FaceID Plus v2" in text) and "cannot tell v1 from v2" in text


def test_plus_version_override_and_v2_weight(face_setup):
    models_dir, _ = face_setup
    name = write_faceid(models_dir, "faceid-plus_sd15-override.safetensors", "sd15", "plus", seed=40)
    runs = {}
    for key, version, weight in (("auto", None, None), ("v1", "v1", None), ("v2-w2", "v2", 2.0)):
        result = run_prompt(faceid_prompt(name, key=f"override-{key}", clip=True, plus_version=version,
                                          v2_weight=weight))
        assert result.success, result.execution_error()
        runs[key] = CAPTURED[f"override-{key}"]
    assert "FaceID Plus v2 (shortcut weight 2)" in ui_text(result, "14") and "set by faceid_plus_version" in \
        ui_text(result, "14")
    assert torch.equal(runs["auto"], runs["v1"])  # the name says plus without v2
    assert not torch.equal(runs["v1"], runs["v2-w2"])


def test_skip_carries_on_without_the_photo_with_no_face(face_setup):
    models_dir, _ = face_setup
    name = write_faceid(models_dir, "faceid-portrait_sd15-skip.safetensors", "sd15", "portrait", seed=41)
    with_skip = run_prompt(faceid_prompt(name, key="skip", photos=("no_face.png", "face_a.png"), on_no_face="skip"))
    assert with_skip.success, with_skip.execution_error()
    alone = run_prompt(faceid_prompt(name, key="alone", photos=("face_a.png",)))
    assert alone.success and torch.equal(CAPTURED["skip"], CAPTURED["alone"])
    assert "skipped image(s) without a face: 0" in ui_text(with_skip, "34")
    failed = run_prompt(faceid_prompt(name, key="noface", photos=("no_face.png", "face_a.png")))
    err = failed.execution_error()
    assert err["node_type"] == "LikenessFaceEmbed" and "reference image 0" in err["exception_message"]


def test_missing_pack_through_the_executor(face_setup):
    models_dir, _ = face_setup
    name = write_faceid(models_dir, "faceid_sd15-nopack.safetensors", "sd15", "faceid", seed=42)
    prompt = faceid_prompt(name, key="nopack")
    prompt["30"]["inputs"]["model_pack"] = "buffalo_l"
    err = run_prompt(prompt).execution_error()
    assert err["node_type"] == "LikenessFaceModelLoader"
    assert os.path.join("models", "buffalo_l", "*.onnx") in err["exception_message"]


def test_face_model_loader_reports_the_provider(face_setup):
    result = run_prompt({"30": {"class_type": "LikenessFaceModelLoader", "inputs": {"model_pack": fm.PACK,
                                                                                 "provider": "auto"}},
                         "34": {"class_type": "LikenessFaceEmbed", "inputs": {
                             "face_model": ["30", 0], "image": ["40", 0], "select": "largest", "index": 0,
                             "on_no_face": "error", "crop_size": "256"}},
                         "40": {"class_type": "LoadImage", "inputs": {"image": "face_a.png"}},
                         "41": {"class_type": "PreviewImage", "inputs": {"images": ["34", 1]}}})
    assert result.success, result.execution_error()
    assert "running on CPUExecutionProvider (asked: auto)" in ui_text(result, "30")


# ---------------------------------------------------------------- the FaceID LoRA

def loaded_adapter(models_dir, name, kind, layout, seed, lora=None):
    write_faceid(models_dir, name, kind, layout, seed=seed, lora=lora)
    return adapter_mod.load_adapter(str(models_dir / "ipadapter" / name))


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_lora_patches_every_attention_projection(kind, face_setup):
    models_dir, _ = face_setup
    adapter = loaded_adapter(models_dir, f"faceid_{kind}-lora.safetensors", kind, "faceid", seed=43)
    model = builders.build_unet(kind)
    before = dict(model.patches)
    patched = lora_mod.apply_faceid_lora(model, adapter, 0.7)
    assert model.patches == before and patched is not model, "the input MODEL must not change"
    sites = tiny_sites(kind)
    assert len(patched.patches) == len(sites) * 8
    state = model.model_state_dict()
    n = len(sites) // 2
    site = sites[n]
    prefix = lora_mod.transformer_block_prefixes(model)[site.key]
    for processor, attn in ((2 * n, "attn1"), (2 * n + 1, "attn2")):
        for short, module in lora_mod.PROJECTIONS:
            key = f"{prefix}.{attn}.{module}.weight"
            up = adapter.lora[f"{processor}.to_{short}_lora.up.weight"]
            down = adapter.lora[f"{processor}.to_{short}_lora.down.weight"]
            w = state[key].float()
            got = comfy.lora.calculate_weight(patched.patches[key], w.clone(), key)
            torch.testing.assert_close(got, w + 0.7 * up.float() @ down.float(), rtol=0, atol=1e-6)


def test_lora_goes_on_a_model_once(face_setup):
    models_dir, _ = face_setup
    adapter = loaded_adapter(models_dir, "faceid_sd15-once.safetensors", "sd15", "faceid", seed=49)
    other = loaded_adapter(models_dir, "faceid_sd15-other.safetensors", "sd15", "faceid", seed=50)
    once = lora_mod.apply_faceid_lora(builders.build_unet("sd15"), adapter, 0.8)
    assert lora_mod.apply_faceid_lora(once, adapter, 1.0) is once  # e.g. after the Unified Loader, or chained
    both = lora_mod.apply_faceid_lora(once, other, 1.0)
    assert both is not once and all(len(p) == 2 for p in both.patches.values())
    assert both.model_options[lora_mod.APPLIED] == {adapter.name: 0.8, other.name: 1.0}


def test_lora_is_not_applied_to_portrait_or_at_strength_zero(face_setup):
    models_dir, _ = face_setup
    model = builders.build_unet("sd15")
    portrait = loaded_adapter(models_dir, "faceid-portrait_sd15-nolora.safetensors", "sd15", "portrait", seed=44)
    assert not lora_mod.needs_lora(portrait) and lora_mod.apply_faceid_lora(model, portrait, 1.0) is model
    faceid = loaded_adapter(models_dir, "faceid_sd15-zero.safetensors", "sd15", "faceid", seed=45)
    assert lora_mod.apply_faceid_lora(model, faceid, 0.0) is model


def test_lora_strength_through_the_executor(face_setup):
    models_dir, _ = face_setup
    name = write_faceid(models_dir, "faceid_sd15-strength.safetensors", "sd15", "faceid", seed=46)
    for strength in (0.0, 1.0):
        assert run_prompt(faceid_prompt(name, key=f"lora-{strength}", lora_strength=strength)).success
    assert run_prompt(faceid_prompt(name, key="lora-default")).success
    assert torch.equal(CAPTURED["lora-default"], CAPTURED["lora-1.0"])  # the default is 1.0, as trained
    assert not torch.equal(CAPTURED["lora-0.0"], CAPTURED["lora-1.0"])


def kohya_lora(model, adapter_with_lora) -> dict:
    """The adapter's LoRA re-keyed as a kohya-format `*_lora.safetensors` (lora_unet_<diffusers name>)."""
    to_diffusers = {f"diffusion_model.{v}": k for k, v in
                    comfy.utils.unet_to_diffusers(model.model.model_config.unet_config).items()}
    out = {}
    for name, key in lora_mod.lora_targets(model).items():
        base = "lora_unet_" + to_diffusers[key][:-len(".weight")].replace(".", "_")
        up, down = adapter_with_lora.lora[f"{name}_lora.up.weight"], adapter_with_lora.lora[f"{name}_lora.down.weight"]
        out[f"{base}.lora_up.weight"], out[f"{base}.lora_down.weight"] = up, down
        out[f"{base}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def test_lora_from_the_loras_folder_when_the_file_has_none(face_setup):
    models_dir, loras = face_setup
    with_lora = write_faceid(models_dir, "faceid_sd15-inside.safetensors", "sd15", "faceid", seed=47)
    state = comfy.utils.load_torch_file(str(models_dir / "ipadapter" / with_lora))
    bare = "faceid_sd15-separate.safetensors"
    builders.save_safetensors(str(models_dir / "ipadapter" / bare), {k: v for k, v in state.items()
                                                                     if "_lora." not in k})
    missing = run_prompt(faceid_prompt(bare, key="separate-missing"))
    err = missing.execution_error()
    assert err["node_type"] == "LikenessApply" and "faceid_sd15-separate_lora.safetensors" in err["exception_message"]
    assert str(loras) in err["exception_message"] and "faceid_lora_strength to 0" in err["exception_message"]
    assert run_prompt(faceid_prompt(bare, key="separate-off", lora_strength=0.0)).success

    adapter = adapter_mod.load_adapter(str(models_dir / "ipadapter" / with_lora))
    builders.save_safetensors(str(loras / "faceid_sd15-separate_lora.safetensors"),
                              kohya_lora(builders.build_unet("sd15"), adapter))
    inside = run_prompt(faceid_prompt(with_lora, key="lora-inside", lora_strength=0.8))
    separate = run_prompt(faceid_prompt(bare, key="lora-separate", lora_strength=0.8))
    assert inside.success and separate.success, separate.execution_error()
    assert torch.equal(CAPTURED["lora-inside"], CAPTURED["lora-separate"])


def test_lora_for_another_model_is_refused(face_setup):
    models_dir, _ = face_setup
    adapter = loaded_adapter(models_dir, "faceid_sd15-broken-lora.safetensors", "sd15", "faceid", seed=48)
    broken = adapter_mod.Adapter(adapter.name, adapter.detected, adapter.projection, adapter.kv_weights,
                                 {k: v for k, v in adapter.lora.items() if not k.startswith("3.")})
    with pytest.raises(pack("nodes.core.errors").AdapterFileError, match="LoRA does not cover"):
        lora_mod.apply_faceid_lora(builders.build_unet("sd15"), broken, 1.0)
