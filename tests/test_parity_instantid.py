"""InstantID against diffusers: identity tokens, the image branch at each of the 70 SDXL sites, and IdentityNet.

* Tokens: diffusers' Resampler (`IPAdapterPlusImageProjection`, what its IP-Adapter loader builds for InstantID's
  `image_proj`) and Likeness's, loaded from the same InstantID-layout file, project the same raw embedding.
* Attention: at every cross-attention site, Likeness's installed patch adds what the reference formula gives with
  diffusers' own `to_k_ip`/`to_v_ip` for that site: weight x softmax(q k_ip^T / sqrt(d)) v_ip; and the whole UNet
  output equals diffusers' UNet with the adapter.
* IdentityNet: a tiny SDXL ControlNet saved by diffusers (`save_pretrained`: config.json and
  diffusion_pytorch_model.safetensors, the layout InstantX published IdentityNet in) is loaded by diffusers
  (`ControlNetModel.from_pretrained`) and by ComfyUI (`comfy.controlnet.load_controlnet`, what Load ControlNet Model
  calls); the residuals ComfyUI's sampler gets from the conditioning Likeness InstantID Control makes equal
  diffusers' ControlNet run with encoder_hidden_states = the identity tokens, the same hint and strength.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import builders
from conftest import pack
from test_parity_diffusers import CONTEXT, POOLED, inputs, nested, run_comfy, run_diffusers, set_diffusers_scale, \
    unet_pair

diffusers = pytest.importorskip("diffusers")
from diffusers import ControlNetModel  # noqa: E402
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0  # noqa: E402

adapter_mod = pack("nodes.core.adapter")
instantid = pack("nodes.core.instantid")
references = pack("nodes.core.references")
sites_mod = pack("nodes.host.sites")
patch_mod = pack("nodes.host.patch")
apply_mod = pack("nodes.core.apply")
host_instantid = pack("nodes.host.instantid")

TOKEN_ATOL = 5e-6  # the Resampler: float32 softmax (original) vs diffusers' SDPA, ~1e-6 apart
SITE_ATOL = 2e-5
OUTPUT_ATOL = 1e-5
RESIDUAL_RTOL = 1e-5  # float32 through 12 ResNet and 25 transformer blocks, relative to the residual's size


def instantid_state(widths, seed=21) -> dict:
    """InstantID's key layout for the tiny SDXL: Resampler with 2 heads of 64, 16 queries, 512-wide input."""
    shapes = {"image_proj." + k: v for k, v in builders.resampler_shapes(128, 2, 16, 512, CONTEXT).items()}
    shapes.update({"ip_adapter." + k: v for k, v in builders.kv_shapes(widths, CONTEXT).items()})
    return builders.tensors_for(shapes, seed)


def identity(seed=0, n=2):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(n, 512, generator=gen) * 1.2
    return references.References(face=references.FaceIdentity("antelopev2", torch.nn.functional.normalize(raw, dim=-1),
                                                               raw))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(diffusers UNet with the adapter, Likeness adapter, sites, ComfyUI model), the same weights on both sides."""
    plain, model = unet_pair("sdxl")
    sites = sites_mod.find_sites(model)
    state = instantid_state([s.width for s in sites])
    path = builders.save_safetensors(str(tmp_path_factory.mktemp("iid") / "ip-adapter.safetensors"), state)
    adapter = adapter_mod.load_adapter(path)
    unet = copy.deepcopy(plain)
    unet._load_ip_adapter_weights([nested(state)], low_cpu_mem_usage=False)
    return unet, adapter, sites, model


def diffusers_tokens(unet, embedding):
    with torch.no_grad():
        return unet.encoder_hid_proj([embedding[:, None, None, :]])[0][:, 0]


def test_instantid_is_detected_and_diffusers_builds_the_resampler(pair):
    unet, adapter, sites, _ = pair
    assert instantid.is_instantid(adapter) and len(sites) == 70
    projection = unet.encoder_hid_proj.image_projection_layers[0]
    assert type(projection).__name__ == "IPAdapterPlusImageProjection"
    assert set_diffusers_scale(unet, 1.0) == 70


@pytest.mark.parametrize("noise", [0.35, 0.0])
def test_tokens_equal_diffusers_resampler(pair, noise):
    unet, adapter, _, _ = pair
    refs = identity(3)
    tokens = references.project_references(adapter, refs, noise=noise)
    mean = refs.face.raw.mean(0, keepdim=True)
    theirs_cond = diffusers_tokens(unet, mean)
    theirs_uncond = diffusers_tokens(unet, instantid.uncond_identity(mean, noise))
    assert tokens.cond.shape == theirs_cond.shape == (1, 16, CONTEXT)
    torch.testing.assert_close(tokens.cond, theirs_cond, rtol=0, atol=TOKEN_ATOL)
    torch.testing.assert_close(tokens.uncond, theirs_uncond, rtol=0, atol=TOKEN_ATOL)
    assert (tokens.cond - tokens.uncond).abs().max() > 1e-2


def diffusers_attn2(unet):
    """diffusers' attn2 modules in the order its IP-Adapter loader numbers them (checkpoint ids 1, 3, 5, ...)."""
    names = [n[: -len(".processor")] for n, p in unet.attn_processors.items()
             if isinstance(p, IPAdapterAttnProcessor2_0) and n.startswith(("down_blocks", "up_blocks", "mid_block"))]
    modules = dict(unet.named_modules())
    return [(name, modules[name]) for name in names]


