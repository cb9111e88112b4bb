"""Every cross-attention site is patched on a clone; adapters stack, coexist with other packs, and share tensors."""

from __future__ import annotations

import copy

import pytest
import torch

import builders
import nodes
from conftest import pack

sites_mod = pack("nodes.host.sites")
patch_mod = pack("nodes.host.patch")
attention = pack("nodes.core.attention")
adapter_mod = pack("nodes.core.adapter")
references = pack("nodes.core.references")
apply_node = pack("nodes.apply")
errors = pack("nodes.core.errors")


def make_adapter(tmp_path, kind="sd15", layout="linear", seed=0, name=None):
    widths = [s.width for s in sites_mod.find_sites(builders.build_unet(kind))]
    input_width = 32 if layout == "linear" else 64
    state = builders.tiny_adapter_state(layout, widths, input_width=input_width, tokens=4 if layout == "linear" else 8,
                                        seed=seed)
    path = builders.save_safetensors(str(tmp_path / (name or f"{kind}-{layout}-{seed}.safetensors")), state)
    return adapter_mod.load_adapter(path)


def make_refs(n=1, seed=0, hidden=64, embed=32, tokens=17):
    gen = torch.Generator().manual_seed(seed)
    return references.References.from_images(references.EncoderInfo.from_widths(hidden, embed),
                                 torch.randn(n, embed, generator=gen), torch.randn(n, tokens, hidden, generator=gen),
                                 torch.randn(1, tokens, hidden, generator=gen))


def tokens_for(adapter, n=1, seed=0):
    return references.project_references(adapter, make_refs(n, seed))


def sample(model, kind="sd15", steps=2, batch=1, h=8, w=8, seed=3):
    latent = {"samples": torch.zeros(batch, 4, h, w)}
    out = nodes.common_ksampler(model, seed, steps, 4.0, "euler", "normal", builders.conditioning(kind, batch=1),
                                builders.conditioning(kind, batch=1, seed=9), latent)
    return out[0]["samples"]


@pytest.fixture(scope="module")
def sd15():
    return builders.build_unet("sd15", seed=0)


@pytest.fixture(scope="module")
def sdxl():
    return builders.build_unet("sdxl", seed=0)


# ------------------------------------------------------------------ sites

@pytest.mark.parametrize("kind,count,widths", [("sd15", 16, builders.SD15_WIDTHS), ("sdxl", 70, builders.SDXL_WIDTHS)])
def test_sites_of_the_real_layouts_map_to_the_checkpoint_numbering(kind, count, widths):
    sites = sites_mod.find_sites(builders.build_unet(kind, tiny=False))
    assert len(sites) == count
    assert [s.width for s in sites] == widths
    assert [s.layer_id for s in sites] == list(range(1, 2 * count, 2))
    middle = [s for s in sites if s.block == "middle"]
    assert middle and all(s.key[:2] == ("middle", 0) for s in middle)
    assert sites[-len(middle):] == middle  # the h94 numbering puts the middle block last
    assert {s.transformers for s in sites} == {16 if kind == "sd15" else 11}


@pytest.mark.parametrize("kind,count", [("sd15", 16), ("sdxl", 70)])
def test_every_site_is_called_once_per_forward_pass(tmp_path, kind, count, monkeypatch):
    model = builders.build_unet(kind)
    adapter = make_adapter(tmp_path, kind)
    patched = apply_node.apply_tokens(model, adapter, tokens_for(adapter), 1.0)
    calls = []
    original = attention.ImagePrompt.keys_values

    def counting(self, key, q, extra, *rest):
        calls.append(key)
        return original(self, key, q, extra, *rest)

    monkeypatch.setattr(attention.ImagePrompt, "keys_values", counting)
    sample(patched, kind, steps=1)
    expected = {s.key for s in sites_mod.find_sites(model)}
    assert len(calls) == count and set(calls) == expected  # cond and uncond ride in one batched call


# ------------------------------------------------------------------ the input model

def test_input_model_is_never_changed(tmp_path, sd15):
    adapter = make_adapter(tmp_path)
    before = sample(sd15)
    options_before = copy.deepcopy(sd15.model_options)
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    adapted = sample(patched)
    after = sample(sd15)
    assert not torch.equal(adapted, before)
    assert torch.equal(after, before)
    assert sd15.model_options == options_before
    assert "patches_replace" not in sd15.model_options["transformer_options"]


# ------------------------------------------------------------------ stacking

def site_call(model, key, q, k, v, extra):
    replace = model.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    return replace(q, k, v, extra)


