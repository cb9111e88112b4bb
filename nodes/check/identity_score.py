"""LikenessIdentityScore: how close each generated face is to the person's references; best image, gate, report."""

from __future__ import annotations

from ..host.api import LikenessNode, io, ui

from .. import types
from ..host import check

THRESHOLD_TOOLTIP = ("The pass line on the score's scale. 0 = auto: for faces, the recogniser's verification "
                     "threshold (0.4) divided by the baseline, never above 1.0. 1.0 asks for as alike as the "
                     "person's own photos; 0.8 for 80 % of that.")


def score_outputs():
    return [io.Float.Output(display_name="scores", is_output_list=True,
                            tooltip="One score per image, in batch order (a list: nodes fed by it run per score)."),
            io.Image.Output(display_name="best", tooltip="The highest-scoring image."),
            io.Image.Output(display_name="passed",
                            tooltip="The images that reach the threshold. When none does, the nodes fed by this "
                                    "output do not run (no error); the report says why."),
            io.String.Output(display_name="report", tooltip="Per image: what was found, who it matched, the raw "
                                                            "cosine, the score, pass or fail. Also shown on the node.")]


class LikenessIdentityScore(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessIdentityScore",
            display_name="Likeness Identity Score",
            category=f"{types.CATEGORY}/check",
            description="Scores each generated image against the person's reference faces, calibrated by how alike "
                        "the person's own photos are (1.0 = as alike as those). Picks the best image, passes only "
                        "those above the threshold, and flags swapped or blended faces when several people are "
                        "expected.",
            inputs=[
                types.FaceModel.Input("face_model", tooltip="From Likeness Face Model Loader: the same pack that "
                                                            "made the references."),
                types.References.Input("references", tooltip="The person's face identities: from Likeness Face "
                                                             "Embed, Merge References or Load References. Several "
                                                             "photos calibrate the score; one uses a fixed baseline."),
                io.Image.Input("images", tooltip="The generated images to check (any batch size)."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=2.0, step=0.01, tooltip=THRESHOLD_TOOLTIP),
                types.References.Input("references_2", optional=True,
                                       tooltip="A second person expected in the same images."),
                types.References.Input("references_3", optional=True, tooltip="A third person."),
                types.References.Input("references_4", optional=True, tooltip="A fourth person."),
            ],
            outputs=score_outputs(),
        )

    @classmethod
    def execute(cls, face_model, references, images, threshold, references_2=None, references_3=None,
                references_4=None) -> io.NodeOutput:
        inputs = [(name, refs) for name, refs in (("references", references), ("references_2", references_2),
                                                  ("references_3", references_3), ("references_4", references_4))
                  if refs is not None]
        verdict = check.score_faces(face_model, inputs, images, threshold)
        scores, best, passed, report = check.outputs(verdict, images)
        return io.NodeOutput(scores, best, passed, report, ui=ui.PreviewText(report))
