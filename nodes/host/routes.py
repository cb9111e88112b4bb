"""Small read-only HTTP routes for the frontend extension (web/js/likeness.js).

* `GET /likeness/weights?weight_type=...&weight=...&layout=sd15|sdxl`: the weight each cross-attention site
  gets, computed by core.schedules.site_plan on the real SD1.5 / SDXL site layouts (built once on the meta
  device), so the chart on Likeness Apply never re-implements the formulas. Optional: `style_boost`,
  `composition_boost` and `layer_weights` (as on Likeness Apply); each site also says whether the precise types
  swap its cond/uncond sides (`swapped`).
* `GET /likeness/adapter_info?name=...`: what an adapter file in models/ipadapter is, read from its
  safetensors header only (the same summary the loader shows after a run); `{"error": ...}` when the file is
  missing or not an adapter.

* `POST /likeness/migrate`: body = a workflow (UI or API format) using the leading IP-Adapter pack's nodes;
  answer `{"workflow": ..., "summary": ...}` from nodes/migrate.py (the menu command "Convert IPAdapter nodes to
  Likeness"). Bodies over MAX_MIGRATE_BYTES, bad JSON and non-workflows get a 400 with a message.

Registered on ComfyUI's server when there is one; importing this module never needs a server.
"""

from __future__ import annotations

import functools
import logging
import math

from ..core.errors import LikenessError
from ..core.schedules import WEIGHT_TYPES, Boosts, parse_layer_weights, site_plan
from . import folders

log = logging.getLogger(__name__)

LAYOUTS = ("sd15", "sdxl")
MAX_MIGRATE_BYTES = 20 * 1024 * 1024  # large UI workflows with embedded notes stay far below this
_MARK = "_likeness_routes_registered"


def _unet_config(layout: str) -> dict:
    common = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, use_spatial_transformer=True,
                  legacy=False, use_checkpoint=False, use_temporal_attention=False, use_temporal_resblock=False)
    if layout == "sd15":
        return dict(common, num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], num_heads=8, context_dim=768,
                    transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                    transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], use_linear_in_transformer=False)
    return dict(common, num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], num_head_channels=64, context_dim=2048,
                num_classes="sequential", adm_in_channels=2816, transformer_depth=[0, 0, 2, 2, 10, 10],
                transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                use_linear_in_transformer=True)


class _MetaModel:
    """Just enough of a ModelPatcher for sites.find_sites."""

    def __init__(self, unet):
        self.unet = unet

    def get_model_object(self, name):
        assert name == "diffusion_model"
        return self.unet


@functools.lru_cache(maxsize=None)
def layout_sites(layout: str) -> tuple:
    """The cross-attention sites of a full-size SD1.5 or SDXL UNet (built on the meta device: no memory)."""
    import torch

    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from .sites import find_sites

    unet = UNetModel(**_unet_config(layout), device=torch.device("meta"), operations=comfy.ops.disable_weight_init)
    return tuple(find_sites(_MetaModel(unet)))


def weights_table(layout: str, weight: float, weight_type: str, style_boost: float = 1.0,
                  composition_boost: float = 0.0, layer_weights: str = "") -> dict:
    """Per-site weights in execution order (input blocks, middle, output blocks), for the chart."""
    if layout not in LAYOUTS:
        raise LikenessError(f"layout must be one of {', '.join(LAYOUTS)}; got `{layout}`.")
    sites = sorted(layout_sites(layout), key=lambda s: (s.transformer, s.index))
    layers = parse_layer_weights(layer_weights)
    plan = site_plan(sites, weight, weight_type, Boosts(style_boost, composition_boost), layers)
    return {
        "layout": layout, "weight": weight, "weight_type": weight_type, "transformers": sites[0].transformers,
        "layer_weights": layers is not None,
        "sites": [{"block": s.block, "block_id": s.block_id, "index": s.index, "transformer": s.transformer,
                   "weight": round(plan.weights[s.key], 6), "swapped": s.key in plan.swapped} for s in sites],
    }


