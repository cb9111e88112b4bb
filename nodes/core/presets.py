"""Presets of the unified loader: which adapter family, encoder, LoRA and face model each needs per base model.

Files are chosen by what their weights are (the variants table). Where official files share one layout
(standard vs light, plus vs plus-face vs composition, FaceID Plus v1 vs v2) the file name breaks the tie, and
the messages say so.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import LikenessError
from .variants import ENCODERS, KOLORS, VARIANTS, Detected, Encoder, encoder_named, variant_by_key


class MissingModelError(LikenessError):
    """A preset needs a file that is not in any searched folder."""


HF = "huggingface.co/h94/IP-Adapter"
HF_FACEID = "huggingface.co/h94/IP-Adapter-FaceID"
HF_COMPOSITION = "huggingface.co/ostris/ip-composition-adapter"
HF_INSTANTID = "huggingface.co/InstantX/InstantID"
HF_KOLORS = "huggingface.co/Kwai-Kolors/Kolors-IP-Adapter-Plus"


@dataclass(frozen=True)
class Choice:
    """What one preset needs on one base model."""

    variant: str  # key in the variants table
    file: str  # the official file to suggest
    source: str  # where to download it
    prefer: str = ""  # regex: names that break a tie between files of the same layout
    avoid: str = ""  # regex: names of the other files sharing the layout
    lora: str = ""  # official LoRA file for FaceID presets
    face: bool = False  # needs an insightface model pack

    @property
    def controlnet(self) -> tuple[str, str] | None:
        """(file, source) of a ControlNet trained with the adapter, which the preset also finds (InstantID)."""
        v = variant_by_key(self.variant)
        return (v.controlnet_file, v.controlnet_source) if v.controlnet_file else None

    @property
    def face_pack(self) -> str:
        return variant_by_key(self.variant).face_pack

    @property
    def folder(self) -> str:
        return f"models/{variant_by_key(self.variant).folder}"

    @property
    def encoder(self) -> Encoder | None:
        v = next(v for v in VARIANTS if v.key == self.variant)
        if v.encoder:
            return encoder_named(v.encoder)
        if v.feature.value == "image_embeds":
            return next(e for e in ENCODERS if e.embed_width == v.input_width)
        if "penultimate" in v.feature.value:
            return ENCODERS[0]
        return None


_OTHERS = r"light|face|composition"
PRESETS: dict[str, dict[str, Choice]] = {
    "LIGHT": {"SD1.5": Choice("sd15", "ip-adapter_sd15_light_v11.bin", HF, prefer=r"light")},
    "STANDARD": {"SD1.5": Choice("sd15", "ip-adapter_sd15.safetensors", HF, avoid=r"light"),
                 "SDXL": Choice("sdxl-vit-h", "ip-adapter_sdxl_vit-h.safetensors", HF)},
    "VIT-G": {"SD1.5": Choice("sd15-vit-g", "ip-adapter_sd15_vit-G.safetensors", HF),
              "SDXL": Choice("sdxl", "ip-adapter_sdxl.safetensors", HF)},
    "PLUS": {"SD1.5": Choice("sd15-plus", "ip-adapter-plus_sd15.safetensors", HF, avoid=_OTHERS),
             "SDXL": Choice("sdxl-plus", "ip-adapter-plus_sdxl_vit-h.safetensors", HF, avoid=_OTHERS)},
    "PLUS FACE": {"SD1.5": Choice("sd15-plus", "ip-adapter-plus-face_sd15.safetensors", HF, prefer=r"face"),
                  "SDXL": Choice("sdxl-plus", "ip-adapter-plus-face_sdxl_vit-h.safetensors", HF, prefer=r"face")},
    "FULL FACE": {"SD1.5": Choice("sd15-full-face", "ip-adapter-full-face_sd15.safetensors", HF)},
    "COMPOSITION": {"SD1.5": Choice("sd15-plus", "ip_plus_composition_sd15.safetensors", HF_COMPOSITION,
                                    prefer=r"composition"),
                    "SDXL": Choice("sdxl-plus", "ip_plus_composition_sdxl.safetensors", HF_COMPOSITION,
                                   prefer=r"composition")},
    "FACEID": {"SD1.5": Choice("sd15-faceid", "ip-adapter-faceid_sd15.bin", HF_FACEID,
                               lora="ip-adapter-faceid_sd15_lora.safetensors", face=True),
               "SDXL": Choice("sdxl-faceid", "ip-adapter-faceid_sdxl.bin", HF_FACEID,
                              lora="ip-adapter-faceid_sdxl_lora.safetensors", face=True)},
    "FACEID PLUS": {"SD1.5": Choice("sd15-faceid-plus", "ip-adapter-faceid-plus_sd15.bin", HF_FACEID,
                                    prefer=r"^(?!.*v2)", lora="ip-adapter-faceid-plus_sd15_lora.safetensors",
                                    face=True)},
    "FACEID PLUS V2": {"SD1.5": Choice("sd15-faceid-plus", "ip-adapter-faceid-plusv2_sd15.bin", HF_FACEID,
                                       prefer=r"v2", lora="ip-adapter-faceid-plusv2_sd15_lora.safetensors",
                                       face=True),
                       "SDXL": Choice("sdxl-faceid-plus", "ip-adapter-faceid-plusv2_sdxl.bin", HF_FACEID,
                                      lora="ip-adapter-faceid-plusv2_sdxl_lora.safetensors", face=True)},
    "FACEID PORTRAIT": {"SD1.5": Choice("sd15-faceid-portrait", "ip-adapter-faceid-portrait-v11_sd15.bin",
                                        HF_FACEID, face=True),
                        "SDXL": Choice("sdxl-faceid-portrait", "ip-adapter-faceid-portrait_sdxl.bin", HF_FACEID,
                                       face=True)},
    "FACEID PORTRAIT UNNORM": {"SDXL": Choice("sdxl-faceid-portrait-unnorm",
                                              "ip-adapter-faceid-portrait_sdxl_unnorm.bin", HF_FACEID, face=True)},
    "INSTANTID": {"SDXL": Choice("sdxl-instantid", "ip-adapter.bin", HF_INSTANTID, face=True)},
    "KOLORS": {KOLORS: Choice("kolors-plus", "Kolors-IP-Adapter-Plus.bin", HF_KOLORS + " (ip_adapter_plus_general.bin)")},
}


def choice_for(preset: str, family: str) -> Choice:
    table = PRESETS.get(preset)
    if table is None:
        raise LikenessError(f"preset `{preset}` is not one of: {', '.join(PRESETS)}.")
    if family not in table:
        have = ", ".join(table)
        extra = ""
        if KOLORS in table:
            from .apply import NO_KOLORS_SUPPORT

            extra = " " + NO_KOLORS_SUPPORT
        raise MissingModelError(f"preset {preset} exists only for {have}; the MODEL is {family}. "
                                f"Pick another preset (e.g. STANDARD or PLUS).{extra}")
    return table[family]


def rank_adapters(choice: Choice, candidates: list[tuple[str, Detected]]) -> list[str]:
    """Files whose weights are the preset's family, best first (name hints only break ties)."""
    fitting = [name for name, det in candidates if det.variant is not None and det.variant.key == choice.variant]

    def score(name: str) -> tuple:
        low = name.lower()
        return (bool(choice.avoid and re.search(choice.avoid, low)), low != choice.file.lower(), low)

    ranked = sorted(fitting, key=score)
    if choice.prefer:
        ranked = [n for n in ranked if re.search(choice.prefer, n.lower())]
    return ranked


