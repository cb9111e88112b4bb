"""LikenessReferencePack: from many photos of one subject, choose, frame and size the references for an edit
model (the rules are in nodes/core/reference_pack.py and nodes/core/edit_targets.py)."""

from __future__ import annotations

import logging
import math

from ..host.api import LikenessNode, io, ui

from .. import types
from ..core.edit_targets import MEGAPIXEL, TARGET_KEYS, EditTarget, target as target_named
from ..core.errors import InputError
from ..core.face import NoFaceError
from ..core.reference_pack import (DEFAULT_OUTLIER_THRESHOLD, FRAMINGS, Selection, crop_and_resize,
                                   framing_box, pixel_box, select, trim_to_aspect)
from ..host import edit

log = logging.getLogger(__name__)

MAX_COUNT = 10


def output_side(megapixels: float) -> int:
    """The longest side of a square output of that many (ComfyUI, 1024²) megapixels."""
    return int(round(math.sqrt(megapixels * MEGAPIXEL)))


def availability(t: EditTarget) -> str:
    missing = edit.missing_nodes(t.core_nodes)
    if not missing:  # [] or None (unknown)
        return f"Feed them to {t.takes}."
    return (f"This ComfyUI lacks {', '.join(missing)}, so it cannot run {t.name}; the references were still prepared "
            f"by the published rule. In {t.comfyui_version} feed them to {t.takes}.")


def _dropped_summary(selection: Selection) -> str:
    reasons: dict[str, list[str]] = {}
    for v in selection.verdicts:
        if not v.kept:
            key = v.reason.split(" (")[0]
            reasons.setdefault(key, []).append(v.candidate.label)
    return "; ".join(f"{len(labels)} {why} ({', '.join(labels)})" for why, labels in reasons.items())


class LikenessReferencePack(LikenessNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LikenessReferencePack",
            display_name="Likeness Reference Pack",
            category=f"{types.CATEGORY}/edit models",
            description="From many photos of one subject, picks the references for an edit model (with a face "
                        "model: drops other people and near-duplicates, prefers sharp photos with large faces that "
                        "differ from each other), crops each around the face and sizes it by the target model's "
                        "published rule. Outputs a list of images, each at its own size.",
            is_input_list=True,
            inputs=[
                io.Image.Input("images", tooltip="The candidate photos: a batch, or a list of images of any sizes."),
                io.Combo.Input("target", options=list(TARGET_KEYS), default="flux kontext",
                               tooltip="The edit model the references are for; it decides their size (see the help "
                                       "page for each rule and its source). as is: no resizing."),
                io.Int.Input("count", default=3, min=1, max=MAX_COUNT,
                             tooltip="How many references to output. Fewer come out (with a warning) when fewer "
                                     "photos are usable."),
                io.Combo.Input("framing", options=list(FRAMINGS), default="head and shoulders",
                               tooltip="face: a tight square around the face. head and shoulders: the head with "
                                       "room above and the shoulders. as is: the whole photo. Needs face_model."),
                io.Boolean.Input("drop_outliers", default=True,
                                 tooltip="With a face model: drop photos whose face is unlike the others' (another "
                                         "person), as Likeness Merge References does. Needs 3 photos with faces."),
                types.FaceModel.Input("face_model", optional=True,
                                      tooltip="From Likeness Face Model Loader. Without it the first `count` photos "
                                              "are kept in order and framed as whole photos."),
                io.Float.Input("output_megapixels", default=4.0, min=0.25, max=16.0, step=0.01, optional=True,
                               tooltip="HiDream-O1 only: the output size (megapixels of 1024², square). Its reference "
                                       "budget follows the output's longest side; 4.0 = 2048x2048. For a non-square "
                                       "output enter (longest side)² / 1048576."),
                io.Float.Input("outlier_threshold", default=DEFAULT_OUTLIER_THRESHOLD, min=-1.0, max=1.0, step=0.01,
                               optional=True,
                               tooltip="A photo is dropped as an outlier when the cosine between its identity and "
                                       "the mean of the others' is below this (0.2-0.4 for face identities)."),
            ],
            outputs=[io.Image.Output(display_name="references", is_output_list=True),
                     io.String.Output(display_name="report",
                                      tooltip="Which photos were kept or dropped and why, each reference's crop and "
                                              "size, and the target's size rule with its source.")],
        )

    @classmethod
    def execute(cls, images, target, count, framing, drop_outliers, face_model=None, output_megapixels=None,
                outlier_threshold=None) -> io.NodeOutput:
        chosen_target = target_named(target[0])
        count, framing, drop_outliers = int(count[0]), framing[0], bool(drop_outliers[0])
        face_model = face_model[0] if face_model else None
        megapixels = float(output_megapixels[0]) if output_megapixels else 4.0
        threshold = float(outlier_threshold[0]) if outlier_threshold else DEFAULT_OUTLIER_THRESHOLD
        references, report = pack_references(images, chosen_target, count, framing, drop_outliers, face_model,
                                              megapixels, threshold)
        return io.NodeOutput(references, report, ui=ui.PreviewText(report))


