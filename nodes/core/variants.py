"""The one table of adapter families, and detection of a checkpoint's family from its weights alone.

Detection reads key names and tensor shapes (a safetensors header or meta tensors are enough), never file
names. Everything else that needs a variant's facts (error messages, docs, the loader's summary) reads
them from here.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from .errors import AdapterFileError


class Feature(enum.Enum):
    """Which encoder output an adapter's projection eats."""

    IMAGE_EMBEDS = "image_embeds"  # pooled, projected CLIP embedding [E]
    PENULTIMATE = "penultimate"  # CLIP hidden states of the second-to-last layer [S, E]
    FACE_ID = "face_id"  # insightface identity embedding [512]
    FACE_ID_AND_PENULTIMATE = "face_id+penultimate"
    PULID = "pulid"  # antelopev2 raw identity + EVA-CLIP features of the parsed face (Likeness ID Encoder)


class Layout(enum.Enum):
    """How the `image_proj` group is built."""

    LINEAR = "linear"  # Linear -> reshape to T tokens -> LayerNorm
    RESAMPLER = "resampler"  # Perceiver resampler with learned latents
    MLP_PER_TOKEN = "mlp"  # Linear, GELU, Linear, LayerNorm on each encoder token (full-face)
    FACEID_MLP = "faceid-mlp"  # Linear, GELU, Linear -> reshape -> LayerNorm, from a 512-d identity
    FACEID_PLUS = "faceid-plus"  # FaceID MLP tokens refined by a perceiver over CLIP features
    PULID_ENCODER = "pulid-idencoder"  # PuLID v1: MLPs of the ID vector and of each EVA hidden state
    PULID_FORMER = "pulid-idformer"  # PuLID v1.1 / PuLID-FLUX: learned queries read ID and EVA tokens


@dataclass(frozen=True)
class Encoder:
    """A CLIP vision encoder, identified by its widths."""

    name: str
    hidden_width: int  # width of hidden states (penultimate)
    embed_width: int  # width of the projected image embedding
    file_hint: str  # the file users usually have in models/clip_vision
    image_size: int = 224  # input side in pixels; two encoders of the same widths differ only by this

    def describe(self) -> str:
        size = f", {self.image_size} px input" if self.image_size != 224 else ""
        return f"{self.name} ({self.hidden_width}-wide hidden states, {self.embed_width}-wide image embeds{size})"

    def same_as(self, other: "Encoder") -> bool:
        return (self.hidden_width, self.embed_width, self.image_size) == (other.hidden_width, other.embed_width,
                                                                          other.image_size)


ENCODERS: tuple[Encoder, ...] = (
    Encoder("ViT-H/14", 1280, 1024, "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"),
    Encoder("ViT-bigG/14", 1664, 1280, "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors"),
    Encoder("ViT-L/14", 1024, 768, "clip-vit-large-patch14.safetensors"),
    Encoder("ViT-L/14-336", 1024, 768, "clip-vit-large-patch14-336.bin", image_size=336),  # Kolors
)


# The image encoder PuLID reads (EVA-CLIP, not OpenAI/LAION CLIP): kept apart from ENCODERS, whose widths it
# shares with ViT-L/14.
EVA_CLIP = Encoder("EVA02-CLIP-L-14-336", 1024, 768, "EVA02_CLIP_L_336_psz14_s6B.pt")
IDENTITY_WIDTH = 512  # antelopev2 (glintr100) identity embedding


def encoder_by_width(width: int, feature: Feature) -> Encoder | None:
    """The known encoder whose `feature` output has this width."""
    for enc in ENCODERS:
        w = enc.embed_width if feature is Feature.IMAGE_EMBEDS else enc.hidden_width
        if w == width:
            return enc
    return None


def encoder_by_widths(hidden_width: int, embed_width: int, image_size: int | None = None) -> Encoder | None:
    for enc in ENCODERS:
        if (enc.hidden_width == hidden_width and enc.embed_width == embed_width
                and (image_size is None or enc.image_size == image_size)):
            return enc
    return None


def encoder_named(name: str) -> Encoder:
    return next(e for e in ENCODERS if e.name == name)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    context_width: int
    sites: int


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("SD1.5", 768, 16),
    ModelFamily("SDXL", 2048, 70),
)
FLUX = "FLUX"  # a DiT: PuLID-FLUX files name it; it has no cross-attention sites
KOLORS = "Kolors"  # an SDXL-layout UNet whose text context comes from ChatGLM through its own `encoder_hid_proj`
UNET_LAYOUT = {"SD1.5": "SD1.5", "SDXL": "SDXL", KOLORS: "SDXL", FLUX: FLUX}  # which site layout each base model has


