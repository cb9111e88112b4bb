"""The converter's tables: the leading pack's nodes (cubiq/ComfyUI_IPAdapter_plus) as saved in workflows, and the
Likeness nodes they become (socket and widget order as the frontend saves them).

Widget layouts were read from that pack's history: a UI workflow stores widget values by position, and the
pack added widgets over time (weight_type on IPAdapter, embeds_scaling on 2024-03-25, encode_batch_size on the
Batch nodes, layer_weights on FaceID for two weeks, model_name on the InsightFace loader, ...). A saved node is
read with the layout whose length matches its value count. tests/test_migrate.py checks LIKENESS against the
live node definitions, so this table cannot drift from the nodes.
"""

from __future__ import annotations

_ADV = ("weight", "weight_type", "combine_embeds", "start_at", "end_at")
_BATCH = ("weight", "weight_type", "start_at", "end_at")

# class -> widget names, one tuple per saved layout (newest last)
LAYOUTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "IPAdapter": (("weight", "start_at", "end_at"), ("weight", "start_at", "end_at", "weight_type")),
    "IPAdapterAdvanced": (_ADV, _ADV + ("embeds_scaling",)),
    "IPAdapterBatch": (_BATCH, _BATCH + ("embeds_scaling",), _BATCH + ("embeds_scaling", "encode_batch_size")),
    "IPAdapterFaceID": (("weight", "weight_faceidv2") + _ADV[1:],
                        ("weight", "weight_faceidv2") + _ADV[1:] + ("embeds_scaling",),
                        ("weight", "weight_faceidv2") + _ADV[1:] + ("embeds_scaling", "layer_weights")),
    "IPAAdapterFaceIDBatch": (("weight", "weight_faceidv2") + _ADV[1:],
                              ("weight", "weight_faceidv2") + _ADV[1:] + ("embeds_scaling",),
                              ("weight", "weight_faceidv2") + _ADV[1:] + ("embeds_scaling", "layer_weights")),
    "IPAdapterFaceIDKolors": (("weight", "weight_faceidv2", "weight_kolors") + _ADV[1:] + ("embeds_scaling",),),
    "IPAdapterTiled": (_ADV + ("sharpening",), _ADV + ("sharpening", "embeds_scaling")),
    "IPAdapterTiledBatch": (_BATCH + ("sharpening",), _BATCH + ("sharpening", "embeds_scaling"),
                            _BATCH + ("sharpening", "embeds_scaling", "encode_batch_size")),
    "IPAdapterEmbeds": (_BATCH, _BATCH + ("embeds_scaling",)),
    "IPAdapterEmbedsBatch": (_BATCH + ("embeds_scaling",),),
    "IPAdapterStyleComposition": (("weight_style", "weight_composition", "expand_style", "combine_embeds", "start_at",
                                   "end_at", "embeds_scaling"),),
    "IPAdapterStyleCompositionBatch": (("weight_style", "weight_composition", "expand_style", "start_at", "end_at",
                                        "embeds_scaling"),),
    "IPAdapterMS": (("weight", "weight_faceidv2") + _ADV[1:] + ("embeds_scaling", "layer_weights"),),
    "IPAdapterClipVisionEnhancer": (_ADV + ("embeds_scaling", "enhance_tiles", "enhance_ratio"),),
    "IPAdapterClipVisionEnhancerBatch": (_BATCH + ("embeds_scaling", "enhance_tiles", "enhance_ratio",
                                                   "encode_batch_size"),),
    "IPAdapterFromParams": (("combine_embeds", "embeds_scaling"),),
    "IPAdapterPreciseStyleTransfer": (("weight", "style_boost", "combine_embeds", "start_at", "end_at",
                                       "embeds_scaling"),),
    "IPAdapterPreciseStyleTransferBatch": (("weight", "style_boost", "start_at", "end_at", "embeds_scaling"),),
    "IPAdapterPreciseComposition": (("weight", "composition_boost", "combine_embeds", "start_at", "end_at",
                                     "embeds_scaling"),),
    "IPAdapterPreciseCompositionBatch": (("weight", "composition_boost", "start_at", "end_at", "embeds_scaling"),),
    "IPAdapterUnifiedLoader": (("preset",),),
    "IPAdapterUnifiedLoaderFaceID": (("preset", "lora_strength", "provider"),),
    "IPAdapterUnifiedLoaderCommunity": (("preset",),),
    "IPAdapterModelLoader": (("ipadapter_file",),),
    "IPAdapterInsightFaceLoader": (("provider",), ("provider", "model_name")),
    "IPAdapterEncoder": (("weight",),),
    "IPAdapterCombineEmbeds": (("method",),),
    "IPAdapterNoise": (("type", "strength", "blur"),),
    "PrepImageForClipVision": (("interpolation", "crop_position", "sharpening"),),
    "IPAdapterSaveEmbeds": (("filename_prefix",),),
    "IPAdapterLoadEmbeds": (("embeds",),),
    "IPAdapterWeights": (("weights", "timing", "frames", "start_frame", "end_frame"),
                         ("weights", "timing", "frames", "start_frame", "end_frame", "add_starting_frames",
                          "add_ending_frames", "method")),
    "IPAdapterWeightsFromStrategy": ((),),
    "IPAdapterRegionalConditioning": (("image_weight", "prompt_weight", "weight_type", "start_at", "end_at"),
                                      ("set_cond_area", "image_weight", "prompt_weight", "weight_type", "start_at",
                                       "end_at")),
    "IPAdapterCombineParams": ((),),
    "IPAdapterCombineWeights": (("weights_1", "weights_2"),),
    "IPAdapterPromptScheduleFromWeightsStrategy": (("prompt",),),
}

