"""LikenessProject: encoder features -> image tokens with the adapter's projection."""

from __future__ import annotations

import comfy.model_management
from .host.api import LikenessNode, io, ui

from . import types
from .core.face import plus_version_hint
from .core.instantid import DEFAULT_NOISE, is_instantid
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


def instantid_summary(references, negative, noise: float) -> str:
    n = references.count
    what = "1 identity" if n == 1 else f"the average of {n} identities"
    if negative is not None:
        uncond = "the negative references' average identity"
    else:
        uncond = f"noise {noise:g} seeded from the face" if noise > 0 else "zeros (noise 0)"
    return f"InstantID: 16 tokens from {what}; uncond from {uncond}."


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
                                               "composition. FaceID: Face Embed references; FaceID Plus also "
                                               "takes Image Encode references of a plain negative image (their "
                                               "CLIP features, with a zero identity)."),
                io.Combo.Input("faceid_plus_version", options=list(FACEID_PLUS_VERSIONS), default="auto",
                               optional=True,
                               tooltip="FaceID Plus only. v1 and v2 files have identical weights, so the version "
                                       "cannot be detected: auto guesses from the file name ('plusv2' means v2; "
                                       "SDXL is always v2). The node shows what it chose."),
                io.Float.Input("faceid_v2_weight", default=1.0, min=-1.0, max=5.0, step=0.05, optional=True,
                               tooltip="FaceID Plus v2 only: strength of the face-structure part (CLIP features "
                                       "of the face crop) added to the identity tokens. 1.0 is the reference "
                                       "default; higher copies the face shape more closely."),
                io.Float.Input("noise", default=DEFAULT_NOISE, min=0.0, max=1.0, step=0.01, optional=True,
                               tooltip="InstantID only: the uncond side's identity is uniform noise of this size, "
                                       "seeded from the face, as ComfyUI's InstantID pack does (it reduces burn); 0 "
                                       "projects zeros, as the original InstantID pipeline does. Not used when "
                                       "negative references are connected."),
            ],
            outputs=[types.Tokens.Output(display_name="tokens")],
        )

    @classmethod
    def execute(cls, adapter, references, negative=None, faceid_plus_version="auto",
                faceid_v2_weight=1.0, noise=DEFAULT_NOISE) -> io.NodeOutput:
        device = comfy.model_management.get_torch_device()
        if is_instantid(adapter):
            tokens = project_references(adapter, references, negative, device=device, noise=noise)
            return io.NodeOutput(tokens, ui=ui.PreviewText(instantid_summary(references, negative, noise)))
        if adapter.detected.layout is not Layout.FACEID_PLUS:
            return io.NodeOutput(project_references(adapter, references, negative, device=device))
        v2, why = faceid_plus_choice(adapter, faceid_plus_version)
        tokens = project_references(adapter, references, negative, device=device, faceid_plus_v2=v2,
                                    faceid_v2_weight=faceid_v2_weight)
        used = f"FaceID Plus v2 (shortcut weight {faceid_v2_weight:g})" if v2 else "FaceID Plus v1"
        return io.NodeOutput(tokens, ui=ui.PreviewText(f"{used}: {why}."))
