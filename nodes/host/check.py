"""Scoring generated images: faces through the face model pack (as Likeness Face Embed reads them), whole images
through a ComfyUI CLIP vision or DINOv2 model, and the node outputs with the gate.

Images are read one at a time (faces) or a few at a time (image encoders), so a batch of any size keeps memory
flat; the models are the ones the loaders hold, never reloaded per image.
"""

from __future__ import annotations

import logging
import weakref
from typing import Sequence

import torch

import comfy.model_management
import comfy.utils
from comfy_execution.graph_utils import ExecutionBlocker

from ..core import identity
from ..core.errors import InputError
from ..core.face import MIN_SIDE, to_bgr_uint8
from .face import FaceModel

log = logging.getLogger(__name__)

SUBJECT_CHUNK = 8  # images per image-encoder call: enough to keep the encoder busy, small enough to stay flat


def check_images(images: torch.Tensor) -> int:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"images should be a non-empty IMAGE batch [batch, height, width, channels]; got {shape}. "
                         "Connect the generated images (VAE Decode's IMAGE).")
    return images.shape[0]


# ---------------------------------------------------------------- faces

def face_people(face_model: FaceModel, inputs: Sequence[tuple[str, object]], threshold: float) -> list:
    """One identity.Person per connected references input, in input order."""
    people = []
    for k, (name, refs) in enumerate(inputs):
        identity.check_face_references(name, refs, face_model.pack, face_model.embedding_width)
        label = f"person {k + 1} ({name})"
        cal = identity.calibrate(refs.face.normed, identity.FACE_SINGLE_BASELINE, label)
        people.append(identity.make_person(label, cal, threshold, identity.VERIFICATION_THRESHOLD,
                                           "verification threshold"))
    return people


def faces_in(face_model: FaceModel, image: torch.Tensor, index: int):
    """Every face in one image, left to right: raw identity embeddings [F, D] (insightface's own), where each
    face is, and a note when the image cannot hold a face at all."""
    h, w = image.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        return torch.zeros(0, 0), [], f"image {index} is {w}x{h} pixels, too small for face detection"
    bgr = to_bgr_uint8(image, index, "image")
    faces, _ = face_model.detect(bgr)
    faces = sorted(faces, key=lambda f: float(f.bbox[0] + f.bbox[2]))
    if not faces:
        return torch.zeros(0, 0), [], ""
    vectors = torch.stack([torch.from_numpy(face_model.embed(bgr, f.kps)) for f in faces])
    positions = [f"x {f.bbox[0]:.0f}-{f.bbox[2]:.0f}" for f in faces]
    return vectors, positions, ""


def score_faces(face_model: FaceModel, inputs: Sequence[tuple[str, object]], images: torch.Tensor,
                threshold: float) -> identity.Verdict:
    identity.check_threshold(threshold)
    n = check_images(images)
    people = face_people(face_model, inputs, threshold)
    bar = comfy.utils.ProgressBar(n)
    results = []
    for i in range(n):
        comfy.model_management.throw_exception_if_processing_interrupted()
        vectors, positions, note = faces_in(face_model, images[i], i)
        results.append(identity.judge(i, vectors, people, positions, note))
        bar.update(1)
    header = (f"Identity Score with {face_model.pack}: {n} image{'s' if n != 1 else ''}, {len(people)} "
              f"{'people' if len(people) != 1 else 'person'}. Score = cosine to the mean of the references ÷ "
              "baseline; 1.0 is as alike as the person's own photos.")
    notes = []
    if any(p.calibration.fixed for p in people):
        notes.append(f"With one reference the baseline is {identity.VERIFICATION_SOURCE}: a score of 1.0 means the "
                     "recogniser would just call it the same person. Give 2 or more photos to calibrate.")
    return identity.Verdict(tuple(people), tuple(results), "face", header, tuple(notes))


# ---------------------------------------------------------------- whole images

def encoder_name(clip_vision) -> str:
    return "DINOv2" if type(getattr(clip_vision, "model", None)).__name__ == "Dinov2Model" else "CLIP vision"


