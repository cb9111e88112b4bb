"""LikenessAdapterLoader: an IP-Adapter file from models/ipadapter, its family detected from the weights."""

from __future__ import annotations

import logging
import threading
import weakref

from .host.api import LikenessNode, io, ui

from . import types
from .core.adapter import Adapter, load_adapter
from .core.variants import shared_layout_titles
from .host import folders

log = logging.getLogger(__name__)
_cache: "weakref.WeakValueDictionary[tuple, Adapter]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def cached_adapter(path: str) -> Adapter:
    """One Adapter per file version, shared by every loader node that names it."""
    key = folders.file_version(path)
    with _cache_lock:
        adapter = _cache.get(key)
        if adapter is None:
            adapter = load_adapter(path)
            _cache[key] = adapter
    return adapter


class LikenessAdapterLoader(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessAdapterLoader",
            display_name="Likeness Adapter Loader",
            category=f"{types.CATEGORY}/loaders",
            description="Loads an IP-Adapter file from models/ipadapter (or InstantID's from models/instantid). Its "
                        "family (standard, plus, full face, FaceID, InstantID...), base model and needed image "
                        "encoder are read from the weights, not the name.",
            inputs=[io.Combo.Input("adapter_name", options=folders.adapter_files(),
                                   tooltip="An IP-Adapter .safetensors (or .bin) file in models/ipadapter, or "
                                           "InstantID's ip-adapter.bin in models/instantid."),
                    io.Combo.Input("variant", options=["auto", *shared_layout_titles()], default="auto",
                                   optional=True,
                                   tooltip="auto: what the weights say. InstantID and FaceID Portrait unnorm (SDXL) "
                                           "have one layout, so the loader tells them apart by how the file stores "
                                           "its weights (InstantID's is all float32) and then by its name, and shows "
                                           "what it chose and why. Pick one here to override that.")],
            outputs=[types.Adapter.Output(display_name="adapter")],
        )

    @classmethod
    def fingerprint_inputs(cls, adapter_name, variant="auto"):
        path = folders.adapter_path(adapter_name) if adapter_name in folders.adapter_files() else None
        if path is None:
            return adapter_name, variant
        return (adapter_name, variant, *folders.file_version(path))

    @classmethod
    def execute(cls, adapter_name, variant="auto") -> io.NodeOutput:
        adapter = cached_adapter(folders.adapter_path(adapter_name))
        if variant != "auto":
            adapter = adapter.as_variant(variant)
        log.info("Likeness: %s", adapter.describe())
        return io.NodeOutput(adapter, ui=ui.PreviewText(adapter.detected.summary()))
