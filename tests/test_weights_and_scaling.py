"""Weight types spread the weight over sites as documented; embeds scaling follows its formulas."""

from __future__ import annotations

import math

import pytest
import torch

import builders
from conftest import pack

schedules = pack("nodes.core.schedules")
attention = pack("nodes.core.attention")
sites_mod = pack("nodes.host.sites")


@pytest.fixture(scope="module")
def sd15_sites():
    return sites_mod.find_sites(builders.build_unet("sd15", tiny=False))


@pytest.fixture(scope="module")
def sdxl_sites():
    return sites_mod.find_sites(builders.build_unet("sdxl", tiny=False))


def by_transformer(sites, weights):
    out = {}
    for s in sites:
        out.setdefault(s.transformer, set()).add(round(weights[s.key], 6))
    assert all(len(v) == 1 for v in out.values()), "sites of one transformer must share a weight"
    return {t: v.pop() for t, v in sorted(out.items())}


def test_every_documented_weight_type_exists():
    assert list(schedules.WEIGHT_TYPES) == [
        "linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
        "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
        "style and composition"]


def test_ramps(sd15_sites):
    L = 16
    for name, f in [("ease in", lambda p: 1 - p), ("ease out", lambda p: p),
                    ("ease in-out", lambda p: 1 - abs(2 * p - 1)), ("reverse in-out", lambda p: abs(2 * p - 1))]:
        got = by_transformer(sd15_sites, schedules.site_weights(sd15_sites, 0.8, name))
        for t, w in got.items():
            assert w == pytest.approx(0.8 * (0.05 + 0.95 * f(t / (L - 1))), abs=1e-6), (name, t)


def test_groups(sdxl_sites):
    w = schedules.site_weights(sdxl_sites, 1.0, "strong middle")
    for s in sdxl_sites:
        assert w[s.key] == (1.0 if s.block == "middle" else 0.2)
    w = schedules.site_weights(sdxl_sites, 2.0, "weak middle")
    for s in sdxl_sites:
        assert w[s.key] == (0.4 if s.block == "middle" else 2.0)


def test_sdxl_style_and_composition_blocks(sdxl_sites):
    style = schedules.site_weights(sdxl_sites, 1.0, "style transfer")
    comp = schedules.site_weights(sdxl_sites, 1.0, "composition")
    strong = schedules.site_weights(sdxl_sites, 1.0, "strong style transfer")
    both = schedules.site_weights(sdxl_sites, 1.0, "style and composition")
    assert {s.key[:2] for s in sdxl_sites if style[s.key]} == {("output", 1)}  # up_blocks.0.attentions.1
    assert {s.key[:2] for s in sdxl_sites if comp[s.key]} == {("input", 8)}  # down_blocks.2.attentions.1
    assert {s.key[:2] for s in sdxl_sites if not strong[s.key]} == {("input", 8)}
    assert {s.key[:2] for s in sdxl_sites if both[s.key]} == {("output", 1), ("input", 8)}
    # h94 ids of the style transformer (up_blocks.0.attentions.1) are 69..87
    assert sorted(s.layer_id for s in sdxl_sites if style[s.key]) == list(range(69, 88, 2))


def test_sd15_composition_weights(sd15_sites):
    comp = schedules.site_weights(sd15_sites, 1.0, "composition")
    assert {s.key[:2]: comp[s.key] for s in sd15_sites if comp[s.key]} == {("input", 7): 0.25, ("input", 8): 1.0}


def test_unknown_layout_falls_back_to_last_input_and_second_output():
    Site = schedules.Site
    sites = [Site("input", 1, 0, 0, 4, 32, 8, 1), Site("input", 2, 0, 1, 4, 32, 8, 3),
             Site("output", 0, 0, 2, 4, 32, 8, 5), Site("output", 1, 0, 3, 4, 32, 8, 7)]
    comp = schedules.site_weights(sites, 1.0, "composition")
    style = schedules.site_weights(sites, 1.0, "style transfer")
    assert [comp[s.key] for s in sites] == [0, 1, 0, 0]
    assert [style[s.key] for s in sites] == [0, 0, 0, 1]


def plain_attention(q, k, v, heads):
    b, n, d = q.shape
    q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, n, d)


@pytest.mark.parametrize("scaling", ["V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty"])
def test_embeds_scaling_formulas(scaling):
    gen = torch.Generator().manual_seed(0)
    width, ctx, heads, w = 640, 64, 8, 0.7
    tokens = torch.randn(6, ctx, generator=gen)
    wk, wv = torch.randn(width, ctx, generator=gen) * 0.1, torch.randn(width, ctx, generator=gen) * 0.1
    q = torch.randn(1, 12, width, generator=gen)
    kv = attention.site_keys_values(tokens, tokens, wk, wv, w, scaling)
    got = plain_attention(q, kv.k_cond[None], kv.v_cond[None], heads)
    k, v = tokens @ wk.T, tokens @ wv.T
    c = w * width / 1280
    expected = {
        "V only": w * plain_attention(q, k[None], v[None], heads),
        "K+V": plain_attention(q, (k * w)[None], (v * w)[None], heads),
        "K+V w/ C penalty": plain_attention(q, (k * c)[None], (v * c)[None], heads),
        "K+mean(V) w/ C penalty": plain_attention(
            q, (k * c)[None], (v - v.mean(0) + v.mean(0) * c)[None], heads),
    }[scaling]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
