"""LikenessApplyTiled: a non-square reference cut into square tiles, each applied where it sits in the picture."""

from __future__ import annotations

import logging

import comfy.model_management
import torch

from .host.api import LikenessNode, io, ui

from . import types
from .apply import _window_inputs, apply_tokens
from .core.attention import EMBEDS_SCALING
from .core.merge import MERGE_MODES, gather, merge_references
from .core.references import project_references
from .core.schedules import WEIGHT_TYPES, window_problem
from .core.tiles import cut_tiles
from .host.encode import encode_references

log = logging.getLogger(__name__)


def apply_tiled(model, adapter, clip_vision, image, weight, weight_type="linear", combine_embeds="concat",
                start_at=0.0, end_at=1.0, sharpening=0.0, embeds_scaling="V only", image_negative=None,
                attn_mask=None, encode_batch_size=0, unfold_batch=False):
    """One image prompt per tile, masked to the tile's footprint. Returns (model, tiles, masks, layout)."""
    tiles, masks, layout = cut_tiles(image, attn_mask, sharpening)
    device = comfy.model_management.get_torch_device()
    negative = None
    if image_negative is not None:
        negative = encode_references(clip_vision, image_negative, batch_size=encode_batch_size)
    for tile, mask in zip(tiles, masks):
        refs = encode_references(clip_vision, tile, batch_size=encode_batch_size)
        if combine_embeds != "concat" and refs.count > 1 and not unfold_batch:
            refs, _ = merge_references(gather([("image", refs)]), combine_embeds)
        tokens = project_references(adapter, refs, negative, device=device)
        model = apply_tokens(model, adapter, tokens, weight, weight_type, start_at, end_at, embeds_scaling, mask,
                             unfold_batch=unfold_batch)
    return model, torch.cat(tiles), torch.cat(masks), layout


class LikenessApplyTiled(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessApplyTiled",
            display_name="Likeness Apply (tiled)",
            category=types.CATEGORY,
            description="For references that are not square (a wide landscape, a full-length figure): cuts the "
                        "reference into 256 px square tiles and applies each one only where it sits in the picture, "
                        "so nothing is cropped away. Generate at the reference's aspect ratio.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or SDXL model matching the adapter."),
                types.Adapter.Input("adapter", tooltip="An image adapter from Likeness Adapter Loader."),
                io.ClipVision.Input("clip_vision", tooltip="The image encoder the adapter needs."),
                io.Image.Input("image", tooltip="The reference image(s); a batch gives several references per tile."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05,
                               tooltip="Strength of each tile's image prompt."),
                io.Combo.Input("weight_type", options=list(WEIGHT_TYPES), default="linear",
                               tooltip="How the weight is spread over the UNet's layers (see Likeness Apply)."),
                io.Combo.Input("combine_embeds", options=list(MERGE_MODES), default="concat",
                               tooltip="With a batch of references: how each tile's references are combined "
                                       "(see Likeness Merge References)."),
                *_window_inputs(),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Contrast-adaptive sharpening of the resized reference before it is cut."),
                io.Combo.Input("embeds_scaling", options=list(EMBEDS_SCALING), default="V only",
                               tooltip="How the weight enters the attention (see Likeness Apply)."),
                io.Image.Input("image_negative", optional=True,
                               tooltip="Optional negative image for every tile (e.g. from Likeness Noise Image)."),
                io.Mask.Input("attn_mask", optional=True,
                              tooltip="Optional: where the reference acts, in the reference's coordinates; each "
                                      "tile keeps its part of it."),
                io.Int.Input("encode_batch_size", default=0, min=0, max=4096, optional=True,
                             tooltip="Images per encoder call; 0 = all at once."),
                io.Boolean.Input("unfold_batch", default=False, optional=True,
                                 tooltip="For animation: reference image i drives latent i (per tile), as on "
                                         "Likeness Apply; combine_embeds is then not used."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Image.Output(display_name="tiles"),
                     io.Mask.Output(display_name="masks")],
        )

    @classmethod
    def check_inputs(cls, start_at=None, end_at=None, **_):
        return window_problem(start_at, end_at)

    @classmethod
    def execute(cls, model, adapter, clip_vision, image, weight, weight_type, combine_embeds, start_at, end_at,
                sharpening, embeds_scaling, image_negative=None, attn_mask=None, encode_batch_size=0,
                unfold_batch=False) -> io.NodeOutput:
        model, tiles, masks, layout = apply_tiled(model, adapter, clip_vision, image, weight, weight_type,
                                                  combine_embeds, start_at, end_at, sharpening, embeds_scaling,
                                                  image_negative, attn_mask, encode_batch_size, unfold_batch)
        h, w = layout.size
        text = f"{len(layout.boxes)} tiles of 256 px over the reference resized to {w}x{h}"
        log.info("Likeness: %s", text)
        return io.NodeOutput(model, tiles, masks, ui=ui.PreviewText(text))