# Values a widget had before it existed (older layouts) or when a file leaves it out.
DEFAULTS = {
    "weight": 1.0, "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
    "embeds_scaling": "V only", "encode_batch_size": 0, "layer_weights": "", "weight_faceidv2": 1.0,
    "weight_kolors": 1.0, "sharpening": 0.0, "enhance_tiles": 2, "enhance_ratio": 1.0, "style_boost": 1.0,
    "composition_boost": 0.0, "expand_style": False, "weight_style": 1.0, "weight_composition": 1.0,
    "lora_strength": 0.6, "provider": "CPU", "model_name": "buffalo_l", "method": "full batch",
    "add_starting_frames": 0, "add_ending_frames": 0, "set_cond_area": "default", "image_weight": 1.0,
    "prompt_weight": 1.0, "filename_prefix": "IP_embeds", "type": "fade", "strength": 1.0, "blur": 0,
    "interpolation": "LANCZOS", "crop_position": "center", "weights": "1.0, 0.0", "timing": "linear", "frames": 0,
    "start_frame": 0, "end_frame": 9999,
}

CLASS_DEFAULTS = {"IPAdapter": {"weight_type": "standard"}}
# Likeness Apply's weight types: the leading pack's fifteen, same names (checked against the live node).
LIKENESS_WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input",
                         "weak output", "weak middle", "strong middle", "style transfer", "composition",
                         "strong style transfer", "style and composition", "style transfer precise",
                         "composition precise")

SIMPLE_WEIGHT_TYPES = {"standard": "linear", "prompt is more important": "ease out", "style transfer": "style transfer"}
COMBINE_MODES = {"concat": "concat", "add": "add", "subtract": "subtract", "average": "average",
                 "norm average": "norm average (per element)", "max": "max", "min": "min"}
