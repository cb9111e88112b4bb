"""What the pack installs in a model survives the host's changes: calls with more arguments or fewer options,
device copies made when ComfyUI moves the patches (never inside the forward), kept and released per device,
core's allocation pause where it exists, dynamic VRAM detected, and two prompts that share nothing."""

from __future__ import annotations

import contextlib
import gc
import sys
import types
import warnings

import pytest
import torch

import builders
import comfy.model_patcher
from conftest import pack
from test_patching import make_adapter, sample, site_inputs, tokens_for

attention = pack("nodes.core.attention")
placement = pack("nodes.core.placement")
patch_mod = pack("nodes.host.patch")
sites_mod = pack("nodes.host.sites")
apply_node = pack("nodes.apply")
errors = pack("nodes.core.errors")

META = torch.device("meta")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd15():
    return builders.build_unet("sd15", seed=0)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("lifecycle"), layout="resampler", seed=4)


def replaces_of(model) -> dict:
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def square_site_inputs(width, heads, rows=2, side=6, seed=0):
    """Queries on a square grid, so the grid guess without shapes finds the same grid as with them."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, side * side, width, generator=gen)
    k = torch.randn(rows, 7, width, generator=gen)
    extra = {"n_heads": heads, "attn_precision": None, "cond_or_uncond": [0], "sigmas": torch.tensor([5.0]),
             "activations_shape": [rows, width, side, side], "original_shape": [rows, 4, side * 2, side * 2],
             "block": ("input", 1), "block_index": 0, "transformer_index": 0, "dim_head": width // heads}
    return q, k, extra


# ------------------------------------------------------------------ tolerant calls

def test_every_installed_replace_ignores_extra_arguments_and_missing_options(sd15, adapter):
    mask = torch.ones(1, 12, 12)
    mask[:, :, :5] = 0  # a real mask, so a wrong grid would show
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 0.8, attn_mask=mask)
    sites = {s.key: s for s in sites_mod.find_sites(sd15)}
    replaces = replaces_of(patched)
    assert set(replaces) == set(sites)
    for key, replace in replaces.items():
        q, k, extra = square_site_inputs(sites[key].width, sites[key].heads)
        normal = replace(q, k, k, extra)
        with_more = replace(q, k, k, extra, "an argument from a newer ComfyUI", latent_shapes=[(2, 4, 12, 12)])
        by_name = replace(q, k, k, extra_options=extra)
        trimmed = replace(q, k, k, {})  # no n_heads, cond_or_uncond, sigmas, shapes or precision
        for out in (with_more, by_name, trimmed):
            torch.testing.assert_close(out, normal, rtol=0, atol=0)
        assert replace.heads == sites[key].heads > 0  # recorded from the model's attention module at install


def test_missing_cond_or_uncond_means_every_row_is_cond(sd15, adapter):
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    site = sites_mod.find_sites(sd15)[3]
    replace = replaces_of(patched)[site.key]
    q, k, v, extra = site_inputs(site.width)
    all_cond = replace(q, k, v, dict(extra, cond_or_uncond=[0, 0]))
    without = dict(extra)
    del without["cond_or_uncond"]
    torch.testing.assert_close(replace(q, k, v, without), all_cond, rtol=0, atol=0)
    assert not torch.allclose(replace(q, k, v, extra), all_cond)  # [1, 0] really gives row 0 the uncond tokens


def test_a_base_replace_reading_n_heads_gets_it_when_comfyui_leaves_it_out(sd15, adapter):
    seen = []

    def other_pack(q, k, v, extra):
        seen.append(extra["n_heads"])
        return pack("nodes.host.patch")._attention(q, k, v, extra["n_heads"])

    other = sd15.clone()
    site = sites_mod.find_sites(sd15)[0]
    other.set_model_attn2_replace(other_pack, *site.key)
    replace = replaces_of(apply_node.apply_tokens(other, adapter, tokens_for(adapter), 1.0))[site.key]
    q, k, v, extra = site_inputs(site.width, heads=site.heads)
    trimmed = {key: value for key, value in extra.items() if key != "n_heads"}
    torch.testing.assert_close(replace(q, k, v, trimmed), replace(q, k, v, extra), rtol=0, atol=0)
    assert seen == [site.heads, site.heads]


def test_a_replace_with_no_head_count_anywhere_says_what_to_do():
    replace = attention.DecoupledCrossAttention(("input", 1, 0), (), patch_mod._attention)
    q = torch.randn(1, 4, 32)
    with pytest.raises(errors.InputError, match="head count"):
        replace(q, q, q, {})


# ------------------------------------------------------------------ device copies made when the patches move

def kv_like_storages(tokens: int, widths: set[int]) -> int:
    """Memory blocks behind live tensors shaped like image keys/values of any site ([rows, tokens, width]):
    a new copy adds one, a view of a copy does not."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len({t.untyped_storage().data_ptr() for t in found
                if t.ndim == 3 and t.shape[1] == tokens and t.shape[2] in widths})


