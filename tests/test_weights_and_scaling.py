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
        "style and composition", "style transfer precise", "composition precise"]


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_ramps(kind, sd15_sites, sdxl_sites):
    """The leading pack's ramps: t is the spatial transformer index, L the count (16 or 11), p = t / L."""
    sites, L = (sd15_sites, 16) if kind == "sd15" else (sdxl_sites, 11)
    formulas = {"ease in": lambda t: 0.05 + 0.95 * (1 - t / L), "ease out": lambda t: 0.05 + 0.95 * (t / L),
                "ease in-out": lambda t: 0.05 + 0.95 * (1 - abs(t - L / 2) / (L / 2)),
                "reverse in-out": lambda t: 0.05 + 0.95 * (abs(t - L / 2) / (L / 2))}
    for name, f in formulas.items():
        got = by_transformer(sites, schedules.site_weights(sites, 0.8, name))
        assert sorted(got) == list(range(L))
        for t, w in got.items():
            assert w == pytest.approx(0.8 * f(t), abs=1e-6), (name, t)


def leading_pack_table(weight_type, w, sdxl, style_boost=None, composition_boost=None):
    """The leading ComfyUI IP-Adapter pack's documented weights per spatial transformer index (t -> weight; a
    transformer that is not listed gets nothing), and the set of t where it swaps cond and uncond. Written here
    from its published formulas; `None` for the block-group types, which depend on the block, not on t."""
    L = 11 if sdxl else 16
    every = range(L)
    if weight_type == "linear":
        return {t: w for t in every}, set()
    if weight_type == "style transfer":
        return ({6: w} if sdxl else {t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}), set()
    if weight_type == "composition":
        return ({3: w} if sdxl else {4: 0.25 * w, 5: w}), set()
    if weight_type == "strong style transfer":
        return {t: w for t in every if t not in ((3,) if sdxl else (4, 5))}, set()
    if weight_type == "style and composition":  # at weight_composition = weight
        table = {3: w, 6: w} if sdxl else {**{t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)},
                                            4: 0.25 * w, 5: w}
        return table, set()
    if weight_type == "style transfer precise":
        c = w if style_boost is None else style_boost
        if sdxl:
            return {3: c, 6: w}, {3}
        return {**{t: w for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}, 4: 0.25 * c, 5: c}, {4, 5}
    if weight_type == "composition precise":
        b = w if composition_boost is None else composition_boost
        if sdxl:
            return {**{t: 0.1 * b for t in every}, 3: w, 6: b}, set(every) - {3}
        return ({**{t: b for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}, 4: 0.25 * w, 5: w, 6: 0.1 * b,
                 7: 0.1 * b, 8: 0.1 * b}, set(every) - {4, 5})
    raise AssertionError(weight_type)


SHARED_BY_TRANSFORMER = ["linear", "style transfer", "composition", "strong style transfer",
                         "style and composition", "style transfer precise", "composition precise"]


@pytest.mark.parametrize("weight_type", SHARED_BY_TRANSFORMER)
@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("weight, style_boost, composition_boost", [(1.0, 1.0, 1.0), (0.7, 1.6, 0.35),
                                                                    (-0.5, -2.0, 3.0)])
def test_weight_types_match_the_leading_pack(kind, weight_type, weight, style_boost, composition_boost,
                                             sd15_sites, sdxl_sites):
    """Per-site weights and side swaps equal the leading pack's, except in the middle block, which it never
    patches (it registers its middle patch under a block id ComfyUI does not use) and Likeness does."""
    sites = sdxl_sites if kind == "sdxl" else sd15_sites
    boosts = schedules.Boosts(style_boost=style_boost, composition_boost=composition_boost)
    plan = schedules.site_plan(sites, weight, weight_type, boosts)
    table, swapped = leading_pack_table(weight_type, weight, kind == "sdxl", style_boost, composition_boost)
    for s in sites:
        if s.block == "middle":
            continue
        assert plan.weights[s.key] == pytest.approx(table.get(s.transformer, 0.0), abs=1e-9), (s.key, s.transformer)
        assert (s.key in plan.swapped) == (s.transformer in swapped and s.transformer in table), s.key


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_block_group_types_match_the_leading_pack(kind, sd15_sites, sdxl_sites):
    sites = sdxl_sites if kind == "sdxl" else sd15_sites
    rules = {"weak input": {"input": 0.2}, "weak middle": {"middle": 0.2}, "weak output": {"output": 0.2},
             "strong middle": {"input": 0.2, "output": 0.2}}
    for weight_type, scale in rules.items():
        w = schedules.site_weights(sites, 0.9, weight_type)
        for s in sites:
            assert w[s.key] == pytest.approx(0.9 * scale.get(s.block, 1.0)), (weight_type, s.key)


