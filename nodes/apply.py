"""LikenessApply and LikenessApplySimple: patch a clone of the MODEL so it also attends to image tokens."""

from __future__ import annotations

import comfy.model_management
from .host.api import LikenessNode, io

from . import types
from .core.apply import build_image_prompt
from .core.attention import EMBEDS_SCALING
from .core.pulid import PULID_METHODS
from .core.references import project_references
from .core.schedules import WEIGHT_TYPES, Boosts, parse_layer_weights, window_problem
from .core.validation import parse_problem
from .host.encode import encode_references
from .host.lora import apply_faceid_lora
from .host.patch import install, sigma_window
from .host.pulid_patch import apply_pulid
from .host.sites import base_model, find_sites, text_projection


def _weight_input(per_frame: bool = False):
    return io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05,
                          tooltip="Strength of the image prompt. 0.5-1.0 is typical; above 1 can burn; negative "
                                  "values push away from the reference."
                                  + (" A per-frame list (from Likeness Frame Weights) gives each latent its own "
                                     "weight." if per_frame else ""))


def _window_inputs():
    return [
        io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling schedule (in sigmas) where the adapter starts acting."),
        io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.001,
                       tooltip="Fraction of the sampling schedule where the adapter stops. Ending early (0.6-0.8) "
                               "leaves the prompt more say over details."),
    ]


def apply_tokens(model, adapter, tokens, weight, weight_type="linear", start_at=0.0, end_at=1.0,
                 embeds_scaling="V only", attn_mask=None, faceid_lora_strength=1.0, style_boost=1.0,
                 composition_boost=0.0, layer_weights="", weight_kolors=1.0, unfold_batch=False,
                 pulid_method="fidelity"):
    if adapter.detected.pulid:
        return apply_pulid(model, adapter, tokens, weight, weight_type, start_at, end_at, embeds_scaling, attn_mask,
                           pulid_method, unfold_batch=unfold_batch, layer_weights=layer_weights,
                           boosts=Boosts(style_boost=style_boost, composition_boost=composition_boost))
    sites = find_sites(model)
    sigma_start, sigma_end = sigma_window(model, start_at, end_at)
    projection = text_projection(model) if sites else None
    prompt = build_image_prompt(adapter, tokens, sites, weight, weight_type, embeds_scaling, sigma_start, sigma_end,
                                attn_mask, device=comfy.model_management.get_torch_device(),
                                boosts=Boosts(style_boost=style_boost, composition_boost=composition_boost),
                                layer_weights=parse_layer_weights(layer_weights),
                                base_model=base_model(model, sites) if sites else None,
                                text_projection=projection, weight_kolors=weight_kolors,
                                unfold_batch=unfold_batch)
    return apply_faceid_lora(install(model, prompt, sites), adapter, faceid_lora_strength)


