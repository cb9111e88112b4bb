"""LikenessProject: encoder features -> image tokens with the adapter's projection."""

from __future__ import annotations

import comfy.model_management
from .host.api import LikenessNode, io, ui

from . import types
from .core.face import plus_version_hint
from .core.references import project_references
from .core.variants import Layout

FACEID_PLUS_VERSIONS = ("auto", "v1", "v2")


def faceid_plus_choice(adapter, version: str) -> tuple[bool, str]:
    """(v2?, why) for a FaceID Plus adapter: v1 and v2 files have the same weights layout, so only the file name
    hints at the version, and the user can override it."""
    if version == "auto":
        v2, why = plus_version_hint(adapter)
        return v2, f"{why}; the weights cannot tell v1 from v2, set faceid_plus_version to override"
    return version == "v2", "set by faceid_plus_version"


class LikenessProject(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessProject",
            display_name="Likeness Project",
            category=types.CATEGORY,
            description="Turns encoded references into the adapter's image tokens, for the positive (cond) "
                        "and negative (uncond) sides.",
            inputs=[
                types.Adapter.Input("adapter", tooltip="From Likeness Adapter Loader."),
                types.References.Input("references", tooltip="From Likeness Image Encode, or from Likeness Face "
                                                                     "Embed for FaceID adapters."),
                types.References.Input("negative", optional=True,
                                       tooltip="Optional references for the uncond side. Without it the reference "
                                               "implementation's choice is used: zero embeddings for standard "
                                               "adapters, the features of an image in the encoder's mean colour "
                                               "(all zero after normalisation) for plus, full face and "
                                               "composition."),
                io.Combo.Input("faceid_plus_version", options=list(FACEID_PLUS_VERSIONS), default="auto",
                               optional=True,
                               tooltip="FaceID Plus only. v1 and v2 files have identical weights, so the version "
                                       "cannot be detected: auto guesses from the file name ('plusv2' means v2; "
                                       "SDXL is always v2). The node shows what it chose."),
                io.Float.Input("faceid_v2_weight", default=1.0, min=-1.0, max=5.0, step=0.05, optional=True,
                               tooltip="FaceID Plus v2 only: strength of the face-structure part (CLIP features "
                                       "of the face crop) added to the identity tokens. 1.0 is the reference "
                                       "default; higher copies the face shape more closely."),
            ],
            outputs=[types.Tokens.Output(display_name="tokens")],
        )

    @classmethod
    def execute(cls, adapter, references, negative=None, faceid_plus_version="auto",
                faceid_v2_weight=1.0) -> io.NodeOutput:
        device = comfy.model_management.get_torch_device()
        if adapter.detected.layout is not Layout.FACEID_PLUS:
            return io.NodeOutput(project_references(adapter, references, negative, device=device))
        v2, why = faceid_plus_choice(adapter, faceid_plus_version)
        tokens = project_references(adapter, references, negative, device=device, faceid_plus_v2=v2,
                                    faceid_v2_weight=faceid_v2_weight)
        used = f"FaceID Plus v2 (shortcut weight {faceid_v2_weight:g})" if v2 else "FaceID Plus v1"
        return io.NodeOutput(tokens, ui=ui.PreviewText(f"{used}: {why}."))
