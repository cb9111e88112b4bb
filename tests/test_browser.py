"""The frontend in a real browser: ComfyUI's server with the pack, driven by headless Chromium.

Starts `main.py --cpu` on 127.0.0.1 (a free port; tests/comfy_server.py) with the pack and the test loaders of
tests/browser/tiny_loaders as custom nodes, and tiny model files under the official names in temporary model
folders (the same ones tests/test_workflows.py executes). Then tests/browser/probe.mjs (playwright-core with
Debian's chromium), once with the classic canvas and once with the Vue node renderer ("Nodes 2.0"):

* loads every example workflow from the template route the template browser uses, and asserts no missing
  node types, no node errors, no dialogs, and no new console errors (errors already present before any
  workflow is loaded are a baseline of the bare frontend, but any error that mentions Likeness fails);
* checks the extension's widgets: the weight chart on Likeness Apply, the adapter info on the loader and the
  report panel on the identity checks;
* checks that the frontend's own UI -> API conversion (`graphToPrompt`) equals tests/test_workflows.py's;
* queues one workflow (model loaders swapped as in test_workflows), waits for success, and checks that every
  node that sent text (ui.PreviewText) shows it on the node, a node other than the checks included;
* saves screenshots under tests/artifacts/browser/.

Needs /usr/bin/chromium (or $LIKENESS_CHROMIUM), node, and `npm ci` in tests/browser; .ci/run installs them.
Without them the test fails and says what to install; it never skips silently.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
from pathlib import Path

import pytest

import test_workflows as tw
from comfy_server import comfy_server, get_json, post_json
import leading_pack_graphs
from conftest import PACK, pack
from test_workflows import one_torch_thread, workflow_models  # noqa: F401  (fixtures)

BROWSER_DIR = PACK / "tests" / "browser"
ARTIFACTS = PACK / "tests" / "artifacts" / "browser"
CHROMIUM = os.environ.get("LIKENESS_CHROMIUM", "/usr/bin/chromium")
RUN = "likeness_sd15_basic"
CHECKS = ("LikenessIdentityScore", "LikenessSubjectScore")


def _missing_tools() -> list[str]:
    missing = []
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install -y chromium, or set LIKENESS_CHROMIUM)")
    if shutil.which("node") is None:
        missing.append("node (apt-get install -y nodejs npm)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append(f"playwright-core (cd {BROWSER_DIR} && npm ci)")
    return missing


NEWER_FRONTEND = "1.58.1"  # the Vue node renderer shows extension widgets only on frontends newer than 1.27
NEWER_FRONTEND_ROOT = BROWSER_DIR / f"frontend-{NEWER_FRONTEND}" / "comfyui_frontend_package" / "static"


@pytest.fixture(scope="module", params=["pinned", NEWER_FRONTEND], ids=["frontend-pinned", f"frontend-{NEWER_FRONTEND}"])
def server(workflow_models, tmp_path_factory, request):
    missing = _missing_tools()
    if request.param != "pinned" and not (NEWER_FRONTEND_ROOT / "index.html").is_file():
        missing.append(f"comfyui-frontend-package {NEWER_FRONTEND} unpacked at {NEWER_FRONTEND_ROOT} "
                       "(.ci/setup-browser downloads it)")
    if missing:
        pytest.fail("the browser test needs: " + "; ".join(missing) + ". .ci/run installs them.", pytrace=False)
    folders = {k: workflow_models / k for k in (
        "ipadapter", "instantid", "pulid", "clip_vision", "checkpoints", "loras", "insightface", "controlnet",
        "facexlib", *dict.fromkeys(tw.SPLIT_FILE_FOLDERS.values()))}
    # the same server with a newer frontend build (ComfyUI's --front-end-root)
    extra = [] if request.param == "pinned" else ["--front-end-root", str(NEWER_FRONTEND_ROOT)]
    artifacts = ARTIFACTS / f"frontend-{request.param}"
    test_nodes = {"likeness_tiny_loaders": BROWSER_DIR / "tiny_loaders"}
    with comfy_server(tmp_path_factory.mktemp("browser"), folders, test_nodes, extra_args=extra,
                      keep_log=artifacts) as running:
        yield {"base": running.base, "module": running.module, "log": running.log, "start_s": running.start_s,
               "artifacts": artifacts}


_REPORTS: dict = {}  # (server, renderer) -> probe report: each renderer is driven once per server


def _probe(server, vue: bool) -> dict:
    if (server["base"], vue) not in _REPORTS:
        _REPORTS[(server["base"], vue)] = _run_probe(server, vue)
    return _REPORTS[(server["base"], vue)]


def _run_probe(server, vue: bool) -> dict:
    base = server["base"]
    post_json(base + "/api/settings/Comfy.TutorialCompleted", True)
    post_json(base + "/api/settings/Comfy.VueNodes.Enabled", vue)
    artifacts = server["artifacts"]
    artifacts.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LIKENESS_BASE=base, LIKENESS_MODULE=server["module"], LIKENESS_RUN=RUN,
               LIKENESS_WORKFLOWS=",".join(p.stem for p in tw.WORKFLOWS), LIKENESS_SWAPS=json.dumps(tw.SWAPS),
               LIKENESS_VUE="1" if vue else "0", LIKENESS_SHOTS=str(artifacts), LIKENESS_CHROMIUM=CHROMIUM,
               LIKENESS_MIGRATE=str(artifacts / "leading_pack_style_composition.json"))
    (artifacts / "leading_pack_style_composition.json").write_text(
        json.dumps(leading_pack_graphs.style_composition(reroutes=True)))
    done = subprocess.run(["node", "probe.mjs"], cwd=BROWSER_DIR, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"probe failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (artifacts / f"report-{report['mode']}.json").write_text(json.dumps(report, indent=1))
    return report


def _ours(errors: list[str]) -> list[str]:
    return [e for e in errors if "likeness" in e.lower()]


@pytest.mark.parametrize("vue", [False, True], ids=["classic", "vue-nodes"])
def test_workflows_load_and_run_in_the_browser(server, vue):
    report = _probe(server, vue)
    print(f"\n{report['mode']}: server up in {server['start_s']:.0f} s, timings {report['timings']}")
    assert report["extensionLoaded"] == [f"/extensions/{server['module']}/js/likeness.js"], report["extensionLoaded"]
    assert sorted(report["templates"].get(server["module"], [])) == sorted(p.stem for p in tw.WORKFLOWS)
    assert not _ours(report["baselineErrors"]), report["baselineErrors"]
    assert report["doubleLoad"] == 1 and not report["doubleLoadErrors"], (report["doubleLoad"], report["doubleLoadErrors"])
    version = tuple(int(x) for x in (report["frontendVersion"] or "0.0").split(".")[:2])
    # The Vue renderer shows DOM widgets only after frontend 1.27 (see web/js/likeness.js); the classic one always.
    panels_render = not vue or version > (1, 27)
    for name, result in report["workflows"].items():
        where = f"{report['mode']} / {name}"
        assert all(n["registered"] for n in result["nodes"]), f"{where}: missing nodes {result['nodes']}"
        assert not [n for n in result["nodes"] if n["hasErrors"]], f"{where}: node errors"
        assert not result["dialogs"], f"{where}: dialogs {result['dialogs']}"
        assert not result["errors"], f"{where}: new console errors {result['errors']}"
        workflow = json.loads((PACK / "workflows" / f"{name}.json").read_text())
        assert _comparable(result["prompt"]) == _comparable(tw.ui_to_prompt(workflow)), f"{where}: graphToPrompt differs"
        if result["follows"]:  # after weight_type -> composition, weight -> 0.5: only the layout blocks, at 0.5
            assert "composition" in result["follows"]["text"] and "max 0.50" in result["follows"]["text"], result["follows"]
            assert int(result["follows"]["active"]) < 16, result["follows"]
            layers = result["follows"]["layers"]  # layer_weights "0:1, 3:2" at weight 0.5: one site each on SD1.5
            assert "layer weights" in layers["text"] and "max 1.00" in layers["text"], layers
            assert int(layers["active"]) == 2, layers
        saved = result["saved"]  # what "Save" would write now: the shipped file must survive the round trip
        assert ([n.get("widgets_values", []) for n in saved["nodes"]]  # newer frontends omit empty lists
                == [n.get("widgets_values", []) for n in workflow["nodes"]]), where
        assert saved["links"] == workflow["links"], f"{where}: the frontend rewires the links"
        for node in result["nodes"]:
            if node["type"] in ("LikenessApply", "LikenessAdapterLoader") and panels_render:
                assert (node["chart"] or node["info"])["shown"], f"{where}: the panel is not visible on {node}"
            if node["type"] == "LikenessApply":
                assert node["chart"] and node["chart"]["active"] not in (None, "0"), f"{where}: chart {node}"
                assert node["chart"]["layout"] in ("sd15", "sdxl", "flux") and "guessed" not in node["chart"]["text"], node
            if node["type"] == "LikenessAdapterLoader":
                assert node["info"] and node["info"]["family"] and "needs" in node["info"]["text"], f"{where}: {node}"
            if node["type"] in CHECKS:
                assert node["report"] and "report appears here" in node["report"]["text"], f"{where}: {node}"
                assert result["reportShown"] or not panels_render, f"{where}: the report panel is not visible"
    assert report["workflows"][RUN]["follows"], "the chart-follows-widgets check did not run"
    run = report["run"]
    assert run["status"] == "success", f"{report['mode']}: queued {RUN}: {run}"
    assert any(o.get("images") for o in run["outputs"].values()), run["outputs"]
    assert not _ours(run["errors"]), run["errors"]
    # Every node that sent text (ui.PreviewText) shows it after the run, not only the checks.
    sent = {node_id: "\n".join(o["text"]) for node_id, o in run["outputs"].items() if o.get("text")}
    panels = {p["id"]: p for p in run["panels"]}
    assert {node_id: panels.get(node_id, {}).get("text") for node_id in sent} == sent, (sent, run["panels"], run.get("debug"))
    others = [panels[node_id] for node_id in sent if panels[node_id]["type"] not in CHECKS]
    assert others, f"{RUN}: no node other than a check sent text: {sent}"
    assert all(p["shown"] for p in others) or not panels_render, f"{report['mode']}: text not visible: {others}"


def _overlapping(boxes: list[dict]) -> list[tuple]:
    found = []
    for i, a in enumerate(boxes):
        ax, ay, aw, ah = a["box"]
        for b in boxes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append((a["id"], b["id"]))
    return found


def _group_problems(workflow: dict, boxes: list[dict]) -> list[str]:
    """A group holds the nodes whose position lies in it, whole; it cuts no other node and no other group."""
    problems = []
    groups = [(g.get("title", "?"), g["bounding"]) for g in workflow.get("groups") or []]
    pos = {str(n["id"]): n["pos"] for n in workflow["nodes"]}
    for i, (title, (gx, gy, gw, gh)) in enumerate(groups):
        for other, (ox, oy, ow, oh) in groups[i + 1:]:
            if gx < ox + ow and ox < gx + gw and gy < oy + oh and oy < gy + gh:
                problems.append(f"groups {title!r} and {other!r} overlap")
        for b in boxes:
            x, y, w, h = b["box"]
            px, py = pos[str(b["id"])][:2]
            member = gx <= px < gx + gw and gy <= py < gy + gh
            inside = gx <= x and x + w <= gx + gw and gy <= y and y + h <= gy + gh
            touches = x < gx + gw and gx < x + w and y < gy + gh and gy < y + h
            if (member and not inside) or (not member and touches):
                problems.append(f"node {b['id']} ({b.get('type')}) {'sticks out of' if member else 'cuts'} group {title!r}")
    return problems


def _drawn(boxes: dict) -> list[dict]:
    """Graph bounds, where the Vue renderer of frontend 1.27 left a node's size at 0 its DOM box (both in graph units)."""
    dom = {str(b["id"]): b["box"] for b in boxes["dom"]}
    return [b if (b["box"][2] > 0 and b["box"][3] > 0) or str(b["id"]) not in dom else {**b, "box": dom[str(b["id"])]}
            for b in boxes["graph"]]


