"""Face model packs (insightface model folders) run with onnxruntime: finding, loading, detecting, embedding.

insightface's own model router and decoders run the pack's ONNX files, so detections and identity embeddings
are the ones insightface's `FaceAnalysis` gives; Likeness adds the image conversion, the choice of face, the
alignment and the error messages (nodes/core/face.py). insightface is imported only when a pack is loaded.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import logging
import os
import re
import sys
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch

import comfy.model_management
import comfy.utils

from ..core.errors import InputError
from ..core.face import (ON_NO_FACE, DetectedFace, FaceModelError, NoFaceError, align_face, choose_face,
                         crops_to_image, normalise, to_bgr_uint8)
from ..core.face_parsing import align_ffhq
from ..core.references import FaceIdentity, References, check_reference_count
from . import folders
from .encode import encode_references

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "CPU", "CUDA", "ROCm", "CoreML", "DirectML")
_ORT_NAMES = {
    "CPU": ("CPUExecutionProvider",),
    "CUDA": ("CUDAExecutionProvider",),
    "ROCm": ("ROCMExecutionProvider", "MIGraphXExecutionProvider"),
    "CoreML": ("CoreMLExecutionProvider",),
    "DirectML": ("DmlExecutionProvider",),
}
DETECTION_SIZE = 640  # what the FaceID models' training data was detected at (h94 model card)
RETRY_SIZES = (576, 512, 448, 384, 320)  # close-up faces too large for the detector at 640 often appear lower
DETECTION_THRESHOLD = 0.5
KNOWN_PACKS = {
    "buffalo_l": "det_10g.onnx, w600k_r50.onnx (and optionally 1k3d68.onnx, 2d106det.onnx, genderage.onnx)",
    "antelopev2": "scrfd_10g_bnkps.onnx, glintr100.onnx (and optionally 1k3d68.onnx, 2d106det.onnx, genderage.onnx)",
}
_GPU_RUNTIMES = ("onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-rocm", "onnxruntime-openvino")


# ---------------------------------------------------------------- the onnxruntime "doctor"

def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def active_runtime() -> str | None:
    """Which distribution's files the `onnxruntime` module is (read from its build info; nothing imported)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    info = os.path.join(list(spec.submodule_search_locations)[0], "capi", "build_and_package_info.py")
    try:
        with open(info, encoding="utf-8") as f:
            m = re.search(r"""package_name\s*=\s*['"]([^'"]+)['"]""", f.read())
    except OSError:
        return None
    return m.group(1) if m else None


def runtime_conflict() -> str | None:
    """One line for the log when the CPU build of onnxruntime shadows a GPU build, else None."""
    gpu = [name for name in _GPU_RUNTIMES if _installed(name)]
    if not gpu or not _installed("onnxruntime"):
        return None
    active = active_runtime()
    if active in gpu:
        return None  # the GPU build's files won; both are registered, which keeps insightface's dependency met
    return (f"Likeness: both onnxruntime (CPU build) and {gpu[0]} are installed; they share one `onnxruntime` "
            f"module and the CPU build's files won, so {gpu[0]} is shadowed and face models run on the CPU. "
            f"Fix: {sys.executable} -m pip install --force-reinstall --no-deps {gpu[0]}")


def warn_if_runtime_shadowed() -> None:
    message = runtime_conflict()
    if message:
        log.warning(message)


# ---------------------------------------------------------------- packs and providers

def pack_names() -> list[str]:
    names = set()
    for root in folders.insightface_roots():
        models = os.path.join(root, "models")
        if os.path.isdir(models):
            names.update(d for d in os.listdir(models) if os.path.isdir(os.path.join(models, d)))
    return sorted(names)


def pack_choices() -> list[str]:
    """What face-pack inputs offer: the packs found, plus the usual ones before they are downloaded (choosing one
    then says where its files go)."""
    return sorted(set(pack_names()) | set(KNOWN_PACKS))


def _onnx_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(folder), "*.onnx")))


def _expected_files(pack: str) -> str:
    return KNOWN_PACKS.get(pack, "a face detector and a recogniser as .onnx files")


