"""LikenessSubjectScore: image-embedding likeness (CLIP-I, DINO) for subjects that are not faces."""

from __future__ import annotations

from ..host.api import LikenessNode, io, ui

from .. import types
from ..host import check
from .identity_score import score_outputs


class LikenessSubjectScore(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessSubjectScore",
            display_name="Likeness Subject Score",
            category=f"{types.CATEGORY}/check",
            description="Scores each generated image against photos of a subject that is not a face (a product, a "
                        "mascot, a character, a style) by image-embedding cosine (CLIP-I; DINO with a DINOv2 "
                        "model), calibrated by how alike the subject's own photos are. Best image, gate and report "
                        "as in Likeness Identity Score.",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="From Load CLIP Vision: a CLIP vision model, or DINOv2 "
                                                           "(which ComfyUI's loader also reads)."),
                io.Image.Input("references", tooltip="Photos of the subject; two or more calibrate the score."),
                io.Image.Input("images", tooltip="The generated images to check (any batch size)."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=2.0, step=0.01,
                               tooltip="The pass line on the score's scale. 0 = auto: halfway between what a blank "
                                       "image scores and 1.0 (as alike as the subject's own photos)."),
            ],
            outputs=score_outputs(),
        )

    @classmethod
    def execute(cls, clip_vision, references, images, threshold) -> io.NodeOutput:
        verdict = check.score_subject(clip_vision, references, images, threshold)
        scores, best, passed, report = check.outputs(verdict, images)
        return io.NodeOutput(scores, best, passed, report, ui=ui.PreviewText(report))
