"""Broken and hostile files and values end in a Likeness error that names the file or input, the tensor where it
matters, and what to do; NaN or inf never reaches an image unannounced, and checking for it costs nothing per step.

The same classes of input are sent through ComfyUI's real server in tests/test_http_hostile.py."""

from __future__ import annotations

import asyncio
import json
import math
import os
import struct
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest
import torch

import builders
import face_models as fm
import folder_paths
from conftest import pack
from test_detection import write_sparse_safetensors
from test_faceid_end_to_end import kohya_lora
from test_patching import sample, tokens_for
from test_unified_loader import folders  # noqa: F401  (fixture)

checkpoint = pack("nodes.core.checkpoint")
errors = pack("nodes.core.errors")
adapter_mod = pack("nodes.core.adapter")
lora_fit = pack("nodes.core.lora_fit")
lora_mod = pack("nodes.host.lora")
references = pack("nodes.core.references")
references_io = pack("nodes.core.references_io")
reference_files = pack("nodes.host.reference_files")
routes = pack("nodes.host.routes")
sites_mod = pack("nodes.host.sites")
apply_node = pack("nodes.apply")
loaders = pack("nodes.loaders")
catalog = pack("nodes.host.catalog")
doctor = pack("nodes.doctor")
host_face = pack("nodes.host.face")
face_core = pack("nodes.core.face")
encode = pack("nodes.host.encode")
merge = pack("nodes.core.merge")

LFS_TEXT = ("version https://git-lfs.github.com/spec/v1\n"
            "oid sha256:4fa5b1a1d7b3c5e1f0e0c2c8a6c1d0e5f4b3a2c1d0e9f8a7b6c5d4e3f2a1b0c9\nsize 1487555181\n")


def tiny_state(kind="sd15", seed=0):
    widths = [s.width for s in sites_mod.find_sites(builders.build_unet(kind))]
    return builders.tiny_adapter_state("linear", widths, input_width=32, tokens=4, seed=seed)