UNIFIED_PRESETS = {
    "LIGHT - SD1.5 only (low strength)": "LIGHT", "STANDARD (medium strength)": "STANDARD",
    "VIT-G (medium strength)": "VIT-G", "PLUS (high strength)": "PLUS", "PLUS FACE (portraits)": "PLUS FACE",
    "FULL FACE - SD1.5 only (portraits stronger)": "FULL FACE",
    "FACEID": "FACEID", "FACEID PLUS - SD1.5 only": "FACEID PLUS", "FACEID PLUS V2": "FACEID PLUS V2",
    "FACEID PORTRAIT (style transfer)": "FACEID PORTRAIT",
    "FACEID PORTRAIT UNNORM - SDXL only (strong)": "FACEID PORTRAIT UNNORM",
    "Composition": "COMPOSITION", "Kolors": "KOLORS",
}
PROVIDERS = {"CPU": "CPU", "CUDA": "CUDA", "ROCM": "ROCm", "DirectML": "DirectML", "CoreML": "CoreML",
             "OpenVINO": "auto"}

# Likeness (and core) nodes the converter writes: socket inputs (name, type), widgets (name, type, default),
# outputs (name, type). Required before optional, in definition order, as the frontend lists them.
_WEIGHT_TYPES = "COMBO"
LIKENESS: dict[str, dict] = {
    "LikenessAdapterLoader": dict(sockets=(), widgets=(("adapter_name", "COMBO", None), ("variant", "COMBO", "auto")),
                                  outputs=(("adapter", "LIKENESS_ADAPTER"),)),
    "LikenessUnifiedLoader": dict(
        sockets=(("model", "MODEL"),),
        widgets=(("preset", "COMBO", "STANDARD"), ("faceid_lora_strength", "FLOAT", 0.6),
                 ("face_model_pack", "COMBO", "buffalo_l"), ("provider", "COMBO", "auto")),
        outputs=(("model", "MODEL"), ("adapter", "LIKENESS_ADAPTER"), ("clip_vision", "CLIP_VISION"),
                 ("face_model", "LIKENESS_FACE_MODEL"), ("control_net", "CONTROL_NET"))),
    "LikenessFaceModelLoader": dict(sockets=(), widgets=(("model_pack", "COMBO", "buffalo_l"),
                                                         ("provider", "COMBO", "auto")),
                                    outputs=(("face_model", "LIKENESS_FACE_MODEL"),)),
    "LikenessImageEncode": dict(
        sockets=(("clip_vision", "CLIP_VISION"), ("image", "IMAGE"), ("mask", "MASK")),
        widgets=(("crop", "COMBO", "center"), ("sharpen", "FLOAT", 0.0), ("encode_batch_size", "INT", 0),
                 ("enhance_tiles", "INT", 1), ("enhance_ratio", "FLOAT", 1.0)),
        outputs=(("references", "LIKENESS_REFS"),)),
    "LikenessFaceEmbed": dict(
        sockets=(("face_model", "LIKENESS_FACE_MODEL"), ("image", "IMAGE"), ("clip_vision", "CLIP_VISION"),
                 ("id_encoder", "LIKENESS_ID_ENCODER")),
        widgets=(("select", "COMBO", "largest"), ("index", "INT", 0), ("on_no_face", "COMBO", "error"),
                 ("crop_size", "COMBO", "224")),
        outputs=(("references", "LIKENESS_REFS"), ("crops", "IMAGE"), ("keypoints", "IMAGE"))),
    "LikenessMergeReferences": dict(
        sockets=(("references_1", "LIKENESS_REFS"),) + tuple((f"references_{i}", "LIKENESS_REFS")
                                                              for i in range(2, 13)),
        widgets=(("mode", "COMBO", "concat"), ("weights", "STRING", ""), ("drop_outliers", "BOOLEAN", False),
                 ("outlier_threshold", "FLOAT", 0.3)),
        outputs=(("references", "LIKENESS_REFS"),)),
    "LikenessProject": dict(
        sockets=(("adapter", "LIKENESS_ADAPTER"), ("references", "LIKENESS_REFS"), ("negative", "LIKENESS_REFS")),
        widgets=(("faceid_plus_version", "COMBO", "auto"), ("faceid_v2_weight", "FLOAT", 1.0),
                 ("noise", "FLOAT", 0.35)),
        outputs=(("tokens", "LIKENESS_TOKENS"),)),
    "LikenessApply": dict(
        sockets=(("model", "MODEL"), ("adapter", "LIKENESS_ADAPTER"), ("tokens", "LIKENESS_TOKENS"),
                 ("attn_mask", "MASK")),
        widgets=(("weight", "FLOAT", 1.0), ("weight_type", _WEIGHT_TYPES, "linear"), ("start_at", "FLOAT", 0.0),
                 ("end_at", "FLOAT", 1.0), ("embeds_scaling", "COMBO", "V only"),
                 ("faceid_lora_strength", "FLOAT", 1.0), ("style_boost", "FLOAT", 1.0),
                 ("composition_boost", "FLOAT", 0.0), ("layer_weights", "STRING", ""),
                 ("unfold_batch", "BOOLEAN", False), ("weight_kolors", "FLOAT", 1.0),
                 ("pulid_method", "COMBO", "fidelity")),
        outputs=(("model", "MODEL"),)),
    "LikenessApplySimple": dict(
        sockets=(("model", "MODEL"), ("adapter", "LIKENESS_ADAPTER"), ("clip_vision", "CLIP_VISION"),
                 ("image", "IMAGE")),
        widgets=(("weight", "FLOAT", 1.0), ("start_at", "FLOAT", 0.0), ("end_at", "FLOAT", 1.0)),
        outputs=(("model", "MODEL"),)),
    "LikenessApplyTiled": dict(
        sockets=(("model", "MODEL"), ("adapter", "LIKENESS_ADAPTER"), ("clip_vision", "CLIP_VISION"),
                 ("image", "IMAGE"), ("image_negative", "IMAGE"), ("attn_mask", "MASK")),
        widgets=(("weight", "FLOAT", 1.0), ("weight_type", _WEIGHT_TYPES, "linear"),
                 ("combine_embeds", "COMBO", "concat"), ("start_at", "FLOAT", 0.0), ("end_at", "FLOAT", 1.0),
                 ("sharpening", "FLOAT", 0.0), ("embeds_scaling", "COMBO", "V only"),
                 ("encode_batch_size", "INT", 0), ("unfold_batch", "BOOLEAN", False)),
        outputs=(("model", "MODEL"), ("tiles", "IMAGE"), ("masks", "MASK"))),
    "LikenessNoiseImage": dict(
        sockets=(("image_optional", "IMAGE"),),
        widgets=(("type", "COMBO", "fade"), ("strength", "FLOAT", 1.0), ("blur", "INT", 0), ("size", "INT", 224)),
        outputs=(("image", "IMAGE"),)),
    "LikenessPrepImage": dict(
        sockets=(("image", "IMAGE"),),
        widgets=(("interpolation", "COMBO", "LANCZOS"), ("crop_position", "COMBO", "center"),
                 ("sharpening", "FLOAT", 0.0), ("size", "INT", 224)),
        outputs=(("image", "IMAGE"),)),
    "LikenessSaveReferences": dict(sockets=(("references", "LIKENESS_REFS"),),
                                   widgets=(("filename_prefix", "STRING", "references"),), outputs=()),
    "LikenessLoadReferences": dict(sockets=(("clip_vision", "CLIP_VISION"),),
                                   widgets=(("references_file", "COMBO", None),),
                                   outputs=(("references", "LIKENESS_REFS"),)),
    "LikenessFrameWeights": dict(
        sockets=(("image", "IMAGE"), ("weights_strategy", "LIKENESS_WEIGHTS_STRATEGY")),
        widgets=(("weights", "STRING", "1.0, 0.0"), ("timing", "COMBO", "linear"), ("frames", "INT", 0),
                 ("start_frame", "INT", 0), ("end_frame", "INT", 9999), ("add_starting_frames", "INT", 0),
                 ("add_ending_frames", "INT", 0), ("method", "COMBO", "full batch")),
        outputs=(("weights", "FLOAT"), ("weights_invert", "FLOAT"), ("total_frames", "INT"), ("image_1", "IMAGE"),
                 ("image_2", "IMAGE"), ("weights_strategy", "LIKENESS_WEIGHTS_STRATEGY"))),
    "ConditioningSetMask": dict(
        sockets=(("conditioning", "CONDITIONING"), ("mask", "MASK")),
        widgets=(("strength", "FLOAT", 1.0), ("set_cond_area", "COMBO", "default")),
        outputs=(("CONDITIONING", "CONDITIONING"),)),
}
# Inputs that are optional in the live schema (the frontend marks them with shape 7).
OPTIONAL = {
    "LikenessUnifiedLoader": {"provider"},
    "LikenessImageEncode": {"mask", "encode_batch_size", "enhance_tiles", "enhance_ratio"},
    "LikenessFaceEmbed": {"clip_vision", "id_encoder"},
    "LikenessMergeReferences": {f"references_{i}" for i in range(2, 13)},
    "LikenessProject": {"negative", "faceid_plus_version", "faceid_v2_weight", "noise"},
    "LikenessAdapterLoader": {"variant"},
    "LikenessApply": {"attn_mask", "faceid_lora_strength", "style_boost", "composition_boost", "layer_weights",
                      "unfold_batch", "weight_kolors", "pulid_method"},
    "LikenessApplyTiled": {"image_negative", "attn_mask", "encode_batch_size", "unfold_batch"},
    "LikenessNoiseImage": {"image_optional", "size"},
    "LikenessPrepImage": {"size"},
    "LikenessLoadReferences": {"clip_vision"},
    "LikenessFrameWeights": {"image", "weights_strategy"},
}

