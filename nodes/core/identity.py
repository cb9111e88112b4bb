"""Did the likeness hold? Calibrated identity scores, the pass line, multi-person assignment, swap and blend flags.

Everything here is a function of embeddings (face identities or image embeddings); the node shells in
nodes/check/ only feed it. For one person (or subject) with K references, u_i the unit reference embeddings:

    centroid      c = (1/K) Σ u_i
    baseline      b = (1/K) Σ_i cos(u_i, (1/(K-1)) Σ_{j≠i} u_j)        K ≥ 2: how alike the person's own photos
                                                                        are, each against the rest (leave one out)
                  b = the fixed single-reference baseline                K = 1 (see `FACE_SINGLE_BASELINE`,
                                                                        `SUBJECT_SINGLE_BASELINE`)
    score         s(x) = max(0, cos(x, c) / b)                          1.0: as alike as the person's own photos
    auto threshold  t = min(1, line / b)                                the pass line on the score's scale

The line is what separates "this person" from "someone else" in raw cosine: for face recognisers the published
verification threshold (`VERIFICATION_THRESHOLD`); for image encoders, which have none, halfway between the
cosine a blank picture gets and the references' own level, (cos(blank, c) + b) / 2. Capping at 1 means an output
is never asked to be more alike than the person's own photos are.

Several people: every face found in an image is compared with every person's centroid, and faces are matched to
people by the assignment that maximises the summed cosine (Hungarian; scipy's `linear_sum_assignment`). A person
left without a face scores 0. A face matched to one person but with a higher cosine to another person's centroid
is a *swap*; a face whose score reaches two people's thresholds is a *blend*. An image's score is the lowest of
its people's scores; it passes when every person reaches their threshold and none of its matched faces is a swap
or a blend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import IncompatibleError, InputError
from .merge import leave_one_out_similarity

# insightface's own same-person line for its ArcFace recognisers: `compare_embeddings` in insightface 2.1
# (insightface/gui/core/recognition.py) calls two faces "Same Person" at a cosine of DEFAULT_THRESHOLD = 0.4
# (insightface/gui/core/constants.py), "Uncertain" from 0.35.
VERIFICATION_THRESHOLD = 0.4
VERIFICATION_SOURCE = "insightface's verification threshold (insightface 2.1 compare_embeddings: same person at 0.4)"
# With one reference there is no spread to measure. Faces: the baseline is the verification threshold itself, so
# a score of 1.0 means "the recogniser would just call it the same person" (and the auto threshold is 1.0).
FACE_SINGLE_BASELINE = VERIFICATION_THRESHOLD
# Images: no published line exists, so one reference leaves the score uncalibrated: the raw cosine.
SUBJECT_SINGLE_BASELINE = 1.0
MIN_BASELINE = 0.1  # own photos less alike than this are not one person; a score divided by it means nothing
AUTO = 0.0  # the threshold input's value for "auto"


# ------------------------------------------------------------------ one person's calibration

@dataclass(frozen=True, eq=False)
class Calibration:
    """One person's (or subject's) references reduced to what scoring needs."""

    centroid: torch.Tensor  # [D], mean of the unit reference embeddings
    baseline: float
    leave_one_out: tuple[float, ...]  # each reference's cosine to the mean of the others (empty for one)
    count: int

    @property
    def fixed(self) -> bool:
        return self.count == 1


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1, eps=1e-12)


def calibrate(embeddings: torch.Tensor, single_baseline: float, label: str = "the references") -> Calibration:
    """[K, D] reference embeddings -> centroid and baseline (leave-one-out mean, or `single_baseline` for K = 1)."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise InputError(f"{label} are empty: there is nothing to compare the images with. Connect references made "
                         "from at least one photo.")
    units = unit(embeddings)
    centroid = units.mean(dim=0)
    k = units.shape[0]
    if k == 1:
        return Calibration(centroid, float(single_baseline), (), 1)
    loo = tuple(float(v) for v in leave_one_out_similarity(units))
    baseline = sum(loo) / k
    if not baseline >= MIN_BASELINE:
        listed = ", ".join(f"{v:.3f}" for v in loo)
        raise InputError(
            f"the {k} references of {label} are not alike: each one's cosine to the mean of the others is {listed} "
            f"(mean {baseline:.3f}, below {MIN_BASELINE}). They do not look like one person or subject, so there is "
            "no baseline to calibrate against. Check that they show the same subject (Likeness Merge References "
            "with drop_outliers finds the odd ones), or connect each person to their own references input.")
    return Calibration(centroid, baseline, loo, k)