def write_header(path, header, data: bytes = b"") -> str:
    """A safetensors file with exactly this JSON header (however wrong) and data."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
    return str(path)


# ---------------------------------------------------------------- headers, pointers, pages

@pytest.mark.parametrize("entry, words", [
    ({"dtype": "F32", "shape": [2]}, "has no data_offsets"),
    ([1, 2, 3], "is a list, not a tensor description"),
    ("F32", "is a str, not a tensor description"),
    ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "unreadable dtype, shape or data_offsets"),
    ({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}, "unreadable dtype, shape or data_offsets"),
    ({"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}, "unreadable dtype, shape or data_offsets"),
    ({"dtype": 5, "shape": [2], "data_offsets": [0, 8]}, "unreadable dtype, shape or data_offsets"),
])
def test_a_corrupt_header_entry_names_the_file_and_the_tensor(tmp_path, entry, words):
    path = write_header(tmp_path / "odd.safetensors", {"ip_adapter.1.to_k_ip.weight": entry}, b"\0" * 8)
    for read in (checkpoint.read_shapes, checkpoint.load_file, adapter_mod.read_detection, adapter_mod.load_adapter):
        with pytest.raises(errors.AdapterFileError) as e:
            read(path)
        message = str(e.value)
        assert "odd.safetensors" in message and "ip_adapter.1.to_k_ip.weight" in message and words in message
        assert "download it again" in message


def test_metadata_that_is_not_a_mapping(tmp_path):
    path = write_header(tmp_path / "meta.safetensors", {"__metadata__": ["x"]})
    with pytest.raises(errors.AdapterFileError, match="meta.safetensors.*`__metadata__` is not a mapping"):
        checkpoint.read_shapes(path)


@pytest.mark.parametrize("name", ["ip-adapter-faceid-plusv2_sd15.bin", "ip-adapter_sd15.safetensors"])
def test_a_git_lfs_pointer_is_called_one_whatever_the_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text(LFS_TEXT)
    for read in (checkpoint.read_shapes, adapter_mod.load_adapter):
        with pytest.raises(errors.AdapterFileError) as e:
            read(str(path))
        message = str(e.value)
        assert name in message and "Git LFS pointer" in message and "git lfs pull" in message
        assert "Python objects" not in message and "safetensors version" not in message


def test_an_html_page_saved_as_bin(tmp_path):
    path = tmp_path / "ip-adapter-faceid_sd15.bin"
    path.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(errors.AdapterFileError, match="ip-adapter-faceid_sd15.bin.*web page"):
        adapter_mod.load_adapter(str(path))


# ---------------------------------------------------------------- NaN and inf in weights

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_all_finite_finds_one_bad_value_anywhere(dtype, bad):
    for position in (0, 1, 4097, 99_999):
        t = torch.randn(100_000).to(dtype)
        assert checkpoint.all_finite(t)
        t[position] = bad
        assert not checkpoint.all_finite(t), (dtype, bad, position)
    assert checkpoint.all_finite(torch.zeros(0)) and checkpoint.all_finite(torch.arange(5))
    assert checkpoint.all_finite(torch.full((3,), 65504.0, dtype=torch.float16))  # large but finite


def test_nan_in_a_safetensors_adapter_names_file_and_tensor(tmp_path):
    state = tiny_state()
    state["ip_adapter.5.to_v_ip.weight"][3, 1] = math.nan
    path = builders.save_safetensors(str(tmp_path / "nan.safetensors"), state)
    with pytest.raises(errors.AdapterFileError) as e:
        adapter_mod.load_adapter(path)
    assert "nan.safetensors" in str(e.value) and "`ip_adapter.5.to_v_ip.weight`" in str(e.value)
    assert "NaN or infinite" in str(e.value)
    adapter_mod.read_detection(path)  # detection reads the header only: a header read stays cheap


def test_inf_in_a_bin_adapter_and_its_faceid_lora(tmp_path):
    widths = [s.width for s in sites_mod.find_sites(builders.build_unet("sd15"))]
    state = fm.tiny_faceid_state("faceid", widths, seed=3)
    state["ip_adapter.2.to_q_lora.up.weight"] = state["ip_adapter.2.to_q_lora.up.weight"].half()
    state["ip_adapter.2.to_q_lora.up.weight"][0, 0] = math.inf
    nested = {}
    for key, value in state.items():
        group, rest = key.split(".", 1)
        nested.setdefault(group, {})[rest] = value
    torch.save(nested, tmp_path / "faceid.bin")
    with pytest.raises(errors.AdapterFileError, match=r"faceid\.bin.*`ip_adapter\.2\.to_q_lora\.up\.weight`"):
        adapter_mod.load_adapter(str(tmp_path / "faceid.bin"))


def test_weights_are_checked_once_per_file_and_never_while_sampling(tmp_path, monkeypatch):
    path = builders.save_safetensors(str(tmp_path / "once.safetensors"), tiny_state(seed=5))
    calls = []
    original = checkpoint.all_finite
    monkeypatch.setattr(checkpoint, "all_finite", lambda t: calls.append(t.numel()) or original(t))
    first = loaders.cached_adapter(path)
    assert len(calls) == len(checkpoint.load_file(path, finite=False))  # every tensor, once
    calls.clear()
    assert loaders.cached_adapter(path) is first and not calls  # the cache entry holds the checked weights
    model = builders.build_unet("sd15")
    patched = apply_node.apply_tokens(model, first, tokens_for(first), 0.8)
    sample(patched, steps=2)
    assert not calls


# ---------------------------------------------------------------- the FaceID LoRA

@pytest.fixture()
def lora_folder(tmp_path):
    folder = tmp_path / "loras"
    folder.mkdir()
    with fm.model_folder("loras", str(folder), first=True):
        yield folder


def faceid_adapter(tmp_path, kind, name, lora=True, seed=0):
    widths = [s.width for s in sites_mod.find_sites(builders.build_unet(kind))]
    state = fm.tiny_faceid_state("faceid", widths, seed=seed, lora=lora)
    return adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / name), state))


def test_a_broken_lora_fallback_file_is_named(tmp_path, lora_folder):
    bare = faceid_adapter(tmp_path, "sd15", "faceid_broken.safetensors", lora=False)
    (lora_folder / "faceid_broken_lora.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{\"a\": 1}" + b"\0" * 64)
    with pytest.raises(errors.AdapterFileError) as e:
        lora_mod.apply_faceid_lora(builders.build_unet("sd15"), bare, 1.0)
    assert "faceid_broken_lora.safetensors" in str(e.value) and "download it again" in str(e.value)


def test_a_nan_lora_fallback_file_names_the_tensor(tmp_path, lora_folder):
    inside = faceid_adapter(tmp_path, "sd15", "faceid_nan_inside.safetensors", seed=2)
    bare = faceid_adapter(tmp_path, "sd15", "faceid_nan.safetensors", lora=False)
    state = kohya_lora(builders.build_unet("sd15"), inside)
    key = sorted(k for k in state if k.endswith("lora_up.weight"))[3]
    state[key] = state[key].clone()
    state[key][0, 0] = math.nan
    builders.save_safetensors(str(lora_folder / "faceid_nan_lora.safetensors"), state)
    with pytest.raises(errors.AdapterFileError, match=f"faceid_nan_lora.safetensors.*`{key}`"):
        lora_mod.apply_faceid_lora(builders.build_unet("sd15"), bare, 1.0)


def test_a_lora_for_another_model_is_an_error_naming_file_and_family(tmp_path, lora_folder):
    sdxl_inside = faceid_adapter(tmp_path, "sdxl", "faceid_xl_inside.safetensors", seed=4)
    bare = faceid_adapter(tmp_path, "sd15", "faceid_mixed.safetensors", lora=False)
    builders.save_safetensors(str(lora_folder / "faceid_mixed_lora.safetensors"),
                              kohya_lora(builders.build_unet("sdxl"), sdxl_inside))
    model = builders.build_unet("sd15")
    with pytest.raises(errors.IncompatibleError) as e:
        lora_mod.apply_faceid_lora(model, bare, 1.0)
    message = str(e.value)
    assert "faceid_mixed_lora.safetensors" in message and "half applied" in message
    assert "70 cross-attention sites" in message and "16 cross-attention sites" in message  # the tiny SDXL / SD1.5
    assert "faceid_lora_strength to 0" in message
    assert not model.patches


def test_the_adapter_lora_for_another_layout_names_both_families(tmp_path):
    sdxl = faceid_adapter(tmp_path, "sdxl", "faceid_xl.safetensors", seed=6)
    sd15 = faceid_adapter(tmp_path, "sd15", "faceid_15.safetensors", seed=7)
    frankenstein = adapter_mod.Adapter(sd15.name, sd15.detected, sd15.projection, sd15.kv_weights, sdxl.lora)
    with pytest.raises(errors.AdapterFileError, match="LoRA does not cover.*70 cross-attention sites.*16 cross"):
        lora_mod.apply_faceid_lora(builders.build_unet("sd15"), frankenstein, 1.0)


def test_a_fitting_lora_file_is_read_once(tmp_path, lora_folder, monkeypatch):
    inside = faceid_adapter(tmp_path, "sd15", "faceid_fits_inside.safetensors", seed=8)
    bare = faceid_adapter(tmp_path, "sd15", "faceid_fits.safetensors", lora=False)
    builders.save_safetensors(str(lora_folder / "faceid_fits_lora.safetensors"),
                              kohya_lora(builders.build_unet("sd15"), inside))
    reads = []
    original = checkpoint.load_file
    monkeypatch.setattr(checkpoint, "load_file", lambda *a, **k: reads.append(a[0]) or original(*a, **k))
    for strength in (0.5, 1.0):
        patched = lora_mod.apply_faceid_lora(builders.build_unet("sd15"), bare, strength)
        assert len(patched.patches) == 16 * 2 * 4  # q, k, v, out of attn1 and attn2 at every site
    assert len(reads) == 1


@pytest.mark.parametrize("kind, family", [("sd15", "SD1.5"), ("sdxl", "SDXL")])
def test_lora_family_from_full_size_shapes(kind, family):
    model = builders.build_unet(kind, tiny=False)
    sites = sites_mod.find_sites(model)
    context = sites[0].context_width
    comfy_style = {}
    for key, w in model.model.diffusion_model.state_dict().items():
        if ".attn2.to_k.weight" in key or ".attn1.to_q.weight" in key:
            base = "diffusion_model." + key[:-len(".weight")]
            comfy_style[base + ".lora_down.weight"] = (128, w.shape[1])
            comfy_style[base + ".lora_up.weight"] = (w.shape[0], 128)
    assert lora_fit.lora_family(comfy_style) == family
    processors = builders.lora_shapes([s.width for s in sites], context)  # the h94 numbering inside adapters
    assert lora_fit.lora_family(processors) == family
    peft = {k.replace("diffusion_model.", "unet.").replace(".lora_down.", ".lora_A."): v
            for k, v in comfy_style.items()}
    assert lora_fit.lora_family(peft) == family
    assert lora_fit.lora_family({"lora_te_text_model.q_proj.lora_down.weight": (4, 768)}) is None


# ---------------------------------------------------------------- face models with NaN outputs

@pytest.fixture(scope="module")
def poisoned_packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("poisoned_insightface")
    fm.write_pack(str(root / "models" / "nan_recogniser"))
    fm.poison(str(root / "models" / "nan_recogniser" / "w600k_r50.onnx"))
    fm.write_pack(str(root / "models" / "nan_detector"))
    fm.poison(str(root / "models" / "nan_detector" / "det_10g.onnx"))
    fm.write_pack(str(root / "models" / "inf_recogniser"))
    fm.poison(str(root / "models" / "inf_recogniser" / "w600k_r50.onnx"), math.inf)
    with fm.model_folder("insightface", str(root)):
        yield root


@pytest.mark.parametrize("pack_name, damaged, what", [
    ("nan_recogniser", "w600k_r50.onnx", "identity embeddings"),
    ("inf_recogniser", "w600k_r50.onnx", "identity embeddings"),
    ("nan_detector", "det_10g.onnx", "detections"),
])
def test_a_face_model_with_non_finite_outputs_stops_at_embedding(poisoned_packs, pack_name, damaged, what):
    model = host_face.load_face_model(pack_name, "CPU")
    photo = fm.to_comfy(fm.face_image())
    with pytest.raises(face_core.FaceModelError) as e:
        host_face.embed_faces(model, photo, on_no_face="skip")
    message = str(e.value)
    assert f"`{damaged}`" in message and f"`{pack_name}`" in message and what in message
    assert "Download the pack again" in message


def test_an_image_encoder_with_nan_features_is_named(tmp_path):
    path = builders.write_tiny_clip_vision(str(tmp_path), "nan-clip", seed=3)
    clip = builders.load_tiny_clip_vision(path)
    with torch.no_grad():
        next(clip.model.parameters()).fill_(math.nan)
    with pytest.raises(errors.InputError, match="nan-clip.safetensors.*NaN or infinite features"):
        encode.encode_references(clip, torch.rand(1, 32, 32, 3), source="nan-clip.safetensors")


# ---------------------------------------------------------------- bounded counts

def test_reference_counts_are_bounded_everywhere(tmp_path):
    limit = references.MAX_REFERENCES
    with pytest.raises(errors.InputError, match=f"the image batch gives {limit + 1} references.*at most {limit}"):
        encode.prepare_images(torch.zeros(limit + 1, 4, 4, 3), "center", 0.0, None, torch.zeros(3))
    with pytest.raises(errors.InputError, match=f"at most {limit}"):
        host_face.embed_faces(None, torch.zeros(limit + 1, 4, 4, 3))  # refused before any detection
    enc = references.EncoderInfo.from_widths(8, 4)

    def refs(n):
        return references.References.from_images(enc, torch.zeros(n, 4), torch.zeros(n, 3, 8), torch.zeros(1, 3, 8))

    with pytest.raises(errors.InputError, match=f"at most {limit}"):
        refs(limit + 1)
    with pytest.raises(errors.InputError, match=r"merging references_1 \(200\), references_2 \(100\)"):
        merge.gather([("references_1", refs(200)), ("references_2", refs(100))])
    import safetensors.torch

    path = str(tmp_path / "many.safetensors")
    tensors, meta = references_io.to_tensors_and_metadata(refs(3))
    safetensors.torch.save_file(tensors, path, metadata={**meta, "count": str(limit + 1)})
    with pytest.raises(errors.ReferencesFileError, match=f"many.safetensors.*{limit + 1} references"):
        references_io.load_references(path)
    big, big_meta = references_io.to_tensors_and_metadata(refs(limit))
    big = {k: (torch.cat([v, v[:1]]) if k != "image.empty_penultimate" else v) for k, v in big.items()}
    safetensors.torch.save_file(big, path, metadata={**big_meta, "count": "3"})
    with pytest.raises(errors.ReferencesFileError, match=f"holds {limit + 1} references"):
        references_io.load_references(path)


def test_nan_in_a_references_file_names_the_tensor(tmp_path):
    enc = references.EncoderInfo.from_widths(8, 4)
    refs = references.References.from_images(enc, torch.zeros(2, 4), torch.zeros(2, 3, 8), torch.zeros(1, 3, 8))
    tensors, meta = references_io.to_tensors_and_metadata(refs)
    tensors["image.penultimate"][1, 2, 3] = math.nan
    import safetensors.torch

    path = str(tmp_path / "alice.safetensors")
    safetensors.torch.save_file(tensors, path, metadata=meta)
    with pytest.raises(errors.ReferencesFileError, match="alice.safetensors.*`image.penultimate`.*NaN"):
        references_io.load_references(path)


def test_a_git_lfs_pointer_as_references_file(tmp_path):
    path = tmp_path / "bob.safetensors"
    path.write_text(LFS_TEXT)
    with pytest.raises(errors.ReferencesFileError, match="bob.safetensors.*Git LFS pointer"):
        references_io.load_references(str(path))


# ---------------------------------------------------------------- widget values the pack's own checks refuse

def test_end_at_late_is_a_message_not_a_type_error():
    nodes_apply = pack("nodes.apply")
    for cls in (nodes_apply.LikenessApply, nodes_apply.LikenessApplySimple):
        result = cls.validate_inputs(weight=1.0, start_at=0.0, end_at="late", weight_type="linear",
                                     embeds_scaling="V only")
        assert isinstance(result, str) and "`end_at` must be a number; got 'late'" in result


@pytest.mark.parametrize("prefix, words", [
    ("a\x00b", "NUL"), ("p" * 5000, "characters long"), ("../../outside", "must stay inside its folder"),
    ("/etc/likeness", "must stay inside its folder"), ("C:\\Windows\\x", "must stay inside its folder"),
])
def test_save_references_refuses_prefixes_that_cannot_be_file_names(models_dir, prefix, words):
    save = pack("nodes.references_io").LikenessSaveReferences
    result = save.validate_inputs(filename_prefix=prefix)
    assert isinstance(result, str) and "`filename_prefix`" in result and words in result
    with pytest.raises(errors.InputError, match=words):
        reference_files.new_file_path(prefix)
    assert save.validate_inputs(filename_prefix="people/alice") is True


def test_saving_to_an_unwritable_place_names_the_file(tmp_path):
    enc = references.EncoderInfo.from_widths(8, 4)
    refs = references.References.from_images(enc, torch.zeros(1, 4), torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))
    (tmp_path / "blocked").write_text("a file where a folder should be")
    with pytest.raises(errors.ReferencesFileError, match="r_00001_.safetensors.*could not be written"):
        references_io.save_references(refs, str(tmp_path / "blocked" / "r_00001_.safetensors"))


# ---------------------------------------------------------------- routes: JSON with finite numbers, never a 500

@pytest.mark.parametrize("weight", [math.nan, math.inf, -math.inf])
def test_the_weights_table_refuses_non_finite_weights(weight):
    with pytest.raises(errors.LikenessError, match="finite"):
        routes.weights_table("sd15", weight, "linear")


def test_the_chart_layout_is_comfyuis_own_config():
    for kind in routes.LAYOUTS:
        assert routes.layout_sites(kind) == tuple(sites_mod.find_sites(builders.build_unet(kind, tiny=False)))


def _query(app_routes, path):
    """(status, text) of GET `path` on an aiohttp app holding only the pack's routes."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        app = web.Application()
        app.add_routes(app_routes)
        async with TestClient(TestServer(app)) as client:
            response = await client.get(path)
            return response.status, await response.text()

    return asyncio.run(go())


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"non-finite number {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_routes_answer_json_even_when_the_host_fails(models_dir, monkeypatch):
    from aiohttp import web

    table = web.RouteTableDef()
    routes.add_routes(table)
    for query in ("weight=nan", "weight=inf", "weight=-1e309", "weight=abc", "weight_type=strongest", "layout=flux"):
        status, text = _query(table, f"/likeness/weights?{query}")
        assert status == 400 and strict_json(text)["error"], (query, text)
    for weight_type in pack("nodes.core.schedules").WEIGHT_TYPES:
        query = urllib.parse.urlencode({"weight": "1.7e308", "weight_type": weight_type, "layout": "sdxl"})
        status, text = _query(table, f"/likeness/weights?{query}")
        assert status in (200, 400) and strict_json(text), (weight_type, text)

    def host_changed(*args, **kwargs):
        raise AttributeError("'UNetModel' object has no attribute 'input_blocks'")

    monkeypatch.setattr(routes, "weights_table", host_changed)
    monkeypatch.setattr(routes, "adapter_info", host_changed)
    status, text = _query(table, "/likeness/weights?weight=0.5")
    assert status == 200 and "could not compute the weight chart" in strict_json(text)["error"]
    assert "Traceback" not in text
    name = write_header(models_dir / "ipadapter" / "route-probe.safetensors", {})
    try:
        folder_paths.filename_list_cache.clear()
        status, text = _query(table, "/likeness/adapter_info?name=route-probe.safetensors")
        assert status == 200 and "could not compute the adapter summary" in strict_json(text)["error"]
    finally:
        os.remove(name)