def test_sampling_after_the_patches_moved_allocates_no_image_keys_or_values(sd15, adapter, monkeypatch):
    tokens = tokens_for(adapter)
    patched = apply_node.apply_tokens(sd15, adapter, tokens, 1.0)
    prompt = next(iter(replaces_of(patched).values())).prompts[0]
    made = []
    moving = []
    original_init = attention.PlacedPrompt.__init__
    original_to = placement.MovesWithModel.to

    def recording_init(self, *a, **k):
        made.append(bool(moving))
        original_init(self, *a, **k)

    def recording_to(self, x):
        moving.append(1)
        try:
            return original_to(self, x)
        finally:
            moving.pop()

    monkeypatch.setattr(attention.PlacedPrompt, "__init__", recording_init)
    monkeypatch.setattr(placement.MovesWithModel, "to", recording_to)
    patched.model_patches_to(CPU)  # what ComfyUI's model_load calls before sampling: device, then dtype
    patched.model_patches_to(patched.model_dtype())
    assert made == [True]
    held = [id(t) for t in prompt.copies.get(CPU, torch.float32).tensors()]
    widths = {s.width for s in sites_mod.find_sites(sd15)}
    before = kv_like_storages(tokens.tokens_per_reference, widths)
    sample(patched, steps=3)  # the real sampler: loads (moving the patches again), then 3 forwards of 16 sites
    assert made == [True]  # nothing placed during the forwards, nor by the second move
    assert kv_like_storages(tokens.tokens_per_reference, widths) == before
    placed = prompt.copies.get(CPU, torch.float32)
    assert [id(t) for t in placed.tensors()] == held and not placed.derived


def test_copies_for_two_devices_coexist_and_are_released_one_at_a_time(sd15, adapter):
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    prompt = next(iter(replaces_of(patched).values())).prompts[0]
    on_meta = patched.clone()  # stands in for a copy of the model loaded on a second GPU
    on_meta.model_patches_to(META)
    on_meta.model_patches_to(torch.float16)
    patched.model_patches_to(CPU)
    patched.model_patches_to(torch.float32)
    assert set(prompt.copies.placed()) == {(META, torch.float16), (CPU, torch.float32)}
    meta_kv = prompt.copies.get(META, torch.float16).kv
    assert all(k.device == META and k.dtype == torch.float16 and k.shape[0] == 3 for k, _ in meta_kv.values())
    assert set(meta_kv) == set(prompt.site_kv)  # every site placed at once
    on_meta.model_patches_to(CPU)  # the meta copy of the model is offloaded
    assert prompt.copies.placed() == [(CPU, torch.float32)]
    patched.model_patches_to(META)  # the other one moves: its CPU copies go, nothing is placed before its dtype
    assert prompt.copies.placed() == []
    patched.model_patches_to(torch.bfloat16)
    assert prompt.copies.placed() == [(META, torch.bfloat16)]
    assert prompt.site_kv[next(iter(prompt.site_kv))].k_cond.device == CPU  # the originals stay