def pack_references(images, chosen: EditTarget, count: int, framing: str, drop_outliers: bool, face_model,
                    megapixels: float = 4.0, threshold: float = DEFAULT_OUTLIER_THRESHOLD):
    """-> (list of [1, h, w, 3] references, report text)."""
    if framing not in FRAMINGS:
        raise InputError(f"framing `{framing}` is not one of: {', '.join(FRAMINGS)}.")
    notes = []
    if chosen.hard_limit and count > chosen.max_references:
        notes.append(f"WARNING: {chosen.name} takes at most {chosen.max_references} references (count was {count}).")
        count = chosen.max_references
    candidates = edit.scan(images, face_model)
    photos = list(edit.each_image(images))
    with_faces = face_model is not None
    if with_faces and all(c.identity is None for c in candidates):
        names = ", ".join(c.label for c in candidates)
        raise NoFaceError(
            f"no face was found in any of the {len(candidates)} photos ({names}; numbered from 1 in input order). "
            "Use photos where the face is clearly visible and at least about 80 pixels across, or disconnect "
            "face_model to keep the first photos as they are.")
    selection = select(candidates, count, drop_outliers, threshold, with_faces)
    if not selection.picked:
        raise InputError(f"every photo was dropped ({len(candidates)} of {len(candidates)}): "
                         f"{_dropped_summary(selection)}. Lower outlier_threshold, turn drop_outliers off, or add "
                         "photos of the subject.")
    if len(selection.picked) < count:
        notes.append(f"WARNING: {count} references were asked for but only {len(selection.picked)} photos are usable; "
                     f"{len(selection.picked)} are output.")
    if not with_faces and framing != "as is":
        notes.append(f"framing `{framing}` needs face_model to find the face; without it every photo is used whole.")
    side = output_side(megapixels)
    k = len(selection.picked)
    references, sized = [], []
    for n, c in enumerate(selection.picked, 1):
        box = framing_box(framing, c.width, c.height, c.face_box if with_faces else None)
        x1, y1, x2, y2 = pixel_box(box, c.width, c.height)
        tw, th = chosen.size(x2 - x1, y2 - y1, k, side)
        centre = None
        if c.face_box is not None and with_faces:
            centre = ((c.face_box[0] + c.face_box[2]) / 2, (c.face_box[1] + c.face_box[3]) / 2)
        trimmed = pixel_box(trim_to_aspect((x1, y1, x2, y2), tw / th, centre), c.width, c.height)
        references.append(crop_and_resize(photos[c.index], trimmed, (tw, th)))
        tx1, ty1, tx2, ty2 = trimmed
        sized.append(f"reference {n} = {c.label}: crop {tx2 - tx1}x{ty2 - ty1} at ({tx1}, {ty1}) -> {tw}x{th}")
    lines = [f"{k} reference(s) for {chosen.name} from {len(candidates)} photo(s), framing `{framing}`."]
    lines += notes + selection.notes
    lines += [f"{v.candidate.label}: {v.reason}" for v in selection.verdicts]
    lines += sized
    if chosen.sizing is not None:
        budget = f" (output side {side} px)" if chosen.uses_output_size else ""
        lines.append(f"Size rule{budget}: {chosen.rule}. Source: {chosen.source}.")
    if chosen.max_references and not chosen.hard_limit and k > chosen.max_references:
        lines.append(f"note: {chosen.name} was trained with up to {chosen.max_references} references.")
    lines.append(availability(chosen))
    report = "\n".join(lines)
    for note in notes:
        if note.startswith("WARNING"):
            log.warning("Likeness Reference Pack: %s", note)
    return references, report