def test_adapter_info_for_a_corrupt_header_is_a_json_answer(models_dir):
    from aiohttp import web

    table = web.RouteTableDef()
    routes.add_routes(table)
    path = write_header(models_dir / "ipadapter" / "no-offsets.safetensors",
                        {"ip_adapter.1.to_k_ip.weight": {"dtype": "F16", "shape": [4, 4]}})
    try:
        folder_paths.filename_list_cache.clear()
        status, text = _query(table, "/likeness/adapter_info?name=no-offsets.safetensors")
        assert status == 200 and "no-offsets.safetensors" in strict_json(text)["error"]
        assert "data_offsets" in strict_json(text)["error"]
        answers = {_query(table, f"/likeness/adapter_info?name={name}")
                   for name in ("../../etc/passwd", "/etc/passwd", "../../nothing/here", "missing.safetensors")}
        assert len(answers) == 1  # the same answer whether or not such a file exists
    finally:
        os.remove(path)


# ---------------------------------------------------------------- the doctor checks what it lists

def test_the_doctor_marks_broken_files_broken(folders, tmp_path):
    root = folders
    (root / "insightface").mkdir()
    write_sparse_safetensors(root / "ipadapter" / "ip-adapter_sd15.safetensors",
                             builders.official_shapes("ip-adapter_sd15.safetensors"))
    (root / "ipadapter" / "ip-adapter-faceid_sd15.bin").write_text(LFS_TEXT)
    write_header(root / "ipadapter" / "no-offsets.safetensors", {"a": {"dtype": "F16", "shape": [1]}})
    good = faceid_adapter(tmp_path, "sd15", "faceid_doctor.safetensors", seed=9)
    builders.save_safetensors(str(root / "loras" / "ip-adapter-faceid_sd15_lora.safetensors"),
                              kohya_lora(builders.build_unet("sd15"), good))
    (root / "loras" / "ip-adapter-faceid-plusv2_sd15_lora.safetensors").write_bytes(b"\0" * 40)
    fm.write_pack(str(root / "insightface" / "models" / "buffalo_l"))
    fm.write_pack(str(root / "insightface" / "models" / "antelopev2"))
    with open(root / "insightface" / "models" / "antelopev2" / "w600k_r50.onnx", "r+b") as f:
        f.truncate(300)
    # ControlNets: a damaged IdentityNet, an IdentityNet-named file of another kind, and another ControlNet
    (root / "controlnet" / "instantid").mkdir(parents=True)
    (root / "controlnet" / "instantid" / "diffusion_pytorch_model.safetensors").write_text(LFS_TEXT)
    write_sparse_safetensors(root / "controlnet" / "instantid_sd15.safetensors", {"a.weight": (4, 4)})
    (root / "controlnet" / "canny.safetensors").write_bytes(b"\0" * 40)  # not InstantID's: not read
    with fm.model_folder("insightface", str(root / "insightface"), first=True), \
            fm.model_folder("controlnet", str(root / "controlnet"), first=True):
        lines = doctor.report().splitlines()

    def line(name):
        return next(x for x in lines if x.startswith(f"  {name}:"))

    assert "Git LFS pointer" in line("ip-adapter-faceid_sd15.bin")
    assert line("no-offsets.safetensors").startswith("  no-offsets.safetensors: unusable:")
    assert "data_offsets" in line("no-offsets.safetensors")
    assert "LoRA for a 64-wide-context model with 16 cross-attention sites" in line(
        "ip-adapter-faceid_sd15_lora.safetensors")
    assert "unusable" in line("ip-adapter-faceid-plusv2_sd15_lora.safetensors")
    assert "det_10g.onnx" in line("buffalo_l") and "unusable" not in line("buffalo_l")
    assert "unusable" in line("antelopev2") and "w600k_r50.onnx" in line("antelopev2")
    broken = next(x for x in lines if x.startswith("Broken or unreadable"))
    damaged_net = os.path.join("instantid", "diffusion_pytorch_model.safetensors")
    for name in ("ip-adapter-faceid_sd15.bin", "no-offsets.safetensors",
                 "ip-adapter-faceid-plusv2_sd15_lora.safetensors", "antelopev2", damaged_net):
        assert name in broken
    assert "buffalo_l" not in broken and "canny" not in broken
    assert "Git LFS pointer" in line(damaged_net) and "named as the IdentityNet" in line(damaged_net)
    assert "not an SDXL ControlNet" in line("instantid_sd15.safetensors")
    assert next(x for x in lines if x.startswith("  IdentityNet ControlNet:")).startswith(
        "  IdentityNet ControlNet: missing")