# Numbers that may differ after conversion (cubiq-gap.md §4.3), by the key a rule reports.
CAVEATS = {
    "middle": "Likeness also patches the UNet's middle block, which the leading pack registers under a key "
              "ComfyUI never looks up; results differ slightly at the same weight (more so with `strong middle`).",
    "negative": "Plus, face, composition and FaceID Plus adapters: without a negative image Likeness uses the "
                "features of a mean-grey image as the unconditional side (as the reference implementation); the "
                "leading pack used a black image.",
    "norm average": "`norm average` became `norm average (per element)`, the leading pack's formula under its own "
                    "name (Likeness's own `norm average` is a different formula).",
    "face select": "FaceID: Face Embed is set to `most confident` (the leading pack took the detector's first "
                   "face); change `select` to pick another face.",
    "face negative": "FaceID (not Plus) and Portrait: the negative image was left out; the leading pack did not use "
                     "it with these adapters either (the uncond identity is zero). For a negative identity, give "
                     "Project Face Embed references of another face.",
    "face lora": "FaceID: Apply's faceid_lora_strength is 0, as the leading pack never added the LoRA in its "
                 "apply nodes (the Unified Loader's faceid_lora_strength still applies it).",
    "prep": "Prep Image: Likeness Prep Image follows the leading pack's crop positions, resize filters and CAS "
            "sharpening; expect small pixel differences, not different pictures.",
    "openvino": "OpenVINO has no Likeness provider; `auto` picks the best onnxruntime provider installed.",
    "ipadpt": "Load Embeds: Likeness reads a `.ipadpt` file only when it holds plain tensors (never pickled code), "
              "and it carries one feature kind; save the references again with Likeness Save References.",
    "kolors": "Kolors: this ComfyUI has no Kolors model of its own. Likeness applies Kolors adapters to the MODEL of a "
              "Kolors loader pack (one whose UNet carries `encoder_hid_proj`, such as ComfyUI-Kolors-MZ); on any "
              "other MODEL the run stops and says so.",
    "regional": "Regional conditioning: each region became its own Likeness chain on the MODEL and a core "
                "Conditioning (Set Mask) node for its prompt, with the same mask and weights.",
}
