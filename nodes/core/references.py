"""Typed values between nodes: encoded references and projected image tokens, and the projection step."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from .adapter import Adapter
from .errors import IncompatibleError, InputError
from .variants import Feature, encoder_by_widths


# The most references one set holds. Each keeps its encoder features in memory (about 1.3 MB for ViT-H hidden
# states) and, merged with concat, its tokens in every attention call; far more photos than any identity needs.
MAX_REFERENCES = 256


def reference_count_problem(count: int, what: str) -> str | None:
    """A message when `count` references (from `what`) are more than one set may hold, else None."""
    if count <= MAX_REFERENCES:
        return None
    return (f"{what} gives {count} references; a reference set holds at most {MAX_REFERENCES}. Use fewer images "
            "(several photos of one subject from different angles are enough), or merge smaller sets with an "
            "averaging mode of Likeness Merge References.")


def check_reference_count(count: int, what: str) -> None:
    problem = reference_count_problem(count, what)
    if problem:
        raise InputError(problem)


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
class ImageFeatures:
    """CLIP vision features of N images: everything any image adapter family eats."""

    encoder: EncoderInfo
    image_embeds: torch.Tensor  # [N, embed_width]
    penultimate: torch.Tensor  # [N, S, hidden_width]
    empty_penultimate: torch.Tensor  # [1, S, hidden_width]: features of an all-zero normalised image
    source: str = ""  # encoder file name, for messages
    missing: tuple[str, ...] = ()  # fields held as zeros because the source lacked them (another pack's files)

    @property
    def count(self) -> int:
        return self.image_embeds.shape[0]


@dataclass(frozen=True, eq=False)
class FaceIdentity:
    """Identity embeddings of N faces, and the face model that made them."""

    model: str  # face model pack, e.g. "buffalo_l"
    normed: torch.Tensor  # [N, 512], L2-normalised
    raw: torch.Tensor  # [N, 512], as the recogniser gave it
    # Where each face was: its 5 keypoints in pixels of its photo (eyes, nose tip, mouth corners) and the photo's
    # (width, height). InstantID draws its pose from them. None for identities made without them.
    keypoints: torch.Tensor | None = None  # [N, 5, 2]
    image_sizes: torch.Tensor | None = None  # [N, 2]

    def __post_init__(self):
        if (self.keypoints is None) != (self.image_sizes is None):
            raise InputError("face keypoints and the sizes of their photos go together; one of them is missing.")
        if self.keypoints is not None and (tuple(self.keypoints.shape) != (self.count, 5, 2)
                                           or tuple(self.image_sizes.shape) != (self.count, 2)):
            raise InputError(f"face keypoints {tuple(self.keypoints.shape)} and photo sizes "
                             f"{tuple(self.image_sizes.shape)} do not describe {self.count} faces.")

    @property
    def count(self) -> int:
        return self.normed.shape[0]

    def rows(self, index: torch.Tensor) -> "FaceIdentity":
        """The faces at `index` (a LongTensor of rows), keypoints included."""
        pose = {} if self.keypoints is None else dict(keypoints=self.keypoints[index],
                                                       image_sizes=self.image_sizes[index])
        return dataclasses.replace(self, normed=self.normed[index], raw=self.raw[index], **pose)

    @staticmethod
    def concat(faces: Sequence["FaceIdentity"]) -> "FaceIdentity":
        """Faces of one face model, in order; keypoints are kept when every part has them."""
        with_pose = all(f.keypoints is not None for f in faces)
        pose = dict(keypoints=torch.cat([f.keypoints for f in faces]),
                    image_sizes=torch.cat([f.image_sizes for f in faces])) if with_pose else dict(
            keypoints=None, image_sizes=None)
        return dataclasses.replace(faces[0], normed=torch.cat([f.normed for f in faces]),
                                   raw=torch.cat([f.raw for f in faces]), **pose)


@dataclass(frozen=True, eq=False)
class ParsedFaceFeatures:
    """PuLID's EVA-CLIP features of N parsed faces (aligned, background white, grey): what its ID encoder reads
    besides the identity."""

    encoder: str  # e.g. "EVA02-CLIP-L-14-336 (...)"
    embeds: torch.Tensor  # [N, E], unit length
    hidden: torch.Tensor  # [N, 5, tokens, width]: the hidden states PuLID reads, class token first
    source: str = ""  # encoder file name, for messages

    @property
    def count(self) -> int:
        return self.embeds.shape[0]


@dataclass(frozen=True, eq=False)
class References:
    """N references. Image references carry CLIP features; face references carry identities and, for the
    Plus variants, CLIP features of the aligned face crops, and for PuLID EVA-CLIP features of the parsed faces
    (row i of every part describes reference i)."""

    image: ImageFeatures | None = None
    face: FaceIdentity | None = None
    parsed_face: ParsedFaceFeatures | None = None

    def __post_init__(self):
        parts = [p for p in (self.image, self.face, self.parsed_face) if p is not None]
        if not parts:
            raise InputError("no references: neither image features nor face identities were given.")
        if any(p.count == 0 for p in parts):
            raise InputError("no reference images: the image batch is empty.")
        if len({p.count for p in parts}) != 1:
            counts = ", ".join(f"{name} {p.count}" for name, p in (("face identities", self.face), ("face crop "
                               "features", self.image), ("parsed face features", self.parsed_face)) if p is not None)
            raise InputError(f"the parts of these references do not describe the same faces ({counts}).")
        check_reference_count(parts[0].count, "this reference set")

    def __deepcopy__(self, memo):
        return self

    @classmethod
    def from_images(cls, encoder: EncoderInfo, image_embeds, penultimate, empty_penultimate,
                    source: str = "") -> "References":
        return cls(image=ImageFeatures(encoder, image_embeds, penultimate, empty_penultimate, source))

    @property
    def count(self) -> int:
        return (self.image or self.face or self.parsed_face).count


@dataclass(frozen=True, eq=False)
class ImageTokens:
    """Image tokens for the cond and uncond sides, [N, T, C] each, and the adapter that made them."""

    adapter_name: str
    context_width: int
    tokens_per_reference: int
    cond: torch.Tensor
    uncond: torch.Tensor
    variant: str = ""  # key of the adapter's row in the variants table, when it has one

    def __deepcopy__(self, memo):
        return self

    def flat(self) -> tuple[torch.Tensor, torch.Tensor]:
        """References concatenated along the token axis: attention runs across all of them."""
        c = self.context_width
        return self.cond.reshape(-1, c), self.uncond.reshape(-1, c)


def _image_features(adapter: Adapter, refs: References, role: str) -> ImageFeatures:
    det = adapter.detected
    feats = refs.image
    if feats is None:
        raise IncompatibleError(
            f"adapter `{adapter.name}` reads CLIP image features, but the {role} are face identities "
            "only. Encode the images with Likeness Image Encode.")
    if det.feature is Feature.IMAGE_EMBEDS:
        have, kind, field = feats.encoder.embed_width, "image embeds", "image_embeds"
    else:
        have, kind, field = feats.encoder.hidden_width, "hidden states", "penultimate"
    if field in feats.missing:
        raise IncompatibleError(
            f"adapter `{adapter.name}` reads CLIP {kind}, but the {role} hold none: they were loaded from saved "
            f"embeds of another pack{f' (`{feats.source}`)' if feats.source else ''}, which keep only one kind of "
            "feature. Encode the images again with Likeness Image Encode, or use an adapter that reads what the "
            "file holds.")
    if have != det.input_width:
        src = f" (`{feats.source}`)" if feats.source else ""
        raise IncompatibleError(
            f"adapter `{adapter.name}` needs {det.encoder_requirement()}; the {role} were encoded "
            f"with {feats.encoder.describe()}{src}, which gives {have}-wide {kind}. Load the matching encoder "
            "in a Load CLIP Vision node (models/clip_vision).")
    return feats


def working_projection(adapter: Adapter, device: torch.device):
    """The adapter's projection in float32 on `device`: the stored module when it already is, else a temporary
    copy (files are usually fp16, and the stored module stays as loaded so it is held once)."""
    proj = adapter.projection
    if next(proj.parameters()).dtype != torch.float32 or device.type != "cpu":
        proj = copy.deepcopy(proj).to(device=device, dtype=torch.float32)
    return proj


def match_count(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat the last row (or cut) so the uncond side has as many references as the cond side."""
    if t.shape[0] >= n:
        return t[:n]
    return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])])