def find_pack(pack: str) -> str:
    """The folder holding `pack`'s .onnx files: <insightface>/models/<pack>/, or one nested level below it (the
    antelopev2 archive unpacks to antelopev2/antelopev2/). Only names the pack inputs list are looked up."""
    folders.check_listed(pack, pack_choices(), "face model pack", "models/insightface/models")
    roots = folders.insightface_roots()
    empty = []
    for root in roots:
        folder = os.path.join(root, "models", pack)
        if not os.path.isdir(folder):
            continue
        if _onnx_files(folder):
            return folder
        nested = [os.path.join(folder, d) for d in sorted(os.listdir(folder))
                  if os.path.isdir(os.path.join(folder, d)) and _onnx_files(os.path.join(folder, d))]
        if nested:
            log.info("Likeness: model pack `%s` is one folder deeper than expected; using %s", pack, nested[0])
            return nested[0]
        empty.append(folder)
    target = os.path.join(roots[0] if roots else "models/insightface", "models", pack)
    if empty:
        raise FaceModelError(
            f"face model pack folder {empty[0]} has no .onnx files. Put the pack's files directly in it: "
            f"{os.path.join(empty[0], '*.onnx')} ({pack}: {_expected_files(pack)}).")
    misplaced = [os.path.join(r, pack) for r in roots if _onnx_files(os.path.join(r, pack))]
    hint = f" Found a `{pack}` folder at {misplaced[0]}: move it into {os.path.dirname(target)}." if misplaced else ""
    raise FaceModelError(
        f"face model pack `{pack}` was not found: expected {os.path.join(target, '*.onnx')} ({_expected_files(pack)})."
        f" Searched the insightface model folders: {', '.join(roots) or '(none registered)'}.{hint} Download the "
        f"pack ({pack}.zip from the insightface model zoo) and unpack it in {os.path.dirname(target)}: the archive "
        f"holds a `{pack}` folder, so unpacking it inside an existing {pack} folder gives {pack}/{pack}/, which is "
        "found too. extra_model_paths.yaml can add folders under an `insightface:` key.")


def _import_insightface():
    try:
        from insightface.model_zoo import model_zoo
    except ImportError as e:
        raise FaceModelError(
            f"FaceID needs the insightface and onnxruntime packages, which could not be imported ({e}). Install the "
            f"pack's requirements with the Python that runs ComfyUI: {sys.executable} -m pip install -r "
            f"{os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), 'requirements.txt')}"
        ) from None
    return model_zoo


def _torch_accelerator() -> str | None:
    """The provider family matching the device ComfyUI itself runs on."""
    if comfy.model_management.directml_enabled:
        return "DirectML"
    device = comfy.model_management.get_torch_device()
    if device.type == "cuda":
        return "ROCm" if getattr(torch.version, "hip", None) else "CUDA"
    return None


def provider_list(choice: str) -> tuple[list[str], str]:
    """onnxruntime providers for a choice, always ending with CPU, and a note when the choice cannot be met."""
    import onnxruntime

    if choice not in PROVIDER_CHOICES:
        raise InputError(f"provider `{choice}` is not one of: {', '.join(PROVIDER_CHOICES)}.")
    available = onnxruntime.get_available_providers()
    build = f"onnxruntime {getattr(onnxruntime, '__version__', '?')} ({active_runtime() or 'unknown build'})"
    note = ""
    if choice == "auto":
        # CoreML is never chosen automatically: it can abort the process on the dynamic-shape SCRFD detector.
        family = None if sys.platform == "darwin" else _torch_accelerator()
    else:
        family = None if choice == "CPU" else choice
    wanted = []
    if family is not None:
        names = [n for n in _ORT_NAMES[family] if n in available]
        if names:
            wanted = [names[0]]
        else:
            note = (f"{family} was asked for but {build} has no {' or '.join(_ORT_NAMES[family])}; running on the "
                    "CPU. " + ("Install onnxruntime-gpu (see the README)." if family == "CUDA" else ""))
    return wanted + ["CPUExecutionProvider"], note.strip()


# ---------------------------------------------------------------- the loaded face model