def test_a_model_that_computes_in_another_dtype_than_it_stores_gets_copies_in_the_compute_dtype(adapter):
    prompt = attention.ImagePrompt({("input", 1, 0): attention.SiteKV(*(torch.randn(4, 32) for _ in range(4)))},
                                   1e9, 0.0)
    cast = attention.DecoupledCrossAttention(("input", 1, 0), (prompt,), patch_mod._attention, heads=4,
                                             cast_dtype=torch.bfloat16)
    cast.to(META).to(torch.float8_e4m3fn)  # fp8 storage, bf16 compute (ComfyUI's manual cast)
    assert prompt.copies.placed() == [(META, torch.bfloat16)]
    plain = attention.DecoupledCrossAttention(("input", 1, 0), (prompt,), patch_mod._attention, heads=4)
    plain.to(CPU).to(torch.float8_e4m3fn)  # no compute dtype known: nothing to place, the forward will
    assert prompt.copies.placed() == [(META, torch.bfloat16)]


def test_without_a_move_the_forward_places_once_inside_the_allocation_pause(sd15, adapter, monkeypatch):
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0, attn_mask=torch.ones(1, 8, 8))
    site = sites_mod.find_sites(sd15)[1]
    replace = replaces_of(patched)[site.key]
    prompt = replace.prompts[0]
    pauses = []

    @contextlib.contextmanager
    def counting_pause():
        pauses.append(1)
        yield

    replace.allocation_pause = counting_pause
    q, k, v, extra = site_inputs(site.width)
    first = replace(q, k, v, extra)
    assert pauses and prompt.copies.placed() == [(CPU, torch.float32)]
    count = len(pauses)
    again = replace(q, k, v, extra)
    assert len(pauses) == count  # second step: everything looked up, nothing made
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    replace(q.double(), k.double(), v.double(), extra)  # another compute dtype than placed: made once, paused
    assert len(pauses) > count and (CPU, torch.float64) in prompt.copies.placed()