def family_name(context_width: int, sites: int | None = None) -> str:
    for fam in FAMILIES:
        if fam.context_width == context_width and (sites is None or fam.sites == sites):
            return fam.name
    return f"a {context_width}-wide-context model" + (f" with {sites} cross-attention sites" if sites else "")


@dataclass(frozen=True)
class Variant:
    """One row of the table: an adapter family as published."""

    key: str
    title: str
    layout: Layout
    feature: Feature
    family: str  # "SD1.5" / "SDXL"
    input_width: int  # width of the projection input (E)
    tokens: int  # image tokens per reference
    files: tuple[str, ...]  # official files with exactly this layout
    faceid: bool = False
    lora: bool = False  # trained together with a LoRA on the UNet's attention (FaceID, FaceID Plus)
    note: str = ""
    face_pack: str = "buffalo_l"  # the insightface pack whose identities it was trained on (FaceID families)
    folder: str = "ipadapter"  # the model folder its files go in
    source: str = ""  # where the official files are published
    # Rows that share one layout are told apart by what else the published file shows: the dtypes of its
    # `image_proj` and `ip_adapter` groups (safetensors names: F32, F16, BF16), then a file name pattern.
    stored_dtypes: tuple[str, str] | None = None
    name_hint: str = ""
    # A ControlNet trained with the adapter (InstantID's IdentityNet): its published file name and where it is.
    controlnet_file: str = ""
    controlnet_source: str = ""
    encoder: str = ""  # the encoder's name when the widths alone do not say (ViT-L/14 vs ViT-L/14-336)
    inner_width: int = 0  # width inside a resampler, when it tells two families apart (0: any)
    token_width: int = 0  # width of the tokens when it differs from the attention's context width (0: the same)

    @property
    def pulid(self) -> bool:
        return self.feature is Feature.PULID


_H, _G = 1280, 1664  # hidden widths (ViT-H, ViT-bigG)