@pytest.mark.parametrize("present, chosen", [
    ((), None), (("extra_model_paths.yaml",), "extra_model_paths.yaml"), (("extra_paths.yaml",), "extra_paths.yaml"),
    (("extra_paths.yaml", "extra_model_paths.yaml"), "extra_paths.yaml"),
])
def test_the_doctor_reads_the_config_comfyui_reads(tmp_path, present, chosen):
    for name in present:
        (tmp_path / name).write_text("x: {}\n")
    found = doctor.default_config(str(tmp_path))
    assert (found and os.path.basename(found)) == chosen


def test_sniffing_reads_only_the_start_of_a_file(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(LFS_TEXT.encode())
        f.truncate(1 << 30)  # a hole: nothing is read beyond the first bytes
    assert "Git LFS pointer" in checkpoint.not_a_model(str(path))
    assert checkpoint.not_a_model(builders.save_safetensors(str(tmp_path / "ok.safetensors"), {"x": torch.ones(1)}))\
        is None


def test_a_good_face_pack_passes_the_checks(tmp_path_factory):
    with fm.insightface_folder(tmp_path_factory):
        model = host_face.load_face_model(fm.PACK, "CPU")
        assert not model.detector_is_damaged()
        refs, _crops, _text = host_face.embed_faces(model, fm.to_comfy(fm.face_image()))
    assert np.isfinite(refs.face.raw.numpy()).all()


@pytest.mark.parametrize("present", [("extra_paths.yaml",), ("extra_model_paths.yaml",),
                                     ("extra_paths.yaml", "extra_model_paths.yaml")])
def test_the_doctor_command_reads_each_config_file_alone(tmp_path, present):
    """A ComfyUI folder (links to the real one's files) holding the given configs, each naming its own folder."""
    from conftest import COMFYUI, PACK

    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    for entry in COMFYUI.iterdir():
        if entry.name not in doctor.CONFIG_FILES:
            (comfy / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for config in present:
        folder = tmp_path / config.replace(".", "_")
        (folder / "ipadapter").mkdir(parents=True)
        write_sparse_safetensors(folder / "ipadapter" / f"via-{config}.safetensors",
                                 builders.official_shapes("ip-adapter_sd15.safetensors"))
        (comfy / config).write_text(f"mine:\n  base_path: {folder}\n  ipadapter: ipadapter\n")
    run = subprocess.run([sys.executable, "-m", "nodes.doctor", "--comfyui", str(comfy)], cwd=PACK,
                         env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    listed = {config for config in doctor.CONFIG_FILES if f"via-{config}.safetensors: " in run.stdout}
    assert listed == {present[0]}, run.stdout  # with both, extra_paths.yaml wins and the other is not read
