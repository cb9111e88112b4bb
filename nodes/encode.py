"""LikenessImageEncode: reference images -> encoder features for every image adapter family."""

from __future__ import annotations

from .host.api import LikenessNode, io

from . import types
from .core.references import MAX_REFERENCES
from .host.encode import CROP_MODES, encode_references


class LikenessImageEncode(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessImageEncode",
            display_name="Likeness Image Encode",
            category=types.CATEGORY,
            description="Encodes reference images with a CLIP vision model. A batch of images gives several "
                        "references; their tokens are concatenated, so attention sees them all (Likeness Merge "
                        "References offers averaging and other modes).",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="From Load CLIP Vision. Must be the encoder your "
                                    "adapter needs (the adapter loader says which)."),
                io.Image.Input("image", tooltip="One or more reference images (at most 256); each image is one "
                                                "reference."),
                io.Combo.Input("crop", options=list(CROP_MODES), default="center",
                               tooltip="center: crop the middle square. top/bottom/left/right: crop the square at "
                                       "that edge (e.g. top keeps a portrait's head). pad: add borders in the "
                                       "encoder's mean colour to keep the whole image. squash: resize to a square."),
                io.Float.Input("sharpen", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Unsharp-mask strength before encoding; helps small details survive the "
                                       "224 px encoder input."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: only the white area of each reference is seen; the rest is "
                                      "replaced by neutral grey."),
                io.Int.Input("encode_batch_size", default=0, min=0, max=MAX_REFERENCES, optional=True,
                             tooltip="How many images go through the encoder at once; 0 = all at once. Lower it "
                                     "when many references run out of memory. The progress bar and Cancel act "
                                     "between batches."),
                io.Int.Input("enhance_tiles", default=1, min=1, max=16, optional=True,
                             tooltip="CLIP-vision enhancer: also encode each image as an N x N grid of tiles and "
                                     "merge their features spatially, so small details reach the encoder at a "
                                     "higher resolution. 1 = off; 2-3 is typical."),
                io.Float.Input("enhance_ratio", default=1.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="With enhance_tiles > 1: how much of the whole-image features to keep. One "
                                       "image gives two references (whole x ratio, and the tiles); several images "
                                       "give ratio x whole + (1 - ratio) x tiles each."),
            ],
            outputs=[types.References.Output(display_name="references")],
        )

    @classmethod
    def execute(cls, clip_vision, image, crop, sharpen, mask=None, encode_batch_size=0, enhance_tiles=1,
                enhance_ratio=1.0) -> io.NodeOutput:
        return io.NodeOutput(encode_references(clip_vision, image, crop, sharpen, mask, batch_size=encode_batch_size,
                                               enhance_tiles=enhance_tiles, enhance_ratio=enhance_ratio))
