"""Model folders: reuse what users already have, honour extra_model_paths.yaml."""

from __future__ import annotations

import os

import folder_paths

from ..core.errors import AdapterFileError, InputError

ADAPTER_EXTENSIONS = {".safetensors", ".bin"}


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


ADAPTER_FOLDERS = ("ipadapter", "instantid")  # adapter loaders list both; InstantID's file usually sits in the latter


def register_all() -> None:
    register_folder("ipadapter", ADAPTER_EXTENSIONS)
    register_folder("instantid", ADAPTER_EXTENSIONS)
    register_folder("insightface", {".onnx"})  # face model packs live in <folder>/models/<pack>/*.onnx


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


def adapter_files() -> list[str]:
    """Adapter files of every adapter folder, each name once (an ipadapter file wins over an instantid one)."""
    names: dict[str, None] = {}
    for folder in ADAPTER_FOLDERS:
        names.update(dict.fromkeys(folder_paths.get_filename_list(folder)))
    return list(names)


def adapter_path(name: str) -> str:
    check_listed(name, adapter_files(), "adapter", "the ipadapter and instantid folders")
    for folder in ADAPTER_FOLDERS:
        path = folder_paths.get_full_path(folder, name)
        if path is not None:
            return path
    searched = ", ".join(p for folder in ADAPTER_FOLDERS for p in folder_paths.get_folder_paths(folder))
    raise AdapterFileError(f"adapter `{name}` was not found in the adapter folders ({searched}). Put the file in "
                           "models/ipadapter or models/instantid (or a folder listed under `ipadapter:` or "
                           "`instantid:` in extra_model_paths.yaml) and refresh the page.")
