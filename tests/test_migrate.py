"""The converter from the leading IP-Adapter pack (cubiq/ComfyUI_IPAdapter_plus) to Likeness.

Our own workflows in that pack's saved format (tests/leading_pack_graphs.py: every node class it registers,
every widget layout its history saved) are converted; the result is checked against the live node
definitions (test_workflows.problems_in), executed through the real executor on tiny models, laid out without
overlaps, and, where both packs mean the same thing, its per-site weights equal the leading pack's formulas
(transcribed below from its documented weight tables)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

import leading_pack_graphs as graphs
import nodes
from conftest import PACK, pack, run_prompt
from test_workflows import (PASS_THROUGH, input_specs, is_widget, one_torch_thread, problems_in,  # noqa: F401
                            return_types, test_prompt, through_reroutes, workflow_models)

migrate = pack("nodes.migrate")
R = pack("nodes.core.migrate_rules")
LEADING_CLASSES = 37


def convert(workflow):
    return migrate.convert(workflow)


def leading_types(workflow):
    return [n["type"] for n in workflow["nodes"] if n["type"] in R.LAYOUTS]


def boxes(workflow):
    out = []
    for n in workflow["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        title = 0 if n["type"] in ("Note", "MarkdownNote") else 30
        out.append((n["id"], x, y - title, w, h + title))
    return out


def overlaps(workflow):
    found = []
    b = boxes(workflow)
    for i, (ia, xa, ya, wa, ha) in enumerate(b):
        for ib, xb, yb, wb, hb in b[i + 1:]:
            if xa < xb + wb and xb < xa + wa and ya < yb + hb and yb < ya + ha:
                found.append((ia, ib))
    return found


# ------------------------------------------------------------------ the rule table against the live nodes

@pytest.mark.parametrize("class_type", sorted(R.LIKENESS))
def test_the_table_of_written_nodes_matches_the_live_definitions(class_type):
    shape = R.LIKENESS[class_type]
    specs = input_specs(class_type)
    sockets = [(name, spec[0]) for name, spec in specs.items() if not is_widget(spec)]
    widgets = [(name, spec[0], spec[2].get("default", spec[1][0] if spec[1] else None))
               for name, spec in specs.items() if is_widget(spec)]  # a combo without a default shows its first
    assert list(shape["sockets"]) == sockets
    assert [(n, t) for n, t, _ in shape["widgets"]] == [(n, t) for n, t, _ in widgets]
    for (name, _, mine), (_, _, live) in zip(shape["widgets"], widgets):
        if mine is not None:
            assert mine == live, f"{class_type}.{name}: default {mine!r}, live {live!r}"
    assert [t for _, t in shape["outputs"]] == return_types(class_type)
    optional = set((nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES().get("optional") or {}))
    assert R.OPTIONAL.get(class_type, set()) == optional


def test_every_class_of_the_leading_pack_has_a_rule_or_a_reason():
    assert len(R.LAYOUTS) == LEADING_CLASSES == len(graphs.OUTPUTS) - 11  # 11 core node types there
    assert set(R.LAYOUTS) == set(migrate.RULES) | set(migrate.NO_EQUIVALENT)
    values = R.UNIFIED_PRESETS.values()
    live = input_specs("LikenessUnifiedLoader")["preset"][1]
    assert set(values) <= set(live)
    assert set(R.COMBINE_MODES.values()) <= set(input_specs("LikenessMergeReferences")["mode"][1])
    assert set(R.PROVIDERS.values()) <= set(input_specs("LikenessFaceModelLoader")["provider"][1])
    assert set(R.LIKENESS_WEIGHT_TYPES) == set(input_specs("LikenessApply")["weight_type"][1])


def test_the_fixtures_cover_every_class_and_every_layout():
    seen = set()
    for make in [*graphs.RUNNABLE.values(), *graphs.NO_KOLORS.values(), graphs.unconvertible]:
        for n in make()["nodes"]:
            if n["type"] in R.LAYOUTS:
                seen.add((n["type"], len(n["widgets_values"])))
    wanted = {(cls, len(layout)) for cls, layouts in R.LAYOUTS.items() for layout in layouts}
    missing = wanted - seen
    # layouts of the nodes with no equivalent and the Encoder's: one each is enough
    assert not missing, sorted(missing)


# ------------------------------------------------------------------ converted graphs

ALL = {**graphs.RUNNABLE, **graphs.NO_KOLORS}

# adapters the converted graphs find through presets or name, beyond those of workflows/ (test_workflows writes
# those): tiny files in the official layouts, under the official names
EXTRA_ADAPTERS = ("ip-adapter-faceid-plusv2_sdxl.bin", "ip_plus_composition_sdxl.safetensors")


@pytest.fixture(scope="module")
def migrate_models(workflow_models):
    import torch

    import builders
    from test_kolors import TOKEN_WIDTH
    from test_workflows import write_tiny_adapter

    for name in EXTRA_ADAPTERS:
        write_tiny_adapter(workflow_models / "ipadapter", name)
    # Kolors FaceID Plus, narrowed: 6 tokens in a (tiny) text-encoder space wider than the tiny SDXL's context
    def save_bin(state, name):  # nested as the published .bin files are
        nested = {}
        for key, value in state.items():
            group, rest = key.split(".", 1)
            nested.setdefault(group, {})[rest] = value
        torch.save(nested, workflow_models / "ipadapter" / name)

    widths = [s.width for s in pack("nodes.host.sites").find_sites(builders.build_unet("sdxl"))]
    shapes = {"image_proj." + k: v for k, v in builders.faceid_plus_shapes(TOKEN_WIDTH, clip=64, t=6, depth=1).items()}
    shapes.update({"ip_adapter." + k: v for k, v in builders.kv_shapes(widths, builders.TINY_CONTEXT).items()})
    save_bin(builders.tensors_for(shapes, seed=5), graphs.KOLORS_FACEID)
    # Kolors Plus (the KOLORS preset), narrowed: a resampler over a tiny ViT-L/14-336's hidden states
    builders.write_tiny_clip_vision(str(workflow_models / "clip_vision"), "clip-vit-large-patch14-336", seed=1024,
                                    hidden=80, projection=40)
    save_bin(builders.tiny_adapter_state("resampler", widths, input_width=80, tokens=16, seed=6),
             "Kolors-IP-Adapter-Plus.bin")
    (workflow_models / "checkpoints" / graphs.KOLORS).write_bytes(b"")  # the tests' loader builds the model
    import folder_paths

    folder_paths.filename_list_cache.clear()
    return workflow_models


@pytest.mark.parametrize("name", sorted(ALL))
def test_converted_graph_matches_the_live_definitions_and_does_not_overlap(name, migrate_models):
    original = ALL[name]()
    before = copy.deepcopy(original)
    converted, summary = convert(original)
    assert original == before, "the input was modified"
    assert leading_types(converted) == [], summary["text"]
    assert not summary["kept"], summary["text"]
    problems = problems_in(converted)
    assert not problems, "\n".join(problems)
    assert not overlaps(converted), overlaps(converted)
    ids = [n["id"] for n in converted["nodes"]]
    assert len(ids) == len(set(ids)) and converted["last_node_id"] >= max(ids)
    link_ids = [k[0] for k in converted["links"]]
    assert len(link_ids) == len(set(link_ids)) and converted["last_link_id"] >= max(link_ids)
    by_id = {n["id"]: n for n in converted["nodes"]}
    for link in converted["links"]:  # both ends name the link
        assert link[0] in by_id[link[1]]["outputs"][link[2]]["links"]
        assert by_id[link[3]]["inputs"][link[4]]["link"] == link[0]
    for n in converted["nodes"]:
        for slot in n.get("inputs") or []:
            assert slot.get("link") is None or slot["link"] in link_ids
    assert "middle block" in summary["text"]


# what the Unified loaders of these graphs report choosing (the preset, the family it found, the files)
UNIFIED_CHOICES = {"simple_unified": ["PLUS on SD1.5: adapter `ip-adapter-plus_sd15.safetensors`"],
                   "faceid_unified": ["FACEID PLUS V2 on SDXL: adapter `ip-adapter-faceid-plusv2_sdxl.bin`",
                                      "COMPOSITION on SDXL: adapter `ip_plus_composition_sdxl.safetensors`"],
                   "kolors_community": ["KOLORS on Kolors: adapter `Kolors-IP-Adapter-Plus.bin`, encoder "
                                        "`clip-vit-large-patch14-336.safetensors`"]}


@pytest.mark.parametrize("name", sorted(graphs.RUNNABLE))
def test_converted_graph_runs_end_to_end(name, migrate_models):
    converted, summary = convert(graphs.RUNNABLE[name]())
    result = run_prompt(test_prompt(converted))
    assert result.valid, f"{result.error} {result.node_errors}"
    assert result.success, result.execution_error()
    outputs = result.executor.history_result["outputs"]
    said = [outputs[str(n["id"])]["text"][0] for n in converted["nodes"]
            if n["type"] == "LikenessUnifiedLoader" and str(n["id"]) in outputs]
    for wanted in UNIFIED_CHOICES.get(name, []):
        assert any(text.startswith(wanted) for text in said), (wanted, said)


@pytest.mark.parametrize("name", sorted(graphs.NO_KOLORS))
def test_converted_kolors_graphs_run_into_the_no_kolors_message(name, migrate_models):
    """This ComfyUI has no Kolors model of its own: the converted graph validates, runs, and stops with the message
    that says where Kolors comes from (a Kolors loader pack), not with a traceback."""
    converted, summary = convert(graphs.NO_KOLORS[name]())
    assert "Kolors" in summary["text"]
    result = run_prompt(test_prompt(converted))
    assert result.valid, f"{result.error} {result.node_errors}"
    error = result.execution_error()
    assert error is not None and not result.success
    assert pack("nodes.core.apply").NO_KOLORS_SUPPORT in error["exception_message"], error["exception_message"]
    failing = next(n for n in converted["nodes"] if str(n["id"]) == str(error["node_id"]))
    assert failing["type"] == {"kolors_community_on_sdxl": "LikenessUnifiedLoader",
                               "kolors_faceid_on_sdxl": "LikenessApply"}[name]


def _api(workflow):
    """The leading-pack workflow as an API prompt (named widget values), the way its users export it (the
    frontend reads through pass-through nodes and leaves them out)."""
    links = {k[0]: k for k in workflow["links"]}
    by_id = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for n in workflow["nodes"]:
        if n["type"] in PASS_THROUGH:
            continue
        if n["type"] in R.LAYOUTS:
            names = next(layout for layout in R.LAYOUTS[n["type"]] if len(layout) == len(n["widgets_values"]))
            inputs = dict(zip(names, n["widgets_values"]))
        else:
            inputs = {}
        for slot in n["inputs"]:
            if slot.get("link") is not None:
                link = through_reroutes(links[slot["link"]], links, by_id)
                inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


@pytest.mark.parametrize("name", sorted(graphs.RUNNABLE))
def test_api_format_converts_and_runs(name, migrate_models):
    ui = graphs.RUNNABLE[name]()
    prompt = _api(ui)
    reference = test_prompt(convert(ui)[0])  # core nodes from the UI route, to fill their widget values
    for key, node in prompt.items():
        if node["class_type"] not in R.LAYOUTS:
            prompt[key] = copy.deepcopy(reference[key])
    converted, summary = convert(prompt)
    assert not [n for n in converted.values() if n["class_type"] in R.LAYOUTS], summary["text"]
    for node in converted.values():
        node["class_type"] = test_workflows_swaps().get(node["class_type"], node["class_type"])
    assert sorted(n["class_type"] for n in converted.values()) == sorted(n["class_type"] for n in reference.values())
    result = run_prompt(converted)
    assert result.valid, f"{result.error} {result.node_errors}"
    assert result.success, result.execution_error()


def test_workflows_swaps():
    from test_workflows import SWAPS
    return SWAPS


test_workflows_swaps.__test__ = False


# ------------------------------------------------------------------ what stays, and why

def test_unconvertible_nodes_stay_with_a_note_next_to_them():
    original = graphs.unconvertible()
    converted, summary = convert(original)
    kept = {k["type"]: k["reason"] for k in summary["kept"]}
    assert set(kept) >= {"IPAdapterCombineWeights", "IPAdapterPromptScheduleFromWeightsStrategy", "IPAdapterAdvanced"}
    assert "8 widget values" in kept["IPAdapterAdvanced"]
    # it reads the MODEL of the first Advanced, now a Likeness Apply: the leading pack would fail there
    assert "after a Likeness node on the MODEL chain" in kept["IPAdapterAdvanced"]
    assert "after a Likeness node" not in kept["IPAdapterCombineWeights"]
    notes = [n for n in converted["nodes"] if n["type"] == "Note"]
    for kept_node in summary["kept"]:
        if kept_node["reason"].startswith("an unconverted node still reads"):
            continue  # a loader kept for a kept node: the summary says so, its consumer's Note says why
        node = next(n for n in converted["nodes"] if n["id"] == kept_node["id"])
        assert node["type"] == kept_node["type"]
        assert any(kept_node["type"] in note["widgets_values"][0] and abs(note["pos"][0] - node["pos"][0]) < 400
                   for note in notes), kept_node
    # the kept nodes keep their links: the adapter loader they read stays, next to its Likeness replacement
    types = [n["type"] for n in converted["nodes"]]
    assert "IPAdapterModelLoader" in types and "LikenessAdapterLoader" in types
    assert "LikenessLoadReferences" in types and ".ipadpt" in summary["text"]
    assert not overlaps(converted)


def test_hostile_input_is_refused_with_a_message():
    for bad in ([], {"nodes": "x", "links": []}, {"nodes": [{"id": "a"}], "links": []},
                {"1": {"inputs": {}}}, {"nodes": [], "links": [[1, 2]]}):
        with pytest.raises(migrate.BadWorkflow):
            convert(bad)
    wf = graphs.advanced_and_simple()
    wf["nodes"][6]["widgets_values"] = [float("nan"), None, {"x": 1}, "a", []]
    converted, summary = convert(wf)  # odd values: the node stays, nothing raises
    assert summary["kept"]
    wf = graphs.embeds()
    encoder = next(n for n in wf["nodes"] if n["type"] == "IPAdapterEncoder")
    encoder["widgets_values"] = [0.0]  # zero features there; Merge References would drop the reference
    converted, summary = convert(wf)
    assert [k["type"] for k in summary["kept"] if "`weight` is 0" in k["reason"]] == ["IPAdapterEncoder"]


# ------------------------------------------------------------------ per-site weights against the formulas

def _cubiq_weights(weight_type, weight, sdxl, weight_composition=1.0, layer_weights=""):
    """The leading pack's per-transformer weights (its weight table keyed by transformer ordinal)."""
    L = 11 if sdxl else 16
    if layer_weights:
        return {int(k): float(v) * weight for k, v in (x.split(":") for x in layer_weights.split(","))}
    if weight_type == "ease in":
        return {t: weight * (0.05 + 0.95 * (1 - t / L)) for t in range(L)}
    if weight_type == "linear":
        return {t: weight for t in range(L)}
    if weight_type == "style and composition":
        if sdxl:
            return {3: weight_composition, 6: weight}
        return {**{t: weight for t in (0, 1, 2, 3, 9, 10, 11, 12, 13, 14, 15)}, 4: weight_composition * 0.25,
                5: weight_composition}
    raise AssertionError(weight_type)


