"""IdentityNet in ComfyUI's conditioning, and the keypoints of pose photos.

How a ControlNet reads its context in ComfyUI (0.3.64): a conditioning entry's `control` (set by core
ControlNetApplyAdvanced, which this mirrors) runs at every step from `samplers.calc_cond_batch`, with the
entry's batched conds; `comfy.controlnet.ControlNet.get_control` passes `cond.get("crossattn_controlnet",
cond["c_crossattn"])` as the ControlNet's cross-attention context, and `model_base.BaseModel.extra_conds` turns
a conditioning entry's `cross_attn_controlnet` into that `crossattn_controlnet`. So IdentityNet reads the identity
tokens, not the text, when each entry carries them under `cross_attn_controlnet`.

The uncond side does what the original InstantID pipeline does under classifier-free guidance: the ControlNet
runs on both halves of the batch (the same hint, the same strength), and the uncond half's context is the uncond
identity tokens. Here the negative entries carry the control and the uncond tokens; `control_apply_to_uncond` is
False, as in ControlNetApplyAdvanced, because the negative conditioning has its own control.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.utils

from ..core.errors import IncompatibleError, InputError
from ..core.face import NoFaceError, choose_face, to_bgr_uint8
from ..core.instantid import VARIANT, control_context, is_instantid_tokens
from ..core.presets import MissingModelError
from ..core.references import ImageTokens
from ..core.variants import family_name, variant_by_key
from .catalog import searched

log = logging.getLogger(__name__)

_ROW = variant_by_key(VARIANT)
IDENTITYNET_FILE = _ROW.controlnet_file
IDENTITYNET_HINT = (f"Load InstantID's IdentityNet ControlNet with Load ControlNet Model: {IDENTITYNET_FILE} "
                    f"from {_ROW.controlnet_source}, in models/controlnet")


def controlnet_context_width(control_model: torch.nn.Module) -> int | None:
    """The width of the context a cldm ControlNet's cross-attention reads, or None when it has none."""
    for module in control_model.modules():
        attn2 = getattr(module, "attn2", None)
        if attn2 is not None and hasattr(attn2, "to_k"):
            return int(attn2.to_k.in_features)
    return None


def require_controlnet(control_net) -> None:
    """None is Likeness Unified Loader's control_net output when no IdentityNet file was found: say where it goes."""
    if control_net is None:
        folders = "; ".join(searched("controlnet")) or "no folders"
        raise MissingModelError(
            f"no IdentityNet ControlNet was given (Likeness Unified Loader found none). Put {IDENTITYNET_FILE} from "
            f"{_ROW.controlnet_source} in models/controlnet (searched: {folders}); a name containing `instantid` "
            "tells it apart from other ControlNets. Or load it with Load ControlNet Model.")


def check_controlnet(control_net, tokens: ImageTokens) -> None:
    """Refuse a ControlNet that cannot be IdentityNet for these tokens, saying what it is and what to load."""
    require_controlnet(control_net)
    inner = getattr(control_net, "control_model", None)
    if not isinstance(control_net, comfy.controlnet.ControlNet) or not isinstance(inner, comfy.cldm.cldm.ControlNet):
        kind = type(control_net).__name__
        raise IncompatibleError(
            f"control_net is a {kind} ({'a Control-LoRA' if inner is None else type(inner).__name__}), not a UNet "
            f"ControlNet that can read identity tokens. {IDENTITYNET_HINT}.")
    width = controlnet_context_width(inner)
    if width is None:
        raise IncompatibleError(
            f"control_net has no cross-attention, so it cannot read InstantID's identity tokens: it is not "
            f"IdentityNet. {IDENTITYNET_HINT}.")
    if width != tokens.context_width:
        raise IncompatibleError(
            f"control_net is a ControlNet for {family_name(width)} ({width}-wide cross-attention); InstantID's "
            f"identity tokens are {tokens.context_width} wide ({family_name(tokens.context_width)}), and IdentityNet "
            f"is an SDXL ControlNet. {IDENTITYNET_HINT}.")


def check_tokens(tokens: ImageTokens) -> None:
    if not is_instantid_tokens(tokens):
        title = variant_by_key(VARIANT).title
        raise IncompatibleError(
            f"the tokens were made by adapter `{tokens.adapter_name}`, which is not {title}: IdentityNet reads "
            f"InstantID's identity tokens. Project the face references with the InstantID adapter (ip-adapter.bin "
            "from huggingface.co/InstantX/InstantID); if the loader took that file for another family, set its "
            "variant to InstantID.")