def test_precise_types_swap_the_sides_where_documented(sdxl_sites, sd15_sites):
    plan = schedules.site_plan(sdxl_sites, 1.0, "style transfer precise")
    assert {k[:2] for k in plan.swapped} == {("input", 8)}
    plan = schedules.site_plan(sdxl_sites, 1.0, "composition precise", schedules.Boosts(composition_boost=0.5))
    assert {k[:2] for k in plan.swapped} == {(s.block, s.block_id) for s in sdxl_sites} - {("input", 8)}
    assert plan.weights[("output", 1, 0)] == 0.5 and plan.weights[("input", 4, 0)] == pytest.approx(0.05)
    plan = schedules.site_plan(sd15_sites, 1.0, "style transfer precise", schedules.Boosts(style_boost=2.0))
    assert {k[:2]: plan.weights[k] for k in plan.swapped} == {("input", 7): 0.5, ("input", 8): 2.0}
    for other in ("linear", "style transfer", "composition", "style and composition"):
        assert not schedules.site_plan(sd15_sites, 1.0, other).swapped


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_layer_weights_override_the_weight_type(kind, sd15_sites, sdxl_sites):
    """The leading pack's Mad Scientist rule: transformer t gets weight x its listed value, unlisted ones 0."""
    sites = sdxl_sites if kind == "sdxl" else sd15_sites
    layers = schedules.parse_layer_weights("0:0, 1:0.5,\n3 : 2.5, 6:1, 10:-0.25")
    assert layers == {0: 0.0, 1: 0.5, 3: 2.5, 6: 1.0, 10: -0.25}
    for weight_type in ("linear", "ease in", "style transfer"):
        plan = schedules.site_plan(sites, 0.8, weight_type, layer_weights=layers)
        assert {s.key: plan.weights[s.key] for s in sites} == {
            s.key: pytest.approx(0.8 * layers.get(s.transformer, 0.0)) for s in sites}
        assert not plan.swapped
    precise = schedules.site_plan(sites, 0.8, "composition precise", layer_weights=layers)
    composition = 3 if kind == "sdxl" else (4, 5)
    assert all((s.key in precise.swapped) == (s.transformer not in (composition if isinstance(composition, tuple)
                                                                     else (composition,))) for s in sites)


def test_layer_weights_messages(sdxl_sites):
    assert schedules.parse_layer_weights("  \n ") is None
    for bad, words in [("3=0.5", "is not `index:weight`"), ("3:0.5, 3:1", "listed twice"), ("a:1", "index:weight"),
                       ("3:nan", "index:weight")]:
        with pytest.raises(pack("nodes.core.errors").InputError, match=words):
            schedules.parse_layer_weights(bad)
    with pytest.raises(pack("nodes.core.errors").InputError, match="transformers 12, 15, but this model has 11"):
        schedules.site_plan(sdxl_sites, 1.0, "linear", layer_weights={12: 1.0, 15: 1.0, 3: 1.0})


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


def test_the_chart_route_shows_boosts_layer_weights_and_swaps():
    """GET /likeness/weights takes Likeness Apply's style_boost, composition_boost and layer_weights too."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    routes = pack("nodes.host.routes")
    table = routes.weights_table("sdxl", 0.8, "style transfer precise", style_boost=1.5)
    by_block = {(s["block"], s["block_id"]): (s["weight"], s["swapped"]) for s in table["sites"]}
    assert by_block[("input", 8)] == (1.5, True) and by_block[("output", 1)] == (0.8, False)
    layered = routes.weights_table("sd15", 0.5, "linear", layer_weights="0:1, 15:2")
    assert table["layer_weights"] is False and layered["layer_weights"] is True
    assert [s["weight"] for s in layered["sites"]] == [0.5] + [0.0] * 14 + [1.0]

    async def ask(queries):
        app = web.Application()
        table_def = web.RouteTableDef()
        routes.add_routes(table_def)
        app.add_routes(table_def)
        async with TestClient(TestServer(app)) as client:
            out = []
            for q in queries:
                response = await client.get("/likeness/weights", params=q)
                out.append((response.status, await response.json()))
            return out

    ok, bad_layers, bad_boost = asyncio.run(ask([
        {"layout": "sdxl", "weight": "0.8", "weight_type": "composition precise", "composition_boost": "0.3",
         "layer_weights": "3:1, 6:0.5"},
        {"weight_type": "linear", "layer_weights": "3=1"},
        {"weight_type": "linear", "style_boost": "nan"}]))
    assert ok == (200, routes.weights_table("sdxl", 0.8, "composition precise", 1.0, 0.3, "3:1, 6:0.5"))
    assert bad_layers[0] == 400 and "index:weight" in bad_layers[1]["error"]
    assert bad_boost[0] == 400 and "style_boost" in bad_boost[1]["error"]


def test_a_malformed_layer_weights_is_refused_before_the_run(models_dir):
    from conftest import run_prompt
    from test_end_to_end import modular_prompt, write_adapter

    prompt = modular_prompt(write_adapter(models_dir, "layers-linear.safetensors"))
    prompt["13"]["inputs"]["layer_weights"] = "3=1"
    result = run_prompt(prompt)
    assert not result.valid
    assert "`3=1` is not `index:weight`" in str(result.node_errors)