def adapter_info(name: str) -> dict:
    from ..core.adapter import read_detection

    detected = read_detection(folders.adapter_path(name))
    encoder = detected.encoder
    return {
        "name": name,
        "title": detected.variant.title if detected.variant else None,
        "family": detected.family,
        "layout": {16: "sd15", 70: "sdxl"}.get(len(detected.layer_ids)),  # the UNet layout, by its site count
        "tokens": detected.tokens,
        "faceid": detected.faceid,
        "encoder": encoder.name if encoder else None,
        "encoder_file": encoder.file_hint if encoder else None,
        "encoder_requirement": None if detected.faceid else detected.encoder_requirement(),
        "summary": detected.summary(),
    }


def add_routes(routes) -> None:
    """Adds the routes to an aiohttp RouteTableDef."""
    from aiohttp import web

    def problem(status: int, message: str):
        return web.json_response({"error": message}, status=status)

    @routes.get("/likeness/weights")
    async def get_weights(request):
        q = request.rel_url.query
        weight_type = q.get("weight_type", "linear")
        if weight_type not in WEIGHT_TYPES:
            return problem(400, f"weight_type `{weight_type}` is not one of: {', '.join(WEIGHT_TYPES)}.")
        numbers = {}
        for name, default in (("weight", "1.0"), ("style_boost", "1.0"), ("composition_boost", "0.0")):
            try:
                numbers[name] = float(q.get(name, default))
            except ValueError:
                return problem(400, f"{name} must be a number; got `{q.get(name)}`.")
            if not math.isfinite(numbers[name]):
                return problem(400, f"{name} must be a finite number; got `{q.get(name)}`.")
        try:
            return web.json_response(weights_table(q.get("layout", "sd15"), numbers["weight"], weight_type,
                                                   numbers["style_boost"], numbers["composition_boost"],
                                                   q.get("layer_weights", "")[:4000]))
        except LikenessError as e:
            return problem(400, str(e))

    @routes.get("/likeness/adapter_info")
    async def get_adapter_info(request):
        # A file that is missing or is not an adapter is an answer for the node to show, not a failed request
        # (browsers log every 4xx as a console error): 200 with {"error": ...}.
        name = request.rel_url.query.get("name", "")
        if name not in folders.adapter_files():
            return problem(200, f"adapter `{name}` is not in the ipadapter folders; press R to refresh the lists.")
        try:
            return web.json_response(adapter_info(name))
        except (LikenessError, OSError, ValueError) as e:
            return problem(200, str(e))

    @routes.post("/likeness/migrate")
    async def post_migrate(request):
        if (request.content_length or 0) > MAX_MIGRATE_BYTES:
            return problem(400, f"the workflow is larger than {MAX_MIGRATE_BYTES // (1024 * 1024)} MiB.")
        body = await request.content.read(MAX_MIGRATE_BYTES + 1)
        status, answer = migrate_answer(body)
        return web.json_response(answer, status=status)


def migrate_answer(body: bytes) -> tuple[int, dict]:
    """(status, JSON answer) for a POST /likeness/migrate body; never raises."""
    import json

    from .. import migrate

    if len(body) > MAX_MIGRATE_BYTES:
        return 400, {"error": f"the workflow is {len(body) // 1024} KiB; the converter reads at most "
                              f"{MAX_MIGRATE_BYTES // (1024 * 1024)} MiB."}
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return 400, {"error": f"the body is not JSON ({type(e).__name__}: {str(e)[:200]})."}
    if isinstance(data, dict) and isinstance(data.get("workflow"), dict):
        data = data["workflow"]
    try:
        workflow, summary = migrate.convert(data)
    except migrate.BadWorkflow as e:
        return 400, {"error": f"not a workflow: {e}"}
    except (RecursionError, MemoryError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as e:
        log.warning("Likeness: a workflow could not be converted", exc_info=True)
        return 400, {"error": f"the workflow could not be converted ({type(e).__name__}: {str(e)[:200]})."}
    return 200, {"workflow": workflow, "summary": summary}


def register() -> None:
    """Adds the routes to ComfyUI's server once, however often the pack is imported; no server, no routes."""
    try:
        from server import PromptServer
    except ImportError:
        return
    server = getattr(PromptServer, "instance", None)
    if server is None or getattr(server, _MARK, False):
        return
    add_routes(server.routes)
    setattr(server, _MARK, True)
