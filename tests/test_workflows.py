"""Every example workflow in workflows/ is checked against the live node definitions and then executed.

Each `workflows/*.json` file (UI format, as the frontend saves it; new files are picked up by the glob) is

1. checked against the node classes ComfyUI loaded, this pack's included: node types, input names, link
   types on both ends, the number of widget values, combo values, numeric ranges and value types;
2. converted to an API prompt the way the frontend does it (`ui_to_prompt`; tests/test_browser.py checks
   this conversion against the frontend's own `graphToPrompt`);
3. executed through ComfyUI's real executor (`conftest.run_prompt`) on tiny models, and its SaveImage
   output is checked on disk.

What is swapped, and why. Only model-loading nodes whose real files are gigabytes are replaced, by the
test loaders of tests/browser/tiny_loaders (see that module for how the tiny models are built):

* `CheckpointLoaderSimple` -> `LikenessTestTinyCheckpoint`: tiny UNet, CLIP text model and VAE, same
  `ckpt_name` widget (the SDXL layout when the name contains "xl").
* `CLIPVisionLoader` -> `LikenessTestTinyCLIPVision`: a tiny CLIP vision model written under the
  official file name.
* `ControlNetLoader` -> `LikenessTestTinyControlNet`: a tiny SDXL ControlNet in InstantID's IdentityNet
  layout, written under the official file name and loaded with ComfyUI's own ControlNet loader; the real
  node cannot load a tiny diffusers-layout file (ComfyUI reads such a file's config from a table of
  published models), and the ControlNet must run on the latent pooled like the tiny UNet's.
* `UNETLoader`, `CLIPLoader`, `DualCLIPLoader`, `VAELoader` -> tiny FLUX.1 / Qwen-Image / OmniGen2
  diffusion models, their text encoders and VAEs, picked by the shipped file name or type.

Everything else runs exactly as shipped, with the shipped widget values: `LikenessAdapterLoader` loads
tiny adapters written under the official file names (layout, encoder feature and base model taken from
the variants table, sized for the tiny models; FaceID ones in the .bin layout with their LoRA; InstantID's
in models/instantid),
`LikenessFaceModelLoader` loads the synthetic insightface-compatible ONNX pack of tests/face_models.py
written under the shipped pack name, `LikenessIDEncoderLoader` a tiny EVA-CLIP and a random BiSeNet in
their published layouts (tests/pulid_models.py), `LoraLoaderModelOnly` loads a tiny LoRA under the shipped name,
`LoadImage` reads the example images shipped in workflows/inputs/, and CLIPTextEncode, KSampler (all
its steps), VAEDecode and SaveImage are the real nodes. The tiny files live in folders of their own,
searched first while this module runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import PIL.Image
import pytest
import torch

import builders
import face_models
import folder_paths
import pulid_models
import nodes
from conftest import PACK, pack, run_prompt, tiny_loaders

WORKFLOWS = sorted((PACK / "workflows").glob("*.json"))
# The frontend queues none of these: Notes, and the pass-through nodes it reads through (the Reroute, rgthree's,
# KJNodes' Set / Get pairs)
PASS_THROUGH = {"Reroute", "Reroute (rgthree)", "SetNode", "GetNode"}
UI_ONLY = {"Note", "MarkdownNote", *PASS_THROUGH}


def through_reroutes(link: list, links: dict, by_id: dict) -> list:
    """The link feeding a chain of pass-through nodes that ends in `link`, as the frontend resolves it."""
    while by_id.get(link[1], {}).get("type") in PASS_THROUGH:
        node = by_id[link[1]]
        if node["type"] == "GetNode":
            node = next(n for n in by_id.values()
                        if n["type"] == "SetNode" and n["widgets_values"][0] == node["widgets_values"][0])
        upstream = (node.get("inputs") or [{}])[0].get("link")
        if upstream is None:
            break
        link = links[upstream]
    return link


WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


SWAPS = dict(tiny_loaders.SWAPS)


# ---------------------------------------------------------------- node definitions

def input_specs(class_type: str) -> dict[str, tuple[str, object, dict]]:
    """name -> (type, combo options or None, options dict), required then optional, in definition order."""
    defs = nodes.NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        for name, spec in (defs.get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(typ, (list, tuple)):
                out[name] = ("COMBO", list(typ), opts)
            elif typ == "COMBO":
                out[name] = ("COMBO", list(opts.get("options", [])), opts)
            else:
                out[name] = (typ, None, opts)
    return out


def is_widget(spec) -> bool:
    typ, _, opts = spec
    return typ in WIDGET_TYPES and not opts.get("forceInput")


def extra_values(name: str, spec) -> int:
    """Values the frontend saves after a widget's own: the seed control and the image upload button."""
    typ, _, opts = spec
    control = opts.get("control_after_generate", typ == "INT" and name in ("seed", "noise_seed"))
    return int(bool(control)) + int(bool(opts.get("image_upload")))