def _per_transformer(workflow, apply_ids, layout):
    routes = pack("nodes.host.routes")
    schedules = pack("nodes.core.schedules")
    sites = routes.layout_sites(layout)
    names = [name for name, _, _ in R.LIKENESS["LikenessApply"]["widgets"]]
    by_id = {n["id"]: n for n in workflow["nodes"]}
    sums = {s.key: 0.0 for s in sites}
    for i in apply_ids:
        v = dict(zip(names, by_id[i]["widgets_values"]))
        plan = schedules.site_plan(sites, v["weight"], v["weight_type"],
                                   schedules.Boosts(v["style_boost"], v["composition_boost"]),
                                   schedules.parse_layer_weights(v["layer_weights"]))
        for key, w in plan.weights.items():
            sums[key] += w
    return {s.transformer: sums[s.key] for s in sites if s.block != "middle"}, sites


def _new_apply_ids(before, after):
    old_ids = {n["id"] for n in before["nodes"]}
    return [n["id"] for n in after["nodes"] if n["type"] == "LikenessApply" and n["id"] not in old_ids]


@pytest.mark.parametrize("case", ["ease in", "style and composition"])
def test_per_site_weights_equal_the_leading_pack_formulas_sd15(case):
    original = graphs.advanced_and_simple()
    converted, summary = convert(original)
    applies = sorted(_new_apply_ids(original, converted))
    # the first Advanced (ease in, 0.8) became one Apply; the second (style and composition, 0.7) two
    ids = applies[:1] if case == "ease in" else applies[1:]
    weight = 0.8 if case == "ease in" else 0.7
    mine, _ = _per_transformer(converted, ids, "sd15")
    theirs = _cubiq_weights(case, weight, sdxl=False)
    for t, w in mine.items():
        assert w == pytest.approx(theirs.get(t, 0.0), abs=1e-6), (case, t)