VARIANTS: tuple[Variant, ...] = (
    Variant("sd15", "Standard", Layout.LINEAR, Feature.IMAGE_EMBEDS, "SD1.5", 1024, 4,
            ("ip-adapter_sd15.safetensors", "ip-adapter_sd15_light_v11.bin", "ip-adapter_sd15_light.safetensors"),
            note="the light model has the same layout; it is weaker by training, not by structure"),
    Variant("sd15-vit-g", "Standard (ViT-bigG)", Layout.LINEAR, Feature.IMAGE_EMBEDS, "SD1.5", 1280, 4,
            ("ip-adapter_sd15_vit-G.safetensors",)),
    Variant("sd15-plus", "Plus", Layout.RESAMPLER, Feature.PENULTIMATE, "SD1.5", _H, 16,
            ("ip-adapter-plus_sd15.safetensors", "ip-adapter-plus-face_sd15.safetensors",
             "ip_plus_composition_sd15.safetensors"),
            note="plus, plus-face and composition share this layout; they differ by training"),
    Variant("sd15-full-face", "Full face", Layout.MLP_PER_TOKEN, Feature.PENULTIMATE, "SD1.5", _H, 257,
            ("ip-adapter-full-face_sd15.safetensors",)),
    Variant("sdxl", "Standard (ViT-bigG)", Layout.LINEAR, Feature.IMAGE_EMBEDS, "SDXL", 1280, 4,
            ("ip-adapter_sdxl.safetensors",)),
    Variant("sdxl-vit-h", "Standard (ViT-H)", Layout.LINEAR, Feature.IMAGE_EMBEDS, "SDXL", 1024, 4,
            ("ip-adapter_sdxl_vit-h.safetensors",)),
    Variant("sdxl-plus", "Plus", Layout.RESAMPLER, Feature.PENULTIMATE, "SDXL", _H, 16,
            ("ip-adapter-plus_sdxl_vit-h.safetensors", "ip-adapter-plus-face_sdxl_vit-h.safetensors",
             "ip_plus_composition_sdxl.safetensors"),
            note="plus, plus-face and composition share this layout; they differ by training"),
    # FaceID families: recognised here, used through the FaceID nodes.
    Variant("sd15-faceid", "FaceID", Layout.FACEID_MLP, Feature.FACE_ID, "SD1.5", 512, 4,
            ("ip-adapter-faceid_sd15.bin",), faceid=True, lora=True),
    Variant("sd15-faceid-plus", "FaceID Plus / Plus v2", Layout.FACEID_PLUS, Feature.FACE_ID_AND_PENULTIMATE,
            "SD1.5", 512, 4, ("ip-adapter-faceid-plusv2_sd15.bin", "ip-adapter-faceid-plus_sd15.bin"), faceid=True,
            lora=True,
            note="Plus v1 and v2 share one layout; only the shortcut at run time differs"),
    Variant("sd15-faceid-portrait", "FaceID Portrait", Layout.FACEID_MLP, Feature.FACE_ID, "SD1.5", 512, 16,
            ("ip-adapter-faceid-portrait-v11_sd15.bin", "ip-adapter-faceid-portrait_sd15.bin"), faceid=True),
    Variant("sdxl-faceid", "FaceID", Layout.FACEID_MLP, Feature.FACE_ID, "SDXL", 512, 4,
            ("ip-adapter-faceid_sdxl.bin",), faceid=True, lora=True),
    Variant("sdxl-faceid-plus", "FaceID Plus v2", Layout.FACEID_PLUS, Feature.FACE_ID_AND_PENULTIMATE,
            "SDXL", 512, 4, ("ip-adapter-faceid-plusv2_sdxl.bin",), faceid=True, lora=True),
    Variant("sdxl-faceid-portrait", "FaceID Portrait", Layout.FACEID_MLP, Feature.FACE_ID, "SDXL", 512, 16,
            ("ip-adapter-faceid-portrait_sdxl.bin",), faceid=True),
    # InstantID comes first of the two rows with this layout: it is what a file that shows nothing else is taken for.
    Variant("sdxl-instantid", "InstantID", Layout.RESAMPLER, Feature.FACE_ID, "SDXL", 512, 16, ("ip-adapter.bin",),
            faceid=True, face_pack="antelopev2", folder="instantid", source="huggingface.co/InstantX/InstantID",
            stored_dtypes=("F32", "F32"), name_hint=r"instant", controlnet_file="diffusion_pytorch_model.safetensors",
            controlnet_source="huggingface.co/InstantX/InstantID (folder ControlNetModel)",
            note="takes the raw antelopev2 identity embedding; pairs with the IdentityNet ControlNet "
                 "(Likeness InstantID Control)"),
    Variant("sdxl-faceid-portrait-unnorm", "FaceID Portrait (unnorm)", Layout.RESAMPLER, Feature.FACE_ID,
            "SDXL", 512, 16, ("ip-adapter-faceid-portrait_sdxl_unnorm.bin",), faceid=True,
            stored_dtypes=("F32", "F16"), name_hint=r"portrait|unnorm",
            note="takes the raw, un-normalised identity embedding"),
    # PuLID: antelopev2 identity + EVA-CLIP features of the parsed face, through the ID encoder (Likeness ID
    # Encoder Loader, Likeness Face Embed's id_encoder input).
    Variant("sdxl-pulid", "PuLID v1", Layout.PULID_ENCODER, Feature.PULID, "SDXL", 1280, 10,
            ("ip-adapter_pulid_sdxl_fp16.safetensors", "pulid_v1.bin"), folder="pulid",
            note="the safetensors file is a conversion of pulid_v1.bin with IP-Adapter key names"),
    Variant("sdxl-pulid-v1.1", "PuLID v1.1", Layout.PULID_FORMER, Feature.PULID, "SDXL", 1280, 32,
            ("pulid_v1.1.safetensors", "ip-adapter_pulidv1.1_sdxl_fp16.safetensors"), folder="pulid"),
    Variant("flux-pulid", "PuLID-FLUX v0.9.0 / v0.9.1", Layout.PULID_FORMER, Feature.PULID, FLUX, 1280, 32,
            ("pulid_flux_v0.9.1.safetensors", "pulid_flux_v0.9.0.safetensors"), folder="pulid",
            note="v0.9.0 and v0.9.1 share one layout; they differ by training (v0.9.1 holds identity better)"),
    # Kolors (Kwai-Kolors): an SDXL-layout UNet with a ChatGLM text encoder.
    Variant("kolors-plus", "Kolors Plus", Layout.RESAMPLER, Feature.PENULTIMATE, KOLORS, 1024, 16,
            ("Kolors-IP-Adapter-Plus.bin", "ip_adapter_plus_general.bin"), encoder="ViT-L/14-336", inner_width=2048,
            note="needs a Kolors model; its resampler is 2048 wide where the SDXL plus adapters' is 1280"),
    Variant("kolors-faceid-plus", "Kolors FaceID Plus", Layout.FACEID_PLUS, Feature.FACE_ID_AND_PENULTIMATE,
            KOLORS, 512, 6, ("Kolors-IP-Adapter-FaceID-Plus.bin", "ipa-faceid-plus.bin"), faceid=True,
            encoder="ViT-L/14-336", token_width=4096,
            note="its 4096-wide tokens live in the ChatGLM text space: the Kolors UNet's encoder_hid_proj maps "
                 "them to the attention's 2048 (scaled by weight_kolors); 336 px face crops, antelopev2 faces"),
)

