"""LikenessUnifiedLoader: pick adapter, image encoder, FaceID LoRA and face model for a preset, by what the files are."""

from __future__ import annotations

import logging
import threading

import comfy.clip_vision
import comfy.controlnet
from .host.api import LikenessNode, io, ui

from . import types
from .core.errors import IncompatibleError
from .core.presets import PRESETS, MissingModelError, choice_for, missing_message, rank_adapters
from .core.variants import KOLORS, Detected, Encoder
from .doctor import report
from .face import pack_options
from .host import catalog, folders
from .host.face import KNOWN_PACKS, PROVIDER_CHOICES, load_face_model
from .host.lora import apply_faceid_lora
from .host.sites import base_model, find_sites
from .loaders import cached_adapter

log = logging.getLogger(__name__)
_clip_cache: dict = {}
_controlnet_cache: dict = {}
_clip_lock = threading.Lock()


def model_family(model) -> str:
    sites = find_sites(model)
    if not sites:
        raise IncompatibleError("the MODEL has no UNet cross-attention sites: the unified loader serves SD1.5 and "
                                "SDXL models (and their fine-tunes).")
    family = base_model(model, sites)
    if family not in ("SD1.5", "SDXL", KOLORS):
        raise IncompatibleError(f"the MODEL is {family}; the unified loader's presets are for SD1.5 and SDXL. Use "
                                "Likeness Adapter Loader with a matching adapter instead.")
    return family


def choose_adapter(preset: str, family: str) -> catalog.Entry:
    choice = choice_for(preset, family)
    entries = catalog.adapters()
    ranked = rank_adapters(choice, [(e.name, e.found) for e in entries if isinstance(e.found, Detected)])
    if not ranked:
        found = [f"{e.name} ({e.describe().split(';')[0]})" for e in entries]
        searched = [p for folder in folders.ADAPTER_FOLDERS for p in catalog.searched(folder)]
        raise MissingModelError(missing_message(f"An adapter for preset {preset} on {family}", choice.file,
                                                choice.source, choice.folder, searched, found))
    return next(e for e in entries if e.name == ranked[0])


def choose_encoder(needed: Encoder) -> catalog.Entry:
    entries = catalog.encoders()
    fitting = [e for e in entries if isinstance(e.found, Encoder) and e.found.same_as(needed)]
    if not fitting:
        found = [f"{e.name} ({e.describe()})" for e in entries]
        raise MissingModelError(missing_message(f"A {needed.name} image encoder", needed.file_hint,
                                                "huggingface.co/h94/IP-Adapter (models/image_encoder, renamed)",
                                                "models/clip_vision", catalog.searched("clip_vision"), found))
    fitting.sort(key=lambda e: (e.name.lower() != needed.file_hint.lower(), e.name.lower()))
    return fitting[0]


def load_clip_vision(entry: catalog.Entry):
    key = folders.file_version(entry.path)
    with _clip_lock:
        if key not in _clip_cache:
            _clip_cache.clear()  # keep one encoder; ComfyUI's own loader node caches the rest
            model = comfy.clip_vision.load(entry.path)
            if model is None:
                raise MissingModelError(f"`{entry.name}` could not be loaded as a CLIP vision model: ComfyUI did not recognise its layout.")
            _clip_cache[key] = model
        return _clip_cache[key]


def load_controlnet(entry: catalog.Entry):
    """A ControlNet loaded with ComfyUI's own loader (what Load ControlNet Model calls), one kept at a time."""
    key = folders.file_version(entry.path)
    with _clip_lock:
        if key not in _controlnet_cache:
            _controlnet_cache.clear()
            net = comfy.controlnet.load_controlnet(entry.path)
            if net is None:
                raise MissingModelError(f"`{entry.name}` could not be loaded as a ControlNet: ComfyUI did not "
                                        "recognise its layout.")
            _controlnet_cache[key] = net
        return _controlnet_cache[key]


def face_pack_for(choice, asked: str) -> tuple[str, str]:
    """The face pack a preset loads, and a note when it is not the one asked for: a preset whose adapter was trained
    on another known pack (InstantID: antelopev2) loads that one; a pack of another name is taken as asked."""
    needed = choice.face_pack
    if asked != needed and asked in KNOWN_PACKS:
        return needed, f" (face_model_pack {asked} replaced: this adapter was trained on {needed})"
    return asked, ""


