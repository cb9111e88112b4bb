"""Per-site weights: how much each cross-attention site listens to the image, for each weight type.

Sites are numbered by `transformer`, the ordinal of their spatial transformer in execution order
(input blocks, middle, output blocks); `p = transformer / (L - 1)` runs from 0 to 1 over the L
transformers. Every formula here is documented in web/docs/LikenessApply.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .errors import InputError


@dataclass(frozen=True)
class Site:
    """One cross-attention site of a UNet, with the checkpoint layer it reads."""

    block: str  # "input" | "middle" | "output"
    block_id: int
    index: int  # transformer block inside the spatial transformer
    transformer: int  # ordinal of the spatial transformer, execution order
    transformers: int  # how many spatial transformers the UNet has
    width: int  # inner width of the attention (heads * head width)
    context_width: int
    layer_id: int  # h94 checkpoint numbering (2n + 1, diffusers processor order)
    heads: int = 0  # attention heads (0 when unknown); the fallback when ComfyUI passes no `n_heads`

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.block, self.block_id, self.index)

    @property
    def position(self) -> float:
        return self.transformer / max(self.transformers - 1, 1)


# Which spatial transformers carry layout ("composition") and look ("style"), per UNet layout.
# SDXL: InstantStyle's findings (down_blocks.2.attentions.1 = layout, up_blocks.0.attentions.1 = style).
# SD1.5: the vocabulary ComfyUI users know from the IP-Adapter packs (deep input blocks = layout).
_SDXL_BLOCKS = frozenset({("input", 4), ("input", 5), ("input", 7), ("input", 8), ("middle", 0)}
                         | {("output", i) for i in range(6)})
_SD15_BLOCKS = frozenset({("input", i) for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0)}
                         | {("output", i) for i in range(3, 12)})
ROLES = {
    _SDXL_BLOCKS: {"composition": {("input", 8): 1.0}, "style": {("output", 1): 1.0}},
    _SD15_BLOCKS: {"composition": {("input", 7): 0.25, ("input", 8): 1.0},
                   "style": {("input", 1): 1.0, ("input", 2): 1.0, ("input", 4): 1.0, ("input", 5): 1.0,
                             **{("output", i): 1.0 for i in range(5, 12)}}},
}


def roles_for(sites: Sequence[Site]) -> dict[str, dict[tuple[str, int], float]]:
    """Composition and style multipliers per (block, id). Unknown layouts: last input / second output block."""
    blocks = frozenset((s.block, s.block_id) for s in sites)
    if blocks in ROLES:
        return ROLES[blocks]
    inputs = sorted({s.block_id for s in sites if s.block == "input"})
    outputs = sorted({s.block_id for s in sites if s.block == "output"})
    roles: dict[str, dict[tuple[str, int], float]] = {"composition": {}, "style": {}}
    if inputs:
        roles["composition"][("input", inputs[-1])] = 1.0
    if outputs:
        roles["style"][("output", outputs[min(1, len(outputs) - 1)])] = 1.0
    return roles


Rule = Callable[[Site, dict], float]  # multiplier for the user weight at one site


def _ramp(f: Callable[[float], float]) -> Rule:
    return lambda site, roles: 0.05 + 0.95 * f(site.position)


def _group(scale: dict[str, float]) -> Rule:
    return lambda site, roles: scale.get(site.block, 1.0)


def _role(*names: str, invert: bool = False) -> Rule:
    def rule(site: Site, roles: dict) -> float:
        key = (site.block, site.block_id)
        if invert:
            return 0.0 if any(key in roles[n] for n in names) else 1.0
        return max((roles[n].get(key, 0.0) for n in names), default=0.0)
    return rule


WEIGHT_TYPES: dict[str, Rule] = {
    "linear": lambda site, roles: 1.0,
    "ease in": _ramp(lambda p: 1.0 - p),
    "ease out": _ramp(lambda p: p),
    "ease in-out": _ramp(lambda p: 1.0 - abs(2.0 * p - 1.0)),
    "reverse in-out": _ramp(lambda p: abs(2.0 * p - 1.0)),
    "weak input": _group({"input": 0.2}),
    "weak output": _group({"output": 0.2}),
    "weak middle": _group({"middle": 0.2}),
    "strong middle": _group({"input": 0.2, "output": 0.2}),
    "style transfer": _role("style"),
    "composition": _role("composition"),
    "strong style transfer": _role("composition", invert=True),
    "style and composition": _role("style", "composition"),
}


def site_weights(sites: Sequence[Site], weight: float, weight_type: str) -> dict[tuple[str, int, int], float]:
    """The weight each site gets."""
    rule = WEIGHT_TYPES.get(weight_type)
    if rule is None:
        raise InputError(f"weight_type `{weight_type}` is not one of: {', '.join(WEIGHT_TYPES)}.")
    roles = roles_for(sites)
    return {s.key: weight * rule(s, roles) for s in sites}


def window_problem(start_at: float | None, end_at: float | None) -> str | None:
    """Why a start/end pair (fractions of the schedule) is unusable, or None. Unknown (linked) values pass."""
    for name, value in (("start_at", start_at), ("end_at", end_at)):
        if value is not None and not 0.0 <= value <= 1.0:
            return f"{name} must be between 0 and 1; got {value}."
    if start_at is not None and end_at is not None and start_at > end_at:
        return (f"start_at ({start_at}) is after end_at ({end_at}); the adapter would never be active. "
                "Set start_at <= end_at.")
    return None
