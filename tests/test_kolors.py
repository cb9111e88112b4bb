"""Kolors: both published adapters are recognised by their weights; they apply only to a Kolors UNet (one that carries
its text projection `encoder_hid_proj`, as Kolors loader packs build it), and say so clearly otherwise."""

from __future__ import annotations

import pytest
import torch

import builders
from conftest import pack
from test_detection import write_sparse_safetensors

variants = pack("nodes.core.variants")
adapter_mod = pack("nodes.core.adapter")
references = pack("nodes.core.references")
core_apply = pack("nodes.core.apply")
apply_node = pack("nodes.apply")
sites_mod = pack("nodes.host.sites")
presets = pack("nodes.core.presets")
errors = pack("nodes.core.errors")


def test_kolors_plus_is_detected_from_its_published_layout():
    det = variants.detect(builders.official_shapes("Kolors-IP-Adapter-Plus.bin"), "ip_adapter_plus_general.bin")
    assert det.variant is not None and det.variant.key == "kolors-plus"
    assert det.family == "Kolors" and det.tokens == 16 and det.inner_width == 2048
    assert det.encoder.name == "ViT-L/14-336" and det.encoder.image_size == 336
    assert not det.needs_text_projection and not det.faceid
    assert "Kolors" in det.summary() and "clip-vit-large-patch14-336" in det.summary()


def test_kolors_faceid_is_recognised_not_refused_as_damaged():
    det = variants.detect(builders.official_shapes("Kolors-IP-Adapter-FaceID-Plus.bin"), "ipa-faceid-plus.bin")
    assert det.variant is not None and det.variant.key == "kolors-faceid-plus"
    assert det.family == "Kolors" and det.faceid and det.tokens == 6
    assert det.context_width == 2048 and det.tokens_width == 4096 and det.needs_text_projection
    assert not det.has_lora and not det.needs_lora
    assert det.encoder.name == "ViT-L/14-336"


def test_sdxl_plus_is_still_sdxl_plus():
    det = variants.detect(builders.official_shapes("ip-adapter-plus_sdxl_vit-h.safetensors"), "x")
    assert det.variant.key == "sdxl-plus" and det.family == "SDXL" and det.inner_width == 1280


def test_only_faceid_plus_tokens_may_be_wider_than_the_context():
    shapes = builders.official_shapes("Kolors-IP-Adapter-Plus.bin")
    shapes = {k: ((4096,) if k == "image_proj.norm_out.weight" else v) for k, v in shapes.items()}
    shapes["image_proj.proj_out.weight"] = (4096, 2048)
    with pytest.raises(errors.AdapterFileError, match="mixes two adapters or is damaged"):
        variants.detect(shapes, "odd.bin")


def test_kolors_files_are_read_from_their_headers(tmp_path):
    for name in builders.KOLORS_FILES:
        path = write_sparse_safetensors(tmp_path / "renamed.safetensors", builders.official_shapes(name))
        assert adapter_mod.read_detection(path).family == "Kolors"


