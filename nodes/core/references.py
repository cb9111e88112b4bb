"""Typed values between nodes: encoded references and projected image tokens, and the projection step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapter import Adapter
from .errors import IncompatibleError, InputError
from .variants import Feature, encoder_by_widths


@dataclass(frozen=True, eq=False)
class EncoderInfo:
    """What encoder made a set of references."""

    name: str
    hidden_width: int
    embed_width: int

    @classmethod
    def from_widths(cls, hidden_width: int, embed_width: int, fallback_name: str = "") -> "EncoderInfo":
        known = encoder_by_widths(hidden_width, embed_width)
        name = known.name if known else (fallback_name or f"{hidden_width}-wide encoder")
        return cls(name, hidden_width, embed_width)

    def describe(self) -> str:
        return f"{self.name} ({self.hidden_width}-wide hidden states, {self.embed_width}-wide image embeds)"


@dataclass(frozen=True, eq=False)
class References:
    """N encoded reference images and the encoder features every image adapter family needs."""

    encoder: EncoderInfo
    image_embeds: torch.Tensor  # [N, embed_width]
    penultimate: torch.Tensor  # [N, S, hidden_width]
    empty_penultimate: torch.Tensor  # [1, S, hidden_width]: features of an all-zero normalised image
    source: str = ""  # encoder file name, for messages

    def __post_init__(self):
        if self.image_embeds.shape[0] == 0:
            raise InputError("no reference images: the image batch is empty.")

    def __deepcopy__(self, memo):
        return self

    @property
    def count(self) -> int:
        return self.image_embeds.shape[0]


@dataclass(frozen=True, eq=False)
class ImageTokens:
    """Image tokens for the cond and uncond sides, [N, T, C] each, and the adapter that made them."""

    adapter_name: str
    context_width: int
    tokens_per_reference: int
    cond: torch.Tensor
    uncond: torch.Tensor

    def __deepcopy__(self, memo):
        return self

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """References concatenated along the token axis: attention runs across all of them."""
        c = self.context_width
        return self.cond.reshape(-1, c), self.uncond.reshape(-1, c)


def _check_encoder(adapter: Adapter, refs: References, role: str) -> None:
    det = adapter.detected
    if det.feature is Feature.IMAGE_EMBEDS:
        have, kind = refs.encoder.embed_width, "image embeds"
    else:
        have, kind = refs.encoder.hidden_width, "hidden states"
    if have != det.input_width:
        src = f" (`{refs.source}`)" if refs.source else ""
        raise IncompatibleError(
            f"adapter `{adapter.name}` needs {det.encoder_requirement()}; the {role} references were encoded "
            f"with {refs.encoder.describe()}{src}, which gives {have}-wide {kind}. Load the matching encoder "
            "in a Load CLIP Vision node (models/clip_vision).")


def _match_count(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat the last row (or cut) so the uncond side has as many references as the cond side."""
    if t.shape[0] >= n:
        return t[:n]
    return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])])


@torch.no_grad()
def project_references(adapter: Adapter, refs: References, negative: References | None = None,
                       device: torch.device | None = None) -> ImageTokens:
    """Encoder features -> image tokens.

    The uncond side follows the reference implementation unless `negative` is given: zeros in embedding
    space for pooled-embedding adapters, and the encoder's features of an all-zero normalised image
    (mean grey) for hidden-state adapters.
    """
    det = adapter.detected
    if det.faceid:
        raise IncompatibleError(
            f"adapter `{adapter.name}` is a {det.summary().split(';')[0]} adapter: it reads identity embeddings "
            "from faces, not CLIP image features. Use the Likeness FaceID nodes with it, or load an image "
            "adapter such as ip-adapter_sd15.safetensors.")
    _check_encoder(adapter, refs, "reference")
    if negative is not None:
        _check_encoder(adapter, negative, "negative")
    device = device or torch.device("cpu")
    n = refs.count
    if det.feature is Feature.IMAGE_EMBEDS:
        cond_in = refs.image_embeds
        uncond_in = torch.zeros_like(cond_in) if negative is None else _match_count(negative.image_embeds, n)
    else:
        cond_in = refs.penultimate
        uncond_src = refs.empty_penultimate if negative is None else negative.penultimate
        uncond_in = _match_count(uncond_src, n)
    proj = adapter.projection.to(device)
    try:
        cond = proj(cond_in.to(device, torch.float32)).float().cpu()
        uncond = proj(uncond_in.to(device, torch.float32)).float().cpu()
    finally:
        adapter.projection.to("cpu")
    return ImageTokens(adapter.name, det.context_width, cond.shape[1], cond, uncond)
