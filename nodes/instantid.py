"""InstantID nodes: the keypoint image of a pose photo, IdentityNet in the conditioning, and the one-node path."""

from __future__ import annotations

import logging

import comfy.model_management
from .host.api import LikenessNode, io, ui

from . import types
from .apply import apply_tokens
from .core.apply import check_adapter_fits
from .core.errors import IncompatibleError
from .core.face import SELECT_MODES
from .core.instantid import DEFAULT_NOISE, VARIANT, is_instantid, keypoint_images, project_identity
from .core.schedules import window_problem
from .core.variants import variant_by_key
from .host import face as host_face
from .host.instantid import IDENTITYNET_FILE, apply_identity_control, pose_keypoints, require_controlnet
from .host.sites import find_sites

log = logging.getLogger(__name__)

MAX_SIDE = 8192


def _strength_input(name: str, tooltip: str):
    return io.Float.Input(name, default=0.8, min=0.0, max=10.0, step=0.01, tooltip=tooltip)


def _window_inputs():
    return [
        io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling schedule where InstantID starts acting."),
        io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling schedule where InstantID stops acting."),
    ]


def _noise_input():
    return io.Float.Input("noise", default=DEFAULT_NOISE, min=0.0, max=1.0, step=0.01,
                          tooltip="The uncond side's identity: uniform noise of this size, seeded from the face, as "
                                  "ComfyUI's InstantID pack does (it reduces burn); 0 projects zeros, as the original "
                                  "InstantID pipeline does.")


def require_instantid(adapter) -> None:
    if not is_instantid(adapter):
        title = variant_by_key(VARIANT).title
        raise IncompatibleError(
            f"adapter `{adapter.name}` is {adapter.detected.summary().split(';')[0]}, not {title}. Load InstantID's "
            "ip-adapter.bin (huggingface.co/InstantX/InstantID) from models/instantid; if the loader took it for "
            "another family, set the loader's variant to InstantID.")


class LikenessFaceKeypoints(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessFaceKeypoints",
            display_name="Likeness Face Keypoints",
            category=types.CATEGORY,
            description="Draws InstantID's keypoint image (the pose IdentityNet follows) from a face in a pose photo. "
                        "The photo may show another person: only where the eyes, nose and mouth are is used.",
            inputs=[
                types.FaceModel.Input("face_model", tooltip="From Likeness Face Model Loader (antelopev2 for "
                                                            "InstantID; any pack finds keypoints)."),
                io.Image.Input("image", tooltip="The pose photo(s); each gives one keypoint image."),
                io.Combo.Input("select", options=list(SELECT_MODES), default="largest",
                               tooltip="Which face to take when the photo has several, counted from `index`."),
                io.Int.Input("index", default=0, min=0, max=99,
                             tooltip="0 takes the first face in the `select` order, 1 the second, and so on."),
                io.Int.Input("width", default=0, min=0, max=MAX_SIDE, step=8,
                             tooltip="Width of the keypoint image; 0 keeps the photo's (or its aspect, when only "
                                     "height is set). Match it to the picture you generate."),
                io.Int.Input("height", default=0, min=0, max=MAX_SIDE, step=8,
                             tooltip="Height of the keypoint image; 0 keeps the photo's (or its aspect, when only "
                                     "width is set)."),
            ],
            outputs=[io.Image.Output(display_name="keypoints")],
        )

    @classmethod
    def execute(cls, face_model, image, select, index, width, height) -> io.NodeOutput:
        kps, sizes = pose_keypoints(face_model, image, select, index)
        drawing = keypoint_images(kps, sizes, width, height)
        text = f"{kps.shape[0]} pose(s), {drawing.shape[2]}x{drawing.shape[1]} keypoint image(s)"
        return io.NodeOutput(drawing, ui=ui.PreviewText(text))


def _conditioning_inputs():
    return [io.Conditioning.Input("positive", tooltip="The positive conditioning (your prompt)."),
            io.Conditioning.Input("negative", tooltip="The negative conditioning.")]


def _control_net_input():
    return io.ControlNet.Input("control_net", tooltip=f"InstantID's IdentityNet, from Load ControlNet Model "
                                                      f"({IDENTITYNET_FILE} from InstantX/InstantID, in "
                                                      "models/controlnet).")