def site_inputs(width, heads=8, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 24, width, generator=gen)
    k = torch.randn(batch, 7, width, generator=gen)
    v = torch.randn(batch, 7, width, generator=gen)
    extra = {"n_heads": heads, "attn_precision": None, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([5.0]),
             "activations_shape": [batch, width, 4, 6], "original_shape": [batch, 4, 8, 12]}
    return q, k, v, extra


def test_stacked_adapters_add_up(tmp_path, sd15):
    a, b = make_adapter(tmp_path, seed=1), make_adapter(tmp_path, layout="resampler", seed=2)
    only_a = apply_node.apply_tokens(sd15, a, tokens_for(a), 0.7)
    only_b = apply_node.apply_tokens(sd15, b, tokens_for(b, seed=5), 1.3)
    both = apply_node.apply_tokens(only_a, b, tokens_for(b, seed=5), 1.3)
    site = sites_mod.find_sites(sd15)[4]
    q, k, v, extra = site_inputs(site.width)
    base = attention.DecoupledCrossAttention(site.key, (), patch_mod._attention)(q, k, v, extra)
    out_a = site_call(only_a, site.key, q, k, v, extra)
    out_b = site_call(only_b, site.key, q, k, v, extra)
    out_ab = site_call(both, site.key, q, k, v, extra)
    torch.testing.assert_close(out_ab, base + (out_a - base) + (out_b - base), atol=1e-5, rtol=1e-5)
    assert len(both.model_options["transformer_options"]["patches_replace"]["attn2"][site.key].prompts) == 2
    assert len(only_a.model_options["transformer_options"]["patches_replace"]["attn2"][site.key].prompts) == 1


def test_three_stacked_adapters_in_inference_mode_add_up_and_leave_the_base_output_alone(tmp_path, sd15):
    """Under inference mode (how ComfyUI samples) the sum is built in place, but never in the base's tensor."""
    adapters = [make_adapter(tmp_path, seed=s) for s in (1, 2, 3)]
    site = sites_mod.find_sites(sd15)[4]
    q, k, v, extra = site_inputs(site.width)
    kept = attention.DecoupledCrossAttention(site.key, (), patch_mod._attention)(q, k, v, extra)
    snapshot = kept.clone()

    def other_pack(q, k, v, extra):  # hands out the same tensor every call, as a caching pack might
        return kept

    other = sd15.clone()
    other.set_model_attn2_replace(other_pack, *site.key)
    with torch.inference_mode():
        model, singles = other, []
        for n, a in enumerate(adapters):
            singles.append(site_call(apply_node.apply_tokens(other, a, tokens_for(a, seed=n), 0.5 + n), site.key,
                                     q, k, v, extra) - kept)
            model = apply_node.apply_tokens(model, a, tokens_for(a, seed=n), 0.5 + n)
        out = site_call(model, site.key, q, k, v, extra)
        again = site_call(model, site.key, q, k, v, extra)
    assert torch.equal(kept, snapshot)
    torch.testing.assert_close(out, kept + singles[0] + singles[1] + singles[2], atol=1e-5, rtol=1e-5)
    assert torch.equal(out, again)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_grouped_image_attention_equals_one_attention_per_adapter(dtype, tol):
    """Several adapters in one pass (masks, mixed token counts, cond/uncond rows) give the per-adapter sum."""
    gen = torch.Generator().manual_seed(0)
    b, n, width, heads = 2, attention.GROUPED_MIN_QUERIES + 64, 320, 8

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype)

    q = rand(b, n, width)
    parts = [(rand(b, 16, width, scale=0.3), rand(b, 16, width), None),
             (rand(b, 16, width, scale=0.3), rand(b, 16, width), torch.rand(b, n, 1, generator=gen).to(dtype)),
             (rand(b, 4, width, scale=0.3), rand(b, 4, width), None),  # another token count: its own group
             (rand(b, 16, width, scale=0.3), rand(b, 16, width), None)]
    expected = sum((attention.image_attention(q, k, v, heads) * (1 if m is None else m)).float() for k, v, m in parts)
    grouped = attention.grouped_image_attention(q, [parts[0], parts[1], parts[3]], heads)
    with torch.inference_mode():
        summed = attention.image_attention_sum(q, parts, heads)
    torch.testing.assert_close(summed.float(), expected, atol=tol, rtol=tol)
    torch.testing.assert_close(grouped.float() + attention.image_attention(q, *parts[2][:2], heads).float(), expected,
                               atol=tol, rtol=tol)
    small = q[:, :8]  # below the query threshold: one call per adapter, same result
    small_parts = [(k, v, None) for k, v, _ in parts]
    torch.testing.assert_close(attention.image_attention_sum(small, small_parts, heads).float(),
                               sum(attention.image_attention(small, k, v, heads).float() for k, v, _ in small_parts),
                               atol=tol, rtol=tol)


