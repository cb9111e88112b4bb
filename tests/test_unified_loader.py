"""Presets find files by what they are; missing files get one message naming the file, its source and every
folder searched; the model doctor reports what works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import builders
import folder_paths
from conftest import COMFYUI, PACK, pack
from test_detection import write_sparse_safetensors

presets = pack("nodes.core.presets")
unified = pack("nodes.unified")
catalog = pack("nodes.host.catalog")
variants = pack("nodes.core.variants")

VIT_H = {"vision_model.embeddings.class_embedding": (1280,), "visual_projection.weight": (1024, 1280),
         "vision_model.encoder.layers.30.layer_norm1.weight": (1280,),
         "vision_model.embeddings.position_embedding.weight": (257, 1280)}
VIT_G = {"vision_model.embeddings.class_embedding": (1664,), "visual_projection.weight": (1280, 1664),
         "vision_model.encoder.layers.47.layer_norm1.weight": (1664,),
         "vision_model.embeddings.position_embedding.weight": (257, 1664)}


@pytest.fixture()
def folders(tmp_path, monkeypatch):
    """Fresh ipadapter / clip_vision / loras folders, registered the way extra_model_paths.yaml would."""
    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("ipadapter", "clip_vision", "loras")}
    for name in saved:
        (tmp_path / name).mkdir()
        folder_paths.folder_names_and_paths[name] = ([str(tmp_path / name)], saved[name][1])
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.filename_list_cache.clear()


def put(folder, name, shapes):
    write_sparse_safetensors(folder / name, shapes)
    folder_paths.filename_list_cache.clear()


def test_encoders_are_recognised_from_headers(folders):
    put(folders / "clip_vision", "model.safetensors", VIT_H)
    put(folders / "clip_vision", "other.safetensors", VIT_G)
    found = {e.name: e.found.name for e in catalog.encoders()}
    assert found == {"model.safetensors": "ViT-H/14", "other.safetensors": "ViT-bigG/14"}
    assert variants.detect_encoder({"visual.class_embedding": (1280,), "visual.proj": (1280, 1024)}).name == "ViT-H/14"


def test_preset_picks_renamed_files_by_their_weights(folders):
    put(folders / "ipadapter", "downloaded (1).safetensors", builders.official_shapes("ip-adapter_sd15.safetensors"))
    put(folders / "ipadapter", "plus.safetensors", builders.official_shapes("ip-adapter-plus_sd15.safetensors"))
    put(folders / "ipadapter", "xl.safetensors", builders.official_shapes("ip-adapter_sdxl_vit-h.safetensors"))
    put(folders / "clip_vision", "model.safetensors", VIT_H)
    assert unified.choose_adapter("STANDARD", "SD1.5").name == "downloaded (1).safetensors"
    assert unified.choose_adapter("PLUS", "SD1.5").name == "plus.safetensors"
    assert unified.choose_adapter("STANDARD", "SDXL").name == "xl.safetensors"
    assert unified.choose_encoder(presets.choice_for("PLUS", "SD1.5").encoder).name == "model.safetensors"


def test_shared_layouts_are_told_apart_by_name_only_as_a_tie_breaker(folders):
    shapes = builders.official_shapes("ip-adapter-plus_sd15.safetensors")
    put(folders / "ipadapter", "ip-adapter-plus_sd15.safetensors", shapes)
    put(folders / "ipadapter", "my-plus-face.safetensors", shapes)
    assert unified.choose_adapter("PLUS", "SD1.5").name == "ip-adapter-plus_sd15.safetensors"
    assert unified.choose_adapter("PLUS FACE", "SD1.5").name == "my-plus-face.safetensors"


def test_missing_file_message_lists_file_source_folder_and_searched_paths(folders):
    put(folders / "ipadapter", "plus.safetensors", builders.official_shapes("ip-adapter-plus_sd15.safetensors"))
    with pytest.raises(presets.MissingModelError) as e:
        unified.choose_adapter("FULL FACE", "SD1.5")
    msg = str(e.value)
    assert "ip-adapter-full-face_sd15.safetensors" in msg and "huggingface.co/h94/IP-Adapter" in msg
    assert "models/ipadapter" in msg and str(folders / "ipadapter") in msg and "plus.safetensors" in msg
    with pytest.raises(presets.MissingModelError) as e:
        unified.choose_encoder(presets.choice_for("VIT-G", "SDXL").encoder)
    assert "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors" in str(e.value)
    assert str(folders / "clip_vision") in str(e.value)


def test_preset_not_made_for_the_model_family():
    with pytest.raises(presets.MissingModelError, match="exists only for SD1.5; the MODEL is SDXL"):
        presets.choice_for("LIGHT", "SDXL")


def test_unified_loader_returns_adapter_and_encoder_for_a_real_layout(folders):
    put(folders / "ipadapter", "a.safetensors", builders.official_shapes("ip-adapter_sd15.safetensors"))
    put(folders / "clip_vision", "h.safetensors", VIT_H)
    model = builders.build_unet("sd15", tiny=False)
    out = unified.LikenessUnifiedLoader.execute(model, "STANDARD", 0.6, "buffalo_l")
    returned_model, adapter, clip_vision, face_model, control_net = out.args
    assert returned_model is model and face_model is None and control_net is None
    assert adapter.detected.variant.key == "sd15"
    assert clip_vision.model.vision_model.embeddings.class_embedding.shape[-1] == 1280


def test_unified_loader_refuses_models_it_has_no_presets_for():
    with pytest.raises(pack("nodes.core.errors").IncompatibleError, match="presets are for SD1.5 and SDXL"):
        unified.model_family(builders.build_unet("sd15"))  # a tiny, 64-wide-context model


def test_availability_table():
    rows = presets.availability(
        [("a.safetensors", variants.detect(builders.official_shapes("ip-adapter_sd15.safetensors"), "a")),
         ("f.bin", variants.detect(builders.official_shapes("ip-adapter-faceid_sd15.bin"), "f"))],
        [variants.ENCODERS[0]], [], [])
    by = {(r.family, r.preset): r for r in rows}
    assert by[("SD1.5", "STANDARD")].usable and "a.safetensors" in by[("SD1.5", "STANDARD")].detail
    assert not by[("SDXL", "STANDARD")].usable and "ip-adapter_sdxl_vit-h.safetensors" in by[("SDXL", "STANDARD")].detail
    faceid = by[("SD1.5", "FACEID")]
    assert not faceid.usable and "buffalo_l" in faceid.detail and "lora" not in faceid.detail  # the file has its LoRA


def test_doctor_command_reads_extra_model_paths(tmp_path):
    extra = tmp_path / "elsewhere"
    (extra / "ipadapter").mkdir(parents=True)
    (extra / "clip_vision").mkdir()
    write_sparse_safetensors(extra / "ipadapter" / "renamed.safetensors",
                             builders.official_shapes("ip-adapter-plus_sdxl_vit-h.safetensors"))
    write_sparse_safetensors(extra / "clip_vision" / "vit-h.safetensors", VIT_H)
    yaml_path = tmp_path / "extra.yaml"
    yaml_path.write_text(f"mine:\n  base_path: {extra}\n  ipadapter: ipadapter\n  clip_vision: clip_vision\n")
    env = dict(os.environ, PYTHONPATH="")
    run = subprocess.run([sys.executable, "-m", "nodes.doctor", "--comfyui", str(COMFYUI),
                          "--extra-model-paths-config", str(yaml_path)], cwd=PACK, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "renamed.safetensors: Plus for SDXL" in out and "vit-h.safetensors: ViT-H/14" in out
    assert any(line.startswith("  OK  PLUS ") and "renamed.safetensors" in line for line in out.splitlines())
    assert str(extra / "ipadapter") in out


def test_doctor_node_runs_in_the_executor(models_dir):
    from conftest import run_prompt

    result = run_prompt({"1": {"class_type": "LikenessModelDoctor", "inputs": {}}})
    assert result.success, result.execution_error()
    text = result.executor.history_result["outputs"]["1"]["text"][0]
    assert "Presets for SD1.5" in text and "Presets for SDXL" in text


def test_faceid_preset_returns_face_model_and_the_lora_once(folders, tmp_path_factory):
    import face_models as fm

    lora_mod = pack("nodes.host.lora")
    put(folders / "ipadapter", "faceid.safetensors", builders.official_shapes("ip-adapter-faceid_sd15.bin"))
    model = builders.build_unet("sd15", tiny=False)
    with fm.insightface_folder(tmp_path_factory):
        out = unified.LikenessUnifiedLoader.execute(model, "FACEID", 0.6, fm.PACK)
    patched, adapter, clip_vision, face_model, control_net = out.args
    assert control_net is None
    assert clip_vision is None and face_model is not None and adapter.detected.variant.key == "sd15-faceid"
    assert patched is not model and patched.model_options[lora_mod.APPLIED] == {"faceid.safetensors": 0.6}
    assert len(patched.patches) == 16 * 2 * 4  # q, k, v, out of attn1 and attn2 at every site
    assert lora_mod.apply_faceid_lora(patched, adapter, 1.0) is patched  # Apply downstream does not double it
    assert not model.patches


def test_faceid_plus_v1_preset_takes_the_v1_file(folders, tmp_path_factory):
    """FACEID PLUS (v1) and FACEID PLUS V2 share one layout: the names pick, and the provider choice is passed on."""
    import face_models as fm

    shapes = builders.official_shapes("ip-adapter-faceid-plusv2_sd15.bin")
    put(folders / "ipadapter", "ip-adapter-faceid-plusv2_sd15.safetensors", shapes)
    with pytest.raises(presets.MissingModelError, match="ip-adapter-faceid-plus_sd15.bin"):
        unified.choose_adapter("FACEID PLUS", "SD1.5")
    put(folders / "ipadapter", "ip-adapter-faceid-plus_sd15.safetensors", shapes)
    assert unified.choose_adapter("FACEID PLUS", "SD1.5").name == "ip-adapter-faceid-plus_sd15.safetensors"
    assert unified.choose_adapter("FACEID PLUS V2", "SD1.5").name == "ip-adapter-faceid-plusv2_sd15.safetensors"
    put(folders / "clip_vision", "h.safetensors", VIT_H)
    model = builders.build_unet("sd15", tiny=False)
    with fm.insightface_folder(tmp_path_factory):
        out = unified.LikenessUnifiedLoader.execute(model, "FACEID PLUS", 0.6, fm.PACK, provider="CPU")
    _, adapter, clip_vision, face_model, control_net = out.args
    assert adapter.name == "ip-adapter-faceid-plus_sd15.safetensors" and clip_vision is not None and control_net is None
    assert face_model.provider_choice == "CPU" and face_model.providers_used == ("CPUExecutionProvider",)
    assert pack("nodes.core.face").plus_version_hint(adapter)[0] is False, "Project's auto reads v1 from the name"
