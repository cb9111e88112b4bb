"""LikenessMergeReferences: many reference sets -> one, by concatenation or a combine mode, with weights and
optional outlier rejection."""

from __future__ import annotations

import logging

from .host.api import LikenessNode, io, ui

from . import types
from .core.merge import MERGE_MODES, gather, merge_references, parse_weights
from .core.validation import parse_problem

log = logging.getLogger(__name__)

INPUT_SLOTS = 12  # sockets; each may carry a batch, so a merge can hold any number of references


def slot_name(i: int) -> str:
    return f"references_{i}"


class LikenessMergeReferences(LikenessNode):
    @classmethod
    def define_schema(cls):
        slots = [types.References.Input(
            slot_name(1), tooltip="References from Likeness Image Encode, a face encode node, Likeness Load "
                                  "References or another merge. A batch counts as several references.")]
        slots += [types.References.Input(slot_name(i), optional=True, tooltip="More references (optional).")
                  for i in range(2, INPUT_SLOTS + 1)]
        return io.Schema(
            node_id="LikenessMergeReferences",
            display_name="Likeness Merge References",
            category=types.CATEGORY,
            description="Merges several references of one subject: keeps them all side by side (concat) or "
                        "combines their features into one reference (average, weighted average, norm average, "
                        "norm average (per element), add, subtract, max, min). Can drop references that do not look like the others.",
            inputs=[
                *slots,
                io.Combo.Input("mode", options=list(MERGE_MODES), default="concat",
                               tooltip="concat: attention sees every reference (cost grows with the count). The "
                                       "other modes make one reference from all of them; the help page gives each "
                                       "formula."),
                io.String.Input("weights", default="", multiline=False, placeholder="1, 1, 0.5",
                                tooltip="Optional: one number per reference in input order (each image of a batch "
                                        "counts), or one number for all. 0 drops a reference. Fractional weights "
                                        "are used by concat (scales each reference's features), weighted average, "
                                        "norm average, add and subtract. Empty: all 1."),
                io.Boolean.Input("drop_outliers", default=False,
                                 tooltip="Drop references whose identity (faces) or image embedding is far from the "
                                         "mean of the others. Needs at least 3 references."),
                io.Float.Input("outlier_threshold", default=0.3, min=-1.0, max=1.0, step=0.01,
                               tooltip="A reference is dropped when the cosine between its embedding and the mean "
                                       "of the others is below this. Face identities: 0.2-0.4. CLIP image "
                                       "embeddings are all alike, so use 0.6-0.85 for them."),
            ],
            outputs=[types.References.Output(display_name="references")],
        )

    @classmethod
    def check_inputs(cls, weights=None, **_):
        return parse_problem(parse_weights, weights)

    @classmethod
    def execute(cls, mode, weights="", drop_outliers=False, outlier_threshold=0.3, **references) -> io.NodeOutput:
        connected = [(slot_name(i), references.get(slot_name(i))) for i in range(1, INPUT_SLOTS + 1)]
        gathered = gather([(name, refs) for name, refs in connected if refs is not None])
        merged, report = merge_references(gathered, mode, parse_weights(weights),
                                          outlier_threshold if drop_outliers else None, weights_text=weights or "")
        text = report.text()
        log.info("Likeness merge: %s", text.replace("\n", "; "))
        return io.NodeOutput(merged, ui=ui.PreviewText(text))
