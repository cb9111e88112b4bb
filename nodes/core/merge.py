"""Several references made into one set: the merge modes, per-reference weights and outlier rejection.

Every mode works on the encoder features *before* the adapter's projection, row by row (a row is one
reference), and treats each field the same way. For K kept references x_1..x_K with weights w_1..w_K:

    concat            all K rows are kept, row i scaled by w_i (w_i x_i); the adapter's tokens of every
                      reference sit side by side at the attention (ImageTokens.flat), so attention runs across
                      all of them. A weight other than 1 is the leading pack's Encoder `weight`.
    average           (1/K) Σ x_i
    weighted average  Σ w_i x_i / Σ w_i
    norm average      normalize(Σ w_i u_i) · Σ w_i ‖x_i‖ / Σ w_i      with u_i = x_i / ‖x_i‖
    norm average (per element)
                      (1/K) Σ x_i / n   with n = sqrt(Σ_j x_j²) taken per element across the K references
                      (the leading ComfyUI IP-Adapter pack's `norm average`; one reference is left as it is)
    add               Σ w_i x_i
    subtract          w_1 x_1 − (1/(K−1)) Σ_{i≥2} w_i x_i
    max, min          element-wise max / min over the K rows

Norms are taken over the last axis: per reference for the pooled image embedding and the identity
embeddings, per token for the hidden states. "norm average" therefore keeps the mean length of the inputs
instead of shrinking like a plain average, and the merged unit identity (`FaceIdentity.normed`) is a unit
vector again. A weight of 0 removes a reference before any mode runs. Only the modes that have a use for
fractional weights accept them; the others take 0 (drop) or 1 (keep). One weight alone applies to every
reference (of any batch size); otherwise there is one weight per reference. Concat scales the image features
and face identities; the unit image embedding of PuLID's parsed faces stays a direction.

Outlier rejection scores each reference by the cosine between its embedding (the identity embedding for
face references, the pooled image embedding otherwise) and the mean of the other references' unit
embeddings, and drops those that score below a threshold.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import IncompatibleError, InputError
from .references import FaceIdentity, References, check_reference_count

MERGE_MODES = ("concat", "average", "weighted average", "norm average", "norm average (per element)", "add",
               "subtract", "max", "min")
FRACTIONAL_WEIGHT_MODES = ("concat", "weighted average", "norm average", "add", "subtract")
MIN_REFERENCES_FOR_OUTLIERS = 3  # with two, each is the other's mean: nothing says which one is off
_TINY = 1e-12


# ------------------------------------------------------------------ gathering several inputs

@dataclass(frozen=True, eq=False)
class Gathered:
    """References from several node inputs, rows in input order, and where each row came from."""

    references: References
    inputs: tuple[tuple[str, int], ...]  # (input name, how many references it gave)

    @property
    def labels(self) -> tuple[str, ...]:
        out = []
        for name, count in self.inputs:
            out.extend([name] if count == 1 else [f"{name} #{k}" for k in range(1, count + 1)])
        return tuple(out)

    def describe(self) -> str:
        n = self.references.count
        parts = ", ".join(f"{name} ({count})" for name, count in self.inputs)
        return f"{n} reference{'s' if n != 1 else ''}: {parts}"


def _kind(refs: References) -> str:
    if refs.face is not None:
        crops = " with face-crop image features" if refs.image is not None else ""
        return f"face references (`{refs.face.model}` identities{crops})"
    return f"image references ({refs.image.encoder.describe()})"


def _encoder_words(refs: References) -> str:
    feats = refs.image
    src = f" from `{feats.source}`" if feats.source else ""
    return f"{feats.encoder.describe()}{src}"


def _check_same_kind(first_name: str, first: References, name: str, refs: References) -> None:
    if (first.parsed_face is None) != (refs.parsed_face is None):
        with_, without = (first_name, name) if first.parsed_face is not None else (name, first_name)
        raise IncompatibleError(
            f"cannot merge {first_name} and {name}: {with_} carry PuLID's EVA-CLIP features of the parsed faces but "
            f"{without} do not. Connect the same id_encoder to every Likeness Face Embed whose references you merge.")
    if first.parsed_face is not None and first.parsed_face.hidden.shape[1:] != refs.parsed_face.hidden.shape[1:]:
        raise IncompatibleError(
            f"cannot merge {first_name} and {name}: their parsed-face features come from different EVA-CLIP encoders "
            f"({first.parsed_face.encoder} and {refs.parsed_face.encoder}). Use one Likeness ID Encoder Loader.")
    if (first.image is None) != (refs.image is None) or (first.face is None) != (refs.face is None):
        raise IncompatibleError(
            f"cannot merge {first_name} and {name}: {first_name} are {_kind(first)} but {name} are {_kind(refs)}. "
            "Merge references of one kind at a time (image references from Likeness Image Encode, or face "
            "references from the same face model).")
    if first.face is not None:
        a, b = first.face, refs.face
        if a.model != b.model or a.normed.shape[1:] != b.normed.shape[1:] or a.raw.shape[1:] != b.raw.shape[1:]:
            raise IncompatibleError(
                f"cannot merge {first_name} and {name}: their identities come from different face models "
                f"(`{a.model}`, {a.normed.shape[-1]}-wide, and `{b.model}`, {b.normed.shape[-1]}-wide). Identity "
                "embeddings of different face models do not live in the same space; encode every face with the "
                "same face model.")
    if first.image is not None:
        a, b = first.image, refs.image
        if set(a.missing) != set(b.missing):
            raise IncompatibleError(
                f"cannot merge {first_name} and {name}: one of them was loaded from another pack's saved embeds, "
                f"which hold only some of the features (missing: {', '.join(a.missing or b.missing)}). Encode those "
                "images again with Likeness Image Encode, or merge only references of the same origin.")
        widths_differ = (a.encoder.hidden_width, a.encoder.embed_width) != (b.encoder.hidden_width,
                                                                             b.encoder.embed_width)
        if widths_differ or a.penultimate.shape[1:] != b.penultimate.shape[1:]:
            raise IncompatibleError(
                f"cannot merge {first_name} and {name}: they were encoded with different image encoders: "
                f"{first_name} with {_encoder_words(first)} ({a.penultimate.shape[1]} tokens), {name} with "
                f"{_encoder_words(refs)} ({b.penultimate.shape[1]} tokens). Encode all references with the same "
                "Load CLIP Vision model, the one your adapter needs.")
        if not torch.allclose(a.empty_penultimate.float(), b.empty_penultimate.float(), rtol=1e-3, atol=1e-4):
            raise IncompatibleError(
                f"cannot merge {first_name} and {name}: both were encoded with {a.encoder.hidden_width}-wide "
                f"image encoders, but not the same one (their features of a blank image differ): {first_name} with "
                f"{_encoder_words(first)}, {name} with {_encoder_words(refs)}. Encode all references with the "
                "same Load CLIP Vision model.")


def gather(inputs: Sequence[tuple[str, References]]) -> Gathered:
    """Join the references of several inputs into one set of rows; refuse mixed encoders or face models."""
    inputs = [(name, refs) for name, refs in inputs if refs is not None]
    if not inputs:
        raise InputError("no references: connect at least one LIKENESS_REFS input.")
    first_name, first = inputs[0]
    for name, refs in inputs[1:]:
        _check_same_kind(first_name, first, name, refs)
    counts = tuple((name, refs.count) for name, refs in inputs)
    check_reference_count(sum(c for _, c in counts), "merging " + ", ".join(f"{name} ({c})" for name, c in counts))
    if len(inputs) == 1:
        return Gathered(first, counts)
    image = face = parsed = None
    if first.parsed_face is not None:
        parsed = dataclasses.replace(first.parsed_face,
                                     embeds=torch.cat([r.parsed_face.embeds for _, r in inputs]),
                                     hidden=torch.cat([r.parsed_face.hidden for _, r in inputs]))
    if first.image is not None:
        image = dataclasses.replace(
            first.image,
            image_embeds=torch.cat([r.image.image_embeds for _, r in inputs]),
            penultimate=torch.cat([r.image.penultimate for _, r in inputs]))
    if first.face is not None:
        face = FaceIdentity.concat([r.face for _, r in inputs])
    return Gathered(References(image=image, face=face, parsed_face=parsed), counts)


# ------------------------------------------------------------------ weights

_SEPARATORS = re.compile(r"[,;\s]+")


def parse_weights(text: str | None) -> tuple[float, ...] | None:
    """`"1, 0.5, 1"` -> (1.0, 0.5, 1.0); blank -> None (every reference weighs 1)."""
    if text is None or not text.strip():
        return None
    out = []
    for token in _SEPARATORS.split(text.strip()):
        if not token:
            continue
        try:
            value = float(token)
        except ValueError:
            raise InputError(
                f"weights `{text}`: `{token}` is not a number. Write one number per reference, separated by commas, "
                "e.g. `1, 0.5, 1`.") from None
        if not math.isfinite(value):
            raise InputError(f"weights `{text}`: `{token}` is not a finite number.")
        out.append(value)
    return tuple(out)


def check_weights(weights: Sequence[float], mode: str, gathered: Gathered, text: str = "") -> None:
    n = gathered.references.count
    shown = f" (`{text}`)" if text else ""
    if len(weights) != n:
        raise InputError(
            f"weights lists {len(weights)} number{'s' if len(weights) != 1 else ''}{shown} but there are "
            f"{gathered.describe()}. Give one weight per reference, in input order (each image of a batch is "
            "one reference), one weight for all of them, or leave weights empty to weigh them all 1.")
    if mode not in FRACTIONAL_WEIGHT_MODES and any(w not in (0.0, 1.0) for w in weights):
        raise InputError(
            f"weights{shown}: mode `{mode}` uses weights only to keep (1) or drop (0) references. For fractional "
            f"weights choose {', '.join(f'`{m}`' for m in FRACTIONAL_WEIGHT_MODES)}.")
    if mode in ("weighted average", "norm average") and any(w < 0 for w in weights):
        raise InputError(
            f"weights{shown}: `{mode}` needs weights of 0 or more. To push away from a reference, use mode "
            "`subtract` or connect it as a negative in Likeness Project.")


# ------------------------------------------------------------------ the formulas

def combine(x: torch.Tensor, mode: str, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Rows x [K, ..., D] (weights [K]) -> [1, ..., D], or [K, ..., D] for concat. Norms are over the last axis."""
    k = x.shape[0]
    if k == 0:
        raise InputError("nothing to merge: no references are left.")
    w = torch.ones(k, dtype=x.dtype) if weights is None else weights.to(x.dtype)
    w = w.to(x.device).view(k, *([1] * (x.ndim - 1)))
    if mode == "concat":
        return x if weights is None else w * x
    if mode == "average":
        return x.mean(dim=0, keepdim=True)
    if mode == "weighted average":
        return (w * x).sum(dim=0, keepdim=True) / w.sum()
    if mode == "norm average":
        norms = x.norm(dim=-1, keepdim=True)
        units = x / norms.clamp_min(_TINY)
        direction = (w * units).sum(dim=0, keepdim=True)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(_TINY)
        return direction * ((w * norms).sum(dim=0, keepdim=True) / w.sum())
    if mode == "norm average (per element)":
        if k == 1:
            return x
        return (x / x.norm(dim=0, keepdim=True).clamp_min(_TINY)).mean(dim=0, keepdim=True)
    if mode == "add":
        return (w * x).sum(dim=0, keepdim=True)
    if mode == "subtract":
        if k < 2:
            raise InputError("subtract takes the first reference minus the others, but only one reference is left.")
        return w[:1] * x[:1] - (w[1:] * x[1:]).sum(dim=0, keepdim=True) / (k - 1)
    if mode == "max":
        return x.amax(dim=0, keepdim=True)
    if mode == "min":
        return x.amin(dim=0, keepdim=True)
    raise InputError(f"mode `{mode}` is not one of: {', '.join(MERGE_MODES)}.")