@dataclass(frozen=True, eq=False)
class FaceModel:
    """A loaded face model pack: its detector and recogniser sessions and the providers they really run on."""

    pack: str
    directory: str
    detector_file: str
    recogniser_file: str
    provider_choice: str
    providers_used: tuple[str, ...]
    note: str
    detector: object  # insightface SCRFD / RetinaFace
    recogniser: object  # insightface ArcFaceONNX

    def __deepcopy__(self, memo):
        return self

    @property
    def embedding_width(self) -> int:
        shape = self.recogniser.output_shape
        return int(shape[-1]) if isinstance(shape[-1], int) else 0

    @property
    def recogniser_size(self) -> int:
        return int(self.recogniser.input_size[0])

    @property
    def dynamic_detector(self) -> bool:
        shape = getattr(self.detector, "input_shape", None) or [None] * 4
        return not all(isinstance(d, int) for d in shape[2:4])

    def describe(self) -> str:
        text = (f"{self.pack}: detector {os.path.basename(self.detector_file)}, recogniser "
                f"{os.path.basename(self.recogniser_file)} ({self.embedding_width or '?'}-wide identity), running on "
                f"{' + '.join(self.providers_used)} (asked: {self.provider_choice})")
        return f"{text}. {self.note}" if self.note else text

    def detect(self, bgr: np.ndarray) -> tuple[list[DetectedFace], int]:
        """Faces in detector order, and the detection size that found them (0: none found)."""
        sizes = (DETECTION_SIZE,) + (RETRY_SIZES if self.dynamic_detector else ())
        for size in sizes:
            bboxes, kpss = self.detector.detect(bgr, input_size=(size, size) if self.dynamic_detector else None,
                                                max_num=0)
            if bboxes is not None and len(bboxes):
                if kpss is None:
                    raise FaceModelError(
                        f"the detector {os.path.basename(self.detector_file)} of pack `{self.pack}` gives no facial "
                        "keypoints, which alignment needs. Use a keypoint detector such as det_10g.onnx (buffalo_l).")
                if not (np.isfinite(bboxes).all() and np.isfinite(kpss).all()):
                    raise self.damaged(self.detector_file, "face boxes or keypoints")
                if size != DETECTION_SIZE:
                    log.info("Likeness: no face at %d px; found %d at %d px", DETECTION_SIZE, len(bboxes), size)
                return [DetectedFace(b[:4].copy(), k.copy(), float(b[4])) for b, k in zip(bboxes, kpss)], size
        return [], 0

    def embed(self, bgr: np.ndarray, kps: np.ndarray) -> np.ndarray:
        """The raw identity embedding of one face, from its own recogniser-sized crop (as insightface does it)."""
        crop = align_face(bgr, kps, self.recogniser_size)
        embedding = self.recogniser.get_feat(crop).reshape(-1)
        if not np.isfinite(embedding).all():
            raise self.damaged(self.recogniser_file, "identity embeddings")
        return embedding

    def detector_is_damaged(self) -> bool:
        """Whether the detector gives NaN or infinite outputs, which it reports as "no face" (every score fails the
        threshold). Run on a seeded input, and only when a photo showed no face, so a working pack never pays."""
        session = self.detector.session
        first = session.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else DETECTION_SIZE)
                 for i, d in enumerate(first.shape)]
        probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        return not all(np.isfinite(np.asarray(out)).all() for out in session.run(None, {first.name: probe}))

    def damaged(self, path: str, what: str) -> FaceModelError:
        return FaceModelError(
            f"`{os.path.basename(path)}` of face model pack `{self.pack}` gives NaN or infinite {what}: the file is "
            f"damaged. Download the pack again ({self.directory}).")


_cache: "weakref.WeakValueDictionary[tuple, FaceModel]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def pack_files(pack: str) -> tuple[str, list[str]]:
    """The folder of a listed pack and its .onnx files (FaceModelError when it is missing or empty)."""
    folder = find_pack(pack)
    return folder, _onnx_files(folder)


def pack_fingerprint(pack: str) -> tuple:
    try:
        folder = find_pack(pack)
    except (FaceModelError, InputError):  # the loader's run reports it
        return (pack, None)
    files = _onnx_files(folder)
    return (os.path.realpath(folder),) + tuple(folders.file_version(f) for f in files)


def load_face_model(pack: str, provider: str = "auto") -> FaceModel:
    """One FaceModel per pack version and provider choice, shared by every loader node that names them."""
    key = (pack_fingerprint(pack), provider)
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _load(pack, provider)
            _cache[key] = model
    return model


def _load(pack: str, provider: str) -> FaceModel:
    folder = find_pack(pack)
    model_zoo = _import_insightface()
    providers, note = provider_list(provider)
    files = _onnx_files(folder)
    found: dict[str, tuple[str, object]] = {}
    for path in files:
        try:
            routed = model_zoo.get_model(path, providers=providers)
        except Exception as e:  # onnxruntime's and insightface's errors do not say what to do
            raise FaceModelError(
                f"`{path}` could not be opened as a face model ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
                "The file may be damaged or truncated: download the pack again.") from None
        task = getattr(routed, "taskname", None)
        if task in ("detection", "recognition") and task not in found:
            found[task] = (path, routed)
    names = ", ".join(os.path.basename(f) for f in files)
    for task, example in (("detection", "det_10g.onnx (buffalo_l) or scrfd_10g_bnkps.onnx (antelopev2)"),
                          ("recognition", "w600k_r50.onnx (buffalo_l) or glintr100.onnx (antelopev2)")):
        if task not in found:
            raise FaceModelError(
                f"face model pack `{pack}` ({folder}) has no face {task} model: its files are {names}. A pack needs "
                f"a {task} model such as {example}; download the complete pack ({_expected_files(pack)}).")
    (det_path, detector), (rec_path, recogniser) = found["detection"], found["recognition"]
    detector.prepare(0, input_size=(DETECTION_SIZE, DETECTION_SIZE), det_thresh=DETECTION_THRESHOLD)
    used = []
    for session in (detector.session, recogniser.session):
        for name in session.get_providers()[:1]:
            if name not in used:
                used.append(name)
    model = FaceModel(pack, folder, det_path, rec_path, provider, tuple(used), note, detector, recogniser)
    log.info("Likeness: face model %s", model.describe())
    return model


