"""Conditioning edit models with references: parity with core's node chains, and real wiring.

* LikenessReferenceLatents is bit-identical to core VAEEncode + one chained ReferenceLatent per reference +
  FluxKontextMultiReferenceLatentMethod, for the FLUX.1 (Kontext, OmniGen2) and FLUX.2 latent formats and any
  number of references.
* LikenessQwenEditEncode is bit-identical to core TextEncodeQwenImageEditPlus for 1 to 3 references (a CLIP on
  ComfyUI's Qwen-Image text-encoder classes, tiny) and continues its "Picture N:" scheme beyond.
* Through the real executor, tiny FLUX, Qwen-Image and OmniGen2 diffusion models (ComfyUI's classes) receive
  exactly the N reference latents, of the shapes the references give, and (FLUX, Qwen-Image) the image token
  count of target plus references.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile

import pytest
import torch

import builders
import face_models
import folder_paths
import nodes
from conftest import pack, run_prompt, tiny_loaders

edit = pack("nodes.host.edit")
errors = pack("nodes.core.errors")
ReferenceLatents = nodes.NODE_CLASS_MAPPINGS["LikenessReferenceLatents"]
QwenEditEncode = nodes.NODE_CLASS_MAPPINGS["LikenessQwenEditEncode"]
CORE = nodes.NODE_CLASS_MAPPINGS


def photos(sizes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.rand(1, h, w, 3, generator=gen) for w, h in sizes]


def assert_same_conditioning(a, b):
    assert len(a) == len(b)
    for (ta, da), (tb, db) in zip(a, b):
        assert torch.equal(ta, tb)
        assert set(da) == set(db), (set(da) ^ set(db))
        for key in da:
            va, vb = da[key], db[key]
            if key == "reference_latents":
                assert len(va) == len(vb)
                for la, lb in zip(va, vb):
                    assert la.shape == lb.shape and torch.equal(la, lb)
            elif isinstance(va, torch.Tensor):
                assert torch.equal(va, vb), key
            else:
                assert va == vb, key


def core_reference_chain(conditioning, vae, images, method):
    for image in images:
        latent = CORE["VAEEncode"]().encode(vae, image)[0]
        conditioning = CORE["ReferenceLatent"].execute(conditioning, latent)[0]
    return CORE["FluxKontextMultiReferenceLatentMethod"].execute(conditioning, method)[0]


VAES = {"kontext / omnigen2 (FLUX.1 VAE)": builders.tiny_flux_vae, "flux2 (FLUX.2 VAE)": builders.tiny_flux2_vae}


@pytest.mark.parametrize("vae_kind", list(VAES))
@pytest.mark.parametrize("count,method", [(1, "offset"), (3, "index"), (7, "uxo/uno")])
def test_reference_latents_equal_the_core_chain(vae_kind, count, method):
    vae = VAES[vae_kind]()
    sizes = [(96 + 16 * i, 128 - 8 * i) for i in range(count)]
    images = photos(sizes, seed=count)
    before = [image.clone() for image in images]
    conditioning = builders.flux_conditioning()
    ours = ReferenceLatents.execute([conditioning], [vae], images, [method]).args[0]
    assert_same_conditioning(ours, core_reference_chain(conditioning, vae, images, method))
    assert len(ours[0][1]["reference_latents"]) == count
    assert "reference_latents" not in conditioning[0][1], "the input conditioning was changed"
    assert all(torch.equal(a, b) for a, b in zip(images, before)), "an input image was changed"


def test_a_batch_counts_as_one_reference_per_image():
    vae = builders.tiny_flux_vae()
    batch = torch.cat(photos([(64, 64)] * 3, seed=5))
    out = ReferenceLatents.execute([builders.flux_conditioning()], [vae], [batch], ["offset"]).args[0]
    expected = core_reference_chain(builders.flux_conditioning(), vae, [batch[i:i + 1] for i in range(3)], "offset")
    assert_same_conditioning(out, expected)


def test_reference_latents_refuse_a_vae_no_edit_model_takes():
    sd_vae = tiny_loaders.tiny_vae()  # the SD layout: 4 latent channels
    with pytest.raises(errors.IncompatibleError, match="4-channel latents"):
        ReferenceLatents.execute([builders.flux_conditioning()], [sd_vae], photos([(64, 64)]), ["offset"])


def test_reference_latents_refuse_mixing_latent_formats():
    first = ReferenceLatents.execute([builders.flux_conditioning()], [builders.tiny_flux_vae()], photos([(64, 64)]),
                                     ["offset"]).args[0]
    with pytest.raises(errors.IncompatibleError, match="already holds reference latents"):
        ReferenceLatents.execute([first], [builders.tiny_flux2_vae()], photos([(64, 64)]), ["offset"])


# ---------------------------------------------------------------- Qwen-Image-Edit Plus

class SpyClip:
    """A CLIP that records what it is asked to tokenize, and otherwise is the real one."""

    def __init__(self, clip):
        self.clip, self.texts = clip, []

    def __getattr__(self, name):
        return getattr(self.clip, name)

    def tokenize(self, text, **kwargs):
        self.texts.append((text, len(kwargs.get("images", []))))
        return self.clip.tokenize(text, **kwargs)


@pytest.mark.parametrize("count", [1, 2, 3])
def test_qwen_edit_encode_equals_core_for_up_to_three(count):
    clip, vae = builders.tiny_qwen_image_text_encoder(), builders.tiny_qwen_vae()
    images = photos([(120, 90), (64, 160), (200, 200)][:count], seed=10 + count)
    before = [image.clone() for image in images]
    prompt = "Make the person in Picture 1 wear a red hat."
    slots = dict(zip(("image1", "image2", "image3"), images))
    core = CORE["TextEncodeQwenImageEditPlus"].execute(clip, prompt, vae, **slots)[0]
    ours = QwenEditEncode.execute([clip], [vae], [prompt], images, [384], ["1 MP, multiple of 8 (ComfyUI)"]).args[0]
    assert_same_conditioning(ours, core)
    assert len(ours[0][1]["reference_latents"]) == count
    assert all(torch.equal(a, b) for a, b in zip(images, before)), "an input image was changed"


def test_qwen_edit_encode_continues_the_picture_scheme_beyond_three():
    spy, vae = SpyClip(builders.tiny_qwen_image_text_encoder()), builders.tiny_qwen_vae()
    images = photos([(64, 64), (72, 64), (64, 80), (96, 64), (64, 64)], seed=3)
    out = QwenEditEncode.execute([spy], [vae], ["x"], images, [384], ["as given"]).args[0]
    text, shown = spy.texts[-1]
    assert shown == 5
    assert text == "".join(f"Picture {i}: <|vision_start|><|image_pad|><|vision_end|>" for i in range(1, 6)) + "x"
    latents = out[0][1]["reference_latents"]
    assert [tuple(l.shape[-2:]) for l in latents] == [(h // 8, w // 8) for w, h in [(64, 64), (72, 64), (64, 80),
                                                                                    (96, 64), (64, 64)]]
    tokens = spy.clip.tokenize(text, images=[i for i in images], llama_template=edit.qwen_edit_template(spy.clip))
    image_slots = sum(1 for t in tokens["qwen25_7b"][0] if isinstance(t[0], dict))
    assert image_slots == 5


def test_qwen_edit_encode_sizes_follow_the_latent_size_choice():
    clip, vae = builders.tiny_qwen_image_text_encoder(), builders.tiny_qwen_vae()
    image = photos([(1000, 700)])
    targets = pack("nodes.core.edit_targets")
    for choice, expected in (("1 MP, multiple of 8 (ComfyUI)", targets.comfy_qwen_latent_size(1000, 700)),
                             ("1 MP, multiple of 32 (diffusers)", targets.qwen_plus_size(1000, 700)),
                             ("as given", (1000, 700))):
        out = QwenEditEncode.execute([clip], [vae], ["x"], image, [384], [choice]).args[0]
        latent = out[0][1]["reference_latents"][0]
        assert tuple(latent.shape[-2:]) == (expected[1] // 8, expected[0] // 8), choice


def test_qwen_edit_encode_refuses_a_flux_vae_and_a_non_qwen_clip():
    clip = builders.tiny_qwen_image_text_encoder()
    with pytest.raises(errors.IncompatibleError, match="video-style"):
        QwenEditEncode.execute([clip], [builders.tiny_flux_vae()], ["x"], photos([(64, 64)]), [384],
                               ["as given"])
    with pytest.raises(errors.IncompatibleError, match="qwen_image"):
        QwenEditEncode.execute([builders.tiny_flux_text_encoder()], [builders.tiny_qwen_vae()], ["x"],
                               photos([(64, 64)]), [384], ["as given"])


# ---------------------------------------------------------------- through the executor

RECORDED: dict = {}


class LikenessTestImageList:
    """Test node: a list of seeded random images of the given sizes ("96x64, 64x80")."""

    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sizes": ("STRING", {"default": "64x64"})}, "optional": {"seed": ("INT", {"default": 0})}}

    def make(self, sizes, seed=0):
        dims = [tuple(int(v) for v in s.strip().split("x")) for s in sizes.split(",")]
        return (photos(dims, seed),)


class LikenessTestEditModel:
    """Test node: a tiny edit diffusion model (not pooled) that records what reaches it."""

    CATEGORY = "testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["flux", "qwen", "omnigen2"],)}}

    def load(self, kind):
        base = {"flux": lambda: builders.build_flux(depth=1, depth_single_blocks=1), "qwen": builders.build_qwen_image,
                "omnigen2": builders.build_omnigen2}[kind]()
        model = base.clone()
        RECORDED.clear()

        def record_conds(apply_model, args):
            c = args["c"]
            RECORDED.setdefault("ref_latents", []).append([tuple(r.shape) for r in c.get("ref_latents") or []])
            RECORDED.setdefault("method", []).append(c.get("ref_latents_method"))
            RECORDED.setdefault("x", []).append(tuple(args["input"].shape))
            return apply_model(args["input"], args["timestep"], **c)

        def record_tokens(args, extra, *rest, **kwargs):
            RECORDED.setdefault("img_tokens", []).append(args["img"].shape[1])
            return extra["original_block"](args)

        model.set_model_unet_function_wrapper(record_conds)
        if kind != "omnigen2":
            model.set_model_patch_replace(record_tokens, "dit", "double_block", 0)
        return (model,)


for _cls in (LikenessTestImageList, LikenessTestEditModel):
    nodes.NODE_CLASS_MAPPINGS[_cls.__name__] = _cls


def sampled(model, positive, negative, latent):
    return {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent_image": latent, "seed": 1, "steps": 1,
        "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}


def expected_tokens(latent_hw, image_sizes):
    return (math.ceil(latent_hw[0] / 2) * math.ceil(latent_hw[1] / 2)
            + sum((h // 8 // 2) * (w // 8 // 2) for w, h in image_sizes))


def test_kontext_model_receives_every_reference():
    sizes = [(96, 64), (64, 80), (128, 96)]
    prompt = {
        "1": {"class_type": "LikenessTestEditModel", "inputs": {"kind": "flux"}},
        "2": {"class_type": "LikenessTestImageList", "inputs": {"sizes": ", ".join(f"{w}x{h}" for w, h in sizes)}},
        "3": {"class_type": "LikenessReferencePack", "inputs": {
            "images": ["2", 0], "target": "as is", "count": 3, "framing": "as is", "drop_outliers": True}},
        "4": {"class_type": "LikenessTestTinyDualTextEncoder", "inputs": {
            "clip_name1": "clip_l.safetensors", "clip_name2": "t5xxl.safetensors", "type": "flux"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 0], "text": "the person, smiling"}},
        "6": {"class_type": "LikenessTestTinyVAE", "inputs": {"vae_name": "ae.safetensors"}},
        "7": {"class_type": "LikenessReferenceLatents", "inputs": {
            "conditioning": ["5", 0], "vae": ["6", 0], "references": ["3", 0], "method": "offset"}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": sampled(["1", 0], ["7", 0], ["7", 0], ["8", 0]),
        "10": {"class_type": "LikenessTestCapture", "inputs": {"samples": ["9", 0], "key": "kontext"}},
    }
    result = run_with_listed_files(prompt)
    assert result.success, result.error or result.execution_error()
    assert RECORDED["ref_latents"][0] == [(1, 16, h // 8, w // 8) for w, h in sizes]
    assert RECORDED["method"][0] == "offset"
    assert RECORDED["img_tokens"][0] == expected_tokens((8, 8), sizes)


def test_qwen_image_model_receives_more_than_three_references():
    sizes = [(64, 64), (80, 64), (64, 96), (96, 96), (112, 64)]
    prompt = {
        "1": {"class_type": "LikenessTestEditModel", "inputs": {"kind": "qwen"}},
        "2": {"class_type": "LikenessTestImageList", "inputs": {"sizes": ", ".join(f"{w}x{h}" for w, h in sizes)}},
        "4": {"class_type": "LikenessTestTinyTextEncoder",
              "inputs": {"clip_name": "qwen.safetensors", "type": "qwen_image"}},
        "6": {"class_type": "LikenessTestTinyVAE", "inputs": {"vae_name": "qwen_image_vae.safetensors"}},
        "7": {"class_type": "LikenessQwenEditEncode", "inputs": {
            "clip": ["4", 0], "vae": ["6", 0], "prompt": "Picture 1 in the style of Picture 5", "references": ["2", 0],
            "vl_size": 384, "latent_size": "as given"}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": sampled(["1", 0], ["7", 0], ["7", 0], ["8", 0]),
        "10": {"class_type": "LikenessTestCapture", "inputs": {"samples": ["9", 0], "key": "qwen"}},
    }
    result = run_with_listed_files(prompt)
    assert result.success, result.error or result.execution_error()
    assert RECORDED["ref_latents"][0] == [(1, 16, 1, h // 8, w // 8) for w, h in sizes]
    assert RECORDED["img_tokens"][0] == expected_tokens((8, 8), sizes)


def test_omnigen2_model_receives_every_reference():
    sizes = [(64, 96), (96, 64)]
    prompt = {
        "1": {"class_type": "LikenessTestEditModel", "inputs": {"kind": "omnigen2"}},
        "2": {"class_type": "LikenessTestImageList", "inputs": {"sizes": ", ".join(f"{w}x{h}" for w, h in sizes)}},
        "4": {"class_type": "LikenessTestTinyTextEncoder",
              "inputs": {"clip_name": "qwen.safetensors", "type": "omnigen2"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 0], "text": "both of them at the beach"}},
        "6": {"class_type": "LikenessTestTinyVAE", "inputs": {"vae_name": "ae.safetensors"}},
        "7": {"class_type": "LikenessReferenceLatents", "inputs": {
            "conditioning": ["5", 0], "vae": ["6", 0], "references": ["2", 0], "method": "offset"}},
        "8": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "9": sampled(["1", 0], ["7", 0], ["7", 0], ["8", 0]),
        "10": {"class_type": "LikenessTestCapture", "inputs": {"samples": ["9", 0], "key": "omnigen2"}},
    }
    result = run_with_listed_files(prompt)
    assert result.success, result.error or result.execution_error()
    assert RECORDED["ref_latents"][0] == [(1, 16, h // 8, w // 8) for w, h in sizes]


def run_with_listed_files(prompt):
    """Runs the prompt with the file names its test loaders name listed in their folders (empty files)."""
    with tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as stack:
        for folder, names in (("text_encoders", ("clip_l.safetensors", "t5xxl.safetensors", "qwen.safetensors")),
                              ("vae", ("ae.safetensors", "qwen_image_vae.safetensors"))):
            path = os.path.join(root, folder)
            os.makedirs(path)
            for name in names:
                open(os.path.join(path, name), "wb").close()
            stack.enter_context(face_models.model_folder(folder, path, first=True))
            folder_paths.filename_list_cache.pop(folder, None)
        return run_prompt(prompt)
