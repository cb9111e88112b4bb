"""References saved as .safetensors and loaded back: bit-identical round trips, both folders listed, damaged and
foreign files refused by name, and pickle never read or written."""

from __future__ import annotations

import json
import os
import pickle
import struct

import pytest
import safetensors.torch
import torch

import builders
import folder_paths
from conftest import CAPTURED, pack, run_prompt
from test_merge import face_refs, image_refs, ten_inputs, ten_reference_prompt
from test_end_to_end import write_adapter

io_core = pack("nodes.core.references_io")
files = pack("nodes.host.reference_files")
io_nodes = pack("nodes.references_io")
errors = pack("nodes.core.errors")


def _swap_folder(tmp_path, name, get, set_):
    """A temporary ComfyUI folder in place of the shared one while a test runs."""
    before = get()
    folder = tmp_path / name
    folder.mkdir()
    set_(str(folder))
    yield folder
    set_(before)


@pytest.fixture
def input_dir(tmp_path):
    """A temporary ComfyUI input folder (the real one is never written)."""
    yield from _swap_folder(tmp_path, "input", folder_paths.get_input_directory, folder_paths.set_input_directory)


@pytest.fixture
def output_dir(tmp_path):
    """A temporary, empty ComfyUI output folder (other tests save into the shared one)."""
    yield from _swap_folder(tmp_path, "output", folder_paths.get_output_directory, folder_paths.set_output_directory)