# PuLID-FLUX inserts one cross-attention module after every 2nd double block and every 4th single block,
# counted from block 0 (the reference's double_interval and single_interval).
PULID_FLUX_DOUBLE_INTERVAL = 2
PULID_FLUX_SINGLE_INTERVAL = 4


def pulid_flux_blocks(double_blocks: int, single_blocks: int) -> tuple[tuple[str, int], ...]:
    """The blocks after which PuLID-FLUX's cross-attention modules act, in module order."""
    return (tuple(("double_block", i) for i in range(0, double_blocks, PULID_FLUX_DOUBLE_INTERVAL))
            + tuple(("single_block", i) for i in range(0, single_blocks, PULID_FLUX_SINGLE_INTERVAL)))


def variant_by_key(key: str) -> Variant:
    return next(v for v in VARIANTS if v.key == key)


def shared_layout_titles() -> tuple[str, ...]:
    """Titles of the rows whose layout another row shares: the choices a loader offers to override detection."""
    def layout_of(v):
        return (v.layout, v.feature, v.family, v.input_width, v.tokens)

    counts: dict = {}
    for v in VARIANTS:
        counts[layout_of(v)] = counts.get(layout_of(v), 0) + 1
    return tuple(v.title for v in VARIANTS if counts[layout_of(v)] > 1)


