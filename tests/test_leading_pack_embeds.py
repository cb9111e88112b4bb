"""Saved embeds of the ComfyUI_IPAdapter_plus pack (`.ipadpt`, a torch-saved tensor) load as references when they
are plain tensors, read weights-only; the feature they lack is marked missing and named when an adapter needs it."""

from __future__ import annotations

import os

import pytest
import torch

import builders
import folder_paths
from conftest import pack
from test_patching import make_adapter

io_core = pack("nodes.core.references_io")
io_nodes = pack("nodes.references_io")
files = pack("nodes.host.reference_files")
references = pack("nodes.core.references")
merge = pack("nodes.core.merge")
errors = pack("nodes.core.errors")
host_encode = pack("nodes.host.encode")


@pytest.fixture
def input_dir(tmp_path):
    before = folder_paths.get_input_directory()
    folder = tmp_path / "input"
    folder.mkdir()
    folder_paths.set_input_directory(str(folder))
    yield folder
    folder_paths.set_input_directory(before)


def tiny_clip(models_dir):
    return builders.load_tiny_clip_vision(str(models_dir / "clip_vision" / "tiny-clip-h.safetensors"))


def test_hidden_state_embeds_load_with_their_encoder(input_dir, models_dir, tmp_path):
    clip = tiny_clip(models_dir)
    images = torch.rand(2, 56, 56, 3, generator=torch.Generator().manual_seed(0))
    encoded = host_encode.encode_references(clip, images)
    torch.save(encoded.image.penultimate * 0.8, input_dir / "IP_embeds_00001.ipadpt")  # what that pack saves
    assert "IP_embeds_00001.ipadpt" in files.reference_choices()
    out = io_nodes.LikenessLoadReferences.execute("IP_embeds_00001.ipadpt", clip)
    refs = out.args[0]
    assert torch.equal(refs.image.penultimate, encoded.image.penultimate * 0.8)
    assert torch.equal(refs.image.empty_penultimate, encoded.image.empty_penultimate)
    assert refs.image.missing == ("image_embeds",)
    assert "only hidden states" in out.ui.as_dict()["text"][0]
    plus = make_adapter(tmp_path, layout="resampler", seed=3)
    tokens = references.project_references(plus, refs)
    expected = references.project_references(plus, references.References.from_images(
        encoded.image.encoder, encoded.image.image_embeds, encoded.image.penultimate * 0.8,
        encoded.image.empty_penultimate))
    torch.testing.assert_close(tokens.cond, expected.cond)
    torch.testing.assert_close(tokens.uncond, expected.uncond)
    standard = make_adapter(tmp_path, layout="linear", seed=4)
    with pytest.raises(errors.IncompatibleError, match="reads CLIP image embeds, but the references hold none"):
        references.project_references(standard, refs)


def test_pooled_embeds_need_no_encoder(tmp_path):
    embeds = torch.randn(3, 1024)
    path = tmp_path / "faces.ipadpt"
    torch.save(embeds, path)
    refs = io_nodes.load_leading_pack_file(str(path))
    assert refs.count == 3 and refs.image.encoder.name == "ViT-H/14" and torch.equal(refs.image.image_embeds, embeds)
    assert set(refs.image.missing) == {"penultimate", "empty_penultimate"}
    again = tmp_path / "again.safetensors"
    io_core.save_references(refs, str(again))
    assert io_core.load_references(str(again)).image.missing == refs.image.missing, "the mark survives a save"


def test_hidden_states_without_an_encoder_need_a_negative(tmp_path):
    torch.save(torch.randn(1, 257, 1280), tmp_path / "plus.ipadpt")
    refs = io_nodes.load_leading_pack_file(str(tmp_path / "plus.ipadpt"))
    assert refs.image.encoder.name == "ViT-H/14" and "empty_penultimate" in refs.image.missing


def test_merging_with_fresh_encodes_is_refused_clearly(tmp_path):
    torch.save(torch.randn(1, 17, 64), tmp_path / "a.ipadpt")
    loaded = io_core.references_from_leading_pack(io_core.read_leading_pack_embeds(str(tmp_path / "a.ipadpt")), "a",
                                                  references.EncoderInfo.from_widths(64, 32),
                                                  torch.zeros(1, 17, 64))
    fresh = references.References.from_images(references.EncoderInfo.from_widths(64, 32), torch.randn(1, 32),
                                              torch.randn(1, 17, 64), torch.zeros(1, 17, 64))
    with pytest.raises(errors.IncompatibleError, match="saved embeds"):
        merge.gather([("references_1", loaded), ("references_2", fresh)])


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_files_with_code_or_other_contents_are_refused(tmp_path):
    _Payload.marker = str(tmp_path / "pwned")
    torch.save({"x": _Payload()}, tmp_path / "evil.ipadpt")
    with pytest.raises(errors.ReferencesFileError, match="evil.ipadpt.*weights-only"):
        io_core.read_leading_pack_embeds(str(tmp_path / "evil.ipadpt"))
    assert not os.path.exists(_Payload.marker)
    torch.save({"embeds": torch.ones(2, 4)}, tmp_path / "dict.ipadpt")
    with pytest.raises(errors.ReferencesFileError, match="holds a dict"):
        io_core.read_leading_pack_embeds(str(tmp_path / "dict.ipadpt"))
    torch.save(torch.ones(4), tmp_path / "flat.ipadpt")
    with pytest.raises(errors.ReferencesFileError, match=r"shape \(4,\)"):
        io_core.read_leading_pack_embeds(str(tmp_path / "flat.ipadpt"))
    torch.save(torch.randn(1, 999), tmp_path / "odd.ipadpt")
    with pytest.raises(errors.ReferencesFileError, match="999-wide image embeds.*Connect the Load CLIP Vision"):
        io_nodes.load_leading_pack_file(str(tmp_path / "odd.ipadpt"))
