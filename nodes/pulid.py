"""LikenessIDEncoderLoader: PuLID's EVA-CLIP and face parsing, from local files."""

from __future__ import annotations

from .host.api import LikenessNode, io, ui

from . import types
from .host import id_encoder as host_id


class LikenessIDEncoderLoader(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessIDEncoderLoader",
            display_name="Likeness ID Encoder Loader",
            category=f"{types.CATEGORY}/loaders",
            description="Loads what PuLID reads besides the identity: EVA02-CLIP-L-14-336 from models/clip_vision "
                        "(found by its weights) and facexlib's BiSeNet face parsing from models/facexlib. Connect it "
                        "to id_encoder on Likeness Face Embed. Nothing is downloaded.",
            inputs=[
                io.Combo.Input("clip_name", options=host_id.eva_choices(), default=host_id.EVA_FILE,
                               tooltip=f"EVA02-CLIP-L-14-336 in models/clip_vision: {host_id.EVA_FILE} from "
                                       "QuanSun/EVA-CLIP on Hugging Face (any file name works; the node checks "
                                       "the weights)."),
                io.Combo.Input("parsing_model", options=host_id.parsing_choices(), default=host_id.PARSING_FILE,
                               tooltip=f"facexlib's BiSeNet face parsing, {host_id.PARSING_FILE}, in "
                                       "models/facexlib."),
            ],
            outputs=[types.IDEncoder.Output(display_name="id_encoder")],
        )

    @classmethod
    def fingerprint_inputs(cls, clip_name, parsing_model):
        return host_id.fingerprint(clip_name, parsing_model)

    @classmethod
    def execute(cls, clip_name, parsing_model) -> io.NodeOutput:
        encoder = host_id.load_id_encoder(clip_name, parsing_model)
        return io.NodeOutput(encoder, ui=ui.PreviewText(encoder.describe()))
