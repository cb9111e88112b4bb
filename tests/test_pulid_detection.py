"""PuLID files (SDXL v1, v1.1; FLUX v0.9.x) are adapter rows detected from their weights, in every published naming,
and are found in models/pulid as well as models/ipadapter."""

from __future__ import annotations

import os

import pytest
import torch

import builders
import folder_paths
from conftest import pack
from test_detection import write_sparse_safetensors

variants = pack("nodes.core.variants")
checkpoint = pack("nodes.core.checkpoint")
adapter_mod = pack("nodes.core.adapter")
errors = pack("nodes.core.errors")
folders = pack("nodes.host.folders")

EXPECTED = {  # file -> (variant key, family, identity tokens, attention layers)
    "ip-adapter_pulid_sdxl_fp16.safetensors": ("sdxl-pulid", "SDXL", 10, 70),
    "pulid_v1.bin": ("sdxl-pulid", "SDXL", 10, 70),
    "pulid_v1.1.safetensors": ("sdxl-pulid-v1.1", "SDXL", 32, 70),
    "ip-adapter_pulidv1.1_sdxl_fp16.safetensors": ("sdxl-pulid-v1.1", "SDXL", 32, 70),
    "pulid_flux_v0.9.0.safetensors": ("flux-pulid", "FLUX", 32, 20),
    "pulid_flux_v0.9.1.safetensors": ("flux-pulid", "FLUX", 32, 20),
}


def normalised(shapes: dict) -> dict:
    return {(checkpoint._normalise_group_key(k) or k): v for k, v in shapes.items()}


def test_every_published_pulid_file_is_listed():
    assert set(EXPECTED) == set(builders.PULID_FILES)
    listed = {f for v in variants.VARIANTS if v.pulid for f in v.files}
    assert listed == set(EXPECTED)


@pytest.mark.parametrize("name", builders.PULID_FILES)
def test_detects_published_pulid_layouts(name):
    key, family, tokens, layers = EXPECTED[name]
    det = variants.detect(normalised(builders.pulid_official_shapes(name)), name)
    assert det.variant is not None and det.variant.key == key
    assert det.pulid and not det.faceid
    assert (det.family, det.tokens, len(det.layer_ids)) == (family, tokens, layers)
    assert det.encoder is variants.EVA_CLIP and (det.vit_width, det.eva_embed_width) == (1024, 768)
    if family == "FLUX":
        assert det.layer_ids == tuple(range(20)) and set(det.layer_widths) == {3072} and det.context_width == 2048
    else:
        assert det.layer_ids == tuple(range(1, 140, 2)) and det.context_width == 2048
    assert "EVA02-CLIP-L-14-336" in det.summary() and "antelopev2" in det.summary()


@pytest.mark.parametrize("name", [n for n in builders.PULID_FILES if n.endswith(".safetensors")])
def test_detects_full_size_pulid_files_from_the_header_only(tmp_path, name):
    path = write_sparse_safetensors(tmp_path / "renamed.safetensors", builders.pulid_official_shapes(name))
    det = adapter_mod.read_detection(path)
    assert det.variant.key == EXPECTED[name][0]


def test_full_size_pulid_bin_detected_from_meta_tensors(tmp_path):
    """pulid_v1.bin as published (flat `id_adapter.*` / `id_adapter_attn_layers.*` keys), read without its data."""
    state = {k: torch.empty(v, device="meta") for k, v in builders.pulid_official_shapes("pulid_v1.bin").items()}
    shapes = {(checkpoint._normalise_group_key(k) or k): tuple(t.shape) for k, t in state.items()}
    assert variants.detect(shapes, "pulid_v1.bin").variant.key == "sdxl-pulid"


@pytest.mark.parametrize("kind", ["v1", "v1.1"])
def test_published_and_converted_sdxl_namings_load_the_same(tmp_path, kind):
    published = builders.tiny_pulid_state(kind, seed=3, widths=[32] * 70)
    converted = {checkpoint._normalise_group_key(k): v for k, v in published.items()}
    assert all(k.startswith(("image_proj.", "ip_adapter.")) for k in converted)
    torch.save(published, tmp_path / "pulid.bin")
    builders.save_safetensors(str(tmp_path / "ip-adapter_pulid.safetensors"), converted)
    a = adapter_mod.load_adapter(str(tmp_path / "pulid.bin"))
    b = adapter_mod.load_adapter(str(tmp_path / "ip-adapter_pulid.safetensors"))
    assert a.detected == b.detected and a.detected.pulid and len(a.detected.layer_ids) == 70
    assert set(a.kv_weights) == set(range(1, 140, 2))
    idv, hidden = torch.randn(2, 544), [torch.randn(2, 17, 64) for _ in range(5)]
    assert torch.equal(a.projection(idv, hidden), b.projection(idv, hidden))


