"""Small read-only HTTP routes for the frontend extension (web/js/likeness.js).

* `GET /likeness/weights?weight_type=...&weight=...&layout=sd15|sdxl`: the weight each cross-attention site
  gets, computed by core.schedules.site_plan on the real SD1.5 / SDXL site layouts (built once by ComfyUI from its
  `comfy.supported_models` configs, on the meta device), so the chart on Likeness Apply never re-implements the
  formulas. Optional: `style_boost`, `composition_boost` and `layer_weights` (as on Likeness Apply); each site
  also says whether the precise types swap its cond/uncond sides (`swapped`).
* `GET /likeness/adapter_info?name=...`: what an adapter file in models/ipadapter is, read from its
  safetensors header only (the same summary the loader shows after a run); `{"error": ...}` when the file is
  missing, damaged or not an adapter. The answer for a name that is not listed is the same whatever the name,
  so the route tells nothing about files outside the model folders.

* `POST /likeness/migrate`: body = a workflow (UI or API format) using the leading IP-Adapter pack's nodes;
  answer `{"workflow": ..., "summary": ...}` from nodes/migrate.py (the menu command "Convert IPAdapter nodes to
  Likeness"). Bodies over MAX_MIGRATE_BYTES, bad JSON and non-workflows get a 400 with a message.

Registered on ComfyUI's server when there is one; importing this module never needs a server.
"""

from __future__ import annotations

import functools
import json
import logging
import math

from ..core.errors import LikenessError
from ..core.schedules import WEIGHT_TYPES, Boosts, parse_layer_weights, site_plan
from . import folders

log = logging.getLogger(__name__)

LAYOUTS = ("sd15", "sdxl")
MAX_MIGRATE_BYTES = 20 * 1024 * 1024  # large UI workflows with embedded notes stay far below this
_MARK = "_likeness_routes_registered"
_STRICT_JSON = functools.partial(json.dumps, allow_nan=False)  # browsers cannot parse NaN or Infinity

# What ComfyUI's model detection reads from a checkpoint's keys rather than from `comfy.supported_models`:
# the number of blocks and the transformer depths. Widths, context, heads and everything that tells one
# family from another come from the supported-models config itself.
_CHECKPOINT_STRUCTURE = {
    "sd15": dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_middle=1, transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]),
    "sdxl": dict(num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], num_classes="sequential",
                 transformer_depth_middle=10, transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10]),
}
_EVERY_UNET = dict(image_size=32, in_channels=4, out_channels=4, use_spatial_transformer=True, legacy=False)


def _model_config(layout: str):
    """ComfyUI's own model config for the layout (`comfy.supported_models.SD15` / `SDXL`), as detection makes it
    for an official checkpoint: the class's unet_config, its unet_extra_config, and the checkpoint structure."""
    import torch

    import comfy.supported_models

    config_class = {"sd15": comfy.supported_models.SD15, "sdxl": comfy.supported_models.SDXL}[layout]
    unet_config = {**_EVERY_UNET, **_CHECKPOINT_STRUCTURE[layout], **config_class.unet_config}
    if not config_class.matches(unet_config):
        raise LikenessError(f"ComfyUI's {config_class.__name__} config no longer matches the {layout} layout.")
    model_config = config_class(unet_config)  # adds unet_extra_config (heads) as detection does
    model_config.set_inference_dtype(torch.float32, None)
    return model_config


class _MetaModel:
    """Just enough of a ModelPatcher for sites.find_sites."""

    def __init__(self, unet):
        self.unet = unet

    def get_model_object(self, name):
        assert name == "diffusion_model"
        return self.unet


@functools.lru_cache(maxsize=None)
def layout_sites(layout: str) -> tuple:
    """The cross-attention sites of a full-size SD1.5 or SDXL UNet, built by ComfyUI from its supported-models
    config on the meta device (no memory)."""
    import torch

    from .sites import find_sites

    model = _model_config(layout).get_model({}, device=torch.device("meta"))
    return tuple(find_sites(_MetaModel(model.diffusion_model)))


def weights_table(layout: str, weight: float, weight_type: str, style_boost: float = 1.0,
                  composition_boost: float = 0.0, layer_weights: str = "") -> dict:
    """Per-site weights in execution order (input blocks, middle, output blocks), for the chart."""
    if layout not in LAYOUTS:
        raise LikenessError(f"layout must be one of {', '.join(LAYOUTS)}; got `{layout}`.")
    if weight_type not in WEIGHT_TYPES:
        raise LikenessError(f"weight_type `{weight_type}` is not one of: {', '.join(WEIGHT_TYPES)}.")
    if not math.isfinite(weight):
        raise LikenessError(f"weight must be a finite number; got `{weight}`.")
    sites = sorted(layout_sites(layout), key=lambda s: (s.transformer, s.index))
    layers = parse_layer_weights(layer_weights)
    plan = site_plan(sites, weight, weight_type, Boosts(style_boost, composition_boost), layers)
    if not all(math.isfinite(w) for w in plan.weights.values()):
        raise LikenessError(f"weight {weight:g} is too large to chart; use a value in the node's range.")
    return {
        "layout": layout, "weight": weight, "weight_type": weight_type, "transformers": sites[0].transformers,
        "layer_weights": layers is not None,
        "sites": [{"block": s.block, "block_id": s.block_id, "index": s.index, "transformer": s.transformer,
                   "weight": round(plan.weights[s.key], 6), "swapped": s.key in plan.swapped} for s in sites],
    }


