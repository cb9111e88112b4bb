"""Batch unfold and per-frame weights: reference i drives latent i, each frame has its own weight, and AnimateDiff's
context windows (`sub_idxs`) and ComfyUI's own (`context_window`) pick the frames of each call."""

from __future__ import annotations

import math

import pytest
import torch

import builders
from conftest import CAPTURED, pack, run_prompt
from test_end_to_end import sampling_prompt, write_adapter
from test_patching import make_adapter, site_call

references = pack("nodes.core.references")
apply_node = pack("nodes.apply")
sites_mod = pack("nodes.host.sites")
unfold = pack("nodes.core.unfold")
attention = pack("nodes.core.attention")
errors = pack("nodes.core.errors")


def plain_attention(q, k, v, heads):
    b, n, d = q.shape
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


def refs_tokens(adapter, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    refs = references.References.from_images(references.EncoderInfo.from_widths(64, 32), torch.randn(n, 32, generator=gen),
                                             torch.randn(n, 17, 64, generator=gen), torch.randn(1, 17, 64, generator=gen))
    return references.project_references(adapter, refs)


def expected_rows(adapter, site, tokens, q, text, chunks, frames, weights, heads=8, scaling_weight=None):
    """text + w_f · Attn(q, K_ref(f), V_ref(f)) row by row, with ref(f) = min(f, R − 1), w_f = weights[min(f, F − 1)]."""
    w_k, w_v = (w.float() for w in adapter.kv_weights[site.layer_id])
    per = len(frames)
    out = text.clone()
    for c_i, c in enumerate(chunks):
        for j, f in enumerate(frames):
            row = c_i * per + j
            ref = min(f, tokens.cond.shape[0] - 1)
            t = (tokens.uncond if c == 1 else tokens.cond)[ref]
            w = weights[min(f, len(weights) - 1)]
            term = plain_attention(q[row:row + 1], (t @ w_k.T)[None], (t @ w_v.T)[None], heads)
            out[row] += w * term[0]
    return out


def site_extra(width, per, chunks=(1, 0), **more):
    extra = {"n_heads": 8, "attn_precision": None, "cond_or_uncond": list(chunks), "sigmas": torch.tensor([5.0]),
             "activations_shape": [per * len(chunks), width, 4, 6], "original_shape": [per * len(chunks), 4, 8, 12]}
    extra.update(more)
    return extra


@pytest.fixture(scope="module")
def sd15():
    return builders.build_unet("sd15")


def text_only(site, q, k, v, extra):
    pack_patch = pack("nodes.host.patch")
    return attention.DecoupledCrossAttention(site.key, (), pack_patch._attention)(q, k, v, extra)


@pytest.mark.parametrize("scaling", ["V only", "K+V"])
def test_unfold_gives_each_latent_its_reference_and_weight(tmp_path, sd15, scaling):
    adapter = make_adapter(tmp_path, layout="resampler", seed=7)
    tokens = refs_tokens(adapter, 3, seed=1)
    weights = [0.8, 0.5, 0.0, 1.2]
    patched = apply_node.apply_tokens(sd15, adapter, tokens, weights, embeds_scaling=scaling, unfold_batch=True)
    site = sites_mod.find_sites(sd15)[2]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(8, 24, site.width, generator=gen)
    k = torch.randn(8, 7, site.width, generator=gen)
    extra = site_extra(site.width, 4)
    out = site_call(patched, site.key, q, k, k, extra)
    text = text_only(site, q, k, k, extra)
    if scaling == "V only":
        expected = expected_rows(adapter, site, tokens, q, text, (1, 0), [0, 1, 2, 3], weights)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[[2, 6]], text[[2, 6]], atol=1e-6, rtol=0)  # frame 2 has weight 0
    assert not torch.allclose(out[[3, 7]], text[[3, 7]])  # frame 3: the last reference repeats, at 1.2