def test_per_site_weights_of_layer_weights_and_style_composition_sdxl():
    original = graphs.style_composition()
    converted, summary = convert(original)
    applies = sorted(_new_apply_ids(original, converted))
    # Style & Composition (1.2 style, 0.9 composition) became two Applies on disjoint sites: their sum is the
    # leading pack's single "style and composition" patch
    mine, _ = _per_transformer(converted, applies[:2], "sdxl")
    theirs = _cubiq_weights("style and composition", 1.2, sdxl=True, weight_composition=0.9)
    for t, w in mine.items():
        assert w == pytest.approx(theirs.get(t, 0.0), abs=1e-6), t
    mine, _ = _per_transformer(converted, applies[-1:], "sdxl")  # Mad Scientist, 0.8 with "3:1.0, 6:0.35"
    theirs = _cubiq_weights("linear", 0.8, sdxl=True, layer_weights="3:1.0, 6:0.35")
    for t, w in mine.items():
        assert w == pytest.approx(theirs.get(t, 0.0), abs=1e-6), t


def test_widget_values_carry_over():
    original = graphs.faceid()
    converted, summary = convert(original)
    by_type = {}
    for n in converted["nodes"]:
        by_type.setdefault(n["type"], []).append(n)
    project = sorted(by_type["LikenessProject"], key=lambda n: n["id"])[0]
    assert project["widgets_values"][:2] == ["v2", 1.5]  # weight_faceidv2 of the 6-value FaceID node
    apply = sorted(by_type["LikenessApply"], key=lambda n: n["id"])
    assert apply[0]["widgets_values"][:6] == [0.9, "linear", 0.0, 1.0, "V only", 0.0]
    assert apply[1]["widgets_values"][9] is True  # the Batch variant unfolds
    embed = by_type["LikenessFaceEmbed"][0]
    assert embed["widgets_values"] == ["most confident", 0, "error", "224"]
    loader = by_type["LikenessFaceModelLoader"][0]
    assert loader["widgets_values"] == ["buffalo_l", "CPU"]