class LikenessUnifiedLoader(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessUnifiedLoader",
            display_name="Likeness Unified Loader",
            category=f"{types.CATEGORY}/loaders",
            description="Pick a preset; Likeness finds the adapter, image encoder, FaceID LoRA and face model that "
                        "fit your MODEL by reading what the files are, so renamed downloads still work. When "
                        "something is missing it says which file to get, from where, and where it searched.",
            inputs=[
                io.Model.Input("model", tooltip="Your SD1.5 or SDXL model; its family decides which files fit."),
                io.Combo.Input("preset", options=list(PRESETS), default="STANDARD",
                               tooltip="LIGHT/STANDARD: gentle; PLUS: strong; PLUS FACE/FULL FACE: portraits; "
                                       "FACEID*: identity from a face photo (needs insightface); INSTANTID (SDXL): "
                                       "identity plus face pose, with antelopev2 and the IdentityNet ControlNet; "
                                       "KOLORS: a Kolors model (from a Kolors loader pack)."),
                io.Float.Input("faceid_lora_strength", default=0.6, min=0.0, max=2.0, step=0.05,
                               tooltip="FaceID presets: strength of the LoRA trained with the adapter, applied to "
                                       "the returned MODEL. 0.6 keeps the base model's style; 1.0 is the "
                                       "reference setting."),
                io.Combo.Input("face_model_pack", options=pack_options(), default="buffalo_l",
                               tooltip="FaceID presets: the insightface pack in models/insightface/models/. INSTANTID "
                                       "loads antelopev2 in place of buffalo_l."),
                io.Combo.Input("provider", options=list(PROVIDER_CHOICES), default="auto", optional=True,
                               tooltip="FaceID presets: where onnxruntime runs the face models. auto: the GPU "
                                       "ComfyUI uses when this onnxruntime build supports it, else the CPU."),
            ],
            outputs=[io.Model.Output(display_name="model"), types.Adapter.Output(display_name="adapter"),
                     io.ClipVision.Output(display_name="clip_vision"),
                     types.FaceModel.Output(display_name="face_model"),
                     io.ControlNet.Output(display_name="control_net",
                                          tooltip="INSTANTID: the IdentityNet ControlNet found in models/controlnet "
                                                  "(for Likeness InstantID Control), else nothing.")],
        )

    # The steps that read what the MODEL and the files are, as class methods: the tests' tiny stand-in
    # (tests/browser/tiny_loaders) overrides them for narrowed models and files and runs the rest as shipped.
    @classmethod
    def family_of(cls, model) -> str:
        return model_family(model)

    @classmethod
    def find_adapter(cls, preset: str, family: str) -> catalog.Entry:
        return choose_adapter(preset, family)

    @classmethod
    def find_encoder(cls, needed: Encoder) -> catalog.Entry:
        return choose_encoder(needed)

    @classmethod
    def open_encoder(cls, entry: catalog.Entry):
        return load_clip_vision(entry)

    @classmethod
    def execute(cls, model, preset, faceid_lora_strength, face_model_pack, provider="auto") -> io.NodeOutput:
        family = cls.family_of(model)
        choice = choice_for(preset, family)
        entry = cls.find_adapter(preset, family)
        adapter = cached_adapter(entry.path)
        encoder = choice.encoder
        clip_entry = cls.find_encoder(encoder) if encoder is not None else None
        clip_vision = cls.open_encoder(clip_entry) if clip_entry else None
        face_model, control_net = None, None
        text = f"{preset} on {family}: adapter `{entry.name}`" + (f", encoder `{clip_entry.name}`" if clip_entry
                                                                   else "")
        if choice.face:
            pack, note = face_pack_for(choice, face_model_pack)
            face_model = load_face_model(pack, provider)
            model = apply_faceid_lora(model, adapter, faceid_lora_strength)
            text += f", face model {pack}{note} on {' + '.join(face_model.providers_used)}"
        if choice.controlnet:
            found = catalog.identitynets()
            if found:
                control_net = load_controlnet(found[0])
                text += f", ControlNet `{found[0].name}`"
            else:
                file, source = choice.controlnet
                text += (f"; no IdentityNet ControlNet found: put {file} from {source} in models/controlnet (searched "
                         f"{'; '.join(catalog.searched('controlnet')) or 'no folders'})")
        log.info("Likeness: %s", text)
        return io.NodeOutput(model, adapter, clip_vision, face_model, control_net, ui=ui.PreviewText(text))


class LikenessModelDoctor(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessModelDoctor",
            display_name="Likeness Model Doctor",
            category=f"{types.CATEGORY}/loaders",
            description="Lists every adapter, image encoder, FaceID LoRA and face model pack Likeness can see, what "
                        "each one is, and which presets work for SD1.5 and SDXL (or what to download); what this "
                        "ComfyUI offers each edit model, and warnings about this workflow's reference methods.",
            inputs=[],
            outputs=[io.String.Output(display_name="report",
                                      tooltip="Every model file Likeness can see and what it is, which presets work "
                                              "(or what to download), and the edit-model checks of this workflow.")],
            hidden=[io.Hidden.prompt],  # the workflow, for its edit-model checks
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls):
        return float("nan")  # always look again: files come and go

    @classmethod
    def execute(cls) -> io.NodeOutput:
        text = report(cls.hidden.prompt if cls.hidden is not None else None)
        return io.NodeOutput(text, ui=ui.PreviewText(text))