def test_per_frame_weights_without_unfold_let_every_latent_see_all_references(tmp_path, sd15):
    adapter = make_adapter(tmp_path, seed=3)
    tokens = refs_tokens(adapter, 2, seed=2)
    weights = [1.0, 0.25]
    patched = apply_node.apply_tokens(sd15, adapter, tokens, weights)
    site = sites_mod.find_sites(sd15)[5]
    q = torch.randn(6, 24, site.width, generator=torch.Generator().manual_seed(1))
    extra = site_extra(site.width, 3, chunks=(0, 1))
    out = site_call(patched, site.key, q, q[:, :7], q[:, :7], extra)
    flat = references.ImageTokens(tokens.adapter_name, tokens.context_width, 8, tokens.cond.reshape(1, 8, -1),
                                  tokens.uncond.reshape(1, 8, -1))
    expected = expected_rows(adapter, site, flat, q, text_only(site, q, q[:, :7], q[:, :7], extra), (0, 1),
                             [0, 1, 2], weights)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_a_list_of_equal_weights_is_a_plain_weight(tmp_path, sd15):
    adapter = make_adapter(tmp_path, seed=4)
    tokens = refs_tokens(adapter, 1)
    listed = apply_node.apply_tokens(sd15, adapter, tokens, [0.7, 0.7])
    plain = apply_node.apply_tokens(sd15, adapter, tokens, 0.7)
    site = sites_mod.find_sites(sd15)[0]
    a = listed.model_options["transformer_options"]["patches_replace"]["attn2"][site.key].prompts[0]
    b = plain.model_options["transformer_options"]["patches_replace"]["attn2"][site.key].prompts[0]
    assert type(a) is type(b) is attention.ImagePrompt
    assert torch.equal(a.site_kv[site.key].v_cond, b.site_kv[site.key].v_cond)


@pytest.mark.parametrize("window", ["ad_params", "context_window"])
def test_context_windows_pick_the_frames_of_the_call(tmp_path, sd15, window):
    """An AnimateDiff-Evolved window over frames 2 and 3 of 4: the rows get references and weights of frames 2, 3."""
    adapter = make_adapter(tmp_path, layout="resampler", seed=8)
    tokens = refs_tokens(adapter, 4, seed=3)
    weights = [0.1, 0.2, 0.9, 1.4]
    mask = torch.zeros(4, 8, 12)
    mask[2, :, :6] = 1  # frame 2: left half only
    mask[3] = 1
    patched = apply_node.apply_tokens(sd15, adapter, tokens, weights, unfold_batch=True, attn_mask=mask)
    site = sites_mod.find_sites(sd15)[1]
    q = torch.randn(4, 24, site.width, generator=torch.Generator().manual_seed(2))
    if window == "ad_params":
        more = {"ad_params": {"sub_idxs": [2, 3], "full_length": 4, "context_length": 2}}
    else:
        more = {"context_window": type("Window", (), {"index_list": [2, 3], "dim": 0})()}
    extra = site_extra(site.width, 2, **more)
    out = site_call(patched, site.key, q, q[:, :5], q[:, :5], extra)
    text = text_only(site, q, q[:, :5], q[:, :5], extra)
    full = expected_rows(adapter, site, tokens, q, text, (1, 0), [2, 3], weights)
    site_mask = attention.resize_mask(mask, 4, 6, 24)  # [4, 24, 1]
    expected = text + (full - text) * site_mask[[2, 3, 2, 3]]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert unfold.latent_indices({}, 3) == [0, 1, 2]
    with pytest.raises(errors.InputError, match="lists 2 frames"):
        unfold.latent_indices({"ad_params": {"sub_idxs": [0, 1]}}, 3)


def test_a_batch_of_masks_follows_the_context_window_without_unfold(tmp_path, sd15):
    adapter = make_adapter(tmp_path, seed=9)
    mask = torch.stack([torch.zeros(8, 12), torch.ones(8, 12), torch.zeros(8, 12)])
    patched = apply_node.apply_tokens(sd15, adapter, refs_tokens(adapter, 1), 1.0, attn_mask=mask)
    site = sites_mod.find_sites(sd15)[1]
    q = torch.randn(2, 24, site.width, generator=torch.Generator().manual_seed(4))
    extra = site_extra(site.width, 1, ad_params={"sub_idxs": [1], "full_length": 3})
    on = site_call(patched, site.key, q, q[:, :5], q[:, :5], extra)
    extra_off = site_extra(site.width, 1, ad_params={"sub_idxs": [2], "full_length": 3})
    off = site_call(patched, site.key, q, q[:, :5], q[:, :5], extra_off)
    text = text_only(site, q, q[:, :5], q[:, :5], extra)
    torch.testing.assert_close(off, text)
    assert not torch.allclose(on, text)


