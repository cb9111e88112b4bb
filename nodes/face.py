"""LikenessFaceModelLoader and LikenessFaceEmbed: identity embeddings from photos, for the FaceID adapters."""

from __future__ import annotations

from .host.api import LikenessNode, io, ui

from . import types
from .core.face import CROP_SIZES, ON_NO_FACE, SELECT_MODES
from .core.instantid import keypoint_images
from .host import face as host_face

FaceModel = types.FaceModel

host_face.warn_if_runtime_shadowed()


def pack_options() -> list[str]:
    return host_face.pack_choices()


class LikenessFaceModelLoader(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessFaceModelLoader",
            display_name="Likeness Face Model Loader",
            category=f"{types.CATEGORY}/loaders",
            description="Loads an insightface model pack (face detector + recogniser) from "
                        "models/insightface/models/<pack>/. The IP-Adapter FaceID models were trained with buffalo_l.",
            inputs=[
                io.Combo.Input("model_pack", options=pack_options(), default="buffalo_l",
                               tooltip="A folder of .onnx files in models/insightface/models. buffalo_l for "
                                       "IP-Adapter FaceID; antelopev2 is what InstantID and PuLID use."),
                io.Combo.Input("provider", options=list(host_face.PROVIDER_CHOICES), default="auto",
                               tooltip="Where onnxruntime runs the face models. auto: the GPU ComfyUI uses when "
                                       "this onnxruntime build supports it, else the CPU (always the CPU on macOS). "
                                       "The node reports the provider that really runs."),
            ],
            outputs=[FaceModel.Output(display_name="face_model")],
        )

    @classmethod
    def fingerprint_inputs(cls, model_pack, provider):
        return (host_face.pack_fingerprint(model_pack), provider)

    @classmethod
    def execute(cls, model_pack, provider) -> io.NodeOutput:
        model = host_face.load_face_model(model_pack, provider)
        return io.NodeOutput(model, ui=ui.PreviewText(model.describe()))


class LikenessFaceEmbed(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessFaceEmbed",
            display_name="Likeness Face Embed",
            category=types.CATEGORY,
            description="Finds a face in each photo, aligns it and computes its identity embedding: one reference "
                        "per photo, for the FaceID adapters, InstantID and PuLID (both with antelopev2), and "
                        "InstantID's keypoint image of each face. Connect clip_vision for FaceID Plus / Plus v2, "
                        "id_encoder for PuLID.",
            inputs=[
                FaceModel.Input("face_model", tooltip="From Likeness Face Model Loader."),
                io.Image.Input("image", tooltip="One or more photos of the person (at most 256); each photo gives one "
                                                "reference. FaceID Portrait is made for several photos of the same "
                                                "person."),
                io.Combo.Input("select", options=list(SELECT_MODES), default="largest",
                               tooltip="Which face to take when a photo has several, counted from `index`: the "
                                       "largest first, from the left, from the right, from the top, or the most "
                                       "confident detection first."),
                io.Int.Input("index", default=0, min=0, max=99,
                             tooltip="0 takes the first face in the `select` order, 1 the second, and so on."),
                io.Combo.Input("on_no_face", options=list(ON_NO_FACE), default="error",
                               tooltip="error: stop and say which photo has no face. skip: leave that photo out "
                                       "and carry on (an error only if no photo has a face)."),
                io.Combo.Input("crop_size", options=[str(s) for s in CROP_SIZES], default="224",
                               tooltip="Size of the aligned face crop that clip_vision sees (and the crops "
                                       "output). 224 is what the FaceID Plus models were trained on; 256 keeps "
                                       "more margin around the face; 336 is for Kolors FaceID Plus, whose "
                                       "ViT-L/14-336 encoder reads 336 px."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Needed by FaceID Plus and Plus v2: the ViT-H image encoder "
                                            "(CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors). Not used by FaceID "
                                            "and Portrait."),
                types.IDEncoder.Input("id_encoder", optional=True,
                                      tooltip="Needed by PuLID: from Likeness ID Encoder Loader. Each face is also "
                                              "aligned to 512 px, parsed, its background painted white and the "
                                              "rest made grey, and encoded with EVA-CLIP, as PuLID does. Use the "
                                              "antelopev2 face model with it."),
            ],
            outputs=[types.References.Output(display_name="references"),
                     io.Image.Output(display_name="crops"),
                     io.Image.Output(display_name="keypoints",
                                     tooltip="InstantID's keypoint drawing of each embedded face, on a canvas of its "
                                             "photo's size: the hint for Likeness InstantID Control.")],
        )

    @classmethod
    def execute(cls, face_model, image, select, index, on_no_face, crop_size, clip_vision=None,
                id_encoder=None) -> io.NodeOutput:
        refs, crops, summary = host_face.embed_faces(face_model, image, select, index, on_no_face, int(crop_size),
                                                     clip_vision, id_encoder=id_encoder)
        keypoints = keypoint_images(refs.face.keypoints, refs.face.image_sizes)
        return io.NodeOutput(refs, crops, keypoints, ui=ui.PreviewText(summary))