@pytest.mark.parametrize("positions, expected", [(257, "ViT-L/14"), (577, "ViT-L/14-336")])
def test_vit_l_encoders_are_told_apart_by_their_input_size(positions, expected):
    shapes = {"vision_model.embeddings.class_embedding": (1024,), "visual_projection.weight": (768, 1024),
              "vision_model.embeddings.position_embedding.weight": (positions, 1024),
              "vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14)}
    assert variants.detect_encoder(shapes).name == expected


class _AdapterStub:
    def __init__(self, name, detected):
        self.name, self.detected = name, detected


def test_kolors_adapters_on_other_models_get_a_clear_error():
    det = variants.detect(builders.official_shapes("Kolors-IP-Adapter-Plus.bin"), "Kolors-IP-Adapter-Plus.bin")
    with pytest.raises(errors.IncompatibleError, match="is for Kolors, but the MODEL is SDXL.*no Kolors support"):
        core_apply.check_base_model(_AdapterStub("Kolors-IP-Adapter-Plus.bin", det), "SDXL", None)
    core_apply.check_base_model(_AdapterStub("Kolors-IP-Adapter-Plus.bin", det), "Kolors", (torch.zeros(2048, 4096),
                                                                                          None))
    with pytest.raises(presets.MissingModelError, match="KOLORS exists only for Kolors.*no Kolors support"):
        presets.choice_for("KOLORS", "SDXL")
    assert presets.choice_for("KOLORS", "Kolors").encoder.name == "ViT-L/14-336"


# ---------------------------------------------------------------- applying on a Kolors-like UNet

TOKEN_WIDTH = builders.TINY_KOLORS_TEXT  # the tiny stand-in for Kolors FaceID's 4096-wide (ChatGLM space) tokens


def kolors_unet(seed=0):
    """A fresh tiny SDXL-layout model whose UNet carries a text projection, as Kolors loader packs build Kolors."""
    model = builders.build_unet.__wrapped__("sdxl", seed=seed)
    unet = model.get_model_object("diffusion_model")
    gen = torch.Generator().manual_seed(seed + 1)
    proj = torch.nn.Linear(TOKEN_WIDTH, builders.TINY_CONTEXT)
    with torch.no_grad():
        proj.weight.copy_(torch.randn(proj.weight.shape, generator=gen) / TOKEN_WIDTH ** 0.5)
        proj.bias.copy_(0.1 * torch.randn(proj.bias.shape, generator=gen))
    unet.encoder_hid_proj = proj
    return model


def kolors_faceid_adapter(tmp_path, widths):
    """A tiny FaceID Plus whose tokens are TOKEN_WIDTH wide while its K/V weights read the context width."""
    proj = builders.faceid_plus_shapes(TOKEN_WIDTH, clip=64, t=6, depth=1)
    shapes = {"image_proj." + k: v for k, v in proj.items()}
    shapes.update({"ip_adapter." + k: v for k, v in builders.kv_shapes(widths, builders.TINY_CONTEXT).items()})
    state = builders.tensors_for(shapes, seed=5)
    return adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / "kolors-faceid.safetensors"), state))


def test_kolors_faceid_tokens_go_through_the_unets_text_projection(tmp_path):
    model = kolors_unet()
    sites = sites_mod.find_sites(model)
    assert sites_mod.base_model(model, sites) == "Kolors"
    adapter = kolors_faceid_adapter(tmp_path, [s.width for s in sites])
    assert adapter.detected.needs_text_projection and adapter.detected.tokens_width == TOKEN_WIDTH
    gen = torch.Generator().manual_seed(2)
    refs = references.References(
        image=references.ImageFeatures(references.EncoderInfo.from_widths(64, 32), torch.randn(1, 32, generator=gen),
                                       torch.randn(1, 17, 64, generator=gen), torch.randn(1, 17, 64, generator=gen)),
        face=references.FaceIdentity("antelopev2", torch.nn.functional.normalize(torch.randn(1, 512, generator=gen)),
                                     torch.randn(1, 512, generator=gen)))
    tokens = references.project_references(adapter, refs, faceid_plus_v2=True)
    assert tokens.cond.shape == (1, 6, TOKEN_WIDTH)
    patched = apply_node.apply_tokens(model, adapter, tokens, 0.8, weight_kolors=0.5, faceid_lora_strength=0.0)
    site = sites[3]
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"][site.key]
    kv = replace.prompts[0].site_kv[site.key]
    hid = model.get_model_object("diffusion_model").encoder_hid_proj
    w_k, w_v = adapter.kv_weights[site.layer_id]
    mapped = 0.5 * (tokens.cond.reshape(-1, TOKEN_WIDTH) @ hid.weight.T + hid.bias)
    torch.testing.assert_close(kv.k_cond, mapped @ w_k.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kv.v_cond, 0.8 * (mapped @ w_v.T), atol=1e-5, rtol=1e-5)


def test_kolors_faceid_needs_the_text_projection(tmp_path):
    model = builders.build_unet("sdxl")
    adapter = kolors_faceid_adapter(tmp_path, [s.width for s in sites_mod.find_sites(model)])
    tokens = references.ImageTokens(adapter.name, TOKEN_WIDTH, 6, torch.randn(1, 6, TOKEN_WIDTH),
                                    torch.zeros(1, 6, TOKEN_WIDTH))
    with pytest.raises(errors.IncompatibleError, match="encoder_hid_proj.*has none.*no Kolors support"):
        apply_node.apply_tokens(model, adapter, tokens, 1.0, faceid_lora_strength=0.0)