class MaskedControl(comfy.controlnet.ControlBase):
    """A ControlNet whose residuals act only where `mask` is white (resized to each residual's grid). Controls
    chained before it are added as they are."""

    def __init__(self, inner: comfy.controlnet.ControlBase, mask: torch.Tensor):
        super().__init__()
        self.inner = inner  # its hint set, nothing chained before it
        self.mask = mask
        self.extra_hooks = inner.extra_hooks

    # ComfyUI calls these; extra arguments that later versions may add are passed on
    def pre_run(self, model, percent_to_timestep_function, *args, **kwargs):
        super().pre_run(model, percent_to_timestep_function, *args, **kwargs)
        self.inner.pre_run(model, percent_to_timestep_function, *args, **kwargs)

    def cleanup(self):
        self.inner.cleanup()
        super().cleanup()

    def get_models(self):
        return super().get_models() + self.inner.get_models()

    def inference_memory_requirements(self, dtype):
        return super().inference_memory_requirements(dtype) + self.inner.inference_memory_requirements(dtype)

    def copy(self):
        return MaskedControl(self.inner.copy(), self.mask).set_previous_controlnet(self.previous_controlnet)

    def _mask_like(self, residual: torch.Tensor, batched_number: int) -> torch.Tensor:
        mask = F.interpolate(self.mask[:, None].to(residual.device, torch.float32), size=residual.shape[-2:],
                             mode="bilinear", align_corners=False)
        return comfy.controlnet.broadcast_image_to(mask, residual.shape[0], batched_number).to(residual.dtype)

    def get_control(self, x_noisy, t, cond, batched_number, transformer_options, *args, **kwargs):
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options,
                                                            *args, **kwargs)
        own = self.inner.get_control(x_noisy, t, cond, batched_number, transformer_options, *args, **kwargs)
        if own is None:
            return previous
        own = {key: [None if r is None else r * self._mask_like(r, batched_number) for r in residuals]
               for key, residuals in own.items()}
        return self.control_merge(own, previous, output_dtype=None)


def _mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3 or 0 in mask.shape:
        raise InputError(f"mask should be a MASK [batch, height, width]; got shape {tuple(mask.shape)}.")
    return mask.detach().float().cpu()


def apply_identity_control(positive, negative, control_net, tokens: ImageTokens, keypoints: torch.Tensor,
                           strength: float, start_at: float, end_at: float, vae=None, mask=None):
    """New positive and negative conditioning whose entries run `control_net` on the keypoint image with the identity
    tokens as its context (cond tokens on the positive, uncond tokens on the negative). The inputs are untouched."""
    check_tokens(tokens)
    check_controlnet(control_net, tokens)
    if keypoints.ndim != 4 or keypoints.shape[-1] != 3 or keypoints.shape[0] == 0:
        raise InputError(f"keypoints should be an IMAGE [batch, height, width, 3] (from Likeness Face Embed or "
                         f"Likeness Face Keypoints); got shape {tuple(keypoints.shape)}.")
    if strength == 0:
        return positive, negative
    hint = keypoints.movedim(-1, 1)
    region = _mask(mask)
    device = comfy.model_management.intermediate_device()
    contexts = [c.to(device) for c in control_context(tokens)]
    made: dict = {}  # one control per control chained before it, shared by both sides as ControlNetApplyAdvanced does
    out = []
    for conditioning, context in zip((positive, negative), contexts):
        entries = []
        for embedding, options in conditioning:
            options = options.copy()
            previous = options.get("control")
            if previous not in made:
                net = control_net.copy().set_cond_hint(hint, strength, (start_at, end_at), vae=vae)
                if region is not None:
                    net = MaskedControl(net, region)
                made[previous] = net.set_previous_controlnet(previous)
            options["control"] = made[previous]
            options["control_apply_to_uncond"] = False
            options["cross_attn_controlnet"] = context
            entries.append([embedding, options])
        out.append(entries)
    return out[0], out[1]


# ---------------------------------------------------------------- keypoints of pose photos

def pose_keypoints(face_model, image: torch.Tensor, select: str = "largest", index: int = 0):
    """(keypoints [N, 5, 2], photo sizes [N, 2]) of the chosen face in each pose photo; a photo without one stops
    with its index."""
    if image.ndim != 4 or image.shape[0] == 0:
        raise InputError(f"the pose image should be a non-empty IMAGE batch; got shape {tuple(image.shape)}.")
    found = []
    bar = comfy.utils.ProgressBar(image.shape[0])
    for i in range(image.shape[0]):
        bgr = to_bgr_uint8(image[i], i)
        faces, _ = face_model.detect(bgr)
        face = choose_face(faces, select, index)
        if face is None:
            h, w = bgr.shape[:2]
            seen = (f"{len(faces)} face(s), but index is {index} (select: {select})" if faces
                    else "no face")
            raise NoFaceError(
                f"pose image {i} ({w}x{h}) has {seen}: InstantID draws the pose from a face's five keypoints. Use a "
                "photo where a face is clearly visible (it may be another person), or leave the pose input "
                "unconnected to take the pose from the reference photo.")
        found.append(torch.from_numpy(face.kps.astype("float32")))
        bar.update(1)
    height, width = image.shape[1:3]
    return torch.stack(found), torch.tensor([[width, height]] * len(found))
