"""The model doctor's report (the LikenessModelDoctor node in nodes/unified.py shows it): every adapter, encoder,
FaceID LoRA and face model pack found, what each is, and which presets work for SD1.5 and SDXL. Also a command:

    python -m nodes.doctor --comfyui /path/to/ComfyUI [--extra-model-paths-config FILE]

run from the pack folder.
"""

from __future__ import annotations

import argparse
import os
import sys


def report(prompt: dict | None = None) -> str:
    """The doctor's text; `prompt` (the running workflow, when the node runs in one) adds its edit-model checks."""
    from .core.presets import availability
    from .core.variants import Detected, Encoder
    from .edit.checks import section as edit_models_section
    from .host import catalog

    adapters, encoders, loras = catalog.adapters(), catalog.encoders(), catalog.faceid_loras()
    packs = catalog.face_packs()
    lines = ["Likeness model doctor", "", "Adapters (models/ipadapter, models/instantid):"]
    lines += [f"  {e.name}: {e.describe()}" for e in adapters] or ["  (none)"]
    lines += ["", "Image encoders (models/clip_vision):"]
    lines += [f"  {e.name}: {e.describe()}" for e in encoders] or ["  (none)"]
    lines += ["", "FaceID LoRAs (models/loras):"] + ([f"  {e.name}" for e in loras] or ["  (none)"])
    lines += ["", "Face model packs (models/insightface/models):"] + ([f"  {p}" for p in packs] or ["  (none)"])
    identitynets = catalog.identitynets()
    lines += ["", *instantid_lines(adapters, identitynets, packs)]
    rows = availability([(e.name, e.found) for e in adapters if isinstance(e.found, Detected)],
                        [e.found for e in encoders if isinstance(e.found, Encoder)], [e.name for e in loras], packs,
                        [e.name for e in identitynets])
    for family in ("SD1.5", "SDXL"):
        lines += ["", f"Presets for {family}:"]
        lines += [f"  {'OK ' if r.usable else '-- '} {r.preset:<24} {r.detail}" for r in rows if r.family == family]
    lines += [""] + edit_models_section(prompt)
    lines += ["", "Folders searched:"]
    for folder in ("ipadapter", "instantid", "clip_vision", "loras", "insightface", "controlnet"):
        lines.append(f"  {folder}: {'; '.join(catalog.searched(folder)) or '(not registered)'}")
    return "\n".join(lines)


def instantid_lines(adapters, identitynets, packs) -> list[str]:
    """InstantID's three files: found, or what to download and where it goes."""
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
    lines.append(f"  face model pack: {row.face_pack} " + (
        "found" if row.face_pack in packs else
        f"missing: {row.face_pack}.zip from the insightface model zoo, unpacked so that its .onnx files sit in "
        f"models/insightface/models/{row.face_pack}/"))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nodes.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", os.path.expanduser("~/ComfyUI")),
                        help="the ComfyUI folder (default: $COMFYUI_PATH or ~/ComfyUI)")
    parser.add_argument("--extra-model-paths-config", action="append", default=[],
                        help="extra_model_paths.yaml files to read besides the one in the ComfyUI folder")
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

    for yaml_path in [os.path.join(comfy_root, "extra_model_paths.yaml"), *args.extra_model_paths_config]:
        if os.path.isfile(yaml_path):
            load_extra_path_config(yaml_path)
    from .host import folders

    folders.register_all()
    assert folder_paths  # imported for its side effect of defining the model folders
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