def missing_message(what: str, file: str, source: str, folder: str, searched: list[str], found: list[str]) -> str:
    lines = [f"{what} not found. Download `{file}` from {source} into {folder}.",
             "Searched: " + ("; ".join(searched) if searched else "(no folders registered)")]
    if found:
        lines.append("Found there, but not usable for this: " + ", ".join(found[:12]))
    return "\n".join(lines)


@dataclass(frozen=True)
class PresetStatus:
    preset: str
    family: str
    usable: bool
    detail: str  # the files it would use, or what is missing


def availability(adapters: list[tuple[str, Detected]], encoders: list[Encoder], loras: list[str],
                 face_packs: list[str], identitynets: list[str] | None = None) -> list[PresetStatus]:
    """For every preset and base model: usable with which files, or what to download. A ControlNet a preset also
    finds is optional: its absence is noted, the preset stays usable."""
    rows = []
    lora_names = {os.path.basename(n).lower() for n in loras}
    for preset, table in PRESETS.items():
        for family, choice in table.items():
            ranked = rank_adapters(choice, adapters)
            missing, using = [], []
            if ranked:
                using.append(ranked[0])
            else:
                missing.append(f"{choice.file} ({choice.source}) -> {choice.folder}")
            enc = choice.encoder
            if enc is not None:
                if any(e.same_as(enc) for e in encoders):
                    using.append(enc.name)
                else:
                    missing.append(f"{enc.file_hint} -> models/clip_vision")
            own_lora = bool(ranked) and dict(adapters)[ranked[0]].has_lora
            if choice.lora and not own_lora and choice.lora.lower() not in lora_names:
                missing.append(f"{choice.lora} ({choice.source}) -> models/loras")
            if choice.face and choice.face_pack not in face_packs:
                missing.append(f"{choice.face_pack} face model pack -> "
                               f"models/insightface/models/{choice.face_pack}/*.onnx")
            detail = ", ".join(using) if not missing else "missing: " + "; ".join(missing)
            if choice.controlnet:
                file, source = choice.controlnet
                detail += (f", ControlNet {identitynets[0]}" if identitynets else
                           f" (ControlNet not found: {file} from {source} -> models/controlnet)")
            rows.append(PresetStatus(preset, family, not missing, detail))
    return rows
