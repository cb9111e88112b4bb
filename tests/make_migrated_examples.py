"""Writes the workflows/likeness_migrated_*.json examples: the converter's output for our own leading-pack test
graphs (tests/leading_pack_graphs.py), plus a Note. tests/test_migrate.py checks the shipped files still equal
what the converter makes.

    python tests/make_migrated_examples.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import leading_pack_graphs as graphs  # noqa: E402

EXAMPLES = {
    "likeness_migrated_style_composition.json": (
        graphs.style_composition,
        "Converted from the leading IP-Adapter pack by `python -m nodes.migrate` (or the menu: Extensions > "
        "Likeness > Convert IPAdapter nodes to Likeness). Its Style & Composition node became two Likeness chains: "
        "Apply `style transfer` at weight_style on the style image, then Apply `composition` at "
        "weight_composition on the composition image (disjoint sites, so the sum is the same patch). The Precise "
        "Style Transfer, Precise Composition and Mad Scientist nodes became Applies with `style transfer precise` "
        "(style_boost), `composition precise` (composition_boost) and layer_weights.\n\nChange: the two images, the "
        "weights and boosts. Numbers may differ slightly from the old pack: Likeness also patches the middle block, "
        "and uses a mean-grey negative for plus adapters.\n\nModels: sd_xl_base_1.0.safetensors, "
        "ip-adapter-plus_sdxl_vit-h.safetensors, CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors."),
    "likeness_migrated_embeds.json": (
        graphs.embeds,
        "Converted from the leading IP-Adapter pack by `python -m nodes.migrate`. Its Encoder weights (0.6 and "
        "1.5) became Merge References `concat` nodes with those weights (each image's features scaled), "
        "Combine Embeds became Merge References (`average`, and `norm average (per element)`, the old pack's norm average under its own name), Embeds "
        "became Project + Apply, and Save Embeds became Likeness Save References (a .safetensors file in "
        "output/likeness/).\n\nChange: the two images and the weights.\n\nModels: "
        "v1-5-pruned-emaonly.safetensors, ip-adapter-plus_sd15.safetensors, "
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors."),
    "likeness_migrated_regional.json": (
        graphs.regional,
        "Converted from the leading IP-Adapter pack by `python -m nodes.migrate`. Its Regional Conditioning, "
        "Combine Params and From Params nodes were expanded: one Likeness chain per region (Encode -> Project -> "
        "Apply with the region's mask as attn_mask), chained on the MODEL, and a core Conditioning (Set Mask) node "
        "per prompt with the region's prompt_weight as strength.\n\nChange: the images, the masks (here two "
        "solid masks), the weights.\n\nModels: v1-5-pruned-emaonly.safetensors, ip-adapter-plus_sd15.safetensors, "
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors."),
}


def example(make, text, convert):
    """`convert`: nodes.migrate.convert (the tests pass the module ComfyUI loaded, where `nodes` is ComfyUI's)."""
    workflow, _ = convert(make())
    xs = [n["pos"][0] for n in workflow["nodes"]]
    ys = [n["pos"][1] for n in workflow["nodes"]]
    workflow["last_node_id"] += 1
    workflow["nodes"].append({"id": workflow["last_node_id"], "type": "Note", "pos": [min(xs) - 520, min(ys)],
                              "size": [440, 560], "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
                              "properties": {"text": ""}, "widgets_values": [text], "color": "#432",
                              "bgcolor": "#653"})
    workflow["extra"] = {"ds": {"scale": 0.5, "offset": [600, 100]}}
    return workflow


if __name__ == "__main__":
    from nodes import migrate

    for name, (make, text) in EXAMPLES.items():
        (HERE.parent / "workflows" / name).write_text(json.dumps(example(make, text, migrate.convert), indent=1)
                                                     + "\n")
        print("wrote", name)