@dataclass(frozen=True)
class Detected:
    """What a checkpoint is, read from its shapes."""

    layout: Layout
    feature: Feature
    input_width: int  # E
    context_width: int  # C: width of image tokens and of the model's cross-attention context
    tokens: int  # image tokens per reference
    layer_ids: tuple[int, ...]  # checkpoint ids of the to_k_ip/to_v_ip pairs, sorted
    layer_widths: tuple[int, ...]  # inner width of each of those layers
    has_lora: bool
    variant: Variant | None  # the official row, when one matches
    alternatives: tuple[Variant, ...] = ()  # other rows with the same layout, when several match
    reason: str = ""  # why `variant` was chosen among them
    model_family: str = ""  # set when the file names its model family (PuLID-FLUX)
    vit_width: int = 0  # PuLID: width of the EVA-CLIP hidden states its encoder reads
    token_width: int = 0  # width of the projection's tokens; 0: the context width
    inner_width: int = 0  # width inside a resampler (0: none)

    def as_variant(self, title: str) -> "Detected":
        """The same detection with `variant` set to the row titled `title`, which must share this layout."""
        for v in (self.variant, *self.alternatives):
            if v is not None and v.title == title:
                others = tuple(a for a in (self.variant, *self.alternatives) if a is not None and a is not v)
                return dataclasses.replace(self, variant=v, alternatives=others, reason="set on the loader")
        shared = ", ".join(v.title for v in (self.variant, *self.alternatives) if v is not None) or "none"
        raise AdapterFileError(
            f"this adapter cannot be used as {title}: its layout ({self.summary().split(';')[0]}) is not {title}'s. "
            f"Adapters of this layout: {shared}. Set the loader's variant to auto.")

    @property
    def family(self) -> str:
        if self.model_family:
            return self.model_family
        if self.variant is not None:
            return self.variant.family
        return family_name(self.context_width, len(self.layer_ids))

    @property
    def tokens_width(self) -> int:
        """Width of the image tokens the projection makes (what Project outputs)."""
        return self.token_width or self.context_width

    @property
    def needs_text_projection(self) -> bool:
        """Its tokens live in the text encoder's space: the UNet's own `encoder_hid_proj` maps them to the
        attention's context width first (Kolors FaceID)."""
        return self.tokens_width != self.context_width

    @property
    def faceid(self) -> bool:
        return self.feature in (Feature.FACE_ID, Feature.FACE_ID_AND_PENULTIMATE)

    @property
    def pulid(self) -> bool:
        return self.feature is Feature.PULID

    @property
    def eva_embed_width(self) -> int:
        """PuLID: width of the EVA-CLIP image embedding in the ID vector."""
        return self.input_width - IDENTITY_WIDTH if self.pulid else 0

    @property
    def needs_lora(self) -> bool:
        """Trained with a LoRA: LoRA tensors in the file say so, the table says so for official files, and for
        unlisted files the FaceID layouts that the official LoRA-trained ones use (Plus; 4-token FaceID)."""
        if self.has_lora:
            return True
        if self.variant is not None:
            return self.variant.lora
        return self.layout is Layout.FACEID_PLUS or (self.layout is Layout.FACEID_MLP and self.tokens == 4)

    @property
    def encoder(self) -> Encoder | None:
        """The CLIP encoder this adapter needs, when it needs one."""
        if self.pulid:
            if (self.vit_width, self.eva_embed_width) == (EVA_CLIP.hidden_width, EVA_CLIP.embed_width):
                return EVA_CLIP
            return Encoder("an EVA-CLIP encoder", self.vit_width, self.eva_embed_width, EVA_CLIP.file_hint)
        if self.variant is not None and self.variant.encoder:
            return encoder_named(self.variant.encoder)
        if self.feature is Feature.IMAGE_EMBEDS:
            return encoder_by_width(self.input_width, Feature.IMAGE_EMBEDS)
        if self.feature in (Feature.PENULTIMATE,):
            return encoder_by_width(self.input_width, Feature.PENULTIMATE)
        if self.feature is Feature.FACE_ID_AND_PENULTIMATE:
            return ENCODERS[0]
        return None

    def encoder_requirement(self) -> str:
        """Words for the encoder this adapter needs."""
        enc = self.encoder
        if self.pulid:
            return (f"{enc.describe()} through Likeness ID Encoder Loader, e.g. {enc.file_hint}, and antelopev2 "
                    "faces")
        what = "image embeds" if self.feature is Feature.IMAGE_EMBEDS else "hidden states"
        if enc is not None:
            return f"a {enc.name} image encoder ({self.input_width}-wide {what}), e.g. {enc.file_hint}"
        return f"an image encoder with {self.input_width}-wide {what}"

    def summary(self) -> str:
        title = self.variant.title if self.variant else f"unlisted {self.layout.value} adapter"
        per_ref = (f"{self.tokens} tokens per reference" if self.tokens
                   else "one token per encoder hidden state (257 per reference with ViT-H)")
        if self.pulid:
            per_ref = f"{self.tokens} identity tokens per face"
        parts = [f"{title} for {self.family}", per_ref]
        if self.pulid:
            parts.append(f"reads antelopev2 faces and {self.encoder.describe()} features (Likeness Face Embed with "
                         "an id_encoder from Likeness ID Encoder Loader)")
        elif self.faceid:
            pack = self.variant.face_pack if self.variant else "a face model pack"
            parts.append(f"identity embedding input from {pack} (use the FaceID nodes: Likeness Face Embed)")
        else:
            parts.append(f"needs {self.encoder_requirement()}")
        if self.variant and len(self.variant.files) > 1:
            parts.append("same layout as " + ", ".join(self.variant.files))
        if self.variant and self.variant.note:
            parts.append(self.variant.note)
        if self.alternatives:
            parts.append(f"taken for {self.variant.title} rather than "
                         + " or ".join(a.title for a in self.alternatives) + f" because {self.reason}")
        return "; ".join(parts)


_KV_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_([kv])_ip\.weight$")


def _shape(shapes: Mapping[str, Sequence[int]], key: str) -> tuple[int, ...] | None:
    s = shapes.get(key)
    return None if s is None else tuple(int(d) for d in s)