class LikenessApply(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessApply",
            display_name="Likeness Apply",
            category=types.CATEGORY,
            description="Adds the image prompt to the cross-attention sites of a copy of the MODEL (all of them "
                        "for linear; those the weight type selects otherwise). The MODEL you connect is not "
                        "changed. Chain several Apply nodes to combine adapters.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or SDXL model (or a fine-tune) matching the adapter."),
                types.Adapter.Input("adapter", tooltip="The same adapter that made the tokens."),
                types.Tokens.Input("tokens", tooltip="From Likeness Project."),
                _weight_input(per_frame=True),
                io.Combo.Input("weight_type", options=list(WEIGHT_TYPES), default="linear",
                               tooltip="How the weight is spread over the UNet's layers. style transfer and "
                                       "composition act only on the layers that carry look or layout. See the "
                                       "node's help page for each formula."),
                *_window_inputs(),
                io.Combo.Input("embeds_scaling", options=list(EMBEDS_SCALING), default="V only",
                               tooltip="V only: the reference IP-Adapter scaling. K+V variants also sharpen or "
                                       "flatten attention; the C penalty ones weaken high-resolution layers."),
                io.Mask.Input("attn_mask", optional=True,
                              tooltip="Optional: where in the picture the image prompt acts (white = full). Any "
                                      "size; it is resized to each layer's grid."),
                io.Float.Input("faceid_lora_strength", default=1.0, min=0.0, max=2.0, step=0.05, optional=True,
                               tooltip="FaceID and FaceID Plus only: strength of the LoRA these adapters were "
                                       "trained with (taken from the adapter file, else <adapter>_lora.safetensors "
                                       "in models/loras). 1.0 is how it was trained; lower it (e.g. 0.6) to give "
                                       "the text prompt more say. 0 skips it, e.g. when you load the LoRA yourself. "
                                       "It acts on the whole run, unlike the mask and start/end."),
                io.Float.Input("style_boost", default=1.0, min=-5.0, max=5.0, step=0.05, optional=True,
                               tooltip="style transfer precise only: the weight at the layout (composition) "
                                       "layers, where the sides are swapped so the picture moves away from the "
                                       "reference's layout. Not scaled by weight."),
                io.Float.Input("composition_boost", default=0.0, min=-5.0, max=5.0, step=0.05, optional=True,
                               tooltip="composition precise only: the weight at the style layers (a tenth of it at "
                                       "the other non-layout layers), with the sides swapped there so the picture "
                                       "moves away from the reference's look. 0 keeps only the layout."),
                io.String.Input("layer_weights", default="", multiline=False, optional=True,
                                placeholder="e.g. 3:1.0, 6:0.5 (empty: use weight_type)",
                                tooltip="Optional per-layer weights `index:multiplier, ...` over the spatial "
                                        "transformers (SDXL 0-10, SD1.5 0-15; the help page lists them). Replaces "
                                        "weight_type's spread: transformer t gets weight x its multiplier, unlisted "
                                        "ones get nothing. A precise weight type keeps its side swap."),
                io.Boolean.Input("unfold_batch", default=False, optional=True,
                                 tooltip="For animation: reference i drives latent i (frame i) instead of every "
                                         "latent seeing all references; the last reference repeats for the "
                                         "remaining frames. Works with AnimateDiff context windows. Connect a "
                                         "per-frame weight list (Likeness Frame Weights) to weight for a weight per "
                                         "frame."),
                io.Float.Input("weight_kolors", default=1.0, min=-1.0, max=5.0, step=0.05, optional=True,
                               tooltip="Kolors FaceID Plus only: scales the Kolors UNet's text projection that "
                                       "maps the face tokens into the attention (1.0 as trained)."),
                io.Combo.Input("pulid_method", options=list(PULID_METHODS), default="fidelity", optional=True,
                               tooltip="PuLID for SDXL only: how the identity joins the text at each layer. fidelity "
                                       "(the reference default) removes the part that repeats the text, less where "
                                       "the identity draws attention; style removes all of it, for stronger "
                                       "stylisation; neutral adds the identity as is. Each also appends the zero "
                                       "tokens the reference uses with it. PuLID-FLUX has one way and ignores it."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def check_inputs(cls, start_at=None, end_at=None, layer_weights=None, **_):
        return parse_problem(parse_layer_weights, layer_weights) or window_problem(start_at, end_at)

    @classmethod
    def execute(cls, model, adapter, tokens, weight, weight_type, start_at, end_at, embeds_scaling,
                attn_mask=None, faceid_lora_strength=1.0, style_boost=1.0, composition_boost=0.0, layer_weights="",
                unfold_batch=False, weight_kolors=1.0, pulid_method="fidelity") -> io.NodeOutput:
        return io.NodeOutput(apply_tokens(model, adapter, tokens, weight, weight_type, start_at, end_at,
                                          embeds_scaling, attn_mask, faceid_lora_strength, style_boost,
                                          composition_boost, layer_weights or "", weight_kolors, unfold_batch,
                                          pulid_method))


class LikenessApplySimple(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessApplySimple",
            display_name="Likeness Apply (simple)",
            category=types.CATEGORY,
            description="Encode, project and apply in one node: reference images in, adapted MODEL out.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 or SDXL model matching the adapter."),
                types.Adapter.Input("adapter", tooltip="From Likeness Adapter Loader."),
                io.ClipVision.Input("clip_vision", tooltip="The image encoder the adapter needs."),
                io.Image.Input("image", tooltip="One or more reference images (centre-cropped)."),
                _weight_input(),
                *_window_inputs(),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def check_inputs(cls, start_at=None, end_at=None, **_):
        return window_problem(start_at, end_at)

    @classmethod
    def execute(cls, model, adapter, clip_vision, image, weight, start_at, end_at) -> io.NodeOutput:
        references = encode_references(clip_vision, image)
        tokens = project_references(adapter, references, device=comfy.model_management.get_torch_device())
        return io.NodeOutput(apply_tokens(model, adapter, tokens, weight, "linear", start_at, end_at))
