"""Runs the tests against a real ComfyUI: found at $COMFYUI_PATH, above the pack, or at ~/ComfyUI."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import sys
import uuid
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parents[1]


def _find_comfyui() -> Path | None:
    env = os.environ.get("COMFYUI_PATH")
    candidates = [Path(env)] if env else []
    candidates += list(PACK.parents)
    candidates.append(Path.home() / "ComfyUI")
    for c in candidates:
        if (c / "comfy" / "model_patcher.py").is_file():
            return c.resolve()
    return None


COMFYUI = _find_comfyui()
if COMFYUI is None:
    raise pytest.UsageError(
        "No ComfyUI found: set COMFYUI_PATH, install the pack under ComfyUI/custom_nodes/, or put ComfyUI at "
        "~/ComfyUI (see README, 'Running the tests').")
sys.path.insert(0, str(COMFYUI))

import comfy.cli_args  # noqa: E402
import utils.install_util  # noqa: E402,F401  (ComfyUI's utils package, before nodes.py puts comfy/ first on sys.path)

comfy.cli_args.args.cpu = True

import torch  # noqa: E402

import comfy.model_management  # noqa: E402,F401
import execution  # noqa: E402
import folder_paths  # noqa: E402
import nodes  # noqa: E402

import builders  # noqa: E402

asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
PACK_MODULE = str(PACK).replace(".", "_x_")
assert asyncio.run(nodes.load_custom_node(str(PACK))), "the Likeness pack failed to load"
LIKENESS_NODES = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("Likeness"))


def pack(module: str):
    """A module of the pack as ComfyUI loaded it, e.g. pack("nodes.core.attention")."""
    return importlib.import_module(f"{PACK_MODULE}.{module}")


# ---------------------------------------------------------------- test-only loader nodes

_models: dict = {}
CAPTURED: dict = {}


class LikenessTestTinyUNet:
    """Stands in for CheckpointLoaderSimple: a tiny SD1.5 or SDXL layout UNet with seeded weights."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "positive", "negative")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["sd15", "sdxl"],), "seed": ("INT", {"default": 0})}}

    def load(self, kind, seed):
        key = (kind, seed)
        if key not in _models:
            _models[key] = builders.build_unet(kind, seed)
        return (_models[key], builders.conditioning(kind, seed=seed + 1), builders.conditioning(kind, seed=seed + 2))


class LikenessTestCapture:
    """Output node: keeps the sampled latent so tests can compare runs."""

    CATEGORY = "testing"
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "key": ("STRING", {"default": "out"})}}

    def capture(self, samples, key):
        CAPTURED[key] = samples["samples"].clone()
        return {}


def _load_tiny_loaders():
    """The stand-ins for the checkpoint and CLIP vision loaders that the workflow and browser tests share."""
    path = PACK / "tests" / "browser" / "tiny_loaders" / "__init__.py"
    spec = importlib.util.spec_from_file_location("likeness_tiny_loaders", path, submodule_search_locations=[])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_loaders = _load_tiny_loaders()
for _cls in (LikenessTestTinyUNet, LikenessTestCapture, *tiny_loaders.NODE_CLASS_MAPPINGS.values()):
    nodes.NODE_CLASS_MAPPINGS[_cls.__name__] = _cls


# ---------------------------------------------------------------- executor

class FakeServer:
    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


class PromptResult:
    def __init__(self, ok, error, node_errors, executor, server):
        self.valid, self.error, self.node_errors = ok, error, node_errors
        self.executor, self.server = executor, server

    @property
    def success(self) -> bool:
        return bool(self.valid and self.executor is not None and self.executor.success)

    def execution_error(self) -> dict | None:
        for event, data in (self.server.messages if self.server else []):
            if event == "execution_error":
                return data
        return None


def run_prompt(prompt: dict) -> PromptResult:
    pid = str(uuid.uuid4())
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(pid, prompt, None))
    if not ok:
        return PromptResult(False, error, node_errors, None, None)
    server = FakeServer()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC)
    executor.execute(prompt, pid, {"client_id": "test"}, outputs)
    return PromptResult(True, None, {}, executor, server)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A temporary models folder registered for ipadapter and clip_vision, with a tiny CLIP vision file."""
    root = tmp_path_factory.mktemp("models")
    for name in ("ipadapter", "clip_vision"):
        (root / name).mkdir()
        folder_paths.add_model_folder_path(name, str(root / name), is_default=True)
    builders.write_tiny_clip_vision(str(root / "clip_vision"), "tiny-clip-h", seed=0, hidden=64, projection=32)
    builders.write_tiny_clip_vision(str(root / "clip_vision"), "tiny-clip-g", seed=1, hidden=96, projection=48)
    out = tmp_path_factory.mktemp("output")
    folder_paths.set_output_directory(str(out))
    return root


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