def test_grouped_image_attention_is_capped_in_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(attention, "grouped_image_attention", lambda *a: calls.append(a) or a[0] * 0)
    q = torch.randn(2, attention.GROUPED_MIN_QUERIES, 64)
    parts = [(torch.randn(2, 16, 64), torch.randn(2, 16, 64), None)] * 2
    attention.image_attention_sum(q, parts, 4)
    assert len(calls) == 1
    monkeypatch.setattr(attention, "GROUPED_MAX_SCORES", 4 * attention.GROUPED_MIN_QUERIES * 32 - 1)
    attention.image_attention_sum(q, parts, 4)
    assert len(calls) == 1  # over the cap: one attention call per adapter instead


def test_second_adapter_at_weight_zero_changes_nothing(tmp_path, sd15):
    a, b = make_adapter(tmp_path, seed=1), make_adapter(tmp_path, seed=2)
    one = apply_node.apply_tokens(sd15, a, tokens_for(a), 1.0)
    two = apply_node.apply_tokens(one, b, tokens_for(b), 0.0)
    assert torch.equal(sample(two), sample(one))


def test_a_replace_from_another_pack_is_still_called(tmp_path, sd15):
    calls = []
    comfy_attention = pytest.importorskip("comfy.ldm.modules.attention")

    def other_pack(q, k, v, extra):
        calls.append(extra["block"])
        return comfy_attention.optimized_attention(q, k, v, extra["n_heads"]) * 0.5

    other = sd15.clone()
    for s in sites_mod.find_sites(sd15):
        other.set_model_attn2_replace(other_pack, s.block, s.block_id)  # a 2-tuple key, as many packs use
    adapter = make_adapter(tmp_path)
    ours = apply_node.apply_tokens(other, adapter, tokens_for(adapter), 1.0)
    sample(ours, steps=1)
    assert len(calls) == 16
    site = sites_mod.find_sites(sd15)[0]
    q, k, v, extra = site_inputs(site.width)
    extra["block"] = site.key[:2]
    replace = ours.model_options["transformer_options"]["patches_replace"]["attn2"][site.key]
    assert replace.base is other_pack
    image_kv = replace.prompts[0].keys_values(site.key, q, extra)
    expected = other_pack(q, k, v, extra) + attention.image_attention(q, *image_kv[:2], extra["n_heads"])
    torch.testing.assert_close(replace(q, k, v, extra), expected)


# ------------------------------------------------------------------ speed and memory by design

def test_clones_share_the_patch_and_its_tensors(tmp_path, sd15):
    adapter = make_adapter(tmp_path)
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    clone = patched.clone()
    chained = apply_node.apply_tokens(clone, adapter, tokens_for(adapter, seed=3), 0.5)
    key = sites_mod.find_sites(sd15)[0].key
    r1 = patched.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    r2 = clone.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    r3 = chained.model_options["transformer_options"]["patches_replace"]["attn2"][key]
    assert r2 is not r1 and r2.prompts[0] is r1.prompts[0]  # each clone a light replace of its own, same prompt
    assert r3.prompts[0] is r1.prompts[0]
    assert r3.prompts[0].site_kv[key].k_cond.data_ptr() == r1.prompts[0].site_kv[key].k_cond.data_ptr()


def test_image_keys_values_are_made_once_per_run_not_per_step(tmp_path, sd15, monkeypatch):
    adapter = make_adapter(tmp_path, layout="resampler")
    built = []
    original_kv = attention.site_keys_values
    monkeypatch.setattr(pack("nodes.core.apply"), "site_keys_values",
                        lambda *a, **k: built.append(1) or original_kv(*a, **k))
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    assert len(built) == 16
    placed = []
    original_init = attention.PlacedPrompt.__init__
    monkeypatch.setattr(attention.PlacedPrompt, "__init__",
                        lambda self, *a, **k: placed.append(1) or original_init(self, *a, **k))
    # the adapter's weights are not needed while sampling: only the precomputed K/V are
    adapter.kv_weights.clear()
    sample(patched, steps=4)
    assert len(built) == 16
    assert len(placed) == 1  # every site cast to the model's device and dtype at once, once per run