def leave_one_out_similarity(vectors: torch.Tensor) -> torch.Tensor:
    """[N, D] -> [N]: cos(u_i, Σ_{j≠i} u_j) with u the unit vectors (each reference counts the same)."""
    units = F.normalize(vectors.float(), dim=-1)
    others = units.sum(dim=0, keepdim=True) - units
    return F.cosine_similarity(units, others, dim=-1, eps=1e-8)


def identity_vectors(refs: References) -> torch.Tensor:
    """What outlier rejection compares: the identity embedding of face references, else the image embedding (the
    token mean of the hidden states when only those were saved)."""
    if refs.face is not None:
        return refs.face.normed
    if "image_embeds" in refs.image.missing:
        return refs.image.penultimate.mean(dim=1)
    return refs.image.image_embeds


# ------------------------------------------------------------------ the merge

@dataclass(frozen=True)
class MergeReport:
    """What a merge did, reference by reference."""

    mode: str
    labels: tuple[str, ...]
    weights: tuple[float, ...]
    dropped_by_weight: tuple[int, ...]
    dropped_as_outliers: tuple[int, ...]
    similarities: tuple[tuple[int, float], ...]  # (reference index, cosine to the mean of the others), when scored
    threshold: float | None
    result_count: int
    note: str = ""

    @property
    def kept(self) -> tuple[int, ...]:
        gone = set(self.dropped_by_weight) | set(self.dropped_as_outliers)
        return tuple(i for i in range(len(self.labels)) if i not in gone)

    def text(self) -> str:
        n = len(self.labels)
        lines = [f"{len(self.kept)} of {n} reference{'s' if n != 1 else ''} kept; mode `{self.mode}` gives "
                 f"{self.result_count} reference{'s' if self.result_count != 1 else ''}."]
        if self.dropped_by_weight:
            lines.append("dropped by weight 0: " + ", ".join(self.labels[i] for i in self.dropped_by_weight))
        scaled = [i for i in self.kept if self.weights[i] != 1]
        if self.mode == "concat" and scaled:
            lines.append("features scaled: " + ", ".join(f"{self.labels[i]} x{self.weights[i]:g}" for i in scaled))
        scores = dict(self.similarities)
        if self.dropped_as_outliers:
            lines.append(f"dropped as outliers (similarity below {self.threshold:g}): " + ", ".join(
                f"{self.labels[i]} ({scores[i]:.3f})" for i in self.dropped_as_outliers))
        if scores:
            lines.append("similarity to the others: " + ", ".join(
                f"{self.labels[i]} {s:.3f}" for i, s in self.similarities))
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def _take(refs: References, rows: Sequence[int]) -> References:
    if list(rows) == list(range(refs.count)):
        return refs
    index = torch.tensor(list(rows), dtype=torch.long)
    image = face = parsed = None
    if refs.parsed_face is not None:
        parsed = dataclasses.replace(refs.parsed_face, embeds=refs.parsed_face.embeds[index],
                                     hidden=refs.parsed_face.hidden[index])
    if refs.image is not None:
        image = dataclasses.replace(refs.image, image_embeds=refs.image.image_embeds[index],
                                    penultimate=refs.image.penultimate[index])
    if refs.face is not None:
        face = refs.face.rows(index)
    return References(image=image, face=face, parsed_face=parsed)