def reference_image_term(attn, hidden, ip_tokens, weight):
    """weight x softmax(q k^T / sqrt(d)) v per head, with the site's own to_q and diffusers' to_k_ip / to_v_ip."""
    proc = attn.processor
    q = attn.to_q(hidden)
    k, v = proc.to_k_ip[0](ip_tokens), proc.to_v_ip[0](ip_tokens)
    b, n, width = q.shape
    heads, d = attn.heads, width // attn.heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2).double() for t in (q, k, v))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (weight * (probs @ v)).transpose(1, 2).reshape(b, n, width).float()


def test_image_branch_at_every_site_equals_the_reference_attention(pair):
    unet, adapter, sites, model = pair
    weight, chunks = 0.8, (1, 0)  # an uncond row first, as ComfyUI may batch them
    tokens = references.project_references(adapter, identity(5))
    prompt = apply_mod.build_image_prompt(adapter, tokens, sites, weight, "linear", "V only", 1e9, 0.0)
    patched = patch_mod.install(model, prompt)
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    mean = identity(5).face.raw.mean(0, keepdim=True)
    ip_rows = torch.cat([diffusers_tokens(unet, instantid.uncond_identity(mean, instantid.DEFAULT_NOISE) if c else mean)
                         for c in chunks])
    captured = {}

    def keep(name):
        def hook(module, args, kwargs):
            captured.setdefault(name, kwargs.get("hidden_states", args[0] if args else None))
        return hook

    hooks = [module.register_forward_pre_hook(keep(name), with_kwargs=True) for name, module in diffusers_attn2(unet)]
    set_diffusers_scale(unet, weight)
    embeds = torch.stack([(instantid.uncond_identity(mean, instantid.DEFAULT_NOISE) if c else mean) for c in chunks])
    try:
        theirs = run_diffusers(unet, "sdxl", 2, embeds[:, :, None, :])
    finally:
        for h in hooks:
            h.remove()
    worst = 0.0
    _, _, text, _, _ = inputs("sdxl", 2)
    unet_comfy = model.get_model_object("diffusion_model")
    blocks = {"input": unet_comfy.input_blocks, "middle": [unet_comfy.middle_block], "output": unet_comfy.output_blocks}
    for site, (name, attn) in zip(sites, diffusers_attn2(unet)):
        assert torch.equal(attn.processor.to_k_ip[0].weight, adapter.kv_weights[site.layer_id][0])  # the same layer
        transformer = next(m for m in blocks[site.block][site.block_id] if hasattr(m, "transformer_blocks"))
        comfy_attn = transformer.transformer_blocks[site.index].attn2
        hidden = captured[name]
        with torch.no_grad():
            q, k, v = comfy_attn.to_q(hidden), comfy_attn.to_k(text), comfy_attn.to_v(text)
            extra = {"n_heads": comfy_attn.heads, "cond_or_uncond": list(chunks), "sigmas": torch.tensor([1.0])}
            text_only = patch_mod._attention(q, k, v, comfy_attn.heads)
            ours = replaces[site.key](q, k.clone(), v.clone(), extra) - text_only
            expected = reference_image_term(attn, hidden, ip_rows, weight)
        worst = max(worst, (ours - expected).abs().max().item())
        torch.testing.assert_close(ours, expected, rtol=0, atol=SITE_ATOL)
        assert expected.abs().max() > 1e-3
    assert len(captured) == 70
    print(f"image branch, 70 sites: max |diff| = {worst:.3g}")
    options = dict(patched.model_options["transformer_options"], cond_or_uncond=list(chunks),
                   sigmas=torch.tensor([1.0]))
    ours = run_comfy(patched, "sdxl", 2, options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=OUTPUT_ATOL)
    assert (ours - run_comfy(model, "sdxl", 2)).abs().max() > 100 * OUTPUT_ATOL


