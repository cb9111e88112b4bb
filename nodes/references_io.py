"""LikenessSaveReferences and LikenessLoadReferences: keep an encoded identity as a .safetensors file."""

from __future__ import annotations

import logging

from .host.api import LikenessNode, io, ui

from . import types
from .core.errors import LikenessError
from .core.references_io import describe, load_references, save_references
from .core.validation import name_problem
from .host import folders, reference_files

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
                                   tooltip="A .safetensors references file from input/ or output/likeness/.")],
            outputs=[types.References.Output(display_name="references")],
        )

    @classmethod
    def fingerprint_inputs(cls, references_file):
        try:
            path = reference_files.resolve_choice(references_file)
        except (LikenessError, OSError):  # execute reports it
            return references_file
        return (references_file, *folders.file_version(path))

    @classmethod
    def execute(cls, references_file) -> io.NodeOutput:
        refs = load_references(reference_files.resolve_choice(references_file))
        return io.NodeOutput(refs, ui=ui.PreviewText(describe(refs)))
