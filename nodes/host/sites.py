"""Finding a UNet's cross-attention sites by walking the model, and mapping them to checkpoint layer ids."""

from __future__ import annotations

import torch
from comfy.ldm.modules.attention import SpatialTransformer

from ..core.schedules import Site
from ..core.variants import KOLORS, family_name

SDXL_SITES = 70  # the SDXL layout, which Kolors shares


def find_sites(model) -> list[Site]:
    """Every attn2 of every SpatialTransformer, in h94 checkpoint order (input, output, then middle blocks).

    `model` is a ModelPatcher; nothing is hard-coded about the layout.
    """
    unet = model.get_model_object("diffusion_model")
    groups = [("input", list(getattr(unet, "input_blocks", None) or []))]
    middle = getattr(unet, "middle_block", None)
    groups.append(("middle", [middle] if middle is not None else []))
    groups.append(("output", list(getattr(unet, "output_blocks", None) or [])))
    found: dict[str, list] = {"input": [], "middle": [], "output": []}
    transformer = 0
    for name, blocks in groups:  # execution order, for the transformer ordinal
        for block_id, block in enumerate(blocks):
            for layer in block:
                if not isinstance(layer, SpatialTransformer):
                    continue
                for index, tb in enumerate(layer.transformer_blocks):
                    attn2 = getattr(tb, "attn2", None)
                    if attn2 is None:
                        continue
                    found[name].append((block_id, index, transformer, attn2.to_q.out_features,
                                        attn2.to_k.in_features, int(getattr(attn2, "heads", 0) or 0)))
                transformer += 1
    ordered = [(name, row) for name in ("input", "output", "middle") for row in found[name]]
    return [Site(name, block_id, index, t, transformer, width, context, 2 * n + 1, heads)
            for n, (name, (block_id, index, t, width, context, heads)) in enumerate(ordered)]


def text_projection(model):
    """The UNet's own projection of the text encoder's output into its cross-attention width, when it has one:
    Kolors UNets (as Kolors loader packs build them) carry `encoder_hid_proj`, ChatGLM's 4096 -> 2048. None for
    SD1.5 and SDXL, whose text encoders already give the context width."""
    proj = getattr(model.get_model_object("diffusion_model"), "encoder_hid_proj", None)
    weight = getattr(proj, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    bias = getattr(proj, "bias", None)
    return weight.detach(), (bias.detach() if isinstance(bias, torch.Tensor) else None)


def base_model(model, sites: list[Site] | None = None) -> str:
    """SD1.5, SDXL, Kolors (an SDXL-layout UNet with a text projection), or a description of another layout."""
    sites = find_sites(model) if sites is None else sites
    if not sites:
        return "a model without UNet cross-attention sites"
    if len(sites) == SDXL_SITES and text_projection(model) is not None:
        return KOLORS
    return family_name(sites[0].context_width, len(sites))