def _combined(refs: References, mode: str, weights: torch.Tensor) -> References:
    if mode == "concat":
        return refs if bool((weights == 1).all()) else _scaled(refs, weights)
    image = face = parsed = None
    if refs.parsed_face is not None:
        # the unit image embedding is a direction: combined, it is made a unit vector again, as PuLID reads it
        parsed = dataclasses.replace(refs.parsed_face,
                                     embeds=F.normalize(combine(refs.parsed_face.embeds, mode, weights), dim=-1),
                                     hidden=combine(refs.parsed_face.hidden, mode, weights))
    if refs.image is not None:
        image = dataclasses.replace(refs.image, image_embeds=combine(refs.image.image_embeds, mode, weights),
                                    penultimate=combine(refs.image.penultimate, mode, weights))
    if refs.face is not None:
        # one combined face keeps the pose (keypoints) of the first kept photo
        face = dataclasses.replace(refs.face.rows(torch.tensor([0])), normed=combine(refs.face.normed, mode, weights),
                                   raw=combine(refs.face.raw, mode, weights))
    return References(image=image, face=face, parsed_face=parsed)


def _scaled(refs: References, weights: torch.Tensor) -> References:
    """Concat with weights: every row's features times its weight; nothing is combined."""
    image = face = parsed = None
    if refs.parsed_face is not None:  # the unit embedding is a direction, which PuLID reads as such
        parsed = dataclasses.replace(refs.parsed_face, hidden=combine(refs.parsed_face.hidden, "concat", weights))
    if refs.image is not None:
        image = dataclasses.replace(refs.image, image_embeds=combine(refs.image.image_embeds, "concat", weights),
                                    penultimate=combine(refs.image.penultimate, "concat", weights))
    if refs.face is not None:
        face = dataclasses.replace(refs.face, normed=combine(refs.face.normed, "concat", weights),
                                   raw=combine(refs.face.raw, "concat", weights))
    return References(image=image, face=face, parsed_face=parsed)


