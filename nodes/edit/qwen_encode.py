"""LikenessQwenEditEncode: Qwen-Image-Edit Plus text encoding with any number of reference images."""

from __future__ import annotations

from ..host.api import LikenessNode, io, ui

from .. import types
from ..core.edit_targets import BY_KEY, comfy_qwen_latent_size, qwen_plus_size
from ..core.errors import InputError
from ..host import edit
from .reference_latents import single

QWEN = BY_KEY["qwen image edit plus"]
# How each reference is sized for its VAE latent. The first is core TextEncodeQwenImageEditPlus.
LATENT_SIZES = {
    "1 MP, multiple of 8 (ComfyUI)": comfy_qwen_latent_size,
    "1 MP, multiple of 32 (diffusers)": qwen_plus_size,
    "as given": lambda width, height: None,
}


class LikenessQwenEditEncode(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessQwenEditEncode",
            display_name="Likeness Qwen Edit Encode",
            category=f"{types.CATEGORY}/edit models",
            description="Core Text Encode Qwen Image Edit Plus for any number of references: each reference is shown "
                        "to Qwen2.5-VL as \"Picture N\" and VAE-encoded into the reference latents. With 1 to 3 "
                        "references and the default sizes it gives exactly what the core node gives.",
            is_input_list=True,
            inputs=[
                io.Clip.Input("clip", tooltip="Qwen2.5-VL 7B (Load CLIP, type qwen_image)."),
                io.Vae.Input("vae", tooltip="The Qwen-Image VAE (qwen_image_vae.safetensors)."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True,
                                tooltip="The edit instruction. Refer to the references as Picture 1, Picture 2, ..."),
                io.Image.Input("references", tooltip="1 or more references: the list from Likeness Reference Pack, or "
                                                     "any IMAGE (each image of a batch is one reference)."),
                io.Int.Input("vl_size", default=384, min=56, max=2048, step=8,
                             tooltip="What Qwen2.5-VL sees of each reference: scaled to an area of vl_size². 384 is "
                                     "the reference setting (core node and diffusers)."),
                io.Combo.Input("latent_size", options=list(LATENT_SIZES), default=next(iter(LATENT_SIZES)),
                               tooltip="How each reference is sized for its latent. The 1 MP resizes cause zoom and "
                                       "pixel shift when the output size differs; `as given` keeps the size from "
                                       "Likeness Reference Pack (target qwen image edit plus)."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, clip, vae, prompt, references, vl_size, latent_size) -> io.NodeOutput:
        clip, vae = single(clip, "clip", "CLIP"), single(vae, "vae", "VAE")
        prompt, vl_size, latent_size = prompt[0], int(vl_size[0]), latent_size[0]
        images = list(edit.each_image(references))
        if not images:
            raise InputError("references is empty: connect at least one image.")
        edit.check_vae_for_references(vae, target=QWEN, who="Likeness Qwen Edit Encode")
        conditioning, vl_sizes, latent_sizes = edit.qwen_edit_conditioning(
            clip, vae, prompt, images, vl_size, LATENT_SIZES[latent_size])
        lines = [f"Picture {i}: VL {vw}x{vh}, latent from {lw}x{lh}"
                 for i, ((vw, vh), (lw, lh)) in enumerate(zip(vl_sizes, latent_sizes), 1)]
        if len(images) > QWEN.max_references:
            lines.append(f"note: Qwen-Image-Edit 2509 was trained with up to {QWEN.max_references} pictures; more "
                         "work but hold identity less reliably.")
        return io.NodeOutput(conditioning, ui=ui.PreviewText("\n".join(lines)))