def test_node_boxes_do_not_overlap_in_either_renderer(server):
    """Every example and the graph the menu command converts in the browser: no two node boxes overlap and groups
    hold their nodes whole, measured in the classic canvas and in the Vue renderer (graph bounds and DOM boxes).
    tests/relayout_examples.py moves the examples' nodes apart from the boxes these probes measured."""
    problems = {}
    for vue in (False, True):
        report = _probe(server, vue)
        migrate = report["migrate"]
        assert migrate["command"] == "Convert IPAdapter nodes to Likeness" and migrate["menu"] == ["Extensions", "Likeness"]
        assert migrate["summary"] and migrate["summary"]["converted"] and not migrate["summary"]["kept"], migrate
        assert all(n["registered"] and n["type"].startswith(("Likeness", "CLIP", "Checkpoint", "Load", "Empty",
                                                             "KSampler", "VAE", "Save", "Note", "Reroute"))
                   for n in migrate["nodes"]), migrate["nodes"]
        assert not _ours(migrate["errors"]), migrate["errors"]
        # the frontend queues what the converter meant: it reads through the kept Reroutes as the tests do
        converted, _ = pack("nodes.migrate").convert(leading_pack_graphs.style_composition(reroutes=True))
        assert any(n["type"] == "Reroute" for n in converted["nodes"])
        assert _comparable(migrate["prompt"]) == _comparable(tw.ui_to_prompt(converted)), "graphToPrompt differs"
        measured = {"converted in the browser": (migrate["boxes"], None)}
        measured.update({name: (result["boxes"], json.loads((PACK / "workflows" / f"{name}.json").read_text()))
                         for name, result in report["workflows"].items()})
        for name, (boxes, workflow) in measured.items():
            drawn = _drawn(boxes)
            found = [f"not drawn: {b['id']} ({b['type']})" for b in drawn if not (b["box"][2] > 0 and b["box"][3] > 0)]
            found += [f"overlap {pair}" for pair in _overlapping(drawn)]
            found += [f"DOM overlap {pair}" for pair in _overlapping(boxes["dom"])]
            found += _group_problems(workflow, drawn) if workflow else []
            if found:
                problems[f"{report['mode']} / {name}"] = found
    assert not problems, json.dumps(problems, indent=1)