def cosines(vectors: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """[F, D] x [D] -> [F] cosine of each vector to the centroid."""
    return F.cosine_similarity(vectors.float(), centroid.float()[None], dim=-1, eps=1e-12)


def calibrated(cosine: float, baseline: float) -> float:
    return max(0.0, cosine / baseline)


def auto_threshold(baseline: float, line: float) -> float:
    return min(1.0, line / baseline)


def subject_line(blank_cosine: float, baseline: float) -> float:
    """Image encoders' same-subject line: halfway between a blank picture's cosine and the references' level."""
    return (blank_cosine + baseline) / 2.0


@dataclass(frozen=True, eq=False)
class Person:
    """A person (or subject) to find in every image: calibration, pass line and how it was chosen."""

    label: str
    calibration: Calibration
    threshold: float  # on the score's scale
    threshold_note: str

    def describe(self) -> str:
        cal = self.calibration
        if cal.fixed:
            base = f"1 reference, baseline {cal.baseline:.3f} (fixed: one reference has no spread to measure)"
        else:
            listed = ", ".join(f"{v:.3f}" for v in cal.leave_one_out)
            base = (f"{cal.count} references, baseline {cal.baseline:.3f} (each reference's cosine to the mean of "
                    f"the others: {listed})")
        name = self.label[0].upper() + self.label[1:]
        return f"{name}: {base}; threshold {self.threshold:.3f} ({self.threshold_note})."


def make_person(label: str, cal: Calibration, threshold: float, line: float, line_words: str) -> Person:
    """`line` is the raw-cosine line between this person and anyone else; threshold AUTO (0) means auto."""
    if threshold != AUTO:
        return Person(label, cal, float(threshold), "set on the node")
    auto = auto_threshold(cal.baseline, line)
    capped = ", capped at 1: never more than the person's own photos" if auto < line / cal.baseline else ""
    return Person(label, cal, auto, f"auto: {line_words} {line:.3f} ÷ baseline {cal.baseline:.3f}{capped}")


# ------------------------------------------------------------------ one image

@dataclass(frozen=True)
class FaceResult:
    """One face (or, for Subject Score, the whole image) against every person."""

    position: str  # where it is, for the report ("x 120-280"), or "" for a whole image
    cosines: tuple[float, ...]  # to each person's centroid
    scores: tuple[float, ...]  # calibrated, per person
    person: int | None = None  # the person it was matched to
    swap_with: int | None = None  # matched to `person` but closer to this one
    blend_of: tuple[int, ...] = ()  # reaches the threshold of each of these people (two or more)

    @property
    def flagged(self) -> bool:
        return self.person is not None and (self.swap_with is not None or bool(self.blend_of))


@dataclass(frozen=True)
class ImageResult:
    index: int
    faces: tuple[FaceResult, ...]
    person_scores: tuple[float, ...]  # 0 for a person without a face
    person_faces: tuple[int | None, ...]  # which face each person got
    score: float
    passed: bool
    note: str = ""  # why no face could be read, when not simply "none found"

    @property
    def flagged(self) -> bool:
        return any(f.flagged for f in self.faces)


def assign(cos: np.ndarray) -> list[tuple[int, int]]:
    """[faces, people] cosines -> (face, person) pairs maximising the summed cosine, one face per person."""
    from scipy.optimize import linear_sum_assignment

    if cos.size == 0:
        return []
    rows, cols = linear_sum_assignment(cos, maximize=True)
    return sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: rc[1])


def judge(index: int, vectors: torch.Tensor, people: Sequence[Person], positions: Sequence[str] = (),
          note: str = "") -> ImageResult:
    """Score one image from the embeddings of the faces found in it ([F, D], F may be 0)."""
    n_people = len(people)
    if vectors.shape[0] == 0:
        return ImageResult(index, (), (0.0,) * n_people, (None,) * n_people, 0.0, False, note)
    cos = torch.stack([cosines(vectors, p.calibration.centroid) for p in people], dim=1).numpy()  # [F, P]
    scores = np.array([[calibrated(float(cos[f, p]), people[p].calibration.baseline) for p in range(n_people)]
                       for f in range(cos.shape[0])])
    matched = dict(assign(cos))  # face -> person
    faces = []
    for f in range(cos.shape[0]):
        person = matched.get(f)
        swap_with = None
        if person is not None:
            closest = int(np.argmax(cos[f]))
            if cos[f, closest] > cos[f, person]:
                swap_with = closest
        reached = tuple(p for p in range(n_people) if scores[f, p] >= people[p].threshold)
        faces.append(FaceResult(positions[f] if f < len(positions) else "", tuple(float(c) for c in cos[f]),
                                tuple(float(s) for s in scores[f]), person, swap_with,
                                reached if len(reached) >= 2 else ()))
    person_faces = tuple(next((f for f, p in matched.items() if p == q), None) for q in range(n_people))
    person_scores = tuple(0.0 if f is None else float(scores[f, q]) for q, f in enumerate(person_faces))
    score = min(person_scores)
    passed = all(s >= p.threshold for s, p in zip(person_scores, people)) and not any(x.flagged for x in faces)
    return ImageResult(index, tuple(faces), person_scores, person_faces, score, passed, note)


# ------------------------------------------------------------------ the batch