def _reject_outliers(refs: References, labels, active: list[int], threshold: float, mode: str):
    """-> (kept indices, dropped indices, similarities by index, note)."""
    if len(active) < MIN_REFERENCES_FOR_OUTLIERS:
        return active, [], {}, (f"outlier rejection needs at least {MIN_REFERENCES_FOR_OUTLIERS} references; "
                                f"all {len(active)} were kept.")
    sims = leave_one_out_similarity(identity_vectors(refs)[torch.tensor(active)]).tolist()
    scores = dict(zip(active, sims))
    dropped = [i for i in active if scores[i] < threshold]
    kept = [i for i in active if scores[i] >= threshold]
    listed = ", ".join(f"{labels[i]} {scores[i]:.3f}" for i in active)
    what = "identity" if refs.face is not None else "image"
    if not kept:
        raise InputError(
            f"outlier rejection dropped all {len(active)} references: the cosine similarity of each {what} "
            f"embedding to the mean of the others is below the threshold {threshold:g} ({listed}). Lower "
            "outlier_threshold, or check that the references show the same subject.")
    if mode == "subtract" and active[0] in dropped:
        raise InputError(
            f"outlier rejection dropped {labels[active[0]]} ({scores[active[0]]:.3f} < {threshold:g}), but "
            "subtract takes the first reference as the one to keep. Subtract on purpose mixes different "
            "references: turn outlier rejection off for it.")
    return kept, dropped, scores, ""


