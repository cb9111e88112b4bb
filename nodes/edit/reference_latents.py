"""LikenessReferenceLatents: VAE-encode any number of references into a conditioning's reference latents."""

from __future__ import annotations

from ..host.api import LikenessNode, io, ui

from .. import types
from ..core.edit_targets import REFERENCE_METHODS
from ..core.errors import InputError
from ..host import edit


def method_options() -> list[str]:
    """The issue's three methods, plus any newer one the running ComfyUI offers (e.g. index_timestep_zero)."""
    extra = [m for m in edit.core_reference_methods() or () if m not in ("offset", "index", "uxo")]
    return list(REFERENCE_METHODS) + extra


def single(values: list, name: str, what: str):
    if len(values) != 1:
        raise InputError(f"{name} received {len(values)} {what}s (a list from upstream); connect one {what}.")
    return values[0]


class LikenessReferenceLatents(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessReferenceLatents",
            display_name="Likeness Reference Latents",
            category=f"{types.CATEGORY}/edit models",
            description="Encodes each reference with the VAE and appends it to the conditioning's reference latents, "
                        "with the reference method set: the same as core VAE Encode + one ReferenceLatent per "
                        "reference (+ FluxKontextMultiReferenceLatentMethod), for any number of references. For "
                        "FLUX.1 Kontext, OmniGen2 and FLUX.2.",
            is_input_list=True,
            inputs=[
                io.Conditioning.Input("conditioning", tooltip="The prompt's conditioning (positive)."),
                io.Vae.Input("vae", tooltip="The edit model's VAE (ae.safetensors for Kontext and OmniGen2, the "
                                            "FLUX.2 VAE for FLUX.2)."),
                io.Image.Input("references", tooltip="The references: the list from Likeness Reference Pack, or any "
                                                     "IMAGE. Every image of a batch is one reference; each keeps "
                                                     "its own size."),
                io.Combo.Input("method", options=method_options(), default="offset",
                               tooltip="How the model places the references. offset: as one stitched image (what "
                                       "Kontext [dev] was trained with). index: each its own index (only for "
                                       "models trained on several references). uxo/uno: after the output, as "
                                       "UNO/USO do. OmniGen2 ignores it."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, conditioning, vae, references, method) -> io.NodeOutput:
        conditioning = single(conditioning, "conditioning", "conditioning")
        vae = single(vae, "vae", "VAE")
        method = method[0]
        images = list(edit.each_image(references))
        if not images:
            raise InputError("references is empty: connect at least one image.")
        edit.check_vae_for_references(vae, conditioning, who="Likeness Reference Latents")
        latents = [edit.encode(vae, image[None]) for image in images]
        out = edit.with_reference_latents(conditioning, latents, method)
        sizes = ", ".join(f"{image.shape[1]}x{image.shape[0]}" for image in images)
        text = f"{len(latents)} reference latent(s) ({sizes}), method {method}"
        return io.NodeOutput(out, ui=ui.PreviewText(text))