def test_flux_file_loads_its_cross_attention_modules(tmp_path):
    path = builders.save_safetensors(str(tmp_path / "pulid_flux_tiny.safetensors"),
                                     builders.tiny_pulid_state("flux", flux_blocks=4, flux_dim=64))
    adapter = adapter_mod.load_adapter(path)
    det = adapter.detected
    assert det.family == "FLUX" and det.layer_ids == (0, 1, 2, 3) and det.layer_widths == (64,) * 4
    assert len(adapter.flux_modules) == 4 and not adapter.kv_weights
    assert all(m.dim == 64 and m.kv_width == builders.TINY_CONTEXT and m.heads == 2 for m in adapter.flux_modules)


def test_flux_blocks_follow_the_reference_intervals():
    blocks = variants.pulid_flux_blocks(19, 38)
    assert len(blocks) == 20
    assert [i for kind, i in blocks if kind == "double_block"] == list(range(0, 19, 2))
    assert [i for kind, i in blocks if kind == "single_block"] == list(range(0, 38, 4))
    assert variants.pulid_flux_blocks(4, 8) == (("double_block", 0), ("double_block", 2), ("single_block", 0),
                                                ("single_block", 4))


def test_damaged_pulid_files_say_so(tmp_path):
    shapes = normalised(builders.pulid_official_shapes("pulid_flux_v0.9.1.safetensors"))
    gap = {k: v for k, v in shapes.items() if not k.startswith("pulid_ca.3.")}
    with pytest.raises(errors.AdapterFileError, match="gap.safetensors.*PuLID.*numbered"):
        variants.detect(gap, "gap.safetensors")
    mixed = dict(shapes, **{"pulid_ca.0.to_q.weight": (2048, 3000), "pulid_ca.0.to_out.weight": (3000, 2048)})
    with pytest.raises(errors.AdapterFileError, match="disagree"):
        variants.detect(mixed, "mixed.safetensors")
    no_encoder = {k: v for k, v in shapes.items() if not k.startswith("image_proj.")}
    with pytest.raises(errors.AdapterFileError, match="no ID encoder"):
        variants.detect(no_encoder, "ca-only.safetensors")


def test_truncated_pulid_file_is_refused(tmp_path):
    path = builders.save_safetensors(str(tmp_path / "pulid_flux_cut.safetensors"),
                                     builders.tiny_pulid_state("flux"))
    os.truncate(path, os.path.getsize(path) - 64)
    with pytest.raises(errors.AdapterFileError, match="pulid_flux_cut.safetensors.*truncated.*download it again"):
        adapter_mod.load_adapter(path)


@pytest.fixture
def adapter_folders(tmp_path):
    saved = {k: folder_paths.folder_names_and_paths[k] for k in ("ipadapter", "pulid")}
    for name in ("ipadapter", "pulid", "extra_pulid"):
        (tmp_path / name).mkdir()
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(tmp_path / "ipadapter")], {".safetensors", ".bin"})
    folder_paths.folder_names_and_paths["pulid"] = ([str(tmp_path / "pulid")], {".safetensors", ".bin"})
    folder_paths.filename_list_cache.clear()
    yield tmp_path
    folder_paths.folder_names_and_paths.update(saved)
    folder_paths.filename_list_cache.clear()


def test_pulid_files_are_found_in_pulid_ipadapter_and_extra_folders(adapter_folders):
    root = adapter_folders
    state = builders.tiny_pulid_state("flux")
    builders.save_safetensors(str(root / "pulid" / "in-pulid.safetensors"), state)
    builders.save_safetensors(str(root / "ipadapter" / "in-ipadapter.safetensors"), state)
    builders.save_safetensors(str(root / "extra_pulid" / "from-yaml.safetensors"), state)
    folder_paths.add_model_folder_path("pulid", str(root / "extra_pulid"))  # what extra_model_paths.yaml does
    folders.register_all()  # keeps the folders already registered
    folder_paths.filename_list_cache.clear()
    listed = folders.adapter_files()
    assert {"in-pulid.safetensors", "in-ipadapter.safetensors", "from-yaml.safetensors"} <= set(listed)
    assert folders.adapter_path("from-yaml.safetensors") == str(root / "extra_pulid" / "from-yaml.safetensors")
    assert folders.adapter_path("in-pulid.safetensors") == str(root / "pulid" / "in-pulid.safetensors")
    with pytest.raises(errors.InputError, match="not one of the choices in the ipadapter, instantid and pulid folders"):
        folders.adapter_path("../in-pulid.safetensors")


def test_the_loader_panel_describes_pulid_files(adapter_folders):
    routes = pack("nodes.host.routes")
    state = builders.tiny_pulid_state("flux")
    builders.save_safetensors(str(adapter_folders / "pulid" / "pulid_flux_tiny.safetensors"), state)
    folder_paths.filename_list_cache.clear()
    info = routes.adapter_info("pulid_flux_tiny.safetensors")
    modules = {key.split(".")[1] for key in state if key.startswith("pulid_ca.")}
    assert info["family"] == "FLUX" and info["layout"] == "flux" and info["tokens"] == 8
    assert info["modules"] == len(modules) > 1  # the chart on Likeness Apply counts them
    assert "Likeness ID Encoder Loader" in info["encoder_requirement"] and "antelopev2" in info["encoder_requirement"]
