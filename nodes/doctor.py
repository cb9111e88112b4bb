"""The model doctor's report (the LikenessModelDoctor node in nodes/unified.py shows it): every adapter, encoder,
FaceID LoRA and face model pack found, what each is, and which presets work for SD1.5 and SDXL. Also a command:

    python -m nodes.doctor --comfyui /path/to/ComfyUI [--extra-model-paths-config FILE]

run from the pack folder. Every file listed is read (headers, ONNX graphs), and broken ones are marked broken.
"""

from __future__ import annotations

import argparse
import os
import sys


def report(prompt: dict | None = None) -> str:
    """The doctor's text; `prompt` (the running workflow, when the node runs in one) adds its edit-model checks."""
    from .core.instantid import ControlNetFile
    from .core.presets import availability
    from .core.variants import Detected, Encoder
    from .edit.checks import section as edit_models_section
    from .host import catalog

    adapters, encoders, loras = catalog.adapters(), catalog.encoders(), catalog.faceid_loras()
    packs = catalog.face_pack_entries()
    usable_packs = [e.name for e in packs if e.usable]
    lines = ["Likeness model doctor", "", "Adapters (models/ipadapter, models/instantid, models/pulid):"]
    lines += [f"  {e.name}: {e.describe()}" for e in adapters] or ["  (none)"]
    lines += ["", "Image encoders (models/clip_vision):"]
    lines += [f"  {e.name}: {e.describe()}" for e in encoders] or ["  (none)"]
    lines += ["", "FaceID LoRAs (models/loras):"] + ([f"  {e.name}: {e.describe()}" for e in loras] or ["  (none)"])
    lines += ["", "Face model packs (models/insightface/models):"]
    lines += [f"  {e.name}: {e.describe()}" for e in packs] or ["  (none)"]
    candidates = catalog.identitynet_candidates()
    broken = [e.name for group in (adapters, encoders, loras, packs, candidates) for e in group if e.problem]
    if broken:
        lines += ["", f"Broken or unreadable ({len(broken)}), not counted below: {', '.join(broken)}"]
    identitynets = [e for e in candidates if isinstance(e.found, ControlNetFile) and e.found.context_width]
    lines += ["", *instantid_lines(adapters, identitynets, usable_packs,
                                   [e for e in candidates if e not in identitynets])]
    rows = availability([(e.name, e.found) for e in adapters if isinstance(e.found, Detected)],
                        [e.found for e in encoders if isinstance(e.found, Encoder)],
                        [e.name for e in loras if e.usable], usable_packs, [e.name for e in identitynets])
    for family in ("SD1.5", "SDXL", "Kolors"):
        lines += ["", f"Presets for {family}:" + (" (a Kolors MODEL comes from a Kolors loader pack)"
                                                  if family == "Kolors" else "")]
        lines += [f"  {'OK ' if r.usable else '-- '} {r.preset:<24} {r.detail}" for r in rows if r.family == family]
    lines += ["", "PuLID:"] + pulid_lines(adapters, encoders, catalog.face_parsing_files(), usable_packs)
    lines += [""] + edit_models_section(prompt)
    lines += ["", "Folders searched:"]
    for folder in ("ipadapter", "instantid", "pulid", "clip_vision", "loras", "insightface", "controlnet",
                   "facexlib"):
        lines.append(f"  {folder}: {'; '.join(catalog.searched(folder)) or '(not registered)'}")
    return "\n".join(lines)


