"""LikenessFrameWeights: per-frame weights (a FLOAT list) and the images they go with, for animation."""

from __future__ import annotations

import torch

from .host.api import LikenessNode, io, ui

from . import types
from .core.frames import METHODS, TIMINGS, FrameStrategy, frame_schedule, parse_weights_text
from .core.validation import parse_problem


def _frames(images: torch.Tensor | None, indices):
    if images is None or indices is None:
        return None
    return images[torch.tensor(indices, dtype=torch.long)]


class LikenessFrameWeights(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessFrameWeights",
            display_name="Likeness Frame Weights",
            category=f"{types.CATEGORY}/animation",
            description="A weight for every frame of an animation (a FLOAT list for Likeness Apply's `weight` with "
                        "unfold_batch on), and the reference images spread over the frames: each image held for a "
                        "stretch, or pairs cross-faded (weights for image_1, weights_invert for image_2).",
            inputs=[
                io.String.Input("weights", default="1.0, 0.0", multiline=True,
                                tooltip="custom timing: one weight per frame. Other timings: the first and last "
                                        "numbers are where the curve starts and ends."),
                io.Combo.Input("timing", options=list(TIMINGS), default="linear",
                               tooltip="The curve from the first to the last weight (see the help page; ease_in "
                                       "rises fast, ease_out slowly). custom: use the weights as listed."),
                io.Int.Input("frames", default=0, min=0, max=9999, tooltip="Frames per curve (at least 2)."),
                io.Int.Input("start_frame", default=0, min=0, max=9999,
                             tooltip="Hold the first weight until this frame, then start the curve."),
                io.Int.Input("end_frame", default=9999, min=0, max=9999,
                             tooltip="The curve ends here (at most `frames`); the last weight holds after it."),
                io.Int.Input("add_starting_frames", default=0, min=0, max=9999,
                             tooltip="With images: this many extra frames of the first image and weight in front."),
                io.Int.Input("add_ending_frames", default=0, min=0, max=9999,
                             tooltip="With images: this many extra frames of the last image and weight at the end."),
                io.Combo.Input("method", options=list(METHODS), default="full batch",
                               tooltip="With images. full batch: each image holds for one curve. shift batches: "
                                       "each image fades into the next. alternate batches: pairs alternate."),
                io.Image.Input("image", optional=True, tooltip="Optional: the reference images to spread over the "
                                                               "frames."),
                types.WeightsStrategy.Input("weights_strategy", optional=True,
                                            tooltip="Optional: the settings of another Likeness Frame Weights node, "
                                                    "used instead of the widgets (e.g. for a second image set)."),
            ],
            outputs=[
                io.Float.Output(display_name="weights", tooltip="One weight per frame (a FLOAT list)."),
                io.Float.Output(display_name="weights_invert", tooltip="The same list, last frame first."),
                io.Int.Output(display_name="total_frames"),
                io.Image.Output(display_name="image_1", tooltip="The image of each frame (empty without images)."),
                io.Image.Output(display_name="image_2", tooltip="The image each frame fades to (shift and "
                                                                "alternate; empty otherwise)."),
                types.WeightsStrategy.Output(display_name="weights_strategy"),
            ],
        )

    @classmethod
    def check_inputs(cls, weights=None, **_):
        return parse_problem(parse_weights_text, weights)

    @classmethod
    def execute(cls, weights, timing, frames, start_frame, end_frame, add_starting_frames, add_ending_frames,
                method, image=None, weights_strategy=None) -> io.NodeOutput:
        count = image.shape[0] if image is not None else 0
        strategy = weights_strategy or FrameStrategy(weights, timing, frames, start_frame, end_frame,
                                                     add_starting_frames, add_ending_frames, method, count)
        schedule = frame_schedule(strategy, count)
        text = (f"{schedule.total_frames} frames; weights {', '.join(f'{w:.3g}' for w in schedule.weights[:12])}"
                + (" ..." if schedule.total_frames > 12 else ""))
        return io.NodeOutput(list(schedule.weights), list(schedule.weights_invert), schedule.total_frames,
                             _frames(image, schedule.image_1), _frames(image, schedule.image_2), strategy,
                             ui=ui.PreviewText(text))