@dataclass(frozen=True)
class Verdict:
    """Every image's result, the best image and the ones that passed."""

    people: tuple[Person, ...]
    images: tuple[ImageResult, ...]
    what: str = "face"  # "face" (Identity Score) or "image" (Subject Score)
    header: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.images]

    @property
    def best(self) -> int:
        """The highest score; an image with a swap or a blend ranks after every image without one."""
        return min(range(len(self.images)), key=lambda i: (self.images[i].flagged, -self.images[i].score, i))

    @property
    def passed(self) -> list[int]:
        return [r.index for r in self.images if r.passed]

    def blocked_message(self) -> str:
        best = self.images[self.best]
        lines = [f"No image passed, so the `passed` output is blocked: the nodes it feeds (Save Image, for example) "
                 f"did not run. The best was image {best.index} with {best.score:.3f}."]
        if not any(r.faces for r in self.images) and self.what == "face":
            lines.append("No face was found in any image.")
        else:
            lines.append("Lower the threshold to let closer misses through, or generate again.")
        return " ".join(lines)

    def text(self) -> str:
        out = [self.header] if self.header else []
        out += [p.describe() for p in self.people]
        out += list(self.notes)
        out += [describe_image(r, self.people, self.what) for r in self.images]
        passed = self.passed
        best = self.images[self.best]
        out.append(f"Best: image {best.index} ({best.score:.3f}). Passed: {len(passed)} of {len(self.images)}"
                   + (f" (image{'s' if len(passed) != 1 else ''} {', '.join(map(str, passed))})." if passed else "."))
        if not passed:
            out.append(self.blocked_message())
        return "\n".join(out)


def _person_name(people: Sequence[Person], p: int) -> str:
    return people[p].label.split(" (")[0]


def describe_image(r: ImageResult, people: Sequence[Person], what: str = "face") -> str:
    verdict = "pass" if r.passed else "fail"
    head = f"Image {r.index}: {r.score:.3f} {verdict}."
    if not r.faces:
        reason = r.note or "no face found"
        return f"{head} {reason[0].upper()}{reason[1:]}: it scores 0."
    if what != "face":
        face = r.faces[0]
        return f"{head} Cosine {face.cosines[0]:.3f}, {'reaches' if r.passed else 'below'} {people[0].threshold:.3f}."
    parts = [head, "1 face." if len(r.faces) == 1 else f"{len(r.faces)} faces (numbered from the left)."]
    for i, face in enumerate(r.faces):
        name = f"Face {i + 1}" + (f" ({face.position})" if face.position else "")
        if face.person is None:
            closest = int(np.argmax(face.cosines))
            parts.append(f"{name}: not matched (more faces than people); closest to "
                         f"{_person_name(people, closest)}, cosine {face.cosines[closest]:.3f}.")
            continue
        p = face.person
        line = (f"{name} -> {_person_name(people, p)}: cosine {face.cosines[p]:.3f}, score {face.scores[p]:.3f}"
                f" ({'reaches' if face.scores[p] >= people[p].threshold else 'below'} {people[p].threshold:.3f})")
        if face.swap_with is not None:
            q = face.swap_with
            line += (f"; SWAP: closer to {_person_name(people, q)} (cosine {face.cosines[q]:.3f}), so this looks like "
                     f"{_person_name(people, q)} in {_person_name(people, p)}'s place")
        if face.blend_of:
            line += "; BLEND: reaches the threshold of " + " and ".join(_person_name(people, q) for q in face.blend_of)
        parts.append(line + ".")
    missing = [q for q, f in enumerate(r.person_faces) if f is None]
    if missing:
        parts.append("No face found for " + ", ".join(_person_name(people, q) for q in missing) + ": they score 0.")
    return " ".join(parts)


def check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and 0.0 <= threshold <= 2.0):
        raise InputError(f"threshold is {threshold!r}; use 0 (auto) or a score from 0 to 2.")


# ------------------------------------------------------------------ what may be scored against what

def check_face_references(name: str, refs, pack: str, width: int) -> None:
    """References on input `name` must be face identities, from `pack`, and not empty."""
    if refs.face is None:
        raise IncompatibleError(
            f"`{name}` hold CLIP image features (made by Likeness Image Encode), not face identities, so there is "
            "no face to compare the images with. Make the references with Likeness Face Embed (or load or merge "
            "references it made). To compare whole images instead of faces, use Likeness Subject Score.")
    face = refs.face
    if face.count == 0:
        raise InputError(f"`{name}` are empty: they hold no face identity. Connect references made by Likeness Face "
                         "Embed from at least one photo with a face.")
    if face.model != pack:
        raise IncompatibleError(
            f"`{name}` were made with face model pack `{face.model}`, but the face_model connected here is `{pack}`. "
            "Each pack's recogniser has its own identity space, so their embeddings cannot be compared. Load "
            f"`{face.model}` in the Likeness Face Model Loader that feeds this node, or remake the references with "
            f"`{pack}`.")
    if width and face.normed.shape[-1] != width:
        raise IncompatibleError(
            f"`{name}` hold {face.normed.shape[-1]}-wide identities from pack `{face.model}`, but this face_model's "
            f"recogniser gives {width}-wide ones. The pack's files changed since the references were made: remake "
            "them with Likeness Face Embed.")
