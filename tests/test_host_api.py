"""The V3 API is imported in one place, with fallbacks, and every node checks its widget values at validation."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

import execution
import nodes
from conftest import COMFYUI, LIKENESS_NODES, PACK, pack

validation = pack("nodes.core.validation")
api = pack("nodes.host.api")


def test_node_modules_import_the_api_only_through_host_api():
    offenders = []
    for root, _dirs, files in os.walk(PACK / "nodes"):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".py") and os.path.relpath(path, PACK) != os.path.join("nodes", "host", "api.py"):
                with open(path, encoding="utf-8") as f:
                    if "comfy_api" in f.read():
                        offenders.append(os.path.relpath(path, PACK))
    assert offenders == []


def test_every_node_derives_from_the_checking_base():
    for node_id in LIKENESS_NODES:
        assert issubclass(nodes.NODE_CLASS_MAPPINGS[node_id], api.LikenessNode), node_id


LOAD_WITHOUT_V0_0_2 = textwrap.dedent("""
    import asyncio, importlib.abc, sys
    sys.path.insert(0, {comfy!r})

    class NoV002(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "comfy_api.v0_0_2" or name.startswith("comfy_api.v0_0_2."):
                raise ImportError("simulated: comfy_api.v0_0_2 was removed")
            return None

    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import utils.install_util
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    # ComfyUI itself still has it; from here on, as for a pack on a ComfyUI without it, it cannot be imported.
    for name in [m for m in sys.modules if m == "comfy_api.v0_0_2" or m.startswith("comfy_api.v0_0_2.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, NoV002())
    assert asyncio.run(nodes.load_custom_node({pack!r})), "the pack failed to load"
    found = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("Likeness"))
    for k in found:
        nodes.NODE_CLASS_MAPPINGS[k].INPUT_TYPES()
    api = sys.modules[{module!r}]
    print("API", api.API_MODULE)
    print("NODES", ",".join(found))
""")


def test_pack_loads_every_node_when_v0_0_2_is_gone():
    module = str(PACK).replace(".", "_x_") + ".nodes.host.api"
    code = LOAD_WITHOUT_V0_0_2.format(comfy=str(COMFYUI), pack=str(PACK), module=module)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(COMFYUI))
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line.startswith(("API ", "NODES ")))
    assert lines["API"] in ("comfy_api.v0_0_3", "comfy_api.latest")
    assert lines["NODES"].split(",") == LIKENESS_NODES


# ---------------------------------------------------------------- widget checks, value by value

FLOAT = validation.WidgetSpec("weight", "FLOAT", -1.0, 5.0)
INT = validation.WidgetSpec("index", "INT", 0, 99)
COMBO = validation.WidgetSpec("crop_size", "COMBO", options=("224", "256"))
TEXT = validation.WidgetSpec("filename_prefix", "STRING")


@pytest.mark.parametrize("spec, value, words", [
    (FLOAT, math.nan, "finite"), (FLOAT, math.inf, "finite"), (FLOAT, 5.5, "between -1 and 5"),
    (FLOAT, "late", "must be a number"), (INT, 2.5, "whole number"), (INT, -1, "between 0 and 99"),
    (COMBO, "11200", "`224`, `256`"), (COMBO, "abc", "not one of the choices"),
    (TEXT, "a\x00b", "NUL"), (TEXT, "x" * 5000, "characters long"),
])
def test_bad_values_are_named_with_what_was_expected(spec, value, words):
    problem = validation.widget_problem(spec, value)
    assert problem is not None and f"`{spec.name}`" in problem and words in problem


@pytest.mark.parametrize("spec, value", [(FLOAT, 0.5), (FLOAT, -1.0), (INT, 99), (COMBO, "256"), (TEXT, "people/al"),
                                         (FLOAT, None)])
def test_good_and_linked_values_pass(spec, value):
    assert validation.widget_problem(spec, value) is None


@pytest.mark.parametrize("value", ["../x", "/etc/x", "C:/x", "a/../../b", "a\x00", "y" * 300])
def test_names_that_leave_their_folder_are_refused(value):
    assert validation.name_problem("filename_prefix", value) is not None


def validate(prompt):
    return asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))


@pytest.mark.parametrize("inputs, words", [
    ({"crop_size": "11200"}, "`crop_size` is '11200', which is not one of the choices"),
    ({"index": -3}, "`index` must be between 0 and 99"),
    ({"select": "leftmost"}, "`select` is 'leftmost'"),
])
def test_the_executor_refuses_bad_widget_values_before_running(inputs, words):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "2": {"class_type": "LikenessFaceModelLoader", "inputs": {"model_pack": "buffalo_l", "provider": "CPU"}},
        "3": {"class_type": "LikenessFaceEmbed",
              "inputs": {"face_model": ["2", 0], "image": ["1", 0], "select": "largest", "index": 0,
                         "on_no_face": "error", "crop_size": "224", **inputs}},
        "4": {"class_type": "LikenessSaveReferences", "inputs": {"references": ["3", 0], "filename_prefix": "r"}},
    }
    ok, _error, _outputs, node_errors = validate(prompt)
    assert not ok
    messages = [e["details"] for e in node_errors["3"]["errors"]]
    assert any(words in m for m in messages), messages
    assert "2" not in node_errors