def test_faceid_negative_images_follow_the_leading_pack():
    """FaceID Plus: the negative image is CLIP-encoded into Project's negative (a zero identity with its features,
    as there); plain FaceID: left out, as there, and the summary says so."""
    original = graphs.faceid()
    converted, summary = convert(original)
    by_id = {n["id"]: n for n in converted["nodes"]}
    links = {k[0]: k for k in converted["links"]}

    def source(node, name):
        link = next(i["link"] for i in node["inputs"] if i["name"] == name)
        return by_id[links[link][1]]

    negative_image = next(n for n in original["nodes"] if n["type"] == "LoadImage"
                          and n["widgets_values"][0] == "likeness_subject_b.png")
    projects = sorted((n for n in converted["nodes"] if n["type"] == "LikenessProject"), key=lambda n: n["id"])
    encoded = source(projects[0], "negative")
    assert encoded["type"] == "LikenessImageEncode" and source(encoded, "image")["id"] == negative_image["id"]
    assert [n for n in projects[1:] if any(i["name"] == "negative" and i.get("link") for i in n["inputs"])] == []
    assert "FaceID (not Plus) and Portrait: the negative image was left out" in summary["text"]


def test_pass_through_nodes_are_read_through_and_kept_where_they_still_carry_something():
    original = graphs.reroutes()
    converted, summary = convert(original)
    assert not leading_types(converted) and not summary["kept"], summary["text"]
    passing = {n["id"]: n for n in converted["nodes"] if n["type"] in PASS_THROUGH}
    by_id = {n["id"]: n for n in converted["nodes"]}
    links = {k[0]: k for k in converted["links"]}
    old = {n["id"]: n for n in original["nodes"] if n["type"] in PASS_THROUGH}

    def carried(node):
        return node["outputs"][0]["type"] if node["type"] != "SetNode" else node["inputs"][0]["type"]

    # the IPADAPTER's Reroutes and Set / Get led only to converted nodes: gone; those on the MODEL's path stay,
    # typed MODEL, and feed the Likeness nodes that replaced their readers
    assert sorted(passing) == sorted(i for i, n in old.items() if carried(n) == "MODEL")
    assert all(carried(n) == "MODEL" for n in passing.values())
    for link in converted["links"]:
        if link[1] in passing:
            assert link[5] == "MODEL"
    into_sampler = next(i for i in passing if any(by_id[links[k][3]]["type"] == "KSampler"
                                                  for k in passing[i]["outputs"][0]["links"] or []))
    assert by_id[links[passing[into_sampler]["inputs"][0]["link"]][1]]["type"] == "LikenessApply"
    applies = sorted((n for n in converted["nodes"] if n["type"] == "LikenessApply"), key=lambda n: n["id"])

    def model_source(node):
        return by_id[links[next(i["link"] for i in node["inputs"] if i["name"] == "model")][1]]

    assert model_source(applies[0])["type"] == "Reroute (rgthree)"  # the checkpoint's, still on the path
    assert model_source(applies[-1])["type"] == "GetNode"  # the third Apply reads the second's MODEL via Set / Get
    setter = next(n for n in passing.values() if n["type"] == "SetNode")
    assert by_id[links[setter["inputs"][0]["link"]][1]]["id"] == applies[1]["id"]
    loaders = [n for n in converted["nodes"] if n["type"] == "LikenessAdapterLoader"]
    assert len(loaders) == 1 and len(loaders[0]["outputs"][0]["links"]) == 6  # 3 Projects, 3 Applies


