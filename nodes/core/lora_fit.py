"""Which model a UNet LoRA was made for, read from its key names and shapes alone.

A LoRA on the cross-attention key projections (`attn2.to_k`) takes the text context as its input, so the input
width of those `down` matrices is the model's context width and their number is the model's number of
cross-attention sites: the two facts that tell SD1.5 (768, 16) from SDXL (2048, 70) in the family table.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Mapping, Sequence

from .variants import family_name

# The `down` (A) matrix of a LoRA on a cross-attention key projection, in the namings ComfyUI reads: kohya
# `lora_down`, diffusers `lora.down` / `_lora.down` (also behind `.processor`), PEFT `lora_A`.
_CROSS_KEY_DOWN = re.compile(
    r"^(?P<module>.*attn2(?:\.processor)?[._]to_k)(?:\.lora_down|\.lora\.down|_lora\.down|\.lora_A)(?:\.default)?"
    r"\.weight$")
# The h94 FaceID adapters number attention processors instead: odd numbers are the cross-attention ones.
_PROCESSOR_DOWN = re.compile(r"^(?:ip_adapter\.)?(?P<module>\d+)\.to_k_lora\.down\.weight$")


def cross_attention_inputs(shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Cross-attention key LoRA module -> its input width (the context width of the model it was made for)."""
    out = {}
    for key, shape in shapes.items():
        if len(shape) != 2:
            continue
        match = _CROSS_KEY_DOWN.match(key)
        if match is None:
            match = _PROCESSOR_DOWN.match(key)
            if match is None or int(match.group("module")) % 2 == 0:
                continue
        out[match.group("module")] = int(shape[1])
    return out


def lora_family(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """"SD1.5", "SDXL", a description of another model, or None when the LoRA has no cross-attention key part."""
    widths = cross_attention_inputs(shapes)
    if not widths:
        return None
    context = Counter(widths.values()).most_common(1)[0][0]
    return family_name(context, len(widths))