def widget_layout(class_type: str) -> list[tuple[str, int]]:
    """(input name, extra values) for each widget, in widgets_values order."""
    return [(name, extra_values(name, spec)) for name, spec in input_specs(class_type).items() if is_widget(spec)]


def return_types(class_type: str) -> list[str]:
    return list(nodes.NODE_CLASS_MAPPINGS[class_type].RETURN_TYPES)


# ---------------------------------------------------------------- UI format -> prompt

def widget_values(node: dict) -> dict[str, object]:
    values = list(node.get("widgets_values") or [])
    out, i = {}, 0
    for name, extra in widget_layout(node["type"]):
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1 + extra
    return out


def ui_to_prompt(workflow: dict) -> dict:
    """The API prompt the frontend queues for a UI-format workflow (plain nodes, no groups or bypass)."""
    links = {link[0]: link for link in workflow["links"]}
    by_id = {n["id"]: n for n in workflow["nodes"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in UI_ONLY:
            continue
        assert node.get("mode", 0) == 0, f"node {node['id']} is muted or bypassed; ship examples without that"
        inputs = widget_values(node)
        for slot in node.get("inputs") or []:
            if slot.get("link") is not None:
                _, origin, origin_slot, *_ = through_reroutes(links[slot["link"]], links, by_id)
                inputs[slot["name"]] = [str(origin), origin_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or node["type"]}}
    return prompt


# ---------------------------------------------------------------- checks against the definitions

def problems_in(workflow: dict) -> list[str]:
    """Every way the file disagrees with the loaded node definitions (empty when it is valid)."""
    out = []
    by_id = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    if workflow.get("version") != 0.4:
        out.append(f"version is {workflow.get('version')!r}; the frontend saves 0.4")
    if max(by_id) > workflow.get("last_node_id", 0) or (links and max(links) > workflow.get("last_link_id", 0)):
        out.append("last_node_id / last_link_id are smaller than the ids in use")
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in UI_ONLY:
            continue
        if node["type"] not in nodes.NODE_CLASS_MAPPINGS:
            out.append(f"{where}: no such node type")
            continue
        specs = input_specs(node["type"])
        layout = widget_layout(node["type"])
        expected = sum(1 + extra for _, extra in layout)
        if len(node.get("widgets_values") or []) != expected:
            out.append(f"{where}: {len(node.get('widgets_values') or [])} widget values, the node has {expected} "
                       f"({', '.join(name for name, _ in layout)})")
        for name, value in widget_values(node).items():
            out += [f"{where}: {p}" for p in value_problems(name, specs[name], value)]
        linked = set()
        for slot_index, slot in enumerate(node.get("inputs") or []):
            name = slot["name"]
            if name == "upload" and slot.get("link") is None and any(o.get("image_upload") for _, _, o in specs.values()):
                continue  # the frontend's upload button, saved as a widget input next to the file combo
            if name not in specs:
                out.append(f"{where}: input `{name}` does not exist (inputs: {', '.join(specs)})")
                continue
            if slot.get("link") is None:
                continue
            linked.add(name)
            link = links.get(slot["link"])
            if link is None:
                out.append(f"{where}: input `{name}` names link {slot['link']}, which is not in `links`")
                continue
            _, origin, origin_slot, target, target_slot, link_type = link
            if (target, target_slot) != (node["id"], slot_index):
                out.append(f"{where}: link {link[0]} ends at {target}:{target_slot}, the node says {node['id']}:{slot_index}")
            _, origin, origin_slot, *_ = through_reroutes(link, links, by_id)
            src = by_id.get(origin)
            if src is None or src["type"] not in nodes.NODE_CLASS_MAPPINGS:
                out.append(f"{where}: input `{name}` comes from a missing node {origin}")
                continue
            produced = return_types(src["type"])
            if origin_slot >= len(produced):
                out.append(f"{where}: `{name}` reads output {origin_slot} of {src['type']}, which has {len(produced)}")
                continue
            wanted = specs[name][0]
            if not (produced[origin_slot] == wanted == link_type or "*" in (wanted, produced[origin_slot])):
                out.append(f"{where}: `{name}` wants {wanted}; link {link[0]} carries {link_type} from "
                           f"{src['type']} output {origin_slot} ({produced[origin_slot]})")
        for name, spec in input_specs(node["type"]).items():
            required = name in (nodes.NODE_CLASS_MAPPINGS[node["type"]].INPUT_TYPES().get("required") or {})
            if required and not is_widget(spec) and name not in linked:
                out.append(f"{where}: required input `{name}` ({spec[0]}) is not connected")
        produced = return_types(node["type"])
        for i, slot in enumerate(node.get("outputs") or []):
            if i >= len(produced) or slot["type"] != produced[i]:
                out.append(f"{where}: output {i} is saved as {slot['type']}, the node returns {produced}")
    return out


def value_problems(name: str, spec, value) -> list[str]:
    typ, options, opts = spec
    if typ == "COMBO":
        return [] if value in options else [f"`{name}` = {value!r} is not one of {options[:12]}"]
    if typ == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"`{name}` = {value!r} is not a boolean"]
    if typ == "STRING":
        return [] if isinstance(value, str) else [f"`{name}` = {value!r} is not a string"]
    if typ in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (typ == "INT" and value != int(value)):
            return [f"`{name}` = {value!r} is not {typ}"]
        lo, hi = opts.get("min"), opts.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return [f"`{name}` = {value} is outside {lo} .. {hi}"]
    return []