# ------------------------------------------------------------------ cond/uncond, batches, masks, window

def test_rows_follow_cond_or_uncond(tmp_path, sd15):
    adapter = make_adapter(tmp_path)
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0)
    site = sites_mod.find_sites(sd15)[2]
    q, k, v, extra = site_inputs(site.width)
    q = torch.cat([q[:1], q[:1]])
    k = torch.cat([k[:1], k[:1]])
    v = torch.cat([v[:1], v[:1]])
    out_uc = site_call(patched, site.key, q, k, v, dict(extra, cond_or_uncond=[1, 0]))
    out_cu = site_call(patched, site.key, q, k, v, dict(extra, cond_or_uncond=[0, 1]))
    assert not torch.allclose(out_uc[0], out_uc[1])
    torch.testing.assert_close(out_uc[0], out_cu[1])
    torch.testing.assert_close(out_uc[1], out_cu[0])


def test_zero_mask_equals_no_adapter_and_masks_fit_any_grid(tmp_path, sd15):
    adapter = make_adapter(tmp_path)
    tokens = tokens_for(adapter)
    plain = sample(sd15, h=8, w=12)
    masked_out = apply_node.apply_tokens(sd15, adapter, tokens, 1.0, attn_mask=torch.zeros(1, 37, 23))
    assert torch.equal(sample(masked_out, h=8, w=12), plain)
    half = torch.zeros(1, 37, 23)
    half[:, :, :11] = 1
    full = sample(apply_node.apply_tokens(sd15, adapter, tokens, 1.0), h=8, w=12)
    halfed = sample(apply_node.apply_tokens(sd15, adapter, tokens, 1.0, attn_mask=half), h=8, w=12)
    assert not torch.equal(halfed, plain) and not torch.equal(halfed, full)


def test_each_latent_gets_its_own_mask(tmp_path, sd15):
    adapter = make_adapter(tmp_path)
    masks = torch.stack([torch.zeros(16, 16), torch.ones(16, 16)])
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0, attn_mask=masks)
    site = sites_mod.find_sites(sd15)[0]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(4, 24, site.width, generator=gen)  # 2 chunks (uncond, cond) x 2 latents
    k = torch.randn(4, 7, site.width, generator=gen)
    extra = {"n_heads": 8, "attn_precision": None, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([5.0]),
             "activations_shape": [4, site.width, 4, 6]}
    out = site_call(patched, site.key, q, k, k, extra)
    base = attention.DecoupledCrossAttention(site.key, (), patch_mod._attention)(q, k, k, extra)
    for row in (0, 2):  # latent 0 of each chunk: mask of zeros
        assert torch.equal(out[row], base[row])
    for row in (1, 3):
        assert not torch.allclose(out[row], base[row])


def test_start_and_end_limit_the_sigma_window(tmp_path, sd15, monkeypatch):
    adapter = make_adapter(tmp_path)
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 1.0, start_at=0.3, end_at=0.6)
    sampling = sd15.get_model_object("model_sampling")
    hi, lo = float(sampling.percent_to_sigma(0.3)), float(sampling.percent_to_sigma(0.6))
    seen = []
    original = attention.ImagePrompt.is_active

    def recording(self, extra):
        active = original(self, extra)
        seen.append((float(extra["sigmas"][0]), active))
        return active

    monkeypatch.setattr(attention.ImagePrompt, "is_active", recording)
    sample(patched, steps=6)
    assert any(a for _, a in seen) and not all(a for _, a in seen)
    for sigma, active in seen:
        assert active == (hi >= sigma >= lo)


def test_weight_zero_everywhere_leaves_sites_unpatched(tmp_path, sd15):
    adapter = make_adapter(tmp_path)
    patched = apply_node.apply_tokens(sd15, adapter, tokens_for(adapter), 0.0)
    assert not patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2")


def test_fp16_files_project_like_fp32_ones(tmp_path):
    widths = [s.width for s in sites_mod.find_sites(builders.build_unet("sd15"))]
    state = builders.tiny_adapter_state("resampler", widths, input_width=64, tokens=8, seed=21)
    full = adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / "fp32.safetensors"), state))
    half = adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / "fp16.safetensors"),
                                                              {k: v.half() for k, v in state.items()}))
    assert next(half.projection.parameters()).dtype == torch.float16  # held as stored, not widened
    a, b = tokens_for(full), tokens_for(half)
    assert b.cond.dtype == torch.float32
    torch.testing.assert_close(b.cond, a.cond, atol=2e-2, rtol=2e-2)