def adapter_info(name: str) -> dict:
    from ..core.adapter import read_detection
    from ..core.variants import FLUX

    detected = read_detection(folders.adapter_path(name))
    encoder = detected.encoder
    return {
        "name": name,
        "title": detected.variant.title if detected.variant else None,
        "family": detected.family,
        # the UNet layout, by its site count; PuLID-FLUX inserts modules between FLUX blocks instead
        "layout": "flux" if detected.family == FLUX else {16: "sd15", 70: "sdxl"}.get(len(detected.layer_ids)),
        "modules": len(detected.layer_ids),
        "tokens": detected.tokens,
        "faceid": detected.faceid,
        "encoder": encoder.name if encoder else None,
        "encoder_file": encoder.file_hint if encoder else None,
        "encoder_requirement": None if detected.faceid else detected.encoder_requirement(),
        "summary": detected.summary(),
    }


def add_routes(routes) -> None:
    """Adds the routes to an aiohttp RouteTableDef. Every answer is JSON with finite numbers: a bad query is a 400
    with {"error": ...}, and anything else that fails is logged and answered with {"error": ...} for the node to
    show, never a 500 or a traceback."""
    from aiohttp import web

    def answer(payload: dict, status: int = 200):
        return web.json_response(payload, status=status, dumps=_STRICT_JSON)

    def problem(status: int, message: str):
        return answer({"error": message}, status)

    def answers_json(what: str):
        def wrap(handler):
            @functools.wraps(handler)
            async def guarded(request):
                try:
                    return await handler(request)
                except Exception as e:  # an unexpected failure is the node's text, not an HTTP 500
                    log.exception("Likeness: the %s route failed", what)
                    return problem(200, f"Likeness could not compute the {what} ({type(e).__name__}); the "
                                        "ComfyUI log has the details.")
            return guarded
        return wrap

    @routes.get("/likeness/weights")
    @answers_json("weight chart")
    async def get_weights(request):
        q = request.rel_url.query
        numbers = {}
        for name, default in (("weight", "1.0"), ("style_boost", "1.0"), ("composition_boost", "0.0")):
            try:
                numbers[name] = float(q.get(name, default))
            except ValueError:
                return problem(400, f"{name} must be a number; got `{q.get(name)}`.")
            if name != "weight" and not math.isfinite(numbers[name]):
                return problem(400, f"{name} must be a finite number; got `{q.get(name)}`.")
        try:
            return answer(weights_table(q.get("layout", "sd15"), numbers["weight"], q.get("weight_type", "linear"),
                                        numbers["style_boost"], numbers["composition_boost"],
                                        q.get("layer_weights", "")[:4000]))
        except LikenessError as e:
            return problem(400, str(e))

    @routes.get("/likeness/adapter_info")
    @answers_json("adapter summary")
    async def get_adapter_info(request):
        # A file that is missing or is not an adapter is an answer for the node to show, not a failed request
        # (browsers log every 4xx as a console error): 200 with {"error": ...}.
        name = request.rel_url.query.get("name", "")
        if name not in folders.adapter_files():
            return problem(200, "that adapter is not in the ipadapter folders; pick one from the list (press R to "
                                "refresh the lists).")
        try:
            return answer(adapter_info(name))
        except (LikenessError, OSError, ValueError) as e:
            return problem(200, str(e))

    @routes.post("/likeness/migrate")
    async def post_migrate(request):
        if (request.content_length or 0) > MAX_MIGRATE_BYTES:
            return problem(400, f"the workflow is larger than {MAX_MIGRATE_BYTES // (1024 * 1024)} MiB.")
        body = b""  # read(n) returns what has arrived so far: read to the end, up to one byte over the limit
        while len(body) <= MAX_MIGRATE_BYTES:
            chunk = await request.content.read(MAX_MIGRATE_BYTES + 1 - len(body))
            if not chunk:
                break
            body += chunk
        status, payload = migrate_answer(body)
        return answer(payload, status)


def migrate_answer(body: bytes) -> tuple[int, dict]:
    """(status, JSON answer) for a POST /likeness/migrate body; never raises."""
    from .. import migrate

    def refuse_constant(name):
        raise ValueError(f"{name} is not a JSON number")

    if len(body) > MAX_MIGRATE_BYTES:
        return 400, {"error": f"the workflow is {len(body) // 1024} KiB; the converter reads at most "
                              f"{MAX_MIGRATE_BYTES // (1024 * 1024)} MiB."}
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=refuse_constant)  # NaN could not be answered
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
