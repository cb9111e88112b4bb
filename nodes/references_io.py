"""LikenessSaveReferences and LikenessLoadReferences: keep an encoded identity as a .safetensors file."""

from __future__ import annotations

import logging
import os

from .host.api import LikenessNode, io, ui

from . import types
from .core.errors import LikenessError
from .core.references import EncoderInfo
from .core.references_io import (describe, load_references, read_leading_pack_embeds, references_from_leading_pack,
                                 save_references)
from .core.validation import name_problem
from .host import folders, reference_files
from .host.encode import empty_image_features

log = logging.getLogger(__name__)


class LikenessSaveReferences(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessSaveReferences",
            display_name="Likeness Save References",
            category=types.CATEGORY,
            description="Writes references to output/likeness/ as a .safetensors file with metadata (encoder or "
                        "face model, widths, count). Likeness Load References lists it at once.",
            inputs=[
                types.References.Input("references", tooltip="The references to keep (encoded, merged or loaded)."),
                io.String.Input("filename_prefix", default="references",
                                tooltip="File name start under output/likeness/; a number is added. A sub-folder "
                                        "such as `people/alice` is allowed."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def check_inputs(cls, filename_prefix=None, **_):
        return None if filename_prefix is None else name_problem("filename_prefix", filename_prefix, "file name")

    @classmethod
    def execute(cls, references, filename_prefix="references") -> io.NodeOutput:
        path, choice = reference_files.new_file_path(filename_prefix)
        save_references(references, path)
        text = f"saved {describe(references)}\nas `{choice}`"
        log.info("Likeness: %s", text.replace("\n", " "))
        return io.NodeOutput(ui=ui.PreviewText(text))


class LikenessLoadReferences(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessLoadReferences",
            display_name="Likeness Load References",
            category=f"{types.CATEGORY}/loaders",
            description="Loads references saved by Likeness Save References, from output/likeness/ (marked "
                        "[output]) or from the input folder. The file is checked against its metadata.",
            inputs=[io.Combo.Input("references_file", options=reference_files.reference_choices(),
                                   tooltip="A .safetensors references file from input/ or output/likeness/, or saved "
                                           "embeds (.ipadpt) of the ComfyUI_IPAdapter_plus pack from input/."),
                    io.ClipVision.Input("clip_vision", optional=True,
                                        tooltip=".ipadpt files only: the encoder that made them. It supplies the "
                                                "default negative of plus adapters and checks the widths.")],
            outputs=[types.References.Output(display_name="references")],
        )

    @classmethod
    def fingerprint_inputs(cls, references_file, **_):
        try:
            path = reference_files.resolve_choice(references_file)
        except (LikenessError, OSError):  # execute reports it
            return references_file
        return (references_file, *folders.file_version(path))

    @classmethod
    def execute(cls, references_file, clip_vision=None) -> io.NodeOutput:
        path = reference_files.resolve_choice(references_file)
        if path.lower().endswith(reference_files.LEADING_PACK_EXTENSION):
            refs = load_leading_pack_file(path, clip_vision)
            text = (f"{describe(refs)}\nfrom another pack's saved embeds: only "
                    f"{'image embeds' if 'penultimate' in refs.image.missing else 'hidden states'}")
            return io.NodeOutput(refs, ui=ui.PreviewText(text))
        refs = load_references(path)
        return io.NodeOutput(refs, ui=ui.PreviewText(describe(refs)))


def load_leading_pack_file(path: str, clip_vision=None):
    embeds = read_leading_pack_embeds(path)
    encoder = empty = None
    if clip_vision is not None:
        empty = empty_image_features(clip_vision)
        projection = getattr(getattr(clip_vision, "model", None), "visual_projection", None)
        embed_width = getattr(projection, "out_features", None) or empty.shape[-1]
        encoder = EncoderInfo.from_widths(empty.shape[-1], int(embed_width))
    return references_from_leading_pack(embeds, os.path.basename(path), encoder, empty)
