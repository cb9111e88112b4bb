"""Whole prompts through ComfyUI's real executor: CLIP vision loader, Likeness nodes, KSampler on a tiny UNet."""

from __future__ import annotations

import torch

import builders
from conftest import CAPTURED, run_prompt


def tiny_sites(kind: str):
    from conftest import pack

    return pack("nodes.host.sites").find_sites(builders.build_unet(kind))


def write_adapter(models_dir, name: str, kind: str = "sd15", layout: str = "linear", seed: int = 0, **kw) -> str:
    widths = [s.width for s in tiny_sites(kind)]
    input_width = kw.pop("input_width", 32 if layout == "linear" else 64)
    tokens = kw.pop("tokens", 4 if layout == "linear" else 16)
    state = builders.tiny_adapter_state(layout, widths, input_width=input_width, tokens=tokens, seed=seed, **kw)
    builders.save_safetensors(str(models_dir / "ipadapter" / name), state)
    return name


def sampling_prompt(kind="sd15", key="out", steps=2, width=64, height=64, batch=1, model_from=("1", 0)):
    return {
        "1": {"class_type": "LikenessTestTinyUNet", "inputs": {"kind": kind, "seed": 0}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": list(model_from), "seed": 3, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["1", 1], "negative": ["1", 2], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "LikenessTestCapture", "inputs": {"samples": ["5", 0], "key": key}},
    }


def reference_image(seed=0, h=40, w=48, batch=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, h, w, 3, generator=gen)


def modular_prompt(adapter: str, clip: str = "tiny-clip-h.safetensors", key="adapted", kind="sd15", weight=1.0,
                   weight_type="linear", start_at=0.0, end_at=1.0, crop="center", image_node=None, **latent):
    prompt = sampling_prompt(kind=kind, key=key, model_from=("13", 0), **latent)
    prompt.update({
        "10": {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": clip}},
        "11": {"class_type": "LikenessAdapterLoader", "inputs": {"adapter_name": adapter}},
        "12": {"class_type": "LikenessImageEncode", "inputs": {
            "clip_vision": ["10", 0], "image": ["20", 0], "crop": crop, "sharpen": 0.0}},
        "14": {"class_type": "LikenessProject", "inputs": {"adapter": ["11", 0], "references": ["12", 0]}},
        "13": {"class_type": "LikenessApply", "inputs": {
            "model": ["1", 0], "adapter": ["11", 0], "tokens": ["14", 0], "weight": weight,
            "weight_type": weight_type, "start_at": start_at, "end_at": end_at, "embeds_scaling": "V only"}},
        "20": image_node or {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1,
                                                                       "color": 0x3366CC}},
    })
    return prompt


def test_modular_path_runs_and_changes_the_result(models_dir):
    adapter = write_adapter(models_dir, "e2e-linear.safetensors")
    plain = run_prompt(sampling_prompt(key="plain"))
    assert plain.success, plain.execution_error()
    adapted = run_prompt(modular_prompt(adapter))
    assert adapted.success, adapted.execution_error() or adapted.node_errors
    assert CAPTURED["adapted"].shape == CAPTURED["plain"].shape
    assert not torch.equal(CAPTURED["adapted"], CAPTURED["plain"])
    again = run_prompt(sampling_prompt(key="plain-again"))
    assert again.success
    assert torch.equal(CAPTURED["plain-again"], CAPTURED["plain"]), "the input MODEL was changed"


def test_simple_node_equals_the_modular_path(models_dir):
    adapter = write_adapter(models_dir, "e2e-plus.safetensors", layout="resampler", seed=4)
    modular = run_prompt(modular_prompt(adapter, key="modular", weight=0.8, end_at=0.7))
    assert modular.success, modular.execution_error()
    simple = sampling_prompt(key="simple", model_from=("13", 0))
    simple.update({
        "10": {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": "tiny-clip-h.safetensors"}},
        "11": {"class_type": "LikenessAdapterLoader", "inputs": {"adapter_name": adapter}},
        "20": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1, "color": 0x3366CC}},
        "13": {"class_type": "LikenessApplySimple", "inputs": {
            "model": ["1", 0], "adapter": ["11", 0], "clip_vision": ["10", 0], "image": ["20", 0], "weight": 0.8,
            "start_at": 0.0, "end_at": 0.7}},
    })
    result = run_prompt(simple)
    assert result.success, result.execution_error()
    assert torch.equal(CAPTURED["simple"], CAPTURED["modular"])


def test_sdxl_plus_runs_with_a_batch_of_references_and_latents(models_dir):
    adapter = write_adapter(models_dir, "e2e-sdxl-plus.safetensors", kind="sdxl", layout="resampler", seed=5)
    images = {"class_type": "EmptyImage", "inputs": {"width": 40, "height": 56, "batch_size": 3, "color": 0xAA2211}}
    result = run_prompt(modular_prompt(adapter, kind="sdxl", key="sdxl", image_node=images, batch=2, width=96,
                                       height=64, weight_type="style and composition"))
    assert result.success, result.execution_error()
    assert CAPTURED["sdxl"].shape == (2, 4, 8, 12)
