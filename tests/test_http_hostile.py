"""Hostile and broken input through ComfyUI's real server, as a client on the network would send it.

One server for the whole file (tests/comfy_server.py: `main.py --cpu` on 127.0.0.1) with the pack, the test
loaders and the probe nodes of tests/probe_nodes, and its own model, input and output folders holding good tiny
models next to broken and malicious ones. Then:

* every widget of every Likeness node, read from `/object_info` (so nodes and inputs added later are covered
  without touching this file), gets values it must refuse: combo values outside the list (path escapes,
  absolute paths, files uploaded through `/upload/image`), NaN, infinities, out-of-range and non-numeric numbers,
  NUL and oversized text. Each is a 400 from `POST /prompt` whose message names the input;
* every file-name input answers path tricks with one message that reveals nothing about the disk;
* broken files (NaN weights, corrupt safetensors headers, a Git LFS pointer, broken or foreign LoRA files, a
  face model with NaN outputs, NaN or junk references files) end the run with a Likeness error in the history
  that names the file;
* the pack's routes answer strict JSON (finite numbers), never a 500;
* a good workflow still runs afterwards, and nothing outside the output folder changed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import torch

import builders
import face_models as fm
import test_workflows as tw
from comfy_server import comfy_server, get_json, request
from conftest import COMFYUI, PACK, pack, tiny_loaders
from test_broken_files import LFS_TEXT, write_header
from test_faceid_end_to_end import kohya_lora

errors = pack("nodes.core.errors")
adapter_mod = pack("nodes.core.adapter")
references = pack("nodes.core.references")
references_io = pack("nodes.core.references_io")
sites_mod = pack("nodes.host.sites")

GOOD_WORKFLOW = PACK / "workflows" / "likeness_sd15_basic.json"
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOADED = "evilpack"  # a folder of .onnx files uploaded through /upload/image into input/


def likeness_error_names() -> set[str]:
    found, todo = set(), [errors.LikenessError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo += cls.__subclasses__()
    return found


# ---------------------------------------------------------------- the server and its folders

def _faceid_adapter(folder: Path, name: str, kind: str, lora: bool, seed: int):
    widths = [s.width for s in sites_mod.find_sites(tiny_loaders.tiny_model(kind))]
    state = fm.tiny_faceid_state("faceid", widths, clip_width=tw.TINY_ENCODERS[1280]["hidden"], seed=seed, lora=lora)
    return builders.save_safetensors(str(folder / name), state)


def _write_models(root: Path) -> dict[str, Path]:
    folders = {k: root / "models" / k for k in ("ipadapter", "clip_vision", "checkpoints", "loras", "insightface")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    ipadapter, loras = folders["ipadapter"], folders["loras"]
    # what the good workflow needs
    tw.write_tiny_adapter(ipadapter, "ip-adapter_sd15.safetensors")
    builders.write_tiny_clip_vision(str(folders["clip_vision"]), "CLIP-ViT-H-14-laion2B-s32B-b79K", seed=1280,
                                    **tw.TINY_ENCODERS[1280])
    (folders["checkpoints"] / "v1-5-pruned-emaonly.safetensors").write_bytes(b"")
    fm.write_pack(str(folders["insightface"] / "models" / "synth_l"))
    # broken adapters
    state = tiny_adapter_state()
    state["ip_adapter.1.to_k_ip.weight"][0, 0] = math.nan
    builders.save_safetensors(str(ipadapter / "nan-weights.safetensors"), state)
    write_header(ipadapter / "no-offsets.safetensors", {"ip_adapter.1.to_k_ip.weight": {"dtype": "F16", "shape": [4]}})
    write_header(ipadapter / "entry-not-dict.safetensors", {"ip_adapter.1.to_k_ip.weight": [0, 8]}, b"\0" * 8)
    (ipadapter / "ip-adapter-faceid_sd15.bin").write_text(LFS_TEXT)
    # FaceID adapters without LoRA tensors, whose LoRA file in loras/ is broken or made for the other model
    _faceid_adapter(ipadapter, "faceid-broken_sd15.safetensors", "sd15", lora=False, seed=1)
    (loras / "faceid-broken_sd15_lora.safetensors").write_bytes(b"\x20" + b"\0" * 7 + b"not json at all" * 4)
    _faceid_adapter(ipadapter, "faceid-foreign_sd15.safetensors", "sd15", lora=False, seed=2)
    sdxl = adapter_mod.load_adapter(_faceid_adapter(root, "sdxl-with-lora.safetensors", "sdxl", lora=True, seed=3))
    builders.save_safetensors(str(loras / "faceid-foreign_sd15_lora.safetensors"),
                              kohya_lora(tiny_loaders.tiny_model("sdxl"), sdxl))
    # a face model pack whose recogniser gives NaN
    fm.write_pack(str(folders["insightface"] / "models" / "nan_pack"))
    fm.poison(str(folders["insightface"] / "models" / "nan_pack" / "w600k_r50.onnx"))
    # models kept on another disk, linked into the model folders by the user: these are followed
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    tw.write_tiny_adapter(elsewhere, "ip-adapter_sd15.safetensors")
    (ipadapter / "linked.safetensors").symlink_to(elsewhere / "ip-adapter_sd15.safetensors")
    fm.write_pack(str(elsewhere / "pack"))
    (folders["insightface"] / "models" / "linked_pack").symlink_to(elsewhere / "pack", target_is_directory=True)
    return folders


def tiny_adapter_state():
    widths = [s.width for s in sites_mod.find_sites(tiny_loaders.tiny_model("sd15"))]
    return builders.tiny_adapter_state("linear", widths, input_width=tw.TINY_ENCODERS[1280]["projection"], tokens=4)


def _write_inputs(folder: Path) -> None:
    folder.mkdir()
    for image in (PACK / "workflows" / "inputs").glob("*.png"):
        shutil.copy(image, folder / image.name)
    enc = references.EncoderInfo.from_widths(8, 4)
    refs = references.References.from_images(enc, torch.zeros(2, 4), torch.zeros(2, 3, 8), torch.zeros(1, 3, 8))
    tensors, meta = references_io.to_tensors_and_metadata(refs)
    tensors["image.penultimate"][1, 0, 0] = math.nan
    import safetensors.torch

    safetensors.torch.save_file(tensors, str(folder / "nan_refs.safetensors"), metadata=meta)


def upload(base: str, name: str, data: bytes, subfolder: str = "") -> tuple[int, str]:
    """POST /upload/image as the frontend does (multipart form)."""
    boundary = uuid.uuid4().hex
    parts = []
    for field, value in (("subfolder", subfolder), ("type", "input"), ("overwrite", "true")):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return request(base + "/api/upload/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every file and folder below `root` (but those in `skip` and __pycache__) with its size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if d != "__pycache__" and here / d not in skip]
        for d in dirnames:
            out[str(here / d)] = ("dir",)
        for f in filenames:
            path = here / f
            if path not in skip:
                st = os.lstat(path)
                out[str(path)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    folders = _write_models(root)
    inputs, outputs = root / "input", root / "output"
    _write_inputs(inputs)
    outputs.mkdir()
    test_nodes = {"likeness_tiny_loaders": PACK / "tests" / "browser" / "tiny_loaders",
                  "likeness_probe_nodes": PACK / "tests" / "probe_nodes"}
    server_root = root / "server"
    server_root.mkdir()
    with comfy_server(server_root, folders, test_nodes, input_dir=inputs, output_dir=outputs) as server:
        detector = (folders["insightface"] / "models" / "synth_l" / "det_10g.onnx").read_bytes()
        recogniser = (folders["insightface"] / "models" / "synth_l" / "w600k_r50.onnx").read_bytes()
        for name, data in (("det_10g.onnx", detector), ("w600k_r50.onnx", recogniser)):
            status, text = upload(server.base, name, data, UPLOADED)
            assert status == 200, text
        status, text = upload(server.base, "uploaded_refs.safetensors", b"\x08\0\0\0\0\0\0\0{}      junk")
        assert status == 200, text
        # Everything but the output folder, the server's own temp/user/log, and the pytest folders of other tests
        # that run in this process: escapes through ../../ would land in the folders above. ComfyUI's own data
        # folders are not this server's (it has its own input, output, temp and user) and other ComfyUI
        # processes on the machine write there, so they are left out too.
        watched = [tmp_path_factory.getbasetemp(), COMFYUI, PACK]
        skip = {outputs, server_root / "temp", server_root / "user", server_root / "server.log",
                PACK / "tests" / "artifacts", PACK / ".git"}
        skip |= {COMFYUI / name for name in ("input", "output", "temp", "user")}
        skip |= {p for p in tmp_path_factory.getbasetemp().iterdir() if p != root}
        info = get_json(server.base + "/api/object_info", timeout=60)  # core's loaders make input/ sub-folders
        before = {str(w): snapshot(w, skip) for w in watched}
        yield {"base": server.base, "module": server.module, "root": root, "inputs": inputs, "outputs": outputs,
               "folders": folders, "info": info, "watched": watched, "skip": skip, "before": before, "log": server.log}


# ---------------------------------------------------------------- prompts

def post_prompt(base: str, prompt: dict) -> tuple[int, dict]:
    status, text = request(base + "/api/prompt", json.dumps({"prompt": prompt, "client_id": "hostile"}).encode(),
                           {"Content-Type": "application/json"})
    return status, json.loads(text)


def run_to_end(base: str, prompt: dict, timeout: float = 180.0) -> dict:
    """Queue a prompt that must pass validation; its history entry once it has finished."""
    status, answer = post_prompt(base, prompt)
    assert status == 200, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = get_json(f"{base}/api/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")


def execution_error(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", entry["status"]
    return next(data for event, data in entry["status"]["messages"] if event == "execution_error")


def node_specs(info: dict, node_id: str) -> list[tuple[str, str, list | None, dict, bool]]:
    """(name, kind, options, settings, required) for every input, as /object_info serves it."""
    out = []
    for section in ("required", "optional"):
        for name, spec in (info[node_id]["input"].get(section) or {}).items():
            kind, settings = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
            options = None
            if isinstance(kind, list):
                kind, options = "COMBO", kind
            elif kind == "COMBO":
                options = settings.get("options", [])
            if settings.get("forceInput"):
                kind = "LINK"
            out.append((name, kind if kind in WIDGETS else "LINK", options, settings, section == "required"))
    return out


def default_value(kind: str, options, settings):
    if "default" in settings:
        return settings["default"]
    if kind == "COMBO":
        return options[0] if options else ""
    return {"INT": settings.get("min", 0), "FLOAT": settings.get("min", 0.0), "STRING": "", "BOOLEAN": False}[kind]


def probe_prompt(info: dict, node_id: str, **values) -> dict:
    """`node_id` with every required link fed by the any-type source, widgets at their defaults but `values`, and
    its first output (if any) into the sink, so that validation reaches the node."""
    inputs = {}
    for name, kind, options, settings, required in node_specs(info, node_id):
        if kind == "LINK":
            if required:
                inputs[name] = ["src", 0]
        else:
            inputs[name] = default_value(kind, options, settings)
    inputs.update(values)
    prompt = {"src": {"class_type": "LikenessTestAnySource", "inputs": {}},
              "node": {"class_type": node_id, "inputs": inputs}}
    if info[node_id]["output"]:
        prompt["sink"] = {"class_type": "LikenessTestSink", "inputs": {"value": ["node", 0]}}
    return prompt


def likeness_nodes(hostile) -> list[str]:
    info = hostile["info"]
    return sorted(k for k, v in info.items() if k.startswith("Likeness") and not k.startswith("LikenessTest")
                  and v.get("python_module", "").endswith(hostile["module"]))


def path_tricks(hostile) -> list[str]:
    """Names that point outside the model and data folders, at things that exist and things that do not."""
    inputs = hostile["inputs"]
    return ["../../../input/" + UPLOADED, "../../../input/no_such_folder", f"../../input/{UPLOADED}/det_10g.onnx",
            str(inputs / UPLOADED / "det_10g.onnx"), str(inputs / "no_such_file.onnx"), "/etc/passwd",
            "..\\..\\..\\input\\" + UPLOADED, str(hostile["folders"]["ipadapter"] / "ip-adapter_sd15.safetensors"),
            "likeness/../../../../etc/hosts [output]"]


EXPECTED = {  # what the message says about each kind of bad value (besides naming the input)
    "COMBO": ("not one of the choices",),
    "INT": ("must be a finite number", "must be between", "must be a number"),
    "FLOAT": ("must be a finite number", "must be between", "must be a number"),
    "STRING": ("NUL character", "characters long"),
}


def bad_values(kind: str, settings: dict, hostile) -> list:
    if kind == "COMBO":
        return path_tricks(hostile)[:4] + ["not-one-of-the-choices", "", 7]
    if kind in ("INT", "FLOAT"):
        values = [math.nan, math.inf, -math.inf, "abc", "late"]
        if settings.get("max") is not None:
            values.append(settings["max"] + 1)
        if settings.get("min") is not None:
            values.append(settings["min"] - 1)
        return values
    if kind == "STRING":
        return ["a\x00b", "x" * 100_000]
    return []


# ---------------------------------------------------------------- the tests

def test_every_likeness_node_is_served_with_bounded_numbers(hostile):
    nodes = likeness_nodes(hostile)
    assert len(nodes) >= 12, nodes
    unbounded = [f"{node}.{name}" for node in nodes
                 for name, kind, _options, settings, _required in node_specs(hostile["info"], node)
                 if kind in ("INT", "FLOAT") and (settings.get("min") is None or settings.get("max") is None)]
    assert not unbounded, f"numeric inputs without min and max: {unbounded}"


def test_every_bad_widget_value_is_refused_with_a_400_naming_the_input(hostile):
    failures, sent = [], 0
    for node in likeness_nodes(hostile):
        for name, kind, _options, settings, _required in node_specs(hostile["info"], node):
            for value in bad_values(kind, settings, hostile):
                sent += 1
                status, answer = post_prompt(hostile["base"], probe_prompt(hostile["info"], node, **{name: value}))
                details = " ".join(e.get("details", "") for e in answer.get("node_errors", {}).get("node", {})
                                   .get("errors", []))
                said_why = any(words in details for words in EXPECTED[kind])
                if status != 400 or f"`{name}`" not in details or not said_why:
                    failures.append(f"{node}.{name}={str(value)[:60]!r}: HTTP {status}, {details[:300]!r}")
    assert sent > 50
    assert not failures, f"{len(failures)} of {sent} bad values were not refused clearly:\n" + "\n".join(failures)


def _anonymous(answer, value: str):
    """The answer with the echoed value taken out, to compare answers for different values."""
    text = json.dumps(answer)
    for form in (repr(value), value):
        text = text.replace(json.dumps(form)[1:-1], "<value>")
    return text


def test_path_tricks_get_one_answer_that_reveals_nothing(hostile):
    combos = [(node, name) for node in likeness_nodes(hostile)
              for name, kind, _o, _s, _r in node_specs(hostile["info"], node) if kind == "COMBO"]
    file_inputs = {"adapter_name", "model_pack", "face_model_pack", "references_file", "clip_name", "parsing_model"}
    assert file_inputs <= {name for _node, name in combos}, combos
    for node, name in combos:
        answers = set()
        for trick in path_tricks(hostile):
            status, answer = post_prompt(hostile["base"], probe_prompt(hostile["info"], node, **{name: trick}))
            assert status == 400, (node, name, trick, answer)
            answers.add(_anonymous(answer, trick))
        assert len(answers) == 1, f"{node}.{name} answers differently for different paths: {answers}"
        assert str(hostile["root"]) not in next(iter(answers))


def test_uploaded_files_are_not_models(hostile):
    assert (hostile["inputs"] / UPLOADED / "det_10g.onnx").is_file()  # the upload landed in input/
    for node, name in (("LikenessFaceModelLoader", "model_pack"), ("LikenessUnifiedLoader", "face_model_pack")):
        status, answer = post_prompt(hostile["base"], probe_prompt(hostile["info"], node,
                                                                   **{name: "../../../input/" + UPLOADED}))
        assert status == 400 and "not one of the choices" in json.dumps(answer)
    listed = {name: options for name, _kind, options, _s, _r in node_specs(hostile["info"], "LikenessFaceModelLoader")}
    assert not [o for o in listed["model_pack"] if UPLOADED in o or "/" in o]


def test_models_linked_in_from_elsewhere_are_followed(hostile):
    for node, inputs in (("LikenessAdapterLoader", {"adapter_name": "linked.safetensors"}),
                         ("LikenessFaceModelLoader", {"model_pack": "linked_pack", "provider": "CPU"})):
        entry = run_to_end(hostile["base"], _loader_prompt(node, **inputs))
        assert entry["status"]["status_str"] == "success", (node, entry["status"])


def _loader_prompt(node_id: str, **inputs) -> dict:
    return {"load": {"class_type": node_id, "inputs": inputs},
            "sink": {"class_type": "LikenessTestSink", "inputs": {"value": ["load", 0]}}}


def _faceid_prompt(adapter: str, pack_name: str = "synth_l", stop_at: str = "apply") -> dict:
    prompt = {
        "img": {"class_type": "LoadImage", "inputs": {"image": "likeness_face_1.png"}},
        "face": {"class_type": "LikenessFaceModelLoader", "inputs": {"model_pack": pack_name, "provider": "CPU"}},
        "embed": {"class_type": "LikenessFaceEmbed", "inputs": {
            "face_model": ["face", 0], "image": ["img", 0], "select": "largest", "index": 0, "on_no_face": "error",
            "crop_size": "224"}},
        "ckpt": {"class_type": "LikenessTestTinyCheckpoint",
                 "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "adapter": {"class_type": "LikenessAdapterLoader", "inputs": {"adapter_name": adapter}},
        "project": {"class_type": "LikenessProject", "inputs": {"adapter": ["adapter", 0], "references": ["embed", 0]}},
        "apply": {"class_type": "LikenessApply", "inputs": {
            "model": ["ckpt", 0], "adapter": ["adapter", 0], "tokens": ["project", 0], "weight": 1.0,
            "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}},
    }
    prompt["sink"] = {"class_type": "LikenessTestSink", "inputs": {"value": [stop_at, 0]}}
    return prompt


BROKEN = {
    "nan adapter weights": (_loader_prompt("LikenessAdapterLoader", adapter_name="nan-weights.safetensors"),
                            "LikenessAdapterLoader", ["nan-weights.safetensors", "`ip_adapter.1.to_k_ip.weight`",
                                                      "NaN or infinite"]),
    "header without data_offsets": (_loader_prompt("LikenessAdapterLoader", adapter_name="no-offsets.safetensors"),
                                    "LikenessAdapterLoader", ["no-offsets.safetensors", "data_offsets"]),
    "header entry not a dict": (_loader_prompt("LikenessAdapterLoader", adapter_name="entry-not-dict.safetensors"),
                                "LikenessAdapterLoader", ["entry-not-dict.safetensors", "not a tensor description"]),
    "LFS pointer as .bin": (_loader_prompt("LikenessAdapterLoader", adapter_name="ip-adapter-faceid_sd15.bin"),
                            "LikenessAdapterLoader", ["ip-adapter-faceid_sd15.bin", "Git LFS pointer"]),
    "broken LoRA fallback": (_faceid_prompt("faceid-broken_sd15.safetensors"), "LikenessApply",
                             ["faceid-broken_sd15_lora.safetensors", "download it again"]),
    "LoRA for another model": (_faceid_prompt("faceid-foreign_sd15.safetensors"), "LikenessApply",
                               ["faceid-foreign_sd15_lora.safetensors", "half applied", "70 cross-attention sites"]),
    "face model with NaN outputs": (_faceid_prompt("faceid-foreign_sd15.safetensors", "nan_pack", stop_at="embed"),
                                    "LikenessFaceEmbed", ["`w600k_r50.onnx`", "`nan_pack`", "NaN"]),
    "NaN references file": (_loader_prompt("LikenessLoadReferences", references_file="nan_refs.safetensors"),
                            "LikenessLoadReferences", ["nan_refs.safetensors", "`image.penultimate`", "NaN"]),
    "junk uploaded as references": (_loader_prompt("LikenessLoadReferences",
                                                   references_file="uploaded_refs.safetensors"),
                                    "LikenessLoadReferences", ["uploaded_refs.safetensors"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_file_ends_in_a_likeness_error_naming_it(hostile, case):
    prompt, node_type, words = BROKEN[case]
    err = execution_error(run_to_end(hostile["base"], prompt))
    assert err["node_type"] == node_type, err
    assert err["exception_type"].rsplit(".", 1)[-1] in likeness_error_names(), err["exception_type"]
    for word in words:
        assert word in err["exception_message"], (word, err["exception_message"])


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"non-finite number {constant} in JSON: {text[:200]}")

    return json.loads(text, parse_constant=refuse)


def test_routes_answer_strict_json_and_never_500(hostile):
    base = hostile["base"] + "/api/likeness"
    for query in ("weight=nan", "weight=NaN", "weight=inf", "weight=-Infinity", "weight=1e309", "weight=abc",
                  "weight_type=strongest", "layout=../../etc", "weight=0.5&layout=flux"):
        status, text = request(f"{base}/weights?{query}")
        assert status == 400 and strict_json(text)["error"], (query, status, text)
    status, text = request(f"{base}/weights?weight=1.7e308&weight_type=linear&layout=sdxl")
    assert status in (200, 400) and strict_json(text), text
    for name in ("no-offsets.safetensors", "entry-not-dict.safetensors", "nan-weights.safetensors",
                 "ip-adapter-faceid_sd15.bin", "ip-adapter_sd15.safetensors"):
        status, text = request(f"{base}/adapter_info?name={urllib.parse.quote(name)}")
        assert status == 200, (name, status, text)
        answer = strict_json(text)
        assert "error" not in answer or name in answer["error"], (name, answer)
    assert "error" in strict_json(request(f"{base}/adapter_info?name=no-offsets.safetensors")[1])
    answers = {request(f"{base}/adapter_info?name={urllib.parse.quote(trick)}") for trick in path_tricks(hostile)}
    assert len(answers) == 1 and next(iter(answers))[0] == 200, answers


def test_a_good_workflow_still_runs_afterwards(hostile):
    prompt = tw.test_prompt(json.loads(GOOD_WORKFLOW.read_text()))
    entry = run_to_end(hostile["base"], prompt, timeout=400)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [i for out in entry["outputs"].values() for i in out.get("images", [])]
    assert images and all((hostile["outputs"] / i["subfolder"] / i["filename"]).is_file() for i in images)


def test_nothing_outside_the_output_folder_changed(hostile):
    after = {str(w): snapshot(w, hostile["skip"]) for w in hostile["watched"]}
    for root, files in hostile["before"].items():
        added = sorted(set(after[root]) - set(files))
        removed = sorted(set(files) - set(after[root]))
        changed = sorted(p for p in set(files) & set(after[root]) if files[p] != after[root][p])
        assert not (added or removed or changed), (root, added[:10], removed[:10], changed[:10])