# ---------------------------------------------------------------- tiny model files under the shipped names

def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _file_widgets(workflows, class_type: str, input_name: str) -> set[str]:
    return {widget_values(n)[input_name] for wf in workflows for n in wf["nodes"] if n["type"] == class_type}


# Model-file widgets of the split loaders (diffusion model, text encoders, VAE) and the folder each lists.
SPLIT_FILE_FOLDERS = {("UNETLoader", "unet_name"): "diffusion_models", ("CLIPLoader", "clip_name"): "text_encoders",
                      ("DualCLIPLoader", "clip_name1"): "text_encoders",
                      ("DualCLIPLoader", "clip_name2"): "text_encoders", ("VAELoader", "vae_name"): "vae"}
TINY_ENCODERS = {1280: dict(hidden=64, projection=32), 1664: dict(hidden=96, projection=48)}  # by real hidden width


def adapter_folder(name: str) -> str:
    """The model folder the variants table names for an official adapter file (ipadapter, instantid, pulid): where
    the workflows' loaders say it goes, so the frontend's missing-model check finds it there."""
    return next(v for v in pack("nodes.core.variants").VARIANTS if name in v.files).folder


def write_tiny_adapter(folder: Path, name: str) -> None:
    """A tiny adapter in the official file's layout (same projection kind, encoder feature and base model, tensors
    stored in the published file's precision)."""
    variants = pack("nodes.core.variants")
    variant = next(v for v in variants.VARIANTS if name in v.files)
    if variant.pulid:  # the published PuLID naming, sized for the tiny SDXL / FLUX and the tiny EVA-CLIP
        if variant.family == variants.FLUX:
            state = builders.tiny_pulid_state("flux", seed=len(name))
        else:
            kind = "v1" if variant.layout is variants.Layout.PULID_ENCODER else "v1.1"
            widths = [s.width for s in pack("nodes.host.sites").find_sites(tiny_loaders.tiny_model("sdxl"))]
            state = builders.tiny_pulid_state(kind, widths=widths, seed=len(name))
        if name.endswith(".bin"):
            torch.save(state, folder / name)
        else:
            builders.save_safetensors(str(folder / name), state)
        return
    kind = "sdxl" if variant.family == "SDXL" else "sd15"
    widths = [s.width for s in pack("nodes.host.sites").find_sites(tiny_loaders.tiny_model(kind))]
    if variant.faceid:
        layout = {variants.Layout.FACEID_PLUS: "plus", variants.Layout.RESAMPLER: "portrait-unnorm",
                  variants.Layout.FACEID_MLP: "faceid" if variant.tokens == 4 else "portrait"}[variant.layout]
        state = face_models.tiny_faceid_state(layout, widths, clip_width=TINY_ENCODERS[1280]["hidden"], seed=len(name))
        if variant.stored_dtypes:  # what tells apart published files of one layout
            dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
            state = {k: v.to(dtypes[variant.stored_dtypes[0 if k.startswith("image_proj.") else 1]])
                     for k, v in state.items()}
        if name.endswith(".bin"):  # the official .bin layout: {"image_proj": {...}, "ip_adapter": {...}}
            nested = {}
            for key, value in state.items():
                group, rest = key.split(".", 1)
                nested.setdefault(group, {})[rest] = value
            torch.save(nested, folder / name)
        else:
            builders.save_safetensors(str(folder / name), state)
        return
    encoder = variants.encoder_by_width(variant.input_width, variant.feature)
    tiny = TINY_ENCODERS[encoder.hidden_width]
    layout = {variants.Layout.LINEAR: "linear", variants.Layout.RESAMPLER: "resampler",
              variants.Layout.MLP_PER_TOKEN: "full"}[variant.layout]
    width = tiny["projection"] if variant.feature is variants.Feature.IMAGE_EMBEDS else tiny["hidden"]
    state = builders.tiny_adapter_state(layout, widths, input_width=width,
                                        tokens=variant.tokens if layout != "full" else 4, seed=len(name))
    builders.save_safetensors(str(folder / name), state)


