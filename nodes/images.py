"""LikenessPrepImage and LikenessNoiseImage: reference images made square for the encoder, and noise negatives."""

from __future__ import annotations

from .host.api import LikenessNode, io

from . import types
from .core.images import CROP_POSITIONS, INTERPOLATIONS, NOISE_TYPES, noise_image, prepare_for_encoder


class LikenessPrepImage(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessPrepImage",
            display_name="Likeness Prep Image",
            category=f"{types.CATEGORY}/images",
            description="Makes reference images square at the encoder's size: crop at a chosen edge (or pad), resize "
                        "with a chosen filter, and sharpen with contrast-adaptive sharpening. The result is an IMAGE "
                        "you can preview, then encode with Likeness Image Encode.",
            inputs=[
                io.Image.Input("image", tooltip="The reference images."),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="LANCZOS",
                               tooltip="The resize filter. LANCZOS keeps the most detail; NEAREST keeps hard "
                                       "pixel edges."),
                io.Combo.Input("crop_position", options=[*CROP_POSITIONS[1:], "center", "pad"], default="center",
                               tooltip="Which square to keep: at the top, bottom, left or right edge, the centre, or "
                                       "pad (black bars around the whole image)."),
                io.Float.Input("sharpening", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Contrast-adaptive sharpening after the resize (0 = none). Flat areas get "
                                       "more than edges, so it does not ring. 0.1-0.3 helps faces."),
                io.Int.Input("size", default=224, min=16, max=2048, step=1, optional=True,
                             tooltip="Side of the square output in pixels: 224 for the ViT-H and ViT-bigG "
                                     "encoders, 336 for ViT-L/14-336 (Kolors)."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, image, interpolation, crop_position, sharpening, size=224) -> io.NodeOutput:
        return io.NodeOutput(prepare_for_encoder(image, crop_position, size, interpolation, sharpening))


class LikenessNoiseImage(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessNoiseImage",
            display_name="Likeness Noise Image",
            category=f"{types.CATEGORY}/images",
            description="Makes a noisy image to use as a negative reference (encode it and connect it to Likeness "
                        "Project's `negative`): the image prompt then moves away from noise, which often gives "
                        "cleaner, sharper results. The same input always gives the same noise.",
            inputs=[
                io.Combo.Input("type", options=list(NOISE_TYPES), default="fade",
                               tooltip="fade: blend towards uniform noise. dissolve: replace random pixels with "
                                       "noise. gaussian: add Gaussian noise. shuffle: scatter and flip the image, "
                                       "then add noise."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much noise: 0 leaves the image, 1 is pure noise (fade, dissolve)."),
                io.Int.Input("blur", default=0, min=0, max=32, step=1,
                             tooltip="Gaussian blur of this many pixels after the noise (0 = none)."),
                io.Image.Input("image_optional", optional=True,
                               tooltip="Optional: the image to add noise to (centre-cropped and resized). Without "
                                       "it, noise on black."),
                io.Int.Input("size", default=224, min=16, max=2048, step=1, optional=True,
                             tooltip="Side of the square output in pixels (224; 336 for ViT-L/14-336)."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, type, strength, blur, image_optional=None, size=224) -> io.NodeOutput:  # noqa: A002 - the widget name
        return io.NodeOutput(noise_image(type, strength, blur, image_optional, size))