def instantid_lines(adapters, identitynets, packs, unusable=None) -> list[str]:
    """InstantID's three files: found, or what to download and where it goes; `unusable`: ControlNet files named as
    the IdentityNet that are broken or another kind of ControlNet."""
    from .core.instantid import VARIANT
    from .core.variants import Detected, variant_by_key

    row = variant_by_key(VARIANT)
    mine = [e.name for e in adapters if isinstance(e.found, Detected) and e.found.variant is not None
            and e.found.variant.key == row.key]
    lines = ["InstantID (SDXL): the adapter, the IdentityNet ControlNet and the antelopev2 face model pack. The "
             "InstantID weights are published by InstantX under Apache-2.0, but they only work with insightface's "
             "antelopev2, which is for non-commercial research use only; and a real person's likeness needs their "
             "consent."]
    lines.append("  adapter: " + (", ".join(mine) if mine else
                                  f"missing: {row.files[0]} from {row.source} -> models/{row.folder}"))
    lines.append("  IdentityNet ControlNet: " + (", ".join(f"{e.name} ({e.describe()})" for e in identitynets)
                                                 if identitynets else
                                                 f"missing: {row.controlnet_file} from {row.controlnet_source} -> "
                                                 "models/controlnet (a file of that name, or with instantid in its "
                                                 "name, is taken for it)"))
    for e in unusable or []:
        lines.append(f"  {e.name}: named as the IdentityNet but {e.describe() if e.problem else 'not an SDXL ControlNet'}")
    lines.append(f"  face model pack: {row.face_pack} " + (
        "found" if row.face_pack in packs else
        f"missing: {row.face_pack}.zip from the insightface model zoo, unpacked so that its .onnx files sit in "
        f"models/insightface/models/{row.face_pack}/"))
    return lines


def pulid_lines(adapters, encoders, parsing_files, packs) -> list[str]:
    """What PuLID needs, what was found and what to download (the same files the nodes' errors name)."""
    from .core.eva_clip import EvaConfig
    from .core.variants import FLUX, Detected
    from .host.id_encoder import EVA_FILE, EVA_URL, PARSING_FILE, PARSING_URL

    files = [e for e in adapters if isinstance(e.found, Detected) and e.found.pulid]
    sdxl = [e.name for e in files if e.found.family != FLUX]
    flux = [e.name for e in files if e.found.family == FLUX]
    eva = [e.name for e in encoders if isinstance(e.found, EvaConfig)]
    none = "none (%s from guozinan/PuLID on Hugging Face -> models/pulid)"
    lines = [f"  PuLID for SDXL: {', '.join(sdxl) or none % 'pulid_v1.1.safetensors'}",
             f"  PuLID-FLUX: {', '.join(flux) or none % 'pulid_flux_v0.9.1.safetensors'}"]
    lines.append(f"  EVA-CLIP: {', '.join(eva)}" if eva else f"  EVA-CLIP: missing: {EVA_FILE} ({EVA_URL}) -> "
                                                             "models/clip_vision")
    lines.append(f"  face parsing: {', '.join(parsing_files)}" if parsing_files else
                 f"  face parsing: missing: {PARSING_FILE} ({PARSING_URL}) -> models/facexlib")
    lines.append("  face model: antelopev2" if "antelopev2" in packs else
                 "  face model: missing: antelopev2 face model pack -> models/insightface/models/antelopev2/*.onnx")
    missing = not eva or not parsing_files or "antelopev2" not in packs or not files
    lines.append("  OK  every file PuLID needs is there" if not missing else
                 "  --  PuLID is not ready: download what is missing above")
    return lines


CONFIG_FILES = ("extra_paths.yaml", "extra_model_paths.yaml")


def default_config(comfy_root: str) -> str | None:
    """The model-paths config ComfyUI reads from its own folder: `extra_paths.yaml` when present, else
    `extra_model_paths.yaml` (current ComfyUI ignores the latter when both exist)."""
    for name in CONFIG_FILES:
        path = os.path.join(comfy_root, name)
        if os.path.isfile(path):
            return path
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", os.path.expanduser("~/ComfyUI")),
                        help="the ComfyUI folder (default: $COMFYUI_PATH or ~/ComfyUI)")
    parser.add_argument("--extra-model-paths-config", action="append", default=[],
                        help="model-paths config files to read besides the one in the ComfyUI folder (its "
                             "extra_paths.yaml, else its extra_model_paths.yaml)")
    args = parser.parse_args(argv)
    comfy_root = os.path.abspath(args.comfyui)
    if not os.path.isfile(os.path.join(comfy_root, "folder_paths.py")):
        print(f"No ComfyUI at {comfy_root}: pass --comfyui /path/to/ComfyUI.", file=sys.stderr)
        return 2
    sys.path.append(comfy_root)  # after the pack, whose `nodes` package this module is
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import folder_paths
    from utils.extra_config import load_extra_path_config

    for yaml_path in [default_config(comfy_root), *args.extra_model_paths_config]:
        if yaml_path and os.path.isfile(yaml_path):
            load_extra_path_config(yaml_path)
    from .host import folders

    folders.register_all()
    assert folder_paths  # imported for its side effect of defining the model folders
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
