"""Robustness: any reasonable input works or is refused with a LikenessError; repeated use does not leak; an
interrupted run or an offload leaves nothing behind."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import builders
import comfy.model_management
from conftest import pack
from test_patching import make_adapter, sample, site_inputs, tokens_for

attention = pack("nodes.core.attention")
apply_node = pack("nodes.apply")
errors = pack("nodes.core.errors")
schedules = pack("nodes.core.schedules")
sites_mod = pack("nodes.host.sites")
references = pack("nodes.core.references")

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapters")
    return {"linear": make_adapter(folder, layout="linear", seed=11),
            "resampler": make_adapter(folder, layout="resampler", seed=12)}


@pytest.fixture(scope="module")
def sd15():
    return builders.build_unet("sd15")


masks = st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)))


@SETTINGS
@given(weight=st.floats(-1, 5, allow_nan=False), weight_type=st.sampled_from(list(schedules.WEIGHT_TYPES)),
       scaling=st.sampled_from(attention.EMBEDS_SCALING), mask=masks, refs=st.integers(1, 4),
       layout=st.sampled_from(["linear", "resampler"]), start=st.floats(0, 1), length=st.floats(0, 1))
def test_apply_accepts_any_reasonable_input(adapters, sd15, weight, weight_type, scaling, mask, refs, layout, start,
                                            length):
    adapter = adapters[layout]
    attn_mask = None if mask is None else torch.rand(mask)
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter, n=refs), weight, weight_type,
                                      start, min(1.0, start + length), scaling, attn_mask)
    site = sites_mod.find_sites(sd15)[5]
    q, k, v, extra = site_inputs(site.width, batch=2 * (mask[0] if mask else 1))
    replaces = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    if site.key in replaces:
        out = replaces[site.key](q, k, v, extra)
        assert out.shape == q.shape and torch.isfinite(out).all()


@SETTINGS
@given(dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), batch=st.integers(1, 3),
       chunks=st.sampled_from([[0], [1], [1, 0], [0, 1], [0, 1, 0]]), tokens=st.sampled_from([6, 24, 35]))
def test_site_call_in_any_dtype_batch_and_chunking(adapters, sd15, dtype, batch, chunks, tokens):
    adapter = adapters["resampler"]
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter, n=2), 0.8,
                                      attn_mask=torch.ones(batch, 9, 13))
    site = sites_mod.find_sites(sd15)[0]
    rows = batch * len(chunks)
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(rows, tokens, site.width, generator=gen).to(dtype)
    k = torch.randn(rows, 7, site.width, generator=gen).to(dtype)
    extra = {"n_heads": 8, "attn_precision": None, "cond_or_uncond": chunks, "sigmas": torch.tensor([3.0]),
             "original_shape": [rows, 4, 8, 8]}
    out = patched.model_options["transformer_options"]["patches_replace"]["attn2"][site.key](q, k, k, extra)
    assert out.dtype == dtype and out.shape == q.shape and torch.isfinite(out.float()).all()


@SETTINGS
@given(case=st.sampled_from(["start_after_end", "mask_4d", "mask_empty", "wrong_weight_type", "wrong_scaling",
                             "empty_refs", "window_out_of_range"]))
def test_bad_values_are_refused_with_likeness_errors(adapters, sd15, case):
    adapter = adapters["linear"]
    tokens = tokens_for(adapter)
    kwargs = dict(weight=1.0, weight_type="linear", start_at=0.0, end_at=1.0, embeds_scaling="V only", attn_mask=None)
    if case == "start_after_end":
        kwargs.update(start_at=0.9, end_at=0.1)
    elif case == "mask_4d":
        kwargs.update(attn_mask=torch.ones(1, 1, 8, 8))
    elif case == "mask_empty":
        kwargs.update(attn_mask=torch.ones(1, 0, 8))
    elif case == "wrong_weight_type":
        kwargs.update(weight_type="very strong")
    elif case == "wrong_scaling":
        kwargs.update(embeds_scaling="Q only")
    elif case == "window_out_of_range":
        kwargs.update(end_at=1.5)
    with pytest.raises(errors.LikenessError):
        if case == "empty_refs":
            references.References.from_images(references.EncoderInfo.from_widths(64, 32), torch.zeros(0, 32),
                                               torch.zeros(0, 17, 64), torch.zeros(1, 17, 64))
        else:
            apply_node.apply_tokens(sd15, adapter, tokens, **kwargs)


def live_tensor_bytes() -> int:
    gc.collect()
    total, seen = 0, set()
    with warnings.catch_warnings():  # isinstance() on some torch module objects warns about deprecations
        warnings.simplefilter("ignore")
        objects = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in objects:
        if obj.device.type == "cpu":
            st_ = obj.untyped_storage()
            if st_.data_ptr() not in seen:
                seen.add(st_.data_ptr())
                total += st_.nbytes()
    return total


def test_fifty_runs_do_not_grow_memory(adapters, sd15):
    adapter = adapters["resampler"]

    def run():
        patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0, attn_mask=torch.ones(1, 8, 8))
        sample(patched, steps=1)

    for _ in range(3):
        run()
    before = live_tensor_bytes()
    for _ in range(50):
        run()
    after = live_tensor_bytes()
    assert after - before < 1_000_000, f"{after - before} bytes of tensors left behind by 50 runs"


def test_interrupted_sampling_leaves_no_patch_behind(adapters, sd15, monkeypatch):
    adapter = adapters["linear"]
    before = sample(sd15)
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    calls = {"n": 0}
    original = attention.DecoupledCrossAttention.__call__

    def interrupting(self, q, k, v, extra):
        calls["n"] += 1
        if calls["n"] == 20:
            raise comfy.model_management.InterruptProcessingException()
        return original(self, q, k, v, extra)

    monkeypatch.setattr(attention.DecoupledCrossAttention, "__call__", interrupting)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(patched, steps=3)
    monkeypatch.setattr(attention.DecoupledCrossAttention, "__call__", original)
    assert "patches_replace" not in sd15.model_options["transformer_options"]
    assert torch.equal(sample(sd15), before)
    assert not torch.equal(sample(patched), before)  # the adapted clone still works after the interruption


def test_offload_and_reload_give_identical_results(adapters, sd15):
    adapter = adapters["resampler"]
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    first = sample(patched)
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    replace = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    replace.to(torch.device("cpu"))  # what ComfyUI calls on offload: copies on the device left are dropped
    assert all(device.type == "cpu" for device, _ in replace.prompts[0].copies.placed())
    assert torch.equal(sample(patched), first)


def test_offload_drops_copies_placed_on_another_device(adapters, sd15):
    adapter = adapters["resampler"]
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    replace = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    prompt = replace.prompts[0]
    meta = (torch.device("meta"), torch.float16)
    replace.to(torch.device("meta"))  # stands in for a GPU: ComfyUI loads (device, then dtype)
    replace.to(torch.float16)
    assert meta in prompt.copies.placed()
    replace.to(torch.device("meta"))  # loading onto the same device again keeps them
    assert meta in prompt.copies.placed()
    replace.to("cpu")
    assert meta not in prompt.copies.placed()
    assert prompt.site_kv[replace.key].k_cond.device.type == "cpu"  # the originals stay

merge_node = pack("nodes.merge")
MERGE_MODES = pack("nodes.core.merge").MERGE_MODES


@SETTINGS
@given(counts=st.lists(st.integers(1, 3), min_size=1, max_size=4), mode=st.sampled_from(MERGE_MODES),
       weights=st.one_of(st.just(""), st.lists(st.sampled_from(["0", "1", "0.5", "2", "-1", "x", ""]), min_size=1,
                                                max_size=8).map(", ".join)),
       drop=st.booleans(), threshold=st.floats(-1, 1), layout=st.sampled_from(["linear", "resampler"]))
def test_merge_then_project_and_apply_never_crash_raw(adapters, sd15, counts, mode, weights, drop, threshold,
                                                      layout):
    """Any merge either works all the way to a patched model or is refused with a LikenessError."""
    inputs = {merge_node.slot_name(i + 1): make_refs_for(n, seed=i) for i, n in enumerate(counts)}
    try:
        if merge_node.LikenessMergeReferences.validate_inputs(weights=weights) is not True:
            return  # the queue refuses it before running, with the message validate_inputs returned
        merged = merge_node.LikenessMergeReferences.execute(mode, weights, drop, threshold, **inputs).args[0]
        adapter = adapters[layout]
        tokens = references.project_references(adapter, merged)
        apply_node.apply_tokens(sd15, adapter, tokens, 1.0)
    except errors.LikenessError as e:
        assert str(e)
        return
    assert merged.count >= 1


EMPTY = torch.randn(1, 17, 64, generator=torch.Generator().manual_seed(99))  # one encoder for every input


def make_refs_for(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return references.References.from_images(references.EncoderInfo.from_widths(64, 32),
                                              torch.randn(n, 32, generator=gen), torch.randn(n, 17, 64, generator=gen),
                                              EMPTY)