def test_allocation_pause_uses_cores_helper_where_it_exists(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def pause_malloc_graph(sync=False):
        entered.append(sync)
        yield

    patch_mod._core_allocation_pause.cache_clear()
    try:
        with patch_mod.allocation_pause():
            pass
        assert entered == []  # ComfyUI 0.3.64 has no such helper: a no-op
        monkeypatch.setitem(sys.modules, "comfy.model_prefetch",
                            types.SimpleNamespace(pause_malloc_graph=pause_malloc_graph))
        patch_mod._core_allocation_pause.cache_clear()
        with patch_mod.allocation_pause():
            pass
        assert entered == [False]
    finally:
        patch_mod._core_allocation_pause.cache_clear()


def test_unusual_cond_uncond_orders_match_the_explicit_rows(sd15, adapter):
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0, attn_mask=torch.rand(2, 9, 9))
    site = sites_mod.find_sites(sd15)[2]
    replace = replaces_of(patched)[site.key]
    prompt = replace.prompts[0]
    kv = prompt.site_kv[site.key]
    base = attention.DecoupledCrossAttention(site.key, (), patch_mod._attention, heads=site.heads)
    for chunks in ([0, 0, 1], [1, 1], [1, 0, 1], [0, 1, 0], [1, 0]):
        q, k, v, extra = site_inputs(site.width, batch=2 * len(chunks))
        extra = dict(extra, cond_or_uncond=chunks, activations_shape=[q.shape[0], site.width, 4, 6])
        out = replace(q, k, v, extra)
        mask = prompt.copies.get(CPU, torch.float32).mask_for(site.key, 2, q.shape[1], extra, contextlib.nullcontext)
        expected = base(q, k, v, extra).clone()
        for row in range(q.shape[0]):
            uncond = chunks[row // 2] == 1
            k_img, v_img = (kv.k_uncond, kv.v_uncond) if uncond else (kv.k_cond, kv.v_cond)
            term = attention.image_attention(q[row:row + 1], k_img[None], v_img[None], site.heads)
            expected[row] += term[0] * mask[0].view(2, -1, 1)[row % 2]
        torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------ dynamic VRAM

def test_dynamic_vram_is_detected_where_the_patcher_reports_it(sd15):
    assert patch_mod.uses_dynamic_vram(sd15) is False  # 0.3.64: no is_dynamic at all

    class Dynamic(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            return True

    class Broken(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self):
            raise RuntimeError("not loaded")

    model = sd15.model
    assert patch_mod.uses_dynamic_vram(Dynamic(model, CPU, CPU)) is True
    assert patch_mod.uses_dynamic_vram(Broken(model, CPU, CPU)) is False


# ------------------------------------------------------------------ nothing shared between prompts

def mutable_module_state(module) -> dict:
    return {name: value for name, value in vars(module).items()
            if isinstance(value, (dict, list, set, bytearray)) and not name.startswith("__")}


def test_two_prompts_on_different_models_share_nothing_mutable(tmp_path, adapter):
    first_model, second_model = builders.build_unet("sd15", seed=0), builders.build_unet("sd15", seed=5)
    other = make_adapter(tmp_path, layout="linear", seed=8)
    for module in (attention, placement, patch_mod):
        assert mutable_module_state(module) == {}, f"{module.__name__} keeps state at module level"
    first = apply_node.apply_tokens(first_model, adapter, tokens_for(adapter), 1.0, attn_mask=torch.ones(1, 8, 8))
    second = apply_node.apply_tokens(second_model, other, tokens_for(other), 0.7)
    p1 = next(iter(replaces_of(first).values())).prompts[0]
    p2 = next(iter(replaces_of(second).values())).prompts[0]
    out1 = sample(first)
    state1 = {k: [t.clone() for t in c.tensors()] for k, c in p1.copies._copies.items()}
    ids1 = {k: [id(t) for t in c.tensors()] for k, c in p1.copies._copies.items()}
    window1 = p1._window
    sample(second)
    assert p1.copies is not p2.copies and p1.copies._copies is not p2.copies._copies
    assert {k: [id(t) for t in c.tensors()] for k, c in p1.copies._copies.items()} == ids1
    for k, tensors in state1.items():
        for before, now in zip(tensors, p1.copies._copies[k].tensors()):
            assert torch.equal(before, now)
    assert p1._window is window1  # the second run's steps did not touch the first prompt
    held1 = {t.untyped_storage().data_ptr() for c in p1.copies._copies.values() for t in c.tensors()}
    held2 = {t.untyped_storage().data_ptr() for c in p2.copies._copies.values() for t in c.tensors()}
    assert held1.isdisjoint(held2)
    assert torch.equal(sample(first), out1)  # and running the first again gives what it gave


def test_a_mask_follows_the_grid_when_two_latent_shapes_have_the_same_token_count(sd15, adapter):
    mask = torch.zeros(1, 16, 16)
    mask[:, :, :6] = 1  # left part only: a 4x6 and a 6x4 grid see it differently
    site = sites_mod.find_sites(sd15)[0]

    def call(model, grid):
        q, k, v, extra = site_inputs(site.width, heads=site.heads)
        return replaces_of(model)[site.key](q, k, v, dict(extra, activations_shape=[2, site.width, *grid]))

    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0, attn_mask=mask)
    wide = call(patched, (4, 6))
    tall = call(patched, (6, 4))  # same 24 tokens, another grid: after the first call has been cached
    fresh = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0, attn_mask=mask)
    torch.testing.assert_close(tall, call(fresh, (6, 4)), rtol=0, atol=0)
    assert not torch.equal(tall, wide)
