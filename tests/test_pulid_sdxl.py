"""PuLID v1 and v1.1 on a tiny SDXL: each method's combine rule at a site against the reference code's formula
(pulid/attention_processor.py IDAttnProcessor2_0, in plain torch here), its zero tokens, and whole runs that leave
the MODEL as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import builders
import comfy.sample
from conftest import pack
from test_end_to_end import tiny_sites
from test_pulid_flux import face_references

adapter_mod = pack("nodes.core.adapter")
references = pack("nodes.core.references")
pulid = pack("nodes.core.pulid")
pulid_patch = pack("nodes.host.pulid_patch")


@pytest.fixture(scope="module", params=["v1", "v1.1"])
def sdxl_pulid(request, tmp_path_factory):
    widths = [s.width for s in tiny_sites("sdxl")]
    state = builders.tiny_pulid_state(request.param, seed=5, widths=widths)
    path = builders.save_safetensors(str(tmp_path_factory.mktemp("pulid") / f"pulid_{request.param}.safetensors"),
                                     state)
    return adapter_mod.load_adapter(path), state


def heads_of(x, heads):
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def merged(x):
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def reference_site(q, k, v, id_embedding, w_k, w_v, heads, id_scale, ortho, ortho_v2):
    """IDAttnProcessor2_0 from `hidden_states = sdpa(q, k, v)` to before to_out, in float32."""
    hidden = merged(F.scaled_dot_product_attention(heads_of(q, heads), heads_of(k, heads), heads_of(v, heads)))
    id_key, id_value = id_embedding @ w_k.T, id_embedding @ w_v.T
    query, id_key_h = heads_of(q, heads), heads_of(id_key, heads)
    id_hidden = merged(F.scaled_dot_product_attention(query, id_key_h, heads_of(id_value, heads)))
    if not ortho and not ortho_v2:
        return hidden + id_scale * id_hidden
    projection = (torch.sum(hidden * id_hidden, dim=-2, keepdim=True) / torch.sum(hidden * hidden, dim=-2, keepdim=True)
                  * hidden)
    if ortho_v2:
        attn_map = query @ id_key_h.transpose(-2, -1)
        attn_mean = attn_map.softmax(dim=-1).mean(dim=1)
        attn_mean = attn_mean[:, :, :5].sum(dim=-1, keepdim=True)
        return hidden + id_scale * (id_hidden + (attn_mean - 1) * projection)
    return hidden + id_scale * (id_hidden - projection)


REFERENCE_FLAGS = {"neutral": (False, False), "style": (True, False), "fidelity": (False, True)}


@pytest.mark.parametrize("method", pulid.PULID_METHODS)
def test_each_method_at_a_site_is_the_reference_formula(sdxl_pulid, method):
    adapter, state = sdxl_pulid
    model = builders.build_unet("sdxl")
    tokens = references.project_references(adapter, face_references(count=2, seed=4))
    patched = pulid_patch.apply_pulid(model, adapter, tokens, 0.7, method=method)
    sites = tiny_sites("sdxl")
    site, layer = sites[20], adapter.detected.layer_ids[20]
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"][site.key]
    heads = 2
    gen = torch.Generator().manual_seed(9)
    # two latents per side: ComfyUI's batch is [uncond, uncond, cond, cond], two rows sharing each K/V
    q = torch.randn(4, 12, site.width, generator=gen)
    k, v = torch.randn(4, 7, site.width, generator=gen), torch.randn(4, 7, site.width, generator=gen)
    got = replace(q, k, v, {"n_heads": heads, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0] * 4)})

    zeros = pulid.zero_tokens(method, adapter.detected.layout)
    v1 = adapter.detected.layout is pulid.Layout.PULID_ENCODER
    assert zeros == {"fidelity": 8 if v1 else 20, "style": 16 if v1 else 20, "neutral": 0}[method]
    cond, uncond = (torch.cat([t, torch.zeros(zeros, t.shape[-1])]) for t in tokens.flat())
    w_k = state[f"id_adapter_attn_layers.{layer}.id_to_k.weight"]
    w_v = state[f"id_adapter_attn_layers.{layer}.id_to_v.weight"]
    expected = torch.cat([
        reference_site(q[i:i + 1], k[i:i + 1], v[i:i + 1], t[None], w_k, w_v, heads, 0.7, *REFERENCE_FLAGS[method])
        for i, t in enumerate((uncond, uncond, cond, cond))])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_the_fidelity_mass_is_per_query_from_unscaled_scores():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 8, generator=gen) * 3, torch.randn(1, 9, 8, generator=gen)
    mass = pulid.identity_mass(q, k, heads=2)
    by_hand = torch.zeros(1, 4, 1)
    for n in range(4):
        for h in range(2):
            scores = q[0, n, h * 4:(h + 1) * 4] @ k[0, :, h * 4:(h + 1) * 4].T  # no 1/sqrt(d)
            by_hand[0, n, 0] += scores.softmax(-1)[:5].sum() / 2
    torch.testing.assert_close(mass, by_hand)
    assert mass.std() > 0  # one value per query, not one per site


def test_style_removes_the_part_along_the_text_output_token_axis():
    gen = torch.Generator().manual_seed(2)
    out, ip = torch.randn(2, 6, 4, generator=gen), torch.randn(2, 6, 4, generator=gen)
    term = pulid.combine_style(out, ip)
    # for every batch row and channel, the term is orthogonal to the text output over the tokens
    torch.testing.assert_close((term * out).sum(dim=1), torch.zeros(2, 4), atol=1e-5, rtol=0)


def test_methods_sample_and_leave_the_model_untouched(sdxl_pulid):
    adapter, _ = sdxl_pulid
    model = builders.build_unet("sdxl", seed=3)
    positive, negative = builders.conditioning("sdxl", seed=1), builders.conditioning("sdxl", seed=2)
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)

    def run(m):
        return comfy.sample.sample(m, noise, 1, 5.0, "euler", "normal", positive, negative, latent, seed=0)

    before = run(model)
    tokens = references.project_references(adapter, face_references(seed=6))
    outs = {m: run(pulid_patch.apply_pulid(model, adapter, tokens, 1.0, method=m)) for m in pulid.PULID_METHODS}
    assert torch.equal(run(model), before)
    assert len({tuple(o.flatten()[:64].tolist()) for o in outs.values()} | {tuple(before.flatten()[:64].tolist())}) == 4


def test_what_pulid_cannot_do_is_refused_with_a_message(sdxl_pulid):
    """PuLID's combine rules take one identity for every latent and no side swap: Likeness Apply's options that
    would need either stop with a message naming them, not a shape error mid-sampling."""
    errors = pack("nodes.core.errors")
    adapter, _ = sdxl_pulid
    model = builders.build_unet("sdxl", seed=3)
    tokens = references.project_references(adapter, face_references(seed=6))
    with pytest.raises(errors.InputError, match="unfold_batch"):
        pulid_patch.apply_pulid(model, adapter, tokens, 1.0, unfold_batch=True)
    with pytest.raises(errors.InputError, match="per-frame"):
        pulid_patch.apply_pulid(model, adapter, tokens, [1.0, 0.5])
    with pytest.raises(errors.InputError, match="style transfer precise"):
        pulid_patch.apply_pulid(model, adapter, tokens, 1.0, "style transfer precise")
    patched = pulid_patch.apply_pulid(model, adapter, tokens, 1.0, layer_weights="0:1.0, 3:0.5")
    assert patched is not model  # per-layer weights are taken on SDXL