@pytest.fixture
def no_pickle(monkeypatch):
    """Fail the test if anything unpickles or torch-loads while it runs."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch, "save", refuse)


def assert_same(a, b):
    assert a.count == b.count
    assert (a.image is None) == (b.image is None) and (a.face is None) == (b.face is None)
    if a.image is not None:
        assert a.image.encoder.name == b.image.encoder.name
        assert (a.image.encoder.hidden_width, a.image.encoder.embed_width) == (b.image.encoder.hidden_width,
                                                                               b.image.encoder.embed_width)
        assert a.image.source == b.image.source
        for field in ("image_embeds", "penultimate", "empty_penultimate"):
            x, y = getattr(a.image, field), getattr(b.image, field)
            assert x.dtype == y.dtype and torch.equal(x, y), field
    if a.face is not None:
        assert a.face.model == b.face.model
        for field in ("normed", "raw"):
            x, y = getattr(a.face, field), getattr(b.face, field)
            assert x.dtype == y.dtype and torch.equal(x, y), field


@pytest.mark.parametrize("refs", [image_refs(3, seed=1), face_refs(2, seed=2), face_refs(4, with_crops=False)],
                         ids=["image", "face+crops", "face"])
def test_save_then_load_is_bit_identical(tmp_path, refs, no_pickle):
    path = io_core.save_references(refs, str(tmp_path / "refs.safetensors"))
    assert_same(io_core.load_references(path), refs)
    assert not os.path.exists(path + ".partial")


def test_metadata_says_what_made_the_references(tmp_path):
    refs = references_with_source()
    path = io_core.save_references(refs, str(tmp_path / "m.safetensors"))
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        meta = json.loads(f.read(n))["__metadata__"]
    assert meta == {"format": "likeness.references", "format_version": "1",
                    "likeness_version": io_core.likeness_version(), "count": "2", "parts": "image,face",
                    "image.encoder": refs.image.encoder.name, "image.hidden_width": "64", "image.embed_width": "32",
                    "image.tokens": "17", "image.source": "tiny-clip-h.safetensors", "face.model": "buffalo_l",
                    "face.width": "512"}
    assert io_core.likeness_version() == "0.1.0"


def references_with_source():
    refs = face_refs(2, seed=3)
    image = pack("nodes.core.references").ImageFeatures(refs.image.encoder, refs.image.image_embeds,
                                                        refs.image.penultimate, refs.image.empty_penultimate,
                                                        "tiny-clip-h.safetensors")
    return pack("nodes.core.references").References(image=image, face=refs.face)


def test_views_and_shared_storage_are_saved_as_their_values(tmp_path):
    base = image_refs(4, seed=4)
    merge = pack("nodes.core.merge")
    picked, _ = merge.merge_references(merge.gather([("references_1", base)]), "concat", (0, 1, 0, 1))
    path = io_core.save_references(picked, str(tmp_path / "picked.safetensors"))
    assert_same(io_core.load_references(path), picked)


# ------------------------------------------------------------------ folders

def test_saved_files_are_listed_at_once_beside_those_in_input(models_dir, input_dir, output_dir):
    refs = image_refs(2, seed=5)
    first = io_nodes.LikenessSaveReferences.execute(refs, "alice")
    second = io_nodes.LikenessSaveReferences.execute(refs, "people/bob")
    out = os.path.join(folder_paths.get_output_directory(), "likeness")
    assert sorted(os.listdir(out)) == ["alice_00001_.safetensors", "people"]
    assert os.listdir(os.path.join(out, "people")) == ["bob_00001_.safetensors"]
    again = io_nodes.LikenessSaveReferences.execute(refs, "alice")
    assert os.path.isfile(os.path.join(out, "alice_00002_.safetensors"))
    assert "likeness/alice_00001_.safetensors [output]" in first.ui.as_dict()["text"][0]
    assert second and again

    io_core.save_references(refs, str(input_dir / "carol.safetensors"))
    (input_dir / "photo.png").write_bytes(b"not a references file")
    choices = files.reference_choices()
    assert choices[0] == "carol.safetensors"
    assert "likeness/alice_00001_.safetensors [output]" in choices
    assert "likeness/people/bob_00001_.safetensors [output]" in choices
    assert not any(c.endswith(".png") for c in choices)
    options = io_nodes.LikenessLoadReferences.INPUT_TYPES()["required"]["references_file"][1]["options"]
    assert options == choices

    for choice in ("carol.safetensors", "likeness/people/bob_00001_.safetensors [output]"):
        loaded = io_nodes.LikenessLoadReferences.execute(choice).result[0]
        assert_same(loaded, refs)


def test_names_that_leave_the_folders_are_refused(models_dir, input_dir):
    with pytest.raises(errors.InputError):
        files.resolve_choice("../secret.safetensors")
    with pytest.raises(errors.InputError):
        files.resolve_choice("../../etc/passwd [output]")
    with pytest.raises(errors.InputError):
        files.new_file_path("../../outside")
    with pytest.raises(errors.InputError) as e:
        files.resolve_choice("gone.safetensors")
    assert "`gone.safetensors` is not one of the choices" in str(e.value)


# ------------------------------------------------------------------ damaged and foreign files

def saved(tmp_path, refs=None, name="good.safetensors"):
    return io_core.save_references(refs or face_refs(3, seed=6), str(tmp_path / name))


def rewrite(path, tensors=None, meta=None):
    """Write a file with the tensors and metadata of `path`, changed as given."""
    with safetensors.safe_open(path, "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        m = dict(f.metadata())
    t.update(tensors or {})
    t = {k: v for k, v in t.items() if v is not None}
    m.update(meta or {})
    m = {k: v for k, v in m.items() if v is not None}
    safetensors.torch.save_file(t, path, metadata=m)
    return path


def refused(path, *words):
    with pytest.raises(errors.ReferencesFileError) as e:
        io_core.load_references(str(path))
    msg = str(e.value)
    assert f"`{os.path.basename(str(path))}`" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_a_truncated_file_is_refused(tmp_path, no_pickle):
    path = saved(tmp_path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - 100])
    refused(path, "could not be read", "truncated")


def test_garbage_and_pickle_files_are_refused_without_unpickling(tmp_path, no_pickle):
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(300))
    refused(tmp_path / "noise.safetensors", "could not be read")
    # a torch.save file under a .safetensors name: pickle inside, never run
    payload = pickle.dumps({"image.image_embeds": [1.0, 2.0]})
    (tmp_path / "pickled.safetensors").write_bytes(payload)
    refused(tmp_path / "pickled.safetensors", "could not be read")
    (tmp_path / "refs.pt").write_bytes(payload)
    refused(tmp_path / "refs.pt", "only as .safetensors")


def test_a_foreign_safetensors_file_is_named_as_such(tmp_path, no_pickle):
    adapter = builders.save_safetensors(str(tmp_path / "ip-adapter_sd15.safetensors"),
                                        builders.tiny_adapter_state("linear", [32, 64]))
    refused(adapter, "is not a Likeness references file", "`image_proj.*`", "model file", "no `format` metadata")
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    refused(other, "format `pt`", "another kind")


@pytest.mark.parametrize("change,words", [
    (dict(meta={"count": "4"}), ["`image.image_embeds` has shape (3, 32)", "count 4"]),
    (dict(meta={"count": "three"}), ["`count` should be a whole number"]),
    (dict(meta={"image.hidden_width": "96"}), ["`image.penultimate`", "hidden width 96"]),
    (dict(meta={"image.tokens": "16"}), ["`image.penultimate`", "16 tokens"]),
    (dict(meta={"face.width": "128"}), ["identity width 128"]),
    (dict(meta={"parts": "face"}), ["unexpected image.empty_penultimate"]),
    (dict(meta={"parts": "image,voice"}), ["`parts`"]),
    (dict(meta={"face.model": None}), ["`face.model`"]),
    (dict(tensors={"face.raw": None}), ["missing face.raw"]),
    (dict(tensors={"face.raw": torch.zeros(3, 512, dtype=torch.int32)}), ["not floating point"]),
    (dict(tensors={"face.raw": torch.full((3, 512), float("nan"))}), ["NaN"]),
    (dict(meta={"format_version": "3", "likeness_version": "9.0"}), ["newer Likeness (9.0, format 3)", "Update"]),
])
def test_metadata_that_disagrees_with_the_tensors_is_refused(tmp_path, change, words, no_pickle):
    refused(rewrite(saved(tmp_path), **change), *words)


# ------------------------------------------------------------------ through the executor

def test_save_then_load_gives_the_same_image_through_the_executor(models_dir, input_dir):
    adapter = write_adapter(models_dir, "io-linear.safetensors", seed=21)
    direct = ten_reference_prompt(adapter, "io-direct", dict(ten_inputs(), mode="norm average"))
    direct["60"] = {"class_type": "LikenessSaveReferences", "inputs": {"references": ["40", 0],
                                                                       "filename_prefix": "ten-faces"}}
    result = run_prompt(direct)
    assert result.success, result.execution_error() or result.node_errors
    text = result.executor.history_result["outputs"]["60"]["text"][0]
    choice = text.split("`")[-2]
    assert choice.startswith("likeness/ten-faces_") and choice.endswith(" [output]")

    loaded = ten_reference_prompt(adapter, "io-loaded", {})
    for i in range(10):
        del loaded[f"2{i}"], loaded[f"3{i}"]
    loaded["40"] = {"class_type": "LikenessLoadReferences", "inputs": {"references_file": choice}}
    result = run_prompt(loaded)
    assert result.success, result.execution_error() or result.node_errors
    assert "1 reference: image features" in result.executor.history_result["outputs"]["40"]["text"][0]
    assert torch.equal(CAPTURED["io-loaded"], CAPTURED["io-direct"])

    (input_dir / "broken.safetensors").write_bytes(b"\x00" * 64)
    loaded["40"]["inputs"]["references_file"] = "broken.safetensors"
    err = run_prompt(loaded).execution_error()
    assert err["node_type"] == "LikenessLoadReferences"
    assert err["exception_type"].endswith("ReferencesFileError") and "`broken.safetensors`" in err["exception_message"]
