"""Per-site weights: how much each cross-attention site listens to the image, for each weight type.

Sites are numbered by `transformer`, the ordinal of their spatial transformer in execution order
(input blocks, middle, output blocks); `p = transformer / L` over the L transformers, as in the leading ComfyUI
IP-Adapter pack, so the weight types that share its names give the same multipliers. Every formula here is
documented in web/docs/LikenessApply.md.
"""

from __future__ import annotations

import math
import re
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
        """t / L: 0 at the first transformer, (L-1)/L at the last (the leading pack's ramps use the same)."""
        return self.transformer / max(self.transformers, 1)


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


@dataclass(frozen=True)
class Boosts:
    """The two extra weights of the precise weight types (the leading ComfyUI IP-Adapter pack's names).

    style_boost: the weight at the composition blocks under `style transfer precise` (not scaled by `weight`).
    composition_boost: the weight at the style blocks under `composition precise`; the blocks that carry
    neither role get a tenth of it."""

    style_boost: float = 1.0
    composition_boost: float = 0.0


Rule = Callable[[Site, dict, float, Boosts], float]  # the weight one site gets, from the user weight


def _ramp(f: Callable[[float], float]) -> Rule:
    return lambda site, roles, w, boosts: w * (0.05 + 0.95 * f(site.position))


def _group(scale: dict[str, float]) -> Rule:
    return lambda site, roles, w, boosts: w * scale.get(site.block, 1.0)


def _in(roles: dict, name: str, site: Site) -> float:
    return roles[name].get((site.block, site.block_id), 0.0)


def _role(*names: str, invert: bool = False) -> Rule:
    def rule(site: Site, roles: dict, w: float, boosts: Boosts) -> float:
        key = (site.block, site.block_id)
        if invert:
            return 0.0 if any(key in roles[n] for n in names) else w
        return w * max((roles[n].get(key, 0.0) for n in names), default=0.0)
    return rule


def _style_transfer_precise(site: Site, roles: dict, w: float, boosts: Boosts) -> float:
    return w * _in(roles, "style", site) + boosts.style_boost * _in(roles, "composition", site)


def _composition_precise(site: Site, roles: dict, w: float, boosts: Boosts) -> float:
    composition = _in(roles, "composition", site)
    if composition:
        return w * composition
    style = _in(roles, "style", site)
    return boosts.composition_boost * (style if style else 0.1)


WEIGHT_TYPES: dict[str, Rule] = {
    "linear": lambda site, roles, w, boosts: w,
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
    "style transfer precise": _style_transfer_precise,
    "composition precise": _composition_precise,
}

# The precise types also swap the sides at some sites: there the cond side attends to zero tokens and the uncond
# side to the reference's tokens, so guidance pushes *away* from the reference at those blocks.
PRECISE_SWAP: dict[str, Callable[[Site, dict], bool]] = {
    "style transfer precise": lambda site, roles: bool(_in(roles, "composition", site)),
    "composition precise": lambda site, roles: not _in(roles, "composition", site),
}


def _check_type(weight_type: str) -> Rule:
    rule = WEIGHT_TYPES.get(weight_type)
    if rule is None:
        raise InputError(f"weight_type `{weight_type}` is not one of: {', '.join(WEIGHT_TYPES)}.")
    return rule


_LAYER_ITEM = re.compile(r"^\s*(\d+)\s*:\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def parse_layer_weights(text: str | None) -> dict[int, float] | None:
    """`"3:0.8, 6:1.0"` -> {3: 0.8, 6: 1.0} (spatial transformer index: multiplier); blank -> None (not used).

    Items are separated by commas or new lines, as in the leading ComfyUI IP-Adapter pack's Mad Scientist node."""
    if text is None or not text.strip():
        return None
    out: dict[int, float] = {}
    for item in re.split(r"[,\n;]+", text):
        if not item.strip():
            continue
        m = _LAYER_ITEM.match(item)
        if not m:
            raise InputError(
                f"layer_weights: `{item.strip()}` is not `index:weight`. Write one pair per spatial transformer, "
                "separated by commas, e.g. `3:0.8, 6:1.0` (SDXL has transformers 0-10, SD1.5 0-15).")
        index, value = int(m.group(1)), float(m.group(2))
        if not math.isfinite(value):
            raise InputError(f"layer_weights: `{item.strip()}` is not a finite number.")
        if index in out:
            raise InputError(f"layer_weights: transformer {index} is listed twice.")
        out[index] = value
    return out or None


@dataclass(frozen=True)
class SitePlan:
    """What an Apply does at each site: the weight, and whether the cond/uncond sides are swapped there."""

    weights: dict  # site key -> weight
    swapped: frozenset  # site keys where the cond side attends to zeros and the uncond side to the reference


def site_plan(sites: Sequence[Site], weight: float, weight_type: str, boosts: Boosts = Boosts(),
              layer_weights: dict[int, float] | None = None) -> SitePlan:
    """The weight each site gets for this weight type, boosts and (when given) per-transformer weights.

    `layer_weights` replaces the weight type's multipliers: transformer t gets `weight * layer_weights[t]`, and a
    transformer that is not listed gets 0. A precise weight type keeps its side swap under layer_weights."""
    rule = _check_type(weight_type)
    roles = roles_for(sites)
    if layer_weights is not None:
        count = sites[0].transformers if sites else 0
        beyond = sorted(t for t in layer_weights if t >= count)
        if beyond:
            raise InputError(
                f"layer_weights names transformer{'s' if len(beyond) > 1 else ''} {', '.join(map(str, beyond))}, "
                f"but this model has {count} spatial transformers (0-{count - 1}): SDXL has 11, SD1.5 16.")
        weights = {s.key: weight * layer_weights.get(s.transformer, 0.0) for s in sites}
    else:
        weights = {s.key: rule(s, roles, weight, boosts) for s in sites}
    swap = PRECISE_SWAP.get(weight_type)
    swapped = frozenset(s.key for s in sites if swap is not None and swap(s, roles))
    return SitePlan(weights, swapped)


def site_weights(sites: Sequence[Site], weight: float, weight_type: str, boosts: Boosts = Boosts(),
                 layer_weights: dict[int, float] | None = None) -> dict[tuple[str, int, int], float]:
    """The weight each site gets."""
    return site_plan(sites, weight, weight_type, boosts, layer_weights).weights


def window_problem(start_at: float | None, end_at: float | None) -> str | None:
    """Why a start/end pair (fractions of the schedule) is unusable, or None. Unknown (linked) values pass."""
    for name, value in (("start_at", start_at), ("end_at", end_at)):
        if value is not None and not 0.0 <= value <= 1.0:
            return f"{name} must be between 0 and 1; got {value}."
    if start_at is not None and end_at is not None and start_at > end_at:
        return (f"start_at ({start_at}) is after end_at ({end_at}); the adapter would never be active. "
                "Set start_at <= end_at.")
    return None
