"""LikenessIDEncoderLoader (PuLID's EVA-CLIP and face parsing, from local files) and LikenessPuLID (the one-node
path: photos in, a MODEL with the identity out)."""

from __future__ import annotations

import comfy.model_management
from .host.api import LikenessNode, io, ui

from . import types
from .core.errors import IncompatibleError
from .core.pulid import PULID_METHODS
from .core.references import project_references
from .core.schedules import window_problem
from .host import face as host_face
from .host import id_encoder as host_id
from .host.pulid_patch import apply_pulid


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


class LikenessPuLID(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessPuLID",
            display_name="Likeness PuLID",
            category=types.CATEGORY,
            description="PuLID in one node: face photos in, a copy of the MODEL that keeps that identity out. SDXL "
                        "with PuLID v1 / v1.1 files, FLUX with PuLID-FLUX files. The MODEL you connect is not "
                        "changed. Use a real person's likeness only with their consent.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model (PuLID v1, v1.1) or a FLUX.1 model (PuLID-FLUX)."),
                types.Adapter.Input("adapter", tooltip="A PuLID file from Likeness Adapter Loader (models/pulid)."),
                types.FaceModel.Input("face_model", tooltip="Likeness Face Model Loader with antelopev2: PuLID was "
                                                            "trained on its identities."),
                types.IDEncoder.Input("id_encoder", tooltip="From Likeness ID Encoder Loader (EVA-CLIP and face "
                                                            "parsing)."),
                io.Image.Input("image", tooltip="One or more photos of the person. Photos without a face are left out; "
                                                "the largest face of each photo is used. To merge several photos "
                                                "with outlier rejection, use the modular nodes."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05,
                               tooltip="Strength of the identity. 1.0 is the reference default; 0.8-1.2 is typical."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling schedule (in sigmas) where the identity starts."),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling schedule where the identity stops."),
                io.Combo.Input("method", options=list(PULID_METHODS), default="fidelity",
                               tooltip="SDXL only: fidelity (default), style (more stylisation) or neutral; see "
                                       "Likeness Apply's pulid_method. PuLID-FLUX ignores it."),
                io.Mask.Input("attn_mask", optional=True,
                              tooltip="Optional: where in the picture the identity acts (white = full)."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def check_inputs(cls, start_at=None, end_at=None, **_):
        return window_problem(start_at, end_at)

    @classmethod
    def execute(cls, model, adapter, face_model, id_encoder, image, weight, start_at, end_at, method,
                attn_mask=None) -> io.NodeOutput:
        if not adapter.detected.pulid:
            raise IncompatibleError(
                f"Likeness PuLID takes PuLID files; adapter `{adapter.name}` is {adapter.detected.summary()}. Use "
                "Likeness Apply (simple) or the modular nodes for IP-Adapter files.")
        refs, _, summary = host_face.embed_faces(face_model, image, "largest", 0, "skip", 224, None,
                                                 id_encoder=id_encoder)
        tokens = project_references(adapter, refs, device=comfy.model_management.get_torch_device())
        patched = apply_pulid(model, adapter, tokens, weight, "linear", start_at, end_at, "V only", attn_mask, method)
        return io.NodeOutput(patched, ui=ui.PreviewText(summary))