@torch.no_grad()
def image_embeddings(clip_vision, images: torch.Tensor, chunk: int = SUBJECT_CHUNK, bar=None) -> torch.Tensor:
    """[N, D] image embeddings (CLIP: the projected image embedding, CLIP-I; DINOv2: the class token), as
    ComfyUI's encoder gives them with its own centre crop; a few images per call."""
    out = []
    for start in range(0, images.shape[0], chunk):
        comfy.model_management.throw_exception_if_processing_interrupted()
        part = images[start:start + chunk]
        if part.shape[-1] == 1:
            part = part.expand(-1, -1, -1, 3)
        out.append(clip_vision.encode_image(part[..., :3], crop=True)["image_embeds"].float().cpu())
        if bar is not None:
            bar.update(part.shape[0])
    return torch.cat(out)


_blank: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@torch.no_grad()
def blank_embedding(clip_vision) -> torch.Tensor:
    """The image embedding of an all-zero normalised image (flat mean colour): what a picture of nothing gets."""
    cached = _blank.get(clip_vision)
    if cached is None:
        comfy.model_management.load_model_gpu(clip_vision.patcher)
        size = getattr(clip_vision, "image_size", 224)
        pixels = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
        cached = clip_vision.model(pixel_values=pixels, intermediate_output=-2)[2].float().cpu()[0]
        _blank[clip_vision] = cached
    return cached


def score_subject(clip_vision, references: torch.Tensor, images: torch.Tensor, threshold: float) -> identity.Verdict:
    identity.check_threshold(threshold)
    if not isinstance(references, torch.Tensor) or references.ndim != 4 or references.shape[0] == 0:
        raise InputError("references are empty: connect one or more photos of the subject (an IMAGE batch).")
    n = check_images(images)
    encoder = encoder_name(clip_vision)
    bar = comfy.utils.ProgressBar(references.shape[0] + n)
    refs = image_embeddings(clip_vision, references, bar=bar)
    blank = blank_embedding(clip_vision)

    label = "the subject (references)"
    cal = identity.calibrate(refs, identity.SUBJECT_SINGLE_BASELINE, label)
    blank_cosine = float(identity.cosines(blank[None], cal.centroid)[0])
    person = identity.make_person(label, cal, threshold, identity.subject_line(blank_cosine, cal.baseline),
                                  f"(blank-image cosine {blank_cosine:.3f} + baseline) / 2 =")
    results = []
    for start in range(0, n, SUBJECT_CHUNK):
        vectors = image_embeddings(clip_vision, images[start:start + SUBJECT_CHUNK], bar=bar)
        results += [identity.judge(start + k, vectors[k:k + 1], [person]) for k in range(vectors.shape[0])]
    header = (f"Subject Score with {encoder} ({refs.shape[-1]}-wide embeddings): {n} image{'s' if n != 1 else ''}. "
              "Score = cosine to the mean of the references ÷ baseline; 1.0 is as alike as the subject's own photos.")
    notes = []
    if person.calibration.fixed:
        notes.append("With one reference there is no spread to calibrate against: the score is the raw cosine. "
                     "Give 2 or more photos of the subject to calibrate.")
    return identity.Verdict((person,), tuple(results), "image", header, tuple(notes))


# ---------------------------------------------------------------- outputs and the gate

def outputs(verdict: identity.Verdict, images: torch.Tensor) -> tuple:
    """(scores, best, passed, report). With no image passed, `passed` is an execution blocker without a message:
    the nodes it feeds are skipped quietly (a message would show as an error), and the report says why."""
    best = images[verdict.best:verdict.best + 1]
    passed_rows = verdict.passed
    if passed_rows:
        passed = images if len(passed_rows) == images.shape[0] else images[torch.tensor(passed_rows)]
    else:
        passed = ExecutionBlocker(None)
        log.info("Likeness: %s", verdict.blocked_message())
    return verdict.scores, best, passed, verdict.text()