def test_the_cli_writes_the_converted_file_and_prints_the_summary(tmp_path):
    source = tmp_path / "old.json"
    source.write_text(json.dumps(graphs.style_composition()))
    target = tmp_path / "new.json"
    run = subprocess.run([sys.executable, "-m", "nodes.migrate", str(source), str(target)], cwd=PACK,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "IPAdapterStyleComposition" in run.stdout and "middle block" in run.stdout
    written = json.loads(target.read_text())
    assert not leading_types(written)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    run = subprocess.run([sys.executable, "-m", "nodes.migrate", str(bad)], cwd=PACK, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1 and "Cannot convert" in run.stderr


def test_the_route_converts_and_refuses_hostile_input_with_400():
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    routes = pack("nodes.host.routes")

    async def ask(bodies):
        app, table = web.Application(), web.RouteTableDef()
        routes.add_routes(table)
        app.add_routes(table)
        async with TestClient(TestServer(app)) as client:
            out = []
            for body in bodies:
                response = await client.post("/likeness/migrate", data=body)
                out.append((response.status, await response.json()))
            return out

    nested = "[" * 100000 + "]" * 100000
    padded = {**graphs.style_composition(), "extra": {"pad": "x" * (routes.MAX_MIGRATE_BYTES // 2)}}
    answers = asyncio.run(ask([json.dumps({"workflow": graphs.style_composition()}).encode(),
                               json.dumps(_api(graphs.advanced_and_simple())).encode(),
                               b"not json", b"\xff\xfe", b'{"nodes": [], "links": [], "x": NaN}',
                               nested.encode(), b"[1, 2]", b'{"nodes": 3}',
                               b"x" * (routes.MAX_MIGRATE_BYTES + 10)]))
    big_status, big = asyncio.run(ask([json.dumps({"workflow": padded}).encode()]))[0]
    assert big_status == 200 and big["workflow"]["extra"]["pad"] == padded["extra"]["pad"]  # arrives in many chunks
    (ok, workflow), (ok_api, api) = answers[:2]
    assert ok == 200 and not leading_types(workflow["workflow"]) and "middle block" in workflow["summary"]["text"]
    assert ok_api == 200 and not [n for n in api["workflow"].values() if n["class_type"] in R.LAYOUTS]
    for status, answer in answers[2:]:
        assert status == 400 and answer["error"], answer


def test_the_migrated_examples_are_the_converters_output():
    import make_migrated_examples as examples

    for name, (make, text) in examples.EXAMPLES.items():
        shipped = json.loads((PACK / "workflows" / name).read_text())
        assert shipped == json.loads(json.dumps(examples.example(make, text, migrate.convert))), \
            f"{name} is stale: run python tests/make_migrated_examples.py"
        assert not overlaps(shipped), overlaps(shipped)