def write_tiny_lora(path: Path, kind: str, rank: int = 4) -> None:
    """A LoRA in ComfyUI's generic key format for every attention projection of the tiny UNet."""
    gen = torch.Generator().manual_seed(7)
    state = {}
    for key, weight in tiny_loaders.tiny_model(kind).model.state_dict().items():
        if ".attn" in key and key.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight")):
            base = key[:-len(".weight")]
            state[base + ".lora_up.weight"] = 0.05 * torch.randn(weight.shape[0], rank, generator=gen)
            state[base + ".lora_down.weight"] = 0.05 * torch.randn(rank, weight.shape[1], generator=gen)
    builders.save_safetensors(str(path), state)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: thread hand-offs cost more than the maths (50 s -> 4 s a run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workflow_models(models_dir, tmp_path_factory):
    """Tiny stand-ins under every file name the workflows use, and the example images in the input folder."""
    workflows = [_load(p) for p in WORKFLOWS]
    extra = tmp_path_factory.mktemp("workflow_models")
    stack = contextlib.ExitStack()  # every folder registered here comes first, and is unregistered after the module
    for folder in dict.fromkeys(("ipadapter", "instantid", "pulid", "clip_vision", "checkpoints", "loras",
                                 "insightface", "controlnet", "facexlib", *SPLIT_FILE_FOLDERS.values())):
        (extra / folder).mkdir()
        stack.enter_context(face_models.model_folder(folder, str(extra / folder), first=True))
    for name in _file_widgets(workflows, "CLIPVisionLoader", "clip_name"):
        hidden = 1664 if "bigG" in name else 1280
        builders.write_tiny_clip_vision(str(extra / "clip_vision"), Path(name).stem, seed=hidden,
                                        **TINY_ENCODERS[hidden])
    for name in _file_widgets(workflows, "LikenessAdapterLoader", "adapter_name"):
        write_tiny_adapter(extra / adapter_folder(name), name)
    for name in _file_widgets(workflows, "ControlNetLoader", "control_net_name"):
        # InstantID's IdentityNet, for the tiny SDXL, in its published diffusers layout
        builders.save_safetensors(str(extra / "controlnet" / name), builders.tiny_identitynet_state())
    for name in _file_widgets(workflows, "CheckpointLoaderSimple", "ckpt_name"):
        (extra / "checkpoints" / name).write_bytes(b"")  # listed for the combo; the tiny loader builds the model
    for (class_type, widget), folder in SPLIT_FILE_FOLDERS.items():
        for name in _file_widgets(workflows, class_type, widget):
            (extra / folder / name).write_bytes(b"")  # the same: the tiny loaders pick a model by this name
    for name in _file_widgets(workflows, "LikenessIDEncoderLoader", "clip_name"):
        pulid_models.write_tiny_eva(str(extra / "clip_vision"), name)  # EVA-CLIP's layout, tiny widths
    for name in _file_widgets(workflows, "LikenessIDEncoderLoader", "parsing_model"):
        pulid_models.write_parsing(str(extra / "facexlib"), name)  # BiSeNet, random weights
    for wf in workflows:
        ckpts = _file_widgets([wf], "CheckpointLoaderSimple", "ckpt_name")
        for name in _file_widgets([wf], "LoraLoaderModelOnly", "lora_name"):
            write_tiny_lora(extra / "loras" / name, tiny_loaders.kind_for(next(iter(ckpts))))
    for name in _file_widgets(workflows, "LikenessFaceModelLoader", "model_pack"):
        face_models.write_pack(str(extra / "insightface" / "models" / name),  # synthetic ONNX models (see there)
                               style=name if name in face_models.PACK_FILES else "buffalo_l")
    inputs = tmp_path_factory.mktemp("input")
    for image in (PACK / "workflows" / "inputs").rglob("*.png"):  # subfolders: Load Image Dataset from Folder
        target = inputs / image.relative_to(PACK / "workflows" / "inputs")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    previous = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    folder_paths.set_input_directory(str(inputs))
    folder_paths.set_output_directory(str(tmp_path_factory.mktemp("workflow_output")))  # others check theirs
    for path in WORKFLOWS:  # "save then load": the load examples name the file the save examples write first
        if any(n["type"] == "LikenessSaveReferences" for n in _load(path)["nodes"]):
            result = run_prompt(test_prompt(_load(path)))
            assert result.success, f"{path.name}: {result.error or result.execution_error()}"
    yield extra
    folder_paths.set_input_directory(previous[0])
    folder_paths.set_output_directory(previous[1])
    stack.close()


def test_prompt(workflow: dict) -> dict:
    """The workflow's prompt with only the model loaders of SWAPS replaced."""
    prompt = ui_to_prompt(workflow)
    for node in prompt.values():
        node["class_type"] = SWAPS.get(node["class_type"], node["class_type"])
    return prompt


test_prompt.__test__ = False


# ---------------------------------------------------------------- the tests

def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 6, [p.name for p in WORKFLOWS]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_matches_the_live_node_definitions(path, workflow_models):
    workflow = _load(path)
    problems = problems_in(workflow)
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_documented_and_uses_official_files(path):
    workflow = _load(path)
    notes = [n for n in workflow["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and all(len(n["widgets_values"][0]) > 80 for n in notes), "each workflow needs a Note saying what to change"
    readme = (PACK / "README.md").read_text()
    for node in workflow["nodes"]:
        if node["type"].startswith("Likeness"):
            assert node["properties"].get("cnr_id") == "comfyui-likeness", f"node {node['id']}: cnr_id"
        for model in node["properties"].get("models", []):
            assert model["name"] in node["widgets_values"], f"node {node['id']}: {model['name']} not in its widgets"
            assert model["url"].startswith("https://huggingface.co/"), model["url"]
            assert model["name"] in readme, f"{model['name']} is not named in README.md"
    for name in _file_widgets([workflow], "LoadImage", "image"):
        assert (PACK / "workflows" / "inputs" / name).is_file(), f"{name} is not shipped in workflows/inputs/"
    for name in _file_widgets([workflow], "LoadImageSetFromFolderNode", "folder"):
        assert list((PACK / "workflows" / "inputs" / name).glob("*.png")), f"workflows/inputs/{name}/ has no images"


GATES = {"LikenessIdentityScore": 2, "LikenessSubjectScore": 2}  # node type -> its `passed` output


def gate_before(prompt: dict, node_id: str) -> str | None:
    """The score node whose `passed` output feeds `node_id`, directly or through other nodes, if any."""
    seen, todo = set(), [node_id]
    while todo:
        for value in prompt[todo.pop()]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and value[0] in prompt and value[0] not in seen:
                source, slot = value
                if GATES.get(prompt[source]["class_type"]) == slot:
                    return source
                seen.add(source)
                todo.append(source)
    return None


@pytest.mark.filterwarnings("error:invalid value encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_runs_end_to_end(path, workflow_models):
    prompt = test_prompt(_load(path))
    saves = {k: v["inputs"]["filename_prefix"] for k, v in prompt.items() if v["class_type"] == "SaveImage"}
    outputs_nodes = [k for k, v in prompt.items() if getattr(nodes.NODE_CLASS_MAPPINGS[v["class_type"]], "OUTPUT_NODE", False)]
    assert outputs_nodes, "the workflow has no output node"
    result = run_prompt(prompt)
    assert result.valid, f"{path.name}: {result.error} {result.node_errors}"
    assert result.success, f"{path.name}: {result.execution_error()}"
    outputs = result.executor.history_result["outputs"]
    for node_id, prefix in saves.items():
        gate = gate_before(prompt, node_id)
        if gate is not None and node_id not in outputs:
            # Tiny models draw no face: the identity check blocked the save, and its report must say so.
            assert "No image passed" in " ".join(outputs[gate]["text"]), f"{node_id} did not run: {outputs[gate]}"
            continue
        images = outputs[node_id]["images"]
        assert images, f"SaveImage {node_id} saved nothing"
        for image in images:
            file = Path(folder_paths.get_output_directory()) / image["subfolder"] / image["filename"]
            assert file.is_file() and image["filename"].startswith(os.path.basename(prefix)), file
            with PIL.Image.open(file) as png:
                lo, hi = png.convert("L").getextrema()
                assert hi > lo, f"{file.name} is one flat colour (NaN in the run?)"


def test_templates_are_served_from_the_workflows_folder(tmp_path):
    """ComfyUI's template browser lists packs' `workflows/` folders (as well as `example_workflows/`)."""
    from aiohttp import web

    from app.custom_node_manager import CustomNodeManager

    app, routes = web.Application(), web.RouteTableDef()
    CustomNodeManager().add_routes(routes, app, [("comfyui-likeness", str(PACK))])
    served = {r.get_info().get("prefix"): r.get_info().get("directory") for r in app.router.resources()}
    assert Path(served["/api/workflow_templates/comfyui-likeness"]) == PACK / "workflows"


def test_the_checks_catch_broken_workflows(workflow_models):
    workflow = _load(PACK / "workflows" / "likeness_sd15_basic.json")
    apply = next(n for n in workflow["nodes"] if n["type"] == "LikenessApply")
    apply["widgets_values"][0] = 9.0
    apply["widgets_values"][1] = "strongest"
    apply["inputs"][0]["name"] = "unet"
    link = next(link for link in workflow["links"] if link[3] == apply["id"] and link[5] == "LIKENESS_TOKENS")
    link[5] = "LATENT"
    workflow["nodes"].append(dict(apply, id=99, type="LikenessApplyTurbo"))
    found = "\n".join(problems_in(workflow))
    for expected in ("`weight` = 9.0 is outside -1.0 .. 5.0", "`weight_type` = 'strongest' is not one of",
                     "input `unet` does not exist", "carries LATENT", "LikenessApplyTurbo): no such node type",
                     "required input `model` (MODEL) is not connected"):
        assert expected in found, found


def test_every_node_has_a_help_page_that_covers_its_inputs_and_tooltips():
    """web/docs/<NodeId>.md (shown by ComfyUI's node help panel) names every input; every input has a tooltip."""
    from conftest import LIKENESS_NODES

    problems = []
    for node_id in LIKENESS_NODES:
        if node_id.startswith("LikenessTest"):
            continue
        page = PACK / "web" / "docs" / f"{node_id}.md"
        text = page.read_text() if page.is_file() else ""
        if not text:
            problems.append(f"{node_id}: no web/docs/{node_id}.md")
        for name, (_, _, opts) in input_specs(node_id).items():
            numbered = re.fullmatch(r"(.+_)\d+", name)  # references_1 ... references_12: one row for the family
            if text and f"`{name}`" not in text and not (numbered and f"`{numbered.group(1)}" in text):
                problems.append(f"{node_id}: the help page does not mention input `{name}`")
            if not opts.get("tooltip"):
                problems.append(f"{node_id}: input `{name}` has no tooltip")
    assert not problems, "\n".join(problems)


def feed_photos(prompt: dict, node_id: str, photos: list[str]) -> None:
    """Replace the `images` input of `node_id` with a batch of shipped photos."""
    last = None
    for i, name in enumerate(photos):
        prompt[f"feed{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        if last is not None:
            prompt[f"join{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": last, "image2": [f"feed{i}", 0]}}
        last = [f"join{i}" if last is not None else f"feed{i}", 0]
    prompt[node_id]["inputs"]["images"] = last


def check_run(prompt: dict, score: str):
    result = run_prompt(prompt)
    assert result.success, result.execution_error()
    outputs = result.executor.history_result["outputs"]
    report = " ".join(outputs[score]["text"])
    saved = [k for k, v in prompt.items() if v["class_type"] == "SaveImage" and gate_before(prompt, k) == score]
    assert saved and all(k in outputs for k in saved), report
    return report, sum(len(outputs[k]["images"]) for k in saved)


@pytest.mark.parametrize("name, photos", [
    ("likeness_identity_check_faceid", ["likeness_face_1.png", "likeness_face_2.png"]),
    ("likeness_subject_check_product", ["likeness_product_1.png", "likeness_product_3.png"]),
    ("likeness_instantid_identity_check", ["likeness_face_1.png", "likeness_face_3.png"]),
    # The edit-model examples score against the candidates' faces; the merge would drop other people, and the test
    # recogniser sees all 8 candidates as one person.
    ("likeness_kontext_reference_pack", ["likeness_candidates/candidate_2.png", "likeness_candidates/candidate_5.png"]),
    ("likeness_qwen_edit_reference_pack", ["likeness_candidates/candidate_3.png", "likeness_candidates/candidate_6.png"]),
])
def test_check_workflows_save_the_images_that_pass(name, photos, workflow_models):
    """The tiny models draw no face, so above the checks block their saves. Given the reference photos instead of
    the generated images, the same workflows pass them, save them and preview the best."""
    prompt = test_prompt(_load(PACK / "workflows" / f"{name}.json"))
    score = next(k for k, v in prompt.items() if v["class_type"] in GATES)
    feed_photos(prompt, score, photos)
    report, saved = check_run(prompt, score)
    assert saved == len(photos), report
    if name.endswith("reference_pack"):
        assert "Person 1 (references): 8 references" in report, report


def test_two_people_workflow_assigns_each_face_to_its_person(workflow_models, tmp_path):
    """The two-person check with photos a recogniser can tell apart: the suite's colour-pattern people
    (tests/face_models.py) and a pack whose recogniser sees them as different people, under the shipped pack
    name. The placeholder photos are swapped for them in the Load Image nodes, as a user loads their own."""
    face_models.write_pack(str(tmp_path / "models" / "buffalo_l"), colour_only=True)
    inputs = Path(folder_paths.get_input_directory())
    people = {"check_person_1.png": face_models.person_face(faces=((320, 224, face_models.photo_pattern(0, 0)),)),
              "check_person_2.png": face_models.person_face(faces=((320, 224, face_models.photo_pattern(1, 0)),)),
              "check_pair.png": face_models.person_face(faces=((160, 224, face_models.photo_pattern(0, 1)),
                                                               (480, 224, face_models.photo_pattern(1, 1))))}
    for file, rgb in people.items():
        PIL.Image.fromarray(rgb).save(inputs / file)
    prompt = test_prompt(_load(PACK / "workflows" / "likeness_identity_check_two_people.json"))
    for node in prompt.values():
        title = node["_meta"]["title"]
        if node["class_type"] == "LoadImage" and title.startswith("Person "):
            node["inputs"]["image"] = f"check_person_{title[7]}.png"
    score = next(k for k, v in prompt.items() if v["class_type"] in GATES)
    feed_photos(prompt, score, ["check_pair.png"])
    with face_models.model_folder("insightface", str(tmp_path), first=True):
        report, saved = check_run(prompt, score)
    assert saved == 1, report
    assert "Face 1 (x 99-221) -> person 1" in report and "Face 2 (x 419-541) -> person 2" in report, report
    assert "SWAP" not in report and "BLEND" not in report, report