# ---------------------------------------------------------------- IdentityNet

def diffusers_identitynet(seed=4) -> ControlNetModel:
    """A tiny SDXL ControlNet with the block structure of the tiny UNet (and of SDXL: 2 and 10 transformer layers)."""
    net = ControlNetModel(
        in_channels=4, conditioning_channels=3, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                  "CrossAttnDownBlock2D"),
        block_out_channels=(32, 64, 128), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=CONTEXT, attention_head_dim=(2, 4, 8), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=POOLED + 6 * 256, norm_num_groups=32,
        conditioning_embedding_out_channels=(16, 32, 96, 256))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:  # the zero convolutions too: zeros would make the comparison empty
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def identitynet_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("InstantID") / "ControlNetModel"
    diffusers_identitynet().save_pretrained(str(folder))  # config.json + diffusion_pytorch_model.safetensors
    return folder


def test_the_tiny_identitynet_of_the_builders_has_diffusers_key_layout():
    theirs = diffusers_identitynet().state_dict()
    ours = builders.tiny_identitynet_state()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_identitynet_residuals_equal_diffusers_controlnet(pair, identitynet_files):
    import comfy.controlnet

    unet, adapter, _, model = pair
    theirs_net = ControlNetModel.from_pretrained(str(identitynet_files)).eval()
    with builders.comfy_knows_the_tiny_sdxl():
        ours_net = comfy.controlnet.load_controlnet(str(identitynet_files / "diffusion_pytorch_model.safetensors"))
    tokens = references.project_references(adapter, identity(8))
    x, _, text, comfy_kw, diffusers_kw = inputs("sdxl", 2)
    kps = torch.tensor([[[40.5, 50.2], [88.1, 47.9], [64.3, 75.0], [44.8, 100.6], [86.2, 99.1]]])
    hint = instantid.keypoint_images(kps, torch.tensor([[x.shape[-1] * 8, x.shape[-2] * 8]]))
    strength = 0.7
    positive, negative = builders.conditioning("sdxl", seed=1), builders.conditioning("sdxl", seed=2)
    pos, neg = host_instantid.apply_identity_control(positive, negative, ours_net, tokens, hint, strength, 0.0, 1.0)
    control = pos[0][1]["control"]
    sampling = model.get_model_object("model_sampling")
    control.pre_run(model.model, sampling.percent_to_sigma)
    sigma = torch.full((2,), 3.5)
    chunks = (0, 1)  # cond row, uncond row: each gets its own side's context, as the sampler batches them
    sides = {0: pos, 1: neg}
    cond = {"c_crossattn": text, "y": comfy_kw["y"],
            "crossattn_controlnet": torch.cat([sides[c][0][1]["cross_attn_controlnet"] for c in chunks])}
    with torch.no_grad():
        ours = control.get_control(x, sigma, cond, len(chunks), {})
        down, mid = theirs_net(x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5, sampling.timestep(sigma),
                               encoder_hidden_states=torch.cat([tokens.cond, tokens.uncond]),
                               controlnet_cond=hint.movedim(-1, 1).expand(2, -1, -1, -1), conditioning_scale=strength,
                               added_cond_kwargs=diffusers_kw, return_dict=False)
    control.cleanup()
    assert len(ours["output"]) == len(down) == 9 and len(ours["middle"]) == 1
    worst = 0.0
    for a, b in zip(ours["output"] + ours["middle"], list(down) + [mid]):
        scale = b.abs().max().item()  # residuals grow through the blocks; compare each relative to its size
        worst = max(worst, (a - b).abs().max().item() / scale)
        torch.testing.assert_close(a, b, rtol=0, atol=RESIDUAL_RTOL * max(scale, 1.0))
    print(f"IdentityNet residuals: max |diff| / max |residual| = {worst:.3g}")
    assert mid.abs().max() > 1e-2
    with torch.no_grad():  # the text as context gives other residuals: the comparison above tells them apart
        as_text = theirs_net(x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5, sampling.timestep(sigma),
                             encoder_hidden_states=text, controlnet_cond=hint.movedim(-1, 1).expand(2, -1, -1, -1),
                             conditioning_scale=strength, added_cond_kwargs=diffusers_kw, return_dict=False)[1]
    assert (as_text - mid).abs().max() > 1e-3 * mid.abs().max()