def test_sampling_a_batch_of_four_latents_with_per_frame_weights(models_dir):
    """Through the real executor: 4 latents, references [A, B, A] unfolded, weights [0.8, 0.5, 0, 0.8] from
    Likeness Frame Weights. Latent rows are sampled independently, so each row equals the row of a plain run
    with its own reference and weight (frame 2, weight 0, equals the run without adapter)."""
    adapter = write_adapter(models_dir, "unfold-plus.safetensors", layout="resampler", seed=11)

    def graph(key, model_from, extra_nodes):
        prompt = sampling_prompt(key=key, batch=4, width=48, height=32, steps=3, model_from=model_from)
        prompt.update({
            "10": {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": "tiny-clip-h.safetensors"}},
            "11": {"class_type": "LikenessAdapterLoader", "inputs": {"adapter_name": adapter}},
            "20": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1,
                                                          "color": 0x3366CC}},
            "21": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1,
                                                          "color": 0xCC6633}},
        })
        prompt.update(extra_nodes)
        return prompt

    def chain(image, weight, apply_id="13", unfold_batch=False):
        return {
            "12": {"class_type": "LikenessImageEncode", "inputs": {"clip_vision": ["10", 0], "image": image,
                                                                   "crop": "center", "sharpen": 0.0}},
            "14": {"class_type": "LikenessProject", "inputs": {"adapter": ["11", 0], "references": ["12", 0]}},
            apply_id: {"class_type": "LikenessApply", "inputs": {
                "model": ["1", 0], "adapter": ["11", 0], "tokens": ["14", 0], "weight": weight,
                "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only",
                "unfold_batch": unfold_batch}},
        }

    runs = {
        "none": graph("none", ("1", 0), {}),
        "a": graph("a", ("13", 0), chain(["20", 0], 0.8)),
        "b": graph("b", ("13", 0), chain(["21", 0], 0.5)),
        "unfold": graph("unfold", ("13", 0), {
            **chain(["31", 0], ["30", 0], unfold_batch=True),
            "30": {"class_type": "LikenessFrameWeights", "inputs": {
                "weights": "0.8, 0.5, 0, 0.8", "timing": "custom", "frames": 0, "start_frame": 0,
                "end_frame": 9999, "add_starting_frames": 0, "add_ending_frames": 0, "method": "full batch"}},
            "32": {"class_type": "ImageBatch", "inputs": {"image1": ["20", 0], "image2": ["21", 0]}},
            "31": {"class_type": "ImageBatch", "inputs": {"image1": ["32", 0], "image2": ["20", 0]}},
        }),
    }
    for key, prompt in runs.items():
        result = run_prompt(prompt)
        assert result.success, (key, result.error, result.node_errors, result.execution_error())
    got = CAPTURED["unfold"]
    assert got.shape == (4, 4, 4, 6)
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0], CAPTURED["a"][0], **tol)
    torch.testing.assert_close(got[1], CAPTURED["b"][1], **tol)
    torch.testing.assert_close(got[2], CAPTURED["none"][2], **tol)
    torch.testing.assert_close(got[3], CAPTURED["a"][3], **tol)
    assert not torch.allclose(got[0], CAPTURED["none"][0], **tol)