def _kv_layers(shapes: Mapping[str, Sequence[int]], source: str):
    """(layer ids, inner widths, context width) of the `ip_adapter.<n>.to_k_ip/to_v_ip` pairs, or None."""
    kv: dict[int, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        m = _KV_KEY.match(key)
        if m:
            kv.setdefault(int(m.group(1)), {})[m.group(2)] = tuple(int(d) for d in shape)
    if not kv:
        return None
    layer_ids = tuple(sorted(kv))
    widths, contexts = [], set()
    for i in layer_ids:
        pair = kv[i]
        if "k" not in pair or "v" not in pair or pair["k"] != pair["v"] or len(pair["k"]) != 2:
            raise AdapterFileError(
                f"`{source}`: layer {i} should have matching 2-D to_k_ip/to_v_ip weights, found {pair}. "
                "The file is damaged or not an IP-Adapter; download it again.")
        widths.append(pair["k"][0])
        contexts.add(pair["k"][1])
    if len(contexts) != 1:
        raise AdapterFileError(f"`{source}`: to_k_ip weights disagree on the context width ({sorted(contexts)}).")
    return layer_ids, tuple(widths), contexts.pop()


def detect(shapes: Mapping[str, Sequence[int]], source: str, dtypes: Mapping[str, str] | None = None,
           path: str = "") -> Detected:
    """Detect an adapter from `{"image_proj.<k>" | "ip_adapter.<k>" | "pulid_ca.<k>": shape}`.

    `source` names the file in messages. Where two published adapters share one layout, the tensors' `dtypes`
    (safetensors names) and then the file's `path` (default: `source`) tell them apart (see `tell_apart`).
    """
    if is_pulid(shapes):
        return _detect_pulid(shapes, source)
    layers = _kv_layers(shapes, source)
    proj_keys = sorted(k for k in shapes if k.startswith("image_proj."))
    if not layers or not proj_keys:
        found = ", ".join(sorted({k.split(".")[0] for k in shapes})[:6]) or "no tensors"
        raise AdapterFileError(
            f"`{source}` is not an IP-Adapter or PuLID file: expected tensor groups `image_proj.*` and "
            f"`ip_adapter.<n>.to_k_ip.weight` (PuLID: `id_adapter.*`, or `pulid_encoder.*` and `pulid_ca.<n>.*`), "
            f"found {found} ({len(shapes)} tensors). Put IP-Adapter files (e.g. ip-adapter_sd15.safetensors from "
            "h94/IP-Adapter) in models/ipadapter and PuLID files in models/pulid.")
    layer_ids, widths, context = layers
    has_lora = any(".to_q_lora." in k for k in shapes)

    def s(k):
        return _shape(shapes, "image_proj." + k)

    if s("perceiver_resampler.proj_in.weight") is not None:
        layout, feature = Layout.FACEID_PLUS, Feature.FACE_ID_AND_PENULTIMATE
        input_width = s("proj.0.weight")[1]
        tokens = s("proj.2.weight")[0] // s("norm.weight")[0]
    elif s("latents") is not None:
        layout = Layout.RESAMPLER
        input_width = s("proj_in.weight")[1]
        tokens = s("latents")[1]
        feature = Feature.FACE_ID if input_width == 512 else Feature.PENULTIMATE
    elif s("proj.3.weight") is not None:
        layout, feature = Layout.MLP_PER_TOKEN, Feature.PENULTIMATE
        input_width = s("proj.0.weight")[1]
        tokens = 0  # one per encoder token; fixed by the encoder
    elif s("proj.0.weight") is not None and s("proj.2.weight") is not None and s("norm.weight") is not None:
        layout, feature = Layout.FACEID_MLP, Feature.FACE_ID
        input_width = s("proj.0.weight")[1]
        tokens = s("proj.2.weight")[0] // s("norm.weight")[0]
    elif s("proj.weight") is not None and s("norm.weight") is not None:
        layout, feature = Layout.LINEAR, Feature.IMAGE_EMBEDS
        input_width = s("proj.weight")[1]
        tokens = s("proj.weight")[0] // s("norm.weight")[0]
    else:
        raise AdapterFileError(
            f"`{source}` has an `image_proj` group of an unknown kind (keys: {', '.join(proj_keys[:8])}). "
            "Likeness reads the h94 IP-Adapter and IP-Adapter-FaceID families for SD1.5 and SDXL.")

    out_width = _projection_output_width(shapes, layout)
    # Only FaceID Plus tokens may be wider than the context: Kolors FaceID makes them in the ChatGLM text space
    # and the Kolors UNet's encoder_hid_proj maps them to the attention's width.
    token_width = out_width if layout is Layout.FACEID_PLUS and out_width is not None and out_width > context else 0
    if out_width is not None and out_width != context and not token_width:
        raise AdapterFileError(
            f"`{source}`: the projection makes {out_width}-wide tokens but the attention layers expect "
            f"{context}. The file mixes two adapters or is damaged.")
    if layout is Layout.MLP_PER_TOKEN:
        tokens_for_match = 257
    else:
        tokens_for_match = tokens
    # Rows are matched on the UNet layout (its number of sites); the context width is the model's business and is
    # checked against it at Apply, so an adapter for a narrowed copy of a layout (the tests' tiny UNets) finds its row.
    fam = next((f.name for f in FAMILIES if f.sites == len(layer_ids)), None)
    inner_width = s("latents")[2] if layout is Layout.RESAMPLER else 0
    rows = [v for v in VARIANTS if v.layout is layout and UNET_LAYOUT.get(v.family) == fam
            and v.input_width == input_width and v.tokens == tokens_for_match and v.feature is feature
            and v.token_width == token_width and v.inner_width in (0, inner_width)]
    found = dict(token_width=token_width, inner_width=inner_width)
    if len(rows) < 2:
        return Detected(layout, feature, input_width, context, tokens, layer_ids, tuple(widths), has_lora,
                        rows[0] if rows else None, **found)
    variant, reason = tell_apart(rows, group_dtypes(dtypes), path or source)
    return Detected(layout, feature, input_width, context, tokens, layer_ids, tuple(widths), has_lora, variant,
                    tuple(v for v in rows if v is not variant), reason, **found)


def group_dtypes(dtypes: Mapping[str, str] | None) -> tuple[str, str] | None:
    """(dtype of `image_proj`, dtype of `ip_adapter`) when each group has one; None when unknown or mixed."""
    if not dtypes:
        return None
    found = []
    for group in ("image_proj.", "ip_adapter."):
        kinds = {d for k, d in dtypes.items() if k.startswith(group) and "_lora." not in k}
        if len(kinds) != 1:
            return None
        found.append(kinds.pop())
    return found[0], found[1]


def tell_apart(rows: Sequence[Variant], stored: tuple[str, str] | None, path: str) -> tuple[Variant, str]:
    """Which of several rows with one layout a file is, and why, from what the file shows beyond its shapes.

    1. The dtypes of its two tensor groups, when they are those of exactly one published file (InstantID's
       `ip-adapter.bin` is all float32; FaceID Portrait unnorm's `.bin` stores its attention weights in float16).
    2. Otherwise (a converted file), a name pattern in its path: the file name or a folder such as models/instantid.
    3. Otherwise the first row: nothing tells, and the loader offers an override.
    """
    if stored is not None:
        by_dtype = [v for v in rows if v.stored_dtypes == stored]
        if len(by_dtype) == 1:
            v = by_dtype[0]
            return v, (f"its tensors are stored as the published {v.title} file's are ({stored[0]} projection, "
                       f"{stored[1]} attention weights)")
    # the file name and its folder (models/instantid/...), not the whole path, which may say anything
    low = "/".join(path.lower().replace("\\", "/").split("/")[-2:])
    by_name = [v for v in rows if v.name_hint and re.search(v.name_hint, low)]
    if len(by_name) == 1:
        return by_name[0], f"its name says so (`{by_name[0].name_hint}` in `{low}`)"
    shown = f"{stored[0]}/{stored[1]}" if stored else "mixed or unknown"
    return rows[0], (f"neither its precision ({shown}) nor its name tells; {rows[0].title} is the common one, "
                     "set the loader's variant to override")


# ------------------------------------------------------------------ PuLID

_CA_KEY = re.compile(r"^pulid_ca\.(\d+)\.to_q\.weight$")


def is_pulid(shapes: Mapping[str, Sequence[int]]) -> bool:
    """PuLID's encoders have parts no IP-Adapter has: an IDEncoder `body`, an IDFormer's identity mapping, or
    PuLID-FLUX's cross-attention modules."""
    return ("image_proj.body.0.weight" in shapes or "image_proj.id_embedding_mapping.0.weight" in shapes
            or any(k.startswith("pulid_ca.") for k in shapes))


def _detect_pulid(shapes: Mapping[str, Sequence[int]], source: str) -> Detected:
    def s(k):
        return _shape(shapes, "image_proj." + k)

    def damaged(what: str) -> AdapterFileError:
        return AdapterFileError(f"`{source}` looks like a PuLID file but {what}. It is damaged or of an unknown "
                                "PuLID version; download it again (PuLID files: guozinan/PuLID on Hugging Face).")

    if s("body.0.weight") is not None:
        layout = Layout.PULID_ENCODER
        needed = ("body.6.weight", "mapping_0.0.weight", "mapping_0.6.weight")
        if any(s(k) is None for k in needed):
            raise damaged("its IDEncoder lacks " + ", ".join(k for k in needed if s(k) is None))
        input_width, out_width, vit_width = s("body.0.weight")[1], s("mapping_0.6.weight")[0], s("mapping_0.0.weight")[1]
        tokens = s("body.6.weight")[0] // out_width + 5
    elif s("id_embedding_mapping.0.weight") is not None:
        layout = Layout.PULID_FORMER
        needed = ("latents", "proj_out", "mapping_0.0.weight", "layers.0.0.to_q.weight")
        if any(s(k) is None for k in needed):
            raise damaged("its IDFormer lacks " + ", ".join(k for k in needed if s(k) is None))
        input_width, out_width, vit_width = s("id_embedding_mapping.0.weight")[1], s("proj_out")[1], s("mapping_0.0.weight")[1]
        tokens = s("latents")[1]
    else:
        raise damaged("it has no ID encoder (`id_adapter.*` or `pulid_encoder.*`)")

    ca_ids = sorted(int(m.group(1)) for m in map(_CA_KEY.match, shapes) if m)
    if ca_ids:
        if layout is not Layout.PULID_FORMER:
            raise damaged("it has PuLID-FLUX cross-attention modules next to a PuLID v1 encoder")
        if ca_ids != list(range(len(ca_ids))):
            raise damaged(f"its cross-attention modules are numbered {ca_ids[:4]}... instead of 0, 1, 2, ...")
        dims, contexts = set(), set()
        for i in ca_ids:
            q, kv = _shape(shapes, f"pulid_ca.{i}.to_q.weight"), _shape(shapes, f"pulid_ca.{i}.to_kv.weight")
            out = _shape(shapes, f"pulid_ca.{i}.to_out.weight")
            if kv is None or out is None or kv[0] != 2 * q[0] or out != (q[1], q[0]):
                raise damaged(f"its cross-attention module {i} has mismatched to_q/to_kv/to_out shapes")
            dims.add(q[1])
            contexts.add(kv[1])
        if len(dims) != 1 or len(contexts) != 1:
            raise damaged("its cross-attention modules disagree on their widths")
        context, model_family = contexts.pop(), FLUX
        layer_ids, widths = tuple(ca_ids), (dims.pop(),) * len(ca_ids)
    else:
        layers = _kv_layers(shapes, source)
        if layers is None:
            raise damaged("it has neither attention weights for SDXL (`id_adapter_attn_layers.*` / "
                          "`ip_adapter.*`) nor PuLID-FLUX's `pulid_ca.*`")
        layer_ids, widths, context = layers
        model_family = ""
    if out_width != context:
        raise damaged(f"its encoder makes {out_width}-wide tokens but its attention reads {context}-wide ones")
    family = model_family or family_name(context, len(layer_ids))
    variant = next((v for v in VARIANTS if v.layout is layout and v.family == family and v.pulid
                    and v.input_width == input_width and v.tokens == tokens), None)
    return Detected(layout, Feature.PULID, input_width, context, tokens, layer_ids, widths, False, variant,
                    model_family=model_family, vit_width=vit_width)


def _projection_output_width(shapes, layout: Layout) -> int | None:
    key = {
        Layout.LINEAR: "image_proj.norm.weight",
        Layout.FACEID_MLP: "image_proj.norm.weight",
        Layout.FACEID_PLUS: "image_proj.norm.weight",
        Layout.RESAMPLER: "image_proj.proj_out.weight",
        Layout.MLP_PER_TOKEN: "image_proj.proj.3.weight",
    }[layout]
    s = _shape(shapes, key)
    return None if s is None else s[0]


def detect_encoder(shapes: Mapping[str, Sequence[int]]) -> Encoder | None:
    """A CLIP vision file's encoder from its tensor shapes (HF `vision_model.*` or OpenCLIP `visual.*` keys)."""
    def first(*keys):
        for prefix in ("", "clip_vision.", "vision_model.", "model."):
            for k in keys:
                if prefix + k in shapes:
                    return tuple(int(d) for d in shapes[prefix + k])
        return None

    cls = first("vision_model.embeddings.class_embedding", "embeddings.class_embedding", "visual.class_embedding")
    positions = first("vision_model.embeddings.position_embedding.weight", "embeddings.position_embedding.weight",
                      "visual.positional_embedding")
    patch = first("vision_model.embeddings.patch_embedding.weight", "embeddings.patch_embedding.weight",
                  "visual.conv1.weight")
    image_size = None
    if positions is not None and patch is not None and len(patch) == 4:
        side = math.isqrt(max(positions[0] - 1, 0))
        image_size = side * patch[-1] if side * side == positions[0] - 1 else None
    proj = first("visual_projection.weight")
    if proj is not None:
        hidden, embed = proj[1], proj[0]
    else:
        open_proj = first("visual.proj")
        if open_proj is None or cls is None:
            return None
        hidden, embed = open_proj
    if cls is not None and cls[-1] != hidden:
        return None
    return (encoder_by_widths(hidden, embed, image_size) or encoder_by_widths(hidden, embed)
            or Encoder(f"{hidden}-wide CLIP vision", hidden, embed, "", image_size or 224))
