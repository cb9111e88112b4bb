"""LikenessProject: encoder features -> image tokens with the adapter's projection."""

from __future__ import annotations

import comfy.model_management
from comfy_api.v0_0_2 import io

from . import types
from .core.references import project_references


class LikenessProject(io.ComfyNode):
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
                types.References.Input("references", tooltip="From Likeness Image Encode."),
                types.References.Input("negative", optional=True,
                                       tooltip="Optional references for the uncond side. Without it the reference "
                                               "implementation's choice is used: zero embeddings for standard "
                                               "adapters, the features of an image in the encoder's mean colour "
                                               "(all zero after normalisation) for plus, full face and "
                                               "composition."),
            ],
            outputs=[types.Tokens.Output(display_name="tokens")],
        )

    @classmethod
    def execute(cls, adapter, references, negative=None) -> io.NodeOutput:
        device = comfy.model_management.get_torch_device()
        return io.NodeOutput(project_references(adapter, references, negative, device=device))
