"""Where references files live: written to output/likeness/, read from there or from input/.

Choices use ComfyUI's own convention for files outside the input folder: a name that ends in " [output]" is
relative to the output folder (e.g. "likeness/alice_00001_.safetensors [output]"), any other name is relative
to the input folder. So a saved file can be loaded at once, without moving it between folders.
"""

from __future__ import annotations

import os

import folder_paths

from ..core.errors import InputError, ReferencesFileError
from ..core.validation import name_problem
from .folders import check_listed

SUBFOLDER = "likeness"
EXTENSION = ".safetensors"
LEADING_PACK_EXTENSION = ".ipadpt"  # saved embeds of the ComfyUI_IPAdapter_plus pack (read weights-only)
OUTPUT_TAG = " [output]"


def output_folder() -> str:
    return os.path.join(folder_paths.get_output_directory(), SUBFOLDER)


def _files_under(root: str, extensions: tuple[str, ...] = (EXTENSION,)) -> list[str]:
    if not os.path.isdir(root):
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.lower().endswith(extensions):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def reference_choices() -> list[str]:
    """Every .safetensors and .ipadpt file in input/ and every .safetensors in output/likeness/, for the combo."""
    saved = [f"{SUBFOLDER}/{name}{OUTPUT_TAG}" for name in _files_under(output_folder())]
    return _files_under(folder_paths.get_input_directory(), (EXTENSION, LEADING_PACK_EXTENSION)) + saved


def _inside(root: str, relative: str) -> str | None:
    root = os.path.abspath(root)
    path = os.path.abspath(os.path.join(root, relative))
    return path if os.path.commonpath((root, path)) == root else None


def resolve_choice(choice: str) -> str:
    """A combo choice -> the file's path. Refuses names that are not listed (and so any that leave the input or
    output folder)."""
    check_listed(choice, reference_choices(), "references file", "input/ or output/likeness/")
    if choice.endswith(OUTPUT_TAG):
        relative, root, where = choice[:-len(OUTPUT_TAG)], folder_paths.get_output_directory(), "output"
    else:
        relative, root, where = choice, folder_paths.get_input_directory(), "input"
    path = _inside(root, relative)
    if path is None:
        raise InputError(f"references file `{choice}` points outside the {where} folder; pick a file from the list.")
    if not os.path.isfile(path):
        raise ReferencesFileError(
            f"references file `{choice}` was not found in the {where} folder ({root}). Refresh the node list (press "
            "R) and pick a file that exists.")
    return path


def new_file_path(filename_prefix: str) -> tuple[str, str]:
    """A fresh numbered path under output/likeness/ -> (full path, choice name as the loader lists it)."""
    problem = name_problem("filename_prefix", filename_prefix, "file name")
    if problem:
        raise InputError(problem)
    root = os.path.abspath(output_folder())
    os.makedirs(root, exist_ok=True)
    filename_prefix = filename_prefix.strip() or "references"
    try:
        folder, name, counter, _subfolder, _prefix = folder_paths.get_save_image_path(filename_prefix, root)
    except Exception as e:  # ComfyUI raises a bare Exception for a prefix that leaves the folder
        raise InputError(f"filename_prefix `{filename_prefix}` cannot be used: {str(e).splitlines()[0].strip('* ')}. "
                         "Use a plain name such as `alice` or `people/alice`.") from None
    while True:
        path = os.path.join(folder, f"{name}_{counter:05}_{EXTENSION}")
        if not os.path.exists(path):
            break
        counter += 1
    relative = os.path.relpath(path, folder_paths.get_output_directory()).replace(os.sep, "/")
    return path, relative + OUTPUT_TAG
