"""Model folders: reuse what users already have, honour extra_model_paths.yaml."""

from __future__ import annotations

import os

import folder_paths

from ..core.errors import AdapterFileError, InputError

ADAPTER_EXTENSIONS = {".safetensors", ".bin"}
# Adapter files are looked for in these model folders, in this order: IP-Adapter files in ipadapter, InstantID's
# in instantid, PuLID's in pulid (and any of them in ipadapter, where some users keep them).
ADAPTER_FOLDERS = ("ipadapter", "instantid", "pulid")


def file_version(path: str) -> tuple:
    """(real path, modification time, size): what cache keys and node fingerprints of a model file use, so an
    edited or replaced file is read again. Raises OSError when the file is gone."""
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


def register_folder(name: str, extensions: set[str]) -> None:
    """Make sure `name` is a model folder; keep directories extra_model_paths.yaml already added."""
    default = os.path.join(folder_paths.models_dir, name)
    current = folder_paths.folder_names_and_paths.get(name)
    paths = list(current[0]) if current else []
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def register_all() -> None:
    register_folder("ipadapter", ADAPTER_EXTENSIONS)
    register_folder("instantid", ADAPTER_EXTENSIONS)
    register_folder("pulid", ADAPTER_EXTENSIONS)
    register_folder("insightface", {".onnx"})  # face model packs live in <folder>/models/<pack>/*.onnx
    register_folder("facexlib", {".pth"})  # PuLID's face parsing (parsing_bisenet.pth), where other packs keep it


def insightface_roots() -> list[str]:
    return folder_paths.get_folder_paths("insightface")


def check_listed(name, listed, what: str, where: str) -> str:
    """`name` when it is one of `listed` (the choices a node offers), else an InputError.

    Every file-name input goes through this before any path is built, so `..`, absolute paths and names of
    files elsewhere are refused, and the message is the same whether or not such a file exists: it reveals
    nothing about the disk outside the model folders. Symlinks that users put inside their folders are listed,
    and so followed."""
    if isinstance(name, str) and name in listed:
        return name
    shown = name if isinstance(name, str) and len(name) <= 200 and "\x00" not in name else "(an unusable value)"
    raise InputError(f"{what} `{shown}` is not one of the choices in {where}. Pick one from the list; after adding "
                     "files, press R in ComfyUI to refresh the lists.")


def _folder_files(folder: str) -> list[str]:
    try:
        return folder_paths.get_filename_list(folder)
    except KeyError:  # not registered (a ComfyUI run without the pack's folders)
        return []


def adapter_files() -> list[str]:
    """Adapter file names of every adapter folder (a name in two folders is listed once; the first folder wins)."""
    return sorted({name for folder in ADAPTER_FOLDERS for name in _folder_files(folder)})


def adapter_path(name: str) -> str:
    check_listed(name, adapter_files(), "adapter", "the ipadapter, instantid and pulid folders")
    for folder in ADAPTER_FOLDERS:
        path = folder_paths.get_full_path(folder, name) if name in _folder_files(folder) else None
        if path is not None:
            return path
    searched = ", ".join(p for folder in ADAPTER_FOLDERS for p in folder_paths.get_folder_paths(folder))
    raise AdapterFileError(f"adapter `{name}` was not found in the ipadapter, instantid and pulid folders "
                           f"({searched}). Put IP-Adapter files in models/ipadapter, InstantID's in models/instantid "
                           "and PuLID's in models/pulid (or folders listed under `ipadapter:` / `instantid:` / "
                           "`pulid:` in extra_model_paths.yaml) and refresh the page.")