# ---------------------------------------------------------------- references from a batch of photos

def _no_face_message(i: int, bgr: np.ndarray, faces: list, select: str, index: int, tried_down: bool) -> str:
    h, w = bgr.shape[:2]
    if faces:
        return (f"reference image {i} has {len(faces)} face(s) but index is {index} (select: {select}); use an index "
                f"from 0 to {len(faces) - 1}, or set on_no_face to skip to leave this image out.")
    seen = f"at {DETECTION_SIZE} px" + (f" and down to {RETRY_SIZES[-1]} px" if tried_down else "")
    return (f"no face found in reference image {i} ({w}x{h}; the detector looked {seen}). Try a photo where the "
            "face is clearly visible, frontal and well lit and at least ~80 px across, crop closer around the "
            "face, or set on_no_face to skip to leave this image out.")


def embed_faces(face_model: FaceModel, image: torch.Tensor, select: str = "largest", index: int = 0,
                on_no_face: str = "error", crop_size: int = 224, clip_vision=None,
                clip_source: str = "", id_encoder=None) -> tuple[References, torch.Tensor, str]:
    """A batch of photos -> one face reference per photo (identity + aligned crop, the crop's CLIP features when
    `clip_vision` is given, PuLID's parsed-face features when `id_encoder` is), the crops as an IMAGE, and a
    one-line summary."""
    if on_no_face not in ON_NO_FACE:
        raise InputError(f"on_no_face `{on_no_face}` is not one of: {', '.join(ON_NO_FACE)}.")
    if image.ndim != 4 or image.shape[0] == 0:
        raise InputError(f"image should be a non-empty IMAGE batch [batch, height, width, channels]; got shape "
                         f"{tuple(image.shape)}.")
    n = image.shape[0]
    check_reference_count(n, "the image batch")
    raws, crops, skipped, kpss, ffhq = [], [], [], [], []
    bar = comfy.utils.ProgressBar(n if id_encoder is None else 2 * n)
    for i in range(n):
        bgr = to_bgr_uint8(image[i], i)
        faces, _ = face_model.detect(bgr)
        face = choose_face(faces, select, index)
        if face is None:
            if not faces and face_model.detector_is_damaged():
                raise face_model.damaged(face_model.detector_file, "detections")
            message = _no_face_message(i, bgr, faces, select, index, face_model.dynamic_detector)
            if on_no_face == "error":
                raise NoFaceError(message)
            log.warning("Likeness: %s Skipped.", message)
            skipped.append(i)
        else:
            raws.append(face_model.embed(bgr, face.kps))
            crops.append(align_face(bgr, face.kps, crop_size))
            kpss.append(face.kps)
            if id_encoder is not None:
                ffhq.append(align_ffhq(bgr, face.kps))
        bar.update(1)
    if not raws:
        raise NoFaceError(
            f"none of the {n} reference image(s) gave a face (on_no_face is skip, so all were skipped). Use photos "
            "with a clearly visible face, or crop closer around the face.")
    raw = np.stack(raws).astype(np.float32)
    height, width = image.shape[1:3]
    identity = FaceIdentity(face_model.pack, torch.from_numpy(normalise(raw)), torch.from_numpy(raw),
                            keypoints=torch.from_numpy(np.stack(kpss).astype(np.float32)),
                            image_sizes=torch.tensor([[width, height]] * len(raws)))
    crop_image = crops_to_image(crops)
    features = None
    if clip_vision is not None:
        features = encode_references(clip_vision, crop_image, crop="center", source=clip_source).image
    parsed = None
    if id_encoder is not None:
        parsed, _ = id_encoder.parsed_face_features(ffhq, progress=bar.update)
    refs = References(image=features, face=identity, parsed_face=parsed)
    summary = f"{len(raws)} face(s) from {n} image(s) with {face_model.pack} on {face_model.providers_used[0]}"
    if skipped:
        summary += f"; skipped image(s) without a face: {', '.join(map(str, skipped))}"
    if features is not None:
        summary += f"; {crop_size} px crops encoded with {features.encoder.name}"
    elif parsed is None:
        summary += "; no clip_vision connected, so these references suit FaceID and Portrait but not FaceID Plus"
    if parsed is not None:
        summary += f"; PuLID parsed-face features from `{id_encoder.eva_name}`"
    return refs, crop_image, summary