class LikenessInstantIDControl(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessInstantIDControl",
            display_name="Likeness InstantID Control",
            category=types.CATEGORY,
            description="Adds IdentityNet, InstantID's ControlNet, to the conditioning: it follows the keypoint image "
                        "and reads the identity tokens (not the text) in its cross-attention. The conditioning you "
                        "connect is not changed.",
            inputs=[
                *_conditioning_inputs(),
                _control_net_input(),
                types.Tokens.Input("tokens", tooltip="From Likeness Project with the InstantID adapter: the same "
                                                     "tokens Likeness Apply gets."),
                io.Image.Input("keypoints", tooltip="The pose: from Likeness Face Embed's keypoints output, or "
                                                    "Likeness Face Keypoints for a pose from another photo."),
                _strength_input("strength", "How strongly IdentityNet steers (the ControlNet's strength). 0.8 is the "
                                            "usual InstantID setting; lower it to loosen the pose."),
                *_window_inputs(),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: where IdentityNet acts (white), e.g. where the face should go."),
                io.Vae.Input("vae", optional=True, tooltip="Optional; only for ControlNets that need one. IdentityNet "
                                                           "does not."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def check_inputs(cls, start_at=None, end_at=None, **_):
        return window_problem(start_at, end_at)

    @classmethod
    def execute(cls, positive, negative, control_net, tokens, keypoints, strength, start_at, end_at, mask=None,
                vae=None) -> io.NodeOutput:
        positive, negative = apply_identity_control(positive, negative, control_net, tokens, keypoints, strength,
                                                    start_at, end_at, vae=vae, mask=mask)
        return io.NodeOutput(positive, negative)


class LikenessInstantID(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessInstantID",
            display_name="Likeness InstantID",
            category=types.CATEGORY,
            description="InstantID in one node: embeds the face in the photo(s), averages several photos, applies the "
                        "identity tokens to a copy of the MODEL and adds IdentityNet to the conditioning, posed like "
                        "the first photo or like pose_image.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model (or fine-tune)."),
                *_conditioning_inputs(),
                types.Adapter.Input("adapter", tooltip="InstantID's ip-adapter.bin from Likeness Adapter Loader."),
                _control_net_input(),
                types.FaceModel.Input("face_model", tooltip="Likeness Face Model Loader with the antelopev2 pack."),
                io.Image.Input("image", tooltip="One or more photos of the person; their identities are averaged."),
                io.Float.Input("weight", default=0.8, min=-1.0, max=5.0, step=0.01,
                               tooltip="Strength of the identity tokens in the MODEL's cross-attention."),
                _strength_input("cn_strength", "Strength of IdentityNet (the keypoint ControlNet)."),
                *_window_inputs(),
                _noise_input(),
                io.Image.Input("pose_image", optional=True,
                               tooltip="Optional: a photo whose face pose (position, size, angle) the picture takes; "
                                       "it may be another person. Without it the first photo's pose is used."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Conditioning.Output(display_name="positive"),
                     io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def check_inputs(cls, start_at=None, end_at=None, **_):
        return window_problem(start_at, end_at)

    @classmethod
    def execute(cls, model, positive, negative, adapter, control_net, face_model, image, weight, cn_strength,
                start_at, end_at, noise, pose_image=None) -> io.NodeOutput:
        require_instantid(adapter)
        require_controlnet(control_net)
        check_adapter_fits(adapter, find_sites(model))  # before the faces: an SD1.5 model stops here
        refs, _, summary = host_face.embed_faces(face_model, image)
        tokens = project_identity(adapter, refs, device=comfy.model_management.get_torch_device(), noise=noise)
        if pose_image is not None:
            kps, sizes = pose_keypoints(face_model, pose_image[:1])
            pose = "pose_image"
        else:
            kps, sizes = refs.face.keypoints[:1], refs.face.image_sizes[:1]
            pose = "the first photo"
        keypoints = keypoint_images(kps, sizes)
        patched = apply_tokens(model, adapter, tokens, weight, "linear", start_at, end_at)
        positive, negative = apply_identity_control(positive, negative, control_net, tokens, keypoints, cn_strength,
                                                    start_at, end_at)
        text = (f"InstantID: {summary}; {refs.count} identit{'y' if refs.count == 1 else 'ies averaged'}; pose from "
                f"{pose}; uncond noise {noise:g}")
        log.info("Likeness: %s", text)
        return io.NodeOutput(patched, positive, negative, ui=ui.PreviewText(text))