def test_frame_prompts_follow_the_hosts_moves(tmp_path, sd15):
    """Placed once per device and dtype when the host moves the patches (or on first use), dropped on release."""
    adapter = make_adapter(tmp_path, seed=12)
    patched = apply_node.apply_tokens(sd15, adapter, refs_tokens(adapter, 2), [1.0, 0.5], unfold_batch=True)
    site = sites_mod.find_sites(sd15)[0]
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"][site.key]
    prompt = replace.prompts[0]
    assert isinstance(prompt, unfold.FramePrompt) and not prompt.copies.placed()
    replace.to(torch.device("cpu"))
    replace.to(torch.float16)
    assert [dtype for _, dtype in prompt.copies.placed()] == [torch.float16]
    placed = prompt.copies.get(torch.device("cpu"), torch.float16)
    assert placed.kv[site.key].k_cond.dtype == torch.float16 and placed.kv[site.key].k_cond.shape[0] == 2
    q = torch.randn(2, 24, site.width, dtype=torch.float16)
    k, v, mask = prompt.keys_values(site.key, q, site_extra(site.width, 1))
    assert k.shape == (2, 4, site.width) and k.dtype == torch.float16 and mask is None
    # Later steps look the layout up: the same tensors, nothing made per step.
    again = prompt.keys_values(site.key, q, {**site_extra(site.width, 1), "sigmas": torch.tensor([4.0])})
    assert again[0] is k and again[1] is v
    other_window = prompt.keys_values(site.key, q, site_extra(site.width, 1, ad_params={"sub_idxs": [1]}))
    assert other_window[0] is not k and not torch.equal(other_window[1], v)
    prompt.release(torch.device("cpu"))
    assert not prompt.copies.placed()


@pytest.mark.parametrize("unfold_batch", [False, True])
def test_precise_types_swap_the_sides_in_the_site_call(tmp_path, sd15, unfold_batch):
    """At a site a precise type swaps, the cond rows attend to zero tokens (their image term is exactly 0) and the
    uncond rows attend to the reference's cond tokens at the site weight; unswapped sites act as usual. With
    per-frame weights and unfold, each frame's site weight is the precise formula at that frame's weight."""
    schedules = pack("nodes.core.schedules")
    adapter = make_adapter(tmp_path, layout="resampler", seed=13)
    tokens = refs_tokens(adapter, 2, seed=5)
    weights = [0.6, 1.3] if unfold_batch else 0.6
    patched = apply_node.apply_tokens(sd15, adapter, tokens, weights, weight_type="style transfer precise",
                                      style_boost=1.7, unfold_batch=unfold_batch)
    sites = sites_mod.find_sites(sd15)
    plans = [schedules.site_plan(sites, w, "style transfer precise", schedules.Boosts(style_boost=1.7))
             for w in (weights if unfold_batch else [weights])]
    swapped = [s for s in sites if s.key in plans[0].swapped]
    plain = [s for s in sites if s.key not in plans[0].swapped and plans[0].weights[s.key]]
    assert swapped and plain
    if not unfold_batch:  # every latent sees both references, one after the other
        tokens = references.ImageTokens(tokens.adapter_name, tokens.context_width, 16,
                                        tokens.cond.reshape(1, 16, -1), tokens.uncond.reshape(1, 16, -1))
    per = 2
    for site in (swapped[0], plain[0]):
        q = torch.randn(2 * per, 24, site.width, generator=torch.Generator().manual_seed(6))
        ctx = q[:, :7]
        extra = site_extra(site.width, per)  # chunks (uncond, cond)
        out = site_call(patched, site.key, q, ctx, ctx, extra)
        text = text_only(site, q, ctx, ctx, extra)
        site_weights = [plan.weights[site.key] for plan in plans]
        if site.key in plans[0].swapped:
            torch.testing.assert_close(out[per:], text[per:], atol=1e-6, rtol=0)  # cond: nothing added
            as_cond = references.ImageTokens(tokens.adapter_name, tokens.context_width, tokens.tokens_per_reference,
                                             tokens.cond, tokens.cond)  # uncond rows attend to the cond tokens
            expected = expected_rows(adapter, site, as_cond, q, text, (1, 0), [0, 1], site_weights)
            torch.testing.assert_close(out[:per], expected[:per], atol=1e-5, rtol=1e-5)
        else:
            expected = expected_rows(adapter, site, tokens, q, text, (1, 0), [0, 1], site_weights)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
