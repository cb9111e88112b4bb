"""Synthetic insightface-compatible face models, built in-process with the `onnx` helper API (no downloads).

A detector with the SCRFD "_bnkps" output contract (9 outputs: scores, box distances and keypoint offsets for
strides 8, 16 and 32, two anchors per cell) that finds bright round blobs, and an ArcFace-layout recogniser
(one 112x112 input, one 512-wide output) whose embedding is a fixed random projection of an 8x8-pooled crop.
insightface's own model router accepts both, so the tests run the real insightface code path.

The detector, at stride 32 (strides 8 and 16 never fire):
  r      = 5x5 binomial blur of the 32x32-pooled channel mean of the normalised image
  score  = sigmoid(8 (r - 0.2)) * sigmoid(40 (0.8 - r)) * [r is a 3x3 local maximum]
  box    = a square of half-size d = 1.25 + 1.25 clip(r, 0, 1) strides around the anchor point
  kps    = the ArcFace 5-point template scaled into that box
so a larger or brighter disc gives a larger box, and a disc that fills the whole 160 px window (r close to 1)
is missed, as a real detector misses faces larger than its biggest anchors; at a smaller detection size the
same face shrinks into range. Images for it come from `face_image`.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

OPSET = 17
TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                         [70.7299, 92.2041]], dtype=np.float32)  # the published ArcFace 5-point layout
STRIDES = (8, 16, 32)


def _helpers():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    return onnx, TensorProto, helper, numpy_helper


def detector_model():
    onnx, TensorProto, helper, numpy_helper = _helpers()
    nodes, inits = [], []

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=f"n{len(nodes)}_{output}", **attrs))
        return output

    def rows(x, width, tag):
        """[1, 1, h, w] -> [h * w * 2, width]: row order (y, x, anchor), the same value for both anchors."""
        t = node("Transpose", [x], f"{tag}_t", perm=[0, 2, 3, 1])
        t2 = node("Concat", [t, t], f"{tag}_a2", axis=3)
        inits.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), f"{tag}_shape"))
        col = node("Reshape", [t2, f"{tag}_shape"], f"{tag}_col")
        if width == 1:
            return col
        return node("Mul", [col, const(f"{tag}_ones", np.ones((1, width)))], f"{tag}_wide")

    binomial = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32)
    const("blur_w", (binomial / binomial.sum())[None, None])
    const("zero", 0.0)
    offsets = ((TEMPLATE_112 - 56.0) / 56.0).reshape(1, 10)

    mean = node("ReduceMean", ["input.1"], "mean", axes=[1], keepdims=1)
    outputs = {}
    for s in STRIDES:
        pooled = node("AveragePool", [mean], f"pool{s}", kernel_shape=[s, s], strides=[s, s])
        if s != 32:
            zero_rows = node("Mul", [rows(pooled, 1, f"r{s}"), "zero"], f"zero{s}")
            outputs[f"score_{s}"] = node("Identity", [zero_rows], f"score_{s}")
            outputs[f"bbox_{s}"] = node("Add", [zero_rows, const(f"box{s}", np.ones((1, 4)))], f"bbox_{s}")
            outputs[f"kps_{s}"] = node("Add", [zero_rows, const(f"kpo{s}", offsets)], f"kps_{s}")
            continue
        r = node("Conv", [pooled, "blur_w"], "blur", pads=[2, 2, 2, 2])
        local_max = node("MaxPool", [r], "localmax", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        peak = node("Cast", [node("Equal", [r, local_max], "is_peak")], "peak", to=TensorProto.FLOAT)
        rising = node("Sigmoid", [node("Mul", [node("Add", [r, const("m02", -0.2)], "r_lo"), const("k8", 8.0)],
                                       "r_lo8")], "rising")
        falling = node("Sigmoid", [node("Mul", [node("Add", [r, const("m_hi", -0.8)], "r_hi"),
                                                const("km40", -40.0)], "r_hi40")], "falling")
        score = node("Mul", [node("Mul", [rising, falling], "band"), peak], "score_map")
        half = node("Add", [node("Mul", [node("Clip", [r, "zero", const("one", 1.0)], "r_clip"),
                                         const("k125", 1.25)], "r_scaled"), const("b125", 1.25)], "half")
        half_rows = rows(half, 1, "h32")
        outputs["score_32"] = node("Identity", [rows(score, 1, "s32")], "score_32")
        outputs["bbox_32"] = node("Mul", [half_rows, const("box32", np.ones((1, 4)))], "bbox_32")
        outputs["kps_32"] = node("Mul", [half_rows, const("kpo32", offsets)], "kps_32")

    order = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    width = {"score": 1, "bbox": 4, "kps": 10}
    graph = helper.make_graph(
        nodes, "synthetic_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{name.split('_')[1]}", width[name.split('_')[0]]])
         for name in order],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def recogniser_model(seed: int = 1234, size: int = 112, width: int = 512, colour_only: bool = False):
    """`colour_only`: the projection sees each pixel minus its own grey level, so grey areas (the disc, the
    background) give nothing and only coloured patterns count: different patterns are different people, whose
    embeddings are nearly orthogonal as a real recogniser's are (see `person_face`)."""
    onnx, TensorProto, helper, numpy_helper = _helpers()
    cells = size // 8
    features = 3 * cells * cells
    weights = (np.random.default_rng(seed).standard_normal((features, width)) / np.sqrt(features)).astype(np.float32)
    source, nodes = "input.1", []
    if colour_only:
        nodes = [helper.make_node("ReduceMean", ["input.1"], ["grey"], name="grey", axes=[1], keepdims=1),
                 helper.make_node("Sub", ["input.1", "grey"], ["colour"], name="colour")]
        source = "colour"
    nodes += [
        helper.make_node("AveragePool", [source], ["pooled"], name="pool", kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["fc1"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "synthetic_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(weights, "fc_w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def landmark_model():
    """A 192x192-input model the router files as a landmark head: packs hold such extra models."""
    onnx, TensorProto, helper, numpy_helper = _helpers()
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten", axis=1),
             helper.make_node("MatMul", ["f", "w"], ["fc1"], name="fc")]
    graph = helper.make_graph(
        nodes, "synthetic_landmark",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])],
        [numpy_helper.from_array(np.ones((3, 212), dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


PACK_FILES = {  # (detector, recogniser) file names of the published packs
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}


def write_pack(folder: str, detector: bool = True, recogniser: bool = True, extra: bool = True,
               recogniser_seed: int = 1234, colour_only: bool = False, style: str = "buffalo_l") -> str:
    """Write a model pack folder with the file names of `style` (buffalo_l or antelopev2); returns the folder."""
    import onnx

    det_name, rec_name = PACK_FILES[style]
    os.makedirs(folder, exist_ok=True)
    if extra:
        onnx.save(landmark_model(), os.path.join(folder, "2d106det.onnx"))
    if detector:
        onnx.save(detector_model(), os.path.join(folder, det_name))
    if recogniser:
        onnx.save(recogniser_model(recogniser_seed, colour_only=colour_only), os.path.join(folder, rec_name))
    return folder


# ---------------------------------------------------------------- images the detector sees as faces

def face_image(width: int = 640, height: int = 480, faces=((320, 200, 80),), background=(20, 24, 30),
               skin=(250, 236, 222), seed: int = 0) -> np.ndarray:
    """uint8 RGB [H, W, 3]: dark background, a bright disc per (cx, cy, radius) with two dark eyes and a mouth
    whose colours vary with `seed` (so identities differ), plus mild noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), dtype=np.float32)
    img[:] = background
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    for n, (cx, cy, radius) in enumerate(faces):
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
        img[disc] = skin
        eye = rng.integers(0, 120, 3)
        for ex in (-0.35, 0.35):
            spot = (xx - cx - ex * radius) ** 2 + (yy - cy + 0.2 * radius) ** 2 <= (0.12 * radius) ** 2
            img[spot] = eye
        mouth = (np.abs(xx - cx) <= 0.3 * radius) & (np.abs(yy - cy - 0.45 * radius) <= 0.06 * radius)
        img[mouth] = rng.integers(60, 200, 3)
    img += rng.normal(0, 2.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- people with known identities

PERSON_CELLS = 8  # the identity pattern is an 8 x 8 grid of colours over the middle of the face
PERSON_SKIN, PERSON_BACKGROUND, PERSON_RADIUS = 200, 20, 96


def identity_pattern(identity: int) -> np.ndarray:
    """A person: an [8, 8, 3] grid of colour offsets whose channels sum to 0 in every cell (pure colour, no
    brightness), scaled to unit RMS."""
    v = np.random.default_rng(10_000 + identity).standard_normal((PERSON_CELLS, PERSON_CELLS, 3))
    v -= v.mean(axis=-1, keepdims=True)
    return v / np.sqrt((v ** 2).mean())


def photo_pattern(identity: int, photo: int = 0, variation: float = 0.5) -> np.ndarray:
    """One photo of a person: their pattern plus `variation` times a pattern of its own (light, expression...)."""
    v = identity_pattern(identity) + variation * identity_pattern(1_000_000 + 1000 * identity + photo)
    return v / np.sqrt((v ** 2).mean())


def blend_pattern(a: np.ndarray, b: np.ndarray, weight_b: float = 0.5) -> np.ndarray:
    """A face part one pattern, part another (two photos, or two people)."""
    v = (1 - weight_b) * a + weight_b * b
    return v / np.sqrt((v ** 2).mean())


def person_face(width: int = 640, height: int = 480, faces=((320, 224, None),), amplitude: float = 16.0) -> np.ndarray:
    """uint8 RGB: grey discs on a dark grey background, each (cx, cy, pattern) with the pattern (from
    `photo_pattern`, `blend_pattern`...; None for a blank face) painted over its middle as pure colour.

    The colour offsets are whole numbers whose three channels sum to 0, so every pixel keeps the disc's grey
    level exactly: the detector (which reads the channel mean) finds every face at the same place, whatever its
    pattern. With the centres on multiples of 32 px (the detector's stride) and the image 640 px wide, every face
    gives the same aligned crop up to its pattern, and a `colour_only` recogniser sees only the pattern."""
    img = np.full((height, width, 3), PERSON_BACKGROUND, dtype=np.int32)
    yy, xx = np.mgrid[:height, :width]
    r = PERSON_RADIUS
    for cx, cy, pattern in faces:
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
        img[disc] = PERSON_SKIN
        if pattern is None:
            continue
        half = int(r * 0.7)
        ys, xs = slice(cy - half, cy + half), slice(cx - half, cx + half)
        cell = np.arange(2 * half) * PERSON_CELLS // (2 * half)
        offsets = pattern[cell[:, None], cell[None, :]] * amplitude  # [2h, 2h, 3]
        rg = np.rint(offsets[..., :2]).astype(np.int32)
        img[ys, xs, :2] += rg
        img[ys, xs, 2] -= rg.sum(axis=-1)
    assert img.min() >= 0 and img.max() <= 255, "pattern amplitude too large for the skin level"
    return img.astype(np.uint8)


def to_comfy(*rgb_images: np.ndarray):
    """uint8 RGB images of one size -> a ComfyUI IMAGE batch (float32 0-1, as LoadImage makes it)."""
    import torch

    return torch.from_numpy(np.stack(rgb_images).astype(np.float32) / 255.0)


def load_photos(prompt: dict, photos, node: str, input_name: str = "image") -> dict:
    """Adds LoadImage nodes for `photos`, joined into one batch by ImageBatch, to an API prompt, and connects the
    batch to `input_name` of `node`."""
    batch = None
    for i, photo in enumerate(photos):
        prompt[f"photo{i}"] = {"class_type": "LoadImage", "inputs": {"image": photo}}
        if i:
            prompt[f"batch{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": [batch, 0],
                                                                          "image2": [f"photo{i}", 0]}}
        batch = f"batch{i}" if i else "photo0"
    prompt[node]["inputs"][input_name] = [batch, 0]
    return prompt


# ---------------------------------------------------------------- a registered insightface folder for the tests

PACK = "synth_l"


@contextlib.contextmanager
def model_folder(kind: str, path: str, first: bool = False):
    """`path` registered as a ComfyUI model folder of `kind` (as extra_model_paths.yaml would add it; searched
    before the others when `first`), and unregistered afterwards so that later tests see the folders they expect."""
    import folder_paths

    folder_paths.add_model_folder_path(kind, path, is_default=first)
    try:
        yield path
    finally:
        paths = folder_paths.folder_names_and_paths[kind][0]
        if path in paths:
            paths.remove(path)
        folder_paths.filename_list_cache.pop(kind, None)  # removing a folder does not invalidate the cache


@contextlib.contextmanager
def insightface_folder(tmp_path_factory):
    """A temporary insightface model folder holding the synthetic pack `synth_l`, registered while in use."""
    root = tmp_path_factory.mktemp("insightface")
    write_pack(str(root / "models" / PACK))
    with model_folder("insightface", str(root)):
        yield root


# ---------------------------------------------------------------- tiny FaceID adapters in the official key layout

FACEID_LAYOUTS = ("faceid", "plus", "portrait", "portrait-unnorm")


def tiny_faceid_state(layout: str, widths: list[int], context: int = 64, clip_width: int = 64, lora_rank: int = 4,
                      lora: bool | None = None, seed: int = 0) -> dict:
    """A tiny FaceID adapter for a tiny UNet whose cross-attention sites have `widths` (the h94 key names: FaceID
    MLP, FaceID Plus perceiver, Portrait MLP with 16 tokens, or Portrait-unnorm resampler; LoRA for FaceID and
    Plus)."""
    import builders

    if layout == "faceid":
        proj = builders.faceid_mlp_shapes(context, 4)
    elif layout == "plus":
        proj = builders.faceid_plus_shapes(context, clip=clip_width, t=4, depth=4)
    elif layout == "portrait":
        proj = builders.faceid_mlp_shapes(context, 16)
    elif layout == "portrait-unnorm":
        proj = builders.resampler_shapes(64, 1, 16, 512, context, depth=4)
    else:
        raise ValueError(layout)
    if lora is None:
        lora = layout in ("faceid", "plus")
    shapes = {"image_proj." + k: v for k, v in proj.items()}
    shapes.update({"ip_adapter." + k: v for k, v in builders.kv_shapes(widths, context).items()})
    if lora:
        shapes.update({"ip_adapter." + k: v for k, v in builders.lora_shapes(widths, context, lora_rank).items()})
    state = builders.tensors_for(shapes, seed)
    for k in state:
        if "_lora." in k:
            state[k] = state[k] * 0.2
    return state


def poison(path: str, value: float = float("nan")) -> str:
    """Overwrite every float initializer of the ONNX file at `path` with `value` (a damaged download whose
    weights hold NaN or inf); the graph itself stays valid."""
    onnx, _TensorProto, _helper, numpy_helper = _helpers()
    model = onnx.load(path)
    for i, init in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(init)
        if array.dtype.kind == "f" and array.size:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.full_like(array, value), init.name))
    onnx.save(model, path)
    return path