def _comparable(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_routes_serve_the_backend_formulas(server):
    """The chart's numbers are core.schedules' own, for every weight type; the loader info reads the header."""
    from conftest import pack

    routes = pack("nodes.host.routes")
    for weight_type in pack("nodes.core.schedules").WEIGHT_TYPES:
        for layout in routes.LAYOUTS:
            query = urllib.parse.urlencode({"layout": layout, "weight": 0.8, "weight_type": weight_type})
            answer = get_json(f"{server['base']}/api/likeness/weights?{query}")
            assert answer == routes.weights_table(layout, 0.8, weight_type)
    table = routes.weights_table("sdxl", 0.8, "style transfer")
    active = {(s["block"], s["block_id"]) for s in table["sites"] if s["weight"]}
    assert len(table["sites"]) == 70 and active == {("output", 1)}
    info = get_json(server["base"] + "/api/likeness/adapter_info?name=ip-adapter-plus_sdxl_vit-h.safetensors")
    assert info["layout"] == "sdxl" and "70 cross-attention sites" in info["family"]  # a tiny SDXL-layout file
    missing = get_json(server["base"] + "/api/likeness/adapter_info?name=nope.safetensors")
    assert "not in the ipadapter folders" in missing["error"]
    with pytest.raises(urllib.error.HTTPError) as e:
        get_json(server["base"] + "/api/likeness/weights?weight_type=strongest")
    assert e.value.code == 400


def test_routes_are_added_once_and_need_no_server():
    """The pack may be imported twice (two folder names); the routes must be added once, and not at all
    when no server runs (as in these tests)."""
    from aiohttp import web

    from conftest import pack

    routes = pack("nodes.host.routes")
    routes.register()  # no PromptServer.instance in the test process: nothing happens

    class FakeServer:
        def __init__(self):
            self.routes = web.RouteTableDef()

    import server as comfy_server

    previous = getattr(comfy_server.PromptServer, "instance", None)
    comfy_server.PromptServer.instance = fake = FakeServer()
    try:
        routes.register()
        routes.register()
    finally:
        if previous is None:
            del comfy_server.PromptServer.instance
        else:
            comfy_server.PromptServer.instance = previous
    paths = sorted(r.path for r in fake.routes)
    assert paths == ["/likeness/adapter_info", "/likeness/migrate", "/likeness/weights"]
