"""References as files: .safetensors with string metadata that says what made them. Pickle is never involved.

Tensors                              Metadata (all strings)
  image.image_embeds     [N, E]        format = "likeness.references", format_version, likeness_version, count
  image.penultimate      [N, S, H]     parts = "image", "face" or "image,face"
  image.empty_penultimate[1, S, H]     image.encoder, image.hidden_width (H), image.embed_width (E),
  face.normed            [N, W]          image.tokens (S), image.source
  face.raw               [N, W]        face.model, face.width (W)
  face.keypoints         [N, 5, 2]     face.keypoints = "5" when the two pose tensors are there (format 2)
  face.image_sizes       [N, 2] int64
  parsed_face.embeds     [N, E']       parsed_face.encoder, parsed_face.source, parsed_face.levels (L),
  parsed_face.hidden     [N, L, S', H']  parsed_face.tokens (S'), parsed_face.hidden_width (H'),
                                         parsed_face.embed_width (E')   (PuLID's EVA-CLIP features)

Loading checks the metadata against the tensors (names, shapes, count, widths, dtype, finite values), so a
damaged file or a file of another kind stops with a message that names it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .checkpoint import all_finite, not_a_model
from .errors import ReferencesFileError
from .references import (MAX_REFERENCES, EncoderInfo, FaceIdentity, ImageFeatures, ParsedFaceFeatures, References,
                         reference_count_problem)
from .variants import Feature, encoder_by_width

FORMAT = "likeness.references"
FORMAT_VERSION = 2  # 2 added each face's keypoints and photo size; files without them are still written as 1
IMAGE_TENSORS = ("image.image_embeds", "image.penultimate", "image.empty_penultimate")
IMAGE_TENSORS_BY_FIELD = {t.split(".", 1)[1]: t for t in IMAGE_TENSORS}
FACE_TENSORS = ("face.normed", "face.raw")
POSE_TENSORS = ("face.keypoints", "face.image_sizes")
PARSED_FACE_TENSORS = ("parsed_face.embeds", "parsed_face.hidden")
_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def likeness_version() -> str:
    try:
        text = _PYPROJECT.read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    m = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
    return m.group(1) if m else "unknown"


def to_tensors_and_metadata(refs: References) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    parts = [p for p, v in (("image", refs.image), ("face", refs.face), ("parsed_face", refs.parsed_face))
             if v is not None]
    # format 1 unless the file holds keypoints, so Likeness versions that know no keypoints still read it
    meta = {"format": FORMAT, "format_version": "1", "likeness_version": likeness_version(),
            "count": str(refs.count), "parts": ",".join(parts)}
    tensors = {}
    if refs.image is not None:
        f = refs.image
        tensors.update({"image.image_embeds": f.image_embeds, "image.penultimate": f.penultimate,
                        "image.empty_penultimate": f.empty_penultimate})
        meta.update({"image.encoder": f.encoder.name, "image.hidden_width": str(f.encoder.hidden_width),
                     "image.embed_width": str(f.encoder.embed_width), "image.tokens": str(f.penultimate.shape[1]),
                     "image.source": f.source})
        if f.missing:
            meta["image.missing"] = ",".join(f.missing)
    if refs.face is not None:
        tensors.update({"face.normed": refs.face.normed, "face.raw": refs.face.raw})
        meta.update({"face.model": refs.face.model, "face.width": str(refs.face.normed.shape[-1])})
        if refs.face.keypoints is not None:
            tensors.update({"face.keypoints": refs.face.keypoints.float(),
                            "face.image_sizes": refs.face.image_sizes.long()})
            meta.update({"face.keypoints": "5", "format_version": "2"})
    if refs.parsed_face is not None:
        p = refs.parsed_face
        tensors.update({"parsed_face.embeds": p.embeds, "parsed_face.hidden": p.hidden})
        meta.update({"parsed_face.encoder": p.encoder, "parsed_face.source": p.source,
                     "parsed_face.embed_width": str(p.embeds.shape[-1]), "parsed_face.levels": str(p.hidden.shape[1]),
                     "parsed_face.tokens": str(p.hidden.shape[2]), "parsed_face.hidden_width": str(p.hidden.shape[3])})
    # safetensors refuses views that share storage; a clone per tensor keeps the bytes exactly
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    return tensors, meta


def save_references(refs: References, path: str) -> str:
    import safetensors.torch

    tensors, meta = to_tensors_and_metadata(refs)
    tmp = path + ".partial"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        safetensors.torch.save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)  # a crash mid-write never leaves a half file under the real name
    except Exception as e:  # disk full, no permission, a name the file system refuses: say which file
        if os.path.isfile(tmp):
            os.remove(tmp)
        raise ReferencesFileError(f"`{os.path.basename(path)}` could not be written to {os.path.dirname(path)} "
                                  f"({type(e).__name__}: {e}). Check that the folder is writable and the disk has "
                                  "room.") from None
    return path


def _foreign(name: str, meta: dict | None, keys) -> ReferencesFileError:
    groups = sorted({k.split(".")[0] for k in keys})
    found = ", ".join(f"`{g}.*`" for g in groups[:6]) or "no tensors"
    what = "a model file" if any(g in ("image_proj", "ip_adapter", "model", "lora_unet", "first_stage_model")
                                 for g in groups) else "another kind of safetensors file"
    fmt = (meta or {}).get("format")
    said = f" (its metadata says format `{fmt}`)" if fmt else " (it has no `format` metadata)"
    return ReferencesFileError(
        f"`{name}` is not a Likeness references file: expected metadata format `{FORMAT}`{said}; it holds "
        f"{found}, so it is probably {what}. Likeness Load References reads files written by Likeness Save "
        "References.")


def _int(meta: dict, key: str, name: str) -> int:
    value = meta.get(key)
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ReferencesFileError(
            f"`{name}` is damaged: metadata `{key}` should be a whole number, found {value!r}.") from None
    if out < 0:
        raise ReferencesFileError(f"`{name}` is damaged: metadata `{key}` is negative ({out}).")
    return out


def _check_shape(name: str, key: str, tensor: torch.Tensor, expected: tuple[int, ...], why: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ReferencesFileError(
            f"`{name}` is damaged: tensor `{key}` has shape {tuple(tensor.shape)}, but its metadata ({why}) says "
            f"{expected}. Save the references again.")
    if not tensor.is_floating_point():
        raise ReferencesFileError(f"`{name}` is damaged: tensor `{key}` holds {tensor.dtype}, not floating point "
                                  "numbers.")
    if not all_finite(tensor):
        raise ReferencesFileError(f"`{name}` is damaged: tensor `{key}` contains NaN or infinite values. Save the "
                                  "references again from their images.")


def _check_sizes_before_reading(name: str, shapes: dict[str, list[int]]) -> None:
    """Refuse a file whose tensors hold more references than a set may, before their data is read."""
    for key, shape in shapes.items():
        if shape and shape[0] > MAX_REFERENCES:
            raise ReferencesFileError(f"`{name}`: tensor `{key}` holds {shape[0]} references; a reference set holds "
                                      f"at most {MAX_REFERENCES}. Save smaller sets.")


def from_tensors_and_metadata(tensors: dict[str, torch.Tensor], meta: dict | None, name: str) -> References:
    """Rebuild References, checking the metadata against the tensors. `name` is the file, for messages."""
    if not meta or meta.get("format") != FORMAT:
        raise _foreign(name, meta, tensors.keys())
    version = _int(meta, "format_version", name)
    if version > FORMAT_VERSION:
        raise ReferencesFileError(
            f"`{name}` was written by a newer Likeness ({meta.get('likeness_version', 'unknown version')}, format "
            f"{version}); this one reads format {FORMAT_VERSION}. Update Likeness to load it.")
    if version < 1:
        raise ReferencesFileError(f"`{name}` has an unknown format version {version}.")
    parts = {p for p in meta.get("parts", "").split(",") if p}
    if not parts or parts - {"image", "face", "parsed_face"}:
        raise ReferencesFileError(
            f"`{name}` is damaged: metadata `parts` should list `image`, `face` and/or `parsed_face`, found "
            f"{meta.get('parts')!r}.")
    pose = "face" in parts and meta.get("face.keypoints") is not None
    expected = (set(IMAGE_TENSORS if "image" in parts else ()) | set(FACE_TENSORS if "face" in parts else ())
                | set(POSE_TENSORS if pose else ()) | set(PARSED_FACE_TENSORS if "parsed_face" in parts else ()))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ReferencesFileError(
            f"`{name}` is damaged: its metadata says it holds {' and '.join(sorted(parts))} references, so it should "
            f"have tensors {', '.join(sorted(expected))}"
            + (f"; missing {', '.join(missing)}" if missing else "") + (f"; unexpected {', '.join(extra)}" if extra
                                                                        else "") + ".")
    count = _int(meta, "count", name)
    if count == 0:
        raise ReferencesFileError(f"`{name}` holds no references (count 0).")
    too_many = reference_count_problem(count, f"`{name}`")
    if too_many:
        raise ReferencesFileError(too_many)
    image = face = None
    if "image" in parts:
        hidden, embed = _int(meta, "image.hidden_width", name), _int(meta, "image.embed_width", name)
        tokens = _int(meta, "image.tokens", name)
        _check_shape(name, "image.image_embeds", tensors["image.image_embeds"], (count, embed),
                     f"count {count}, embed width {embed}")
        _check_shape(name, "image.penultimate", tensors["image.penultimate"], (count, tokens, hidden),
                     f"count {count}, {tokens} tokens, hidden width {hidden}")
        _check_shape(name, "image.empty_penultimate", tensors["image.empty_penultimate"], (1, tokens, hidden),
                     f"{tokens} tokens, hidden width {hidden}")
        encoder = EncoderInfo(meta.get("image.encoder") or EncoderInfo.from_widths(hidden, embed).name, hidden, embed)
        missing = tuple(m for m in meta.get("image.missing", "").split(",") if m)
        if set(missing) - set(IMAGE_TENSORS_BY_FIELD):
            raise ReferencesFileError(f"`{name}` is damaged: metadata `image.missing` names unknown features "
                                      f"({meta.get('image.missing')!r}).")
        image = ImageFeatures(encoder, tensors["image.image_embeds"], tensors["image.penultimate"],
                              tensors["image.empty_penultimate"], meta.get("image.source", ""), missing)
    if "face" in parts:
        width = _int(meta, "face.width", name)
        model = meta.get("face.model", "")
        if not model:
            raise ReferencesFileError(f"`{name}` is damaged: metadata `face.model` (the face model) is missing.")
        for key in FACE_TENSORS:
            _check_shape(name, key, tensors[key], (count, width), f"count {count}, identity width {width}")
        keypoints = sizes = None
        if pose:
            if meta.get("face.keypoints") != "5":
                raise ReferencesFileError(f"`{name}` is damaged: metadata `face.keypoints` should be 5, found "
                                          f"{meta.get('face.keypoints')!r}.")
            keypoints, sizes = tensors["face.keypoints"], tensors["face.image_sizes"]
            _check_shape(name, "face.keypoints", keypoints, (count, 5, 2), f"count {count}, 5 keypoints")
            if tuple(sizes.shape) != (count, 2) or sizes.dtype != torch.int64 or not bool((sizes > 0).all()):
                raise ReferencesFileError(
                    f"`{name}` is damaged: tensor `face.image_sizes` should hold {count} positive (width, height) "
                    f"pairs as int64; found {sizes.dtype} of shape {tuple(sizes.shape)}.")
        face = FaceIdentity(model, tensors["face.normed"], tensors["face.raw"], keypoints, sizes)
    parsed = None
    if "parsed_face" in parts:
        embed, levels = _int(meta, "parsed_face.embed_width", name), _int(meta, "parsed_face.levels", name)
        tokens, hidden = _int(meta, "parsed_face.tokens", name), _int(meta, "parsed_face.hidden_width", name)
        _check_shape(name, "parsed_face.embeds", tensors["parsed_face.embeds"], (count, embed),
                     f"count {count}, embed width {embed}")
        _check_shape(name, "parsed_face.hidden", tensors["parsed_face.hidden"], (count, levels, tokens, hidden),
                     f"count {count}, {levels} levels of {tokens} tokens, hidden width {hidden}")
        parsed = ParsedFaceFeatures(meta.get("parsed_face.encoder", "EVA-CLIP"), tensors["parsed_face.embeds"],
                                    tensors["parsed_face.hidden"], meta.get("parsed_face.source", ""))
    return References(image=image, face=face, parsed_face=parsed)


def load_references(path: str) -> References:
    """Read a references file written by save_references; every problem names the file."""
    import safetensors
    import safetensors.torch

    name = os.path.basename(path)
    if not path.lower().endswith(".safetensors"):
        raise ReferencesFileError(f"`{name}` is not a .safetensors file; Likeness reads and writes references only "
                                  "as .safetensors (never pickle).")
    try:
        problem = not_a_model(path, "a references file")
    except OSError:
        problem = None  # reported below with the library's own reading
    if problem:
        raise ReferencesFileError(problem)
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata()
            keys = list(f.keys())
            if not meta or meta.get("format") != FORMAT:
                raise _foreign(name, meta, keys)
            _check_sizes_before_reading(name, {k: f.get_slice(k).get_shape() for k in keys})
            tensors = {k: f.get_tensor(k) for k in keys}
    except ReferencesFileError:
        raise
    except FileNotFoundError:
        raise ReferencesFileError(f"`{name}` was not found ({path}).") from None
    except Exception as e:  # the library's errors are terse: say what the file is and what to do
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise ReferencesFileError(
            f"`{name}` could not be read as a .safetensors file ({type(e).__name__}: {e}; {size:,} bytes). It is "
            "truncated, damaged or not a safetensors file; save the references again.") from None
    return from_tensors_and_metadata(tensors, meta, name)


def describe(refs: References) -> str:
    parts = []
    if refs.image is not None:
        parts.append(f"image features from {refs.image.encoder.describe()}")
    if refs.face is not None:
        parts.append(f"`{refs.face.model}` identities")
    if refs.parsed_face is not None:
        parts.append(f"PuLID parsed-face features from {refs.parsed_face.encoder}")
    return f"{refs.count} reference{'s' if refs.count != 1 else ''}: " + " and ".join(parts)



# ---------------------------------------------------------------- the ComfyUI_IPAdapter_plus pack's saved embeds

LEADING_PACK_TOKENS = 257  # hidden states per image of the 224 px encoders, when the file cannot say


def read_leading_pack_embeds(path: str) -> torch.Tensor:
    """The tensor in an `.ipadpt` file (the other pack's IPAdapter Save Embeds), read weights-only: a file that
    holds anything but plain tensors is refused without running any of it."""
    name = os.path.basename(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ReferencesFileError(f"`{name}` was not found ({path}).") from None
    except Exception as e:  # weights-only refusals and damaged zips: say what the file is and what to do
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ReferencesFileError(
            f"`{name}` could not be read as saved embeds ({first[:200]}). Likeness reads .ipadpt files only when they "
            "hold a plain tensor, with weights-only loading, so they cannot run code. Encode the images again with "
            "Likeness Image Encode and save them with Likeness Save References.") from None
    if not isinstance(data, torch.Tensor):
        raise ReferencesFileError(f"`{name}` holds a {type(data).__name__}, not the single tensor of saved embeds.")
    if data.ndim not in (2, 3) or 0 in data.shape or not data.is_floating_point():
        raise ReferencesFileError(
            f"`{name}` holds a {data.dtype} tensor of shape {tuple(data.shape)}; saved embeds are [images, width] "
            "(image embeds) or [images, tokens, width] (hidden states) of floating-point numbers.")
    too_many = reference_count_problem(data.shape[0], f"`{name}`")
    if too_many:
        raise ReferencesFileError(too_many)
    if not all_finite(data):
        raise ReferencesFileError(f"`{name}` contains NaN or infinite values.")
    return data.float()


def references_from_leading_pack(embeds: torch.Tensor, name: str, encoder: EncoderInfo | None = None,
                                 empty_penultimate: torch.Tensor | None = None) -> References:
    """References from the other pack's saved embeds, which hold one kind of feature only: pooled image embeds
    [N, E] (for its standard adapters) or hidden states [N, S, H] (plus adapters). The kind it lacks is kept as
    zeros and marked missing, so an adapter that would read it stops with a message. `encoder` and
    `empty_penultimate` come from the CLIP vision model that made them, when the user connects it."""
    pooled = embeds.ndim == 2
    width = embeds.shape[-1]
    feature = Feature.IMAGE_EMBEDS if pooled else Feature.PENULTIMATE
    if encoder is None:
        known = encoder_by_width(width, feature)
        if known is None:
            raise ReferencesFileError(
                f"`{name}` holds {width}-wide {'image embeds' if pooled else 'hidden states'}, which no encoder "
                "Likeness knows gives. Connect the Load CLIP Vision that made them to clip_vision.")
        encoder = EncoderInfo(known.name, known.hidden_width, known.embed_width)
    have = encoder.embed_width if pooled else encoder.hidden_width
    if have != width:
        raise ReferencesFileError(
            f"`{name}` holds {width}-wide {'image embeds' if pooled else 'hidden states'}, but the connected encoder "
            f"{encoder.describe()} gives {have}-wide ones. Connect the encoder that made them.")
    n = embeds.shape[0]
    tokens = embeds.shape[1] if not pooled else (
        empty_penultimate.shape[1] if empty_penultimate is not None else LEADING_PACK_TOKENS)
    missing = ["penultimate"] if pooled else ["image_embeds"]
    if empty_penultimate is None:
        empty_penultimate = torch.zeros(1, tokens, encoder.hidden_width)
        missing.append("empty_penultimate")
    elif tuple(empty_penultimate.shape[1:]) != (tokens, encoder.hidden_width):
        raise ReferencesFileError(
            f"`{name}` holds hidden states of {tokens} tokens, but the connected encoder makes "
            f"{empty_penultimate.shape[1]}: connect the encoder that made them.")
    image_embeds = embeds if pooled else torch.zeros(n, encoder.embed_width)
    penultimate = torch.zeros(n, tokens, encoder.hidden_width) if pooled else embeds
    return References(image=ImageFeatures(encoder, image_embeds, penultimate, empty_penultimate.float(), name,
                                          tuple(missing)))