def merge_references(gathered: Gathered, mode: str, weights: Sequence[float] | None = None,
                     outlier_threshold: float | None = None, weights_text: str = "") -> tuple[References, MergeReport]:
    """Drop references (weight 0, then outliers when a threshold is given) and combine the rest by `mode`."""
    if mode not in MERGE_MODES:
        raise InputError(f"mode `{mode}` is not one of: {', '.join(MERGE_MODES)}.")
    refs, labels = gathered.references, gathered.labels
    n = refs.count
    weights = tuple(float(w) for w in weights) if weights is not None else (1.0,) * n
    if len(weights) == 1:
        weights = weights * n  # one weight for every reference
    check_weights(weights, mode, gathered, weights_text)
    active = [i for i in range(n) if weights[i] != 0]
    zero = tuple(i for i in range(n) if weights[i] == 0)
    if not active:
        raise InputError(f"every weight is 0{f' (`{weights_text}`)' if weights_text else ''}: no reference is left "
                         "to merge. Give at least one reference a non-zero weight.")
    if mode == "subtract" and 0 not in active:
        raise InputError(f"subtract takes the first reference ({labels[0]}) minus the others, but its weight is 0.")
    kept, outliers, scores, note = active, [], {}, ""
    if outlier_threshold is not None:
        kept, outliers, scores, note = _reject_outliers(refs, labels, active, float(outlier_threshold), mode)
    merged = _combined(_take(refs, kept), mode, torch.tensor([weights[i] for i in kept], dtype=torch.float32))
    report = MergeReport(mode, labels, weights, zero, tuple(outliers), tuple(scores.items()), outlier_threshold,
                         merged.count, note)
    return merged, report