@torch.no_grad()
def project_references(adapter: Adapter, refs: References, negative: References | None = None,
                       device: torch.device | None = None, faceid_plus_v2: bool | None = None,
                       faceid_v2_weight: float = 1.0, noise: float | None = None) -> ImageTokens:
    """Encoder features (or face identities, for FaceID adapters) -> image tokens.

    The uncond side follows the reference implementation unless `negative` is given: zeros in embedding
    space for pooled-embedding adapters, and the encoder's features of an all-zero normalised image
    (mean grey) for hidden-state adapters. FaceID adapters: see `face.project_faces`, which also takes the
    FaceID Plus version (None: guessed from the file name) and the Plus v2 shortcut weight. InstantID: see
    `instantid.project_identity`; `noise` is its uncond noise (None: InstantID's default).
    """
    det = adapter.detected
    if det.pulid:
        from .pulid import project_pulid

        return project_pulid(adapter, refs, negative, device)
    if det.faceid:
        from . import instantid
        from .face import project_faces

        if instantid.is_instantid(adapter):
            return instantid.project_identity(adapter, refs, negative, device,
                                              instantid.DEFAULT_NOISE if noise is None else noise)
        return project_faces(adapter, refs, negative, device, plus_v2=faceid_plus_v2, v2_weight=faceid_v2_weight)
    feats = _image_features(adapter, refs, "references")
    neg = None if negative is None else _image_features(adapter, negative, "negative references")
    device = device or torch.device("cpu")
    n = feats.count
    if det.feature is Feature.IMAGE_EMBEDS:
        cond_in = feats.image_embeds
        uncond_in = torch.zeros_like(cond_in) if neg is None else match_count(neg.image_embeds, n)
    else:
        cond_in = feats.penultimate
        if neg is None and "empty_penultimate" in feats.missing:
            raise IncompatibleError(
                f"the references (`{feats.source}`) come without the encoder's features of a blank image, the "
                f"default negative of `{adapter.name}`. Connect the Load CLIP Vision that made them to clip_vision on "
                "Likeness Load References, or give Likeness Project a negative.")
        uncond_in = match_count(feats.empty_penultimate if neg is None else neg.penultimate, n)
    proj = working_projection(adapter, device)
    cond = proj(cond_in.to(device, torch.float32)).float().cpu()
    uncond = proj(uncond_in.to(device, torch.float32)).float().cpu()
    return ImageTokens(adapter.name, det.tokens_width, cond.shape[1], cond, uncond,
                       det.variant.key if det.variant else "")
