"""Parity with diffusers' IP-Adapter: same weights and encoder outputs give the same image tokens and UNet output.

A tiny diffusers `UNet2DConditionModel` with the SD1.5 or SDXL block structure gets seeded random weights; the
same weights go into a ComfyUI model of that layout through ComfyUI's own key map (`unet_to_diffusers`). A
synthetic adapter in the h94 layout is loaded into diffusers (`_load_ip_adapter_weights`, the call
`load_ip_adapter` makes) and into Likeness (`load_adapter` from a .safetensors file). Fixed encoder outputs
(no CLIP model) are projected by both, and both UNets run on the same latents, timestep and text.

diffusers is the reference: its conversion of h94 keys, its layer order (down, up, mid blocks), its scale
placement (image attention x scale, added before `to_out`) and its multi-image merge (token concatenation).
The uncond inputs follow the original IP-Adapter code: zeros in embedding space for pooled-embedding
adapters, the encoder's features of an all-zero normalised image for hidden-state adapters (here a fixed
tensor standing in for them).
"""

from __future__ import annotations

import copy
from functools import lru_cache

import pytest
import torch

import builders
from conftest import pack

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0  # noqa: E402

import comfy.utils  # noqa: E402

CONTEXT = builders.TINY_CONTEXT  # 64: cross-attention width of both tiny UNets
POOLED = builders.TINY_POOLED  # 32: SDXL pooled text width in the tiny ComfyUI config
EMBED = 40  # image_embeds width of the stand-in encoder
HIDDEN = 48  # hidden-state width of the stand-in encoder
SEQ = 9  # hidden-state tokens per image (257 for ViT-H/14; fewer keeps it fast)
TEXT_TOKENS = 7
LATENT = (4, 16, 16)

PLAIN_ATOL = 1e-5  # fp32, different attention kernels (diffusers SDPA vs ComfyUI's CPU kernel)
OUTPUT_ATOL = 1e-5
# Image tokens are O(1) (LayerNorm outputs, max |x| ~ 4). The Resampler runs 4 attention + FF layers; in fp32 both
# implementations are ~2-4e-6 away from a float64 run of diffusers' own module, so they differ by that much too.
TOKEN_ATOL = {"linear": 1e-6, "full": 1e-6, "resampler": 5e-6}
# In float64 only the Resampler's deliberate float32 softmax (as in the original code) is left: ~3e-7.
TOKEN_ATOL_F64 = {"linear": 1e-12, "full": 1e-12, "resampler": 1e-6}

VARIANTS = {  # name: (UNet layout, projection layout)
    "sd15": ("sd15", "linear"),
    "sd15-plus": ("sd15", "resampler"),
    "sd15-full-face": ("sd15", "full"),
    "sdxl": ("sdxl", "linear"),
    "sdxl-plus": ("sdxl", "resampler"),
}

# name: (weight, reference images, cond_or_uncond chunks, latents per chunk)
CASES = {
    "one-ref": (1.0, 1, (0,), 1),
    "two-refs-w0.6": (0.6, 2, (0,), 1),
    "cfg-cond-uncond": (1.0, 1, (0, 1), 1),
    "cfg-uncond-first-two-refs-w0.6-batch2": (0.6, 2, (1, 0), 2),
}

MAX_DIFF: dict = {}  # what the report quotes: (test, variant) -> max |diff|


def _record(what: str, variant: str, diff: float) -> None:
    key = (what, variant)
    MAX_DIFF[key] = max(MAX_DIFF.get(key, 0.0), diff)
    print(f"{what} {variant}: max |diff| = {diff:.3g}")


# ---------------------------------------------------------------- the two UNets, with the same weights

def diffusers_unet(kind: str, seed: int = 0) -> UNet2DConditionModel:
    """A tiny diffusers UNet with the block structure ComfyUI's tiny SD1.5 / SDXL configs in builders have."""
    common = dict(sample_size=LATENT[-1], in_channels=4, out_channels=4, layers_per_block=2,
                  cross_attention_dim=CONTEXT, norm_num_groups=32)
    if kind == "sd15":
        unet = UNet2DConditionModel(
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(32, 64, 128, 128), attention_head_dim=8,  # 8 heads everywhere, as ComfyUI's SD15
            use_linear_projection=False, **common)
    elif kind == "sdxl":
        unet = UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64, 128), transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(2, 4, 8),  # diffusers reads these as head counts: 16-wide heads, as builders sets
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=POOLED + 6 * 256, **common)
    else:
        raise ValueError(kind)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):  # norms
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    return unet.eval().requires_grad_(False)


@lru_cache(maxsize=None)
def unet_pair(kind: str):
    """(diffusers UNet, ComfyUI ModelPatcher) holding the same weights."""
    unet = diffusers_unet(kind)
    model = builders.build_unet(kind, seed=123)  # random weights, all overwritten below
    mapping = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)  # diffusers key -> comfy key
    source = unet.state_dict()
    assert set(source) <= set(mapping), sorted(set(source) - set(mapping))[:5]
    converted = {mapping[k]: v for k, v in source.items()}
    model.model.diffusion_model.load_state_dict(converted, strict=True)
    return unet, model


@lru_cache(maxsize=None)
def inputs(kind: str, rows: int):
    """Latents, timesteps, text context and (SDXL) both models' forms of the pooled text + size conditioning."""
    gen = torch.Generator().manual_seed(100 + rows)
    x = torch.randn(rows, *LATENT, generator=gen)
    t = torch.full((rows,), 637.0)
    text = torch.randn(rows, TEXT_TOKENS, CONTEXT, generator=gen)
    comfy_kw, diffusers_kw = {}, {}
    if kind == "sdxl":
        pooled = torch.randn(rows, POOLED, generator=gen)
        sizes = dict(height=80, width=96, crop_h=4, crop_w=8, target_height=64, target_width=112)
        _, model = unet_pair(kind)
        comfy_kw["y"] = model.model.encode_adm(pooled_output=pooled, device="cpu", **sizes)
        time_ids = torch.tensor([[sizes[k] for k in ("height", "width", "crop_h", "crop_w", "target_height",
                                                      "target_width")]], dtype=torch.float32).expand(rows, -1)
        diffusers_kw = {"text_embeds": pooled, "time_ids": time_ids}
    return x, t, text, comfy_kw, diffusers_kw


def run_comfy(model, kind, rows, transformer_options=None):
    x, t, text, comfy_kw, _ = inputs(kind, rows)
    with torch.no_grad():
        return model.model.diffusion_model(x, t, text, transformer_options=dict(transformer_options or {}),
                                           **comfy_kw)


def run_diffusers(unet, kind, rows, image_embeds=None):
    x, t, text, _, diffusers_kw = inputs(kind, rows)
    added = dict(diffusers_kw)
    if image_embeds is not None:
        added["image_embeds"] = [image_embeds]
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added or None).sample


# ---------------------------------------------------------------- adapters and encoder features

def adapter_state(layout: str, widths: list[int], seed: int) -> dict:
    """A synthetic adapter in the flat h94 layout. The Resampler has depth 4 and 64-wide heads, which is what
    diffusers' converter assumes (it hard-codes depth 4, ff mult 4 and heads = to_q rows / 64)."""
    if layout == "linear":
        proj = builders.linear_proj_shapes(EMBED, CONTEXT, 4)  # diffusers fixes 4 tokens for this layout
    elif layout == "resampler":
        proj = builders.resampler_shapes(64, 1, 16, HIDDEN, CONTEXT, depth=4)
    elif layout == "full":
        proj = builders.full_face_shapes(HIDDEN, CONTEXT)
    else:
        raise ValueError(layout)
    shapes = {"image_proj." + k: v for k, v in proj.items()}
    shapes.update({"ip_adapter." + k: v for k, v in builders.kv_shapes(widths, CONTEXT).items()})
    return builders.tensors_for(shapes, seed)


def nested(flat: dict) -> dict:
    """The .bin container diffusers' loader works on: {"image_proj": {...}, "ip_adapter": {...}}."""
    out: dict = {"image_proj": {}, "ip_adapter": {}}
    for k, v in flat.items():
        group, _, rest = k.partition(".")
        out[group][rest] = v
    return out


@lru_cache(maxsize=None)
def features():
    gen = torch.Generator().manual_seed(7)
    return {"image_embeds": torch.randn(2, EMBED, generator=gen),
            "penultimate": torch.randn(2, SEQ, HIDDEN, generator=gen),
            "empty_penultimate": torch.randn(1, SEQ, HIDDEN, generator=gen)}


def references(n: int):
    refs = pack("nodes.core.references")
    f = features()
    make = getattr(refs.References, "from_images", refs.References)
    return make(refs.EncoderInfo("stand-in encoder", HIDDEN, EMBED), f["image_embeds"][:n], f["penultimate"][:n],
                f["empty_penultimate"])


def reference_inputs(layout: str, n: int):
    """What diffusers gets for n reference images, cond and uncond: [n, E] or [n, S, H]."""
    f = features()
    if layout == "linear":
        cond = f["image_embeds"][:n]
        return cond, torch.zeros_like(cond)
    return f["penultimate"][:n], f["empty_penultimate"].expand(n, -1, -1)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """variant -> (diffusers UNet with the adapter, Likeness Adapter, sites, ComfyUI model)."""
    folder = tmp_path_factory.mktemp("parity-adapters")
    cache: dict = {}

    def get(variant: str):
        if variant not in cache:
            kind, layout = VARIANTS[variant]
            plain_unet, model = unet_pair(kind)
            sites = pack("nodes.host.sites").find_sites(model)
            state = adapter_state(layout, [s.width for s in sites], seed=11 + list(VARIANTS).index(variant))
            path = builders.save_safetensors(str(folder / f"{variant}.safetensors"), state)
            adapter = pack("nodes.core.adapter").load_adapter(path)
            unet = copy.deepcopy(plain_unet)
            unet._load_ip_adapter_weights([nested(state)], low_cpu_mem_usage=False)  # strict loads
            cache[variant] = (unet, adapter, sites, model)
        return cache[variant]

    return get


def set_diffusers_scale(unet, weight: float) -> int:
    """Set the IP scale on the UNet's attention processors (not those inside the Resampler); returns how many."""
    count = 0
    for name, proc in unet.attn_processors.items():
        if name.startswith(("down_blocks", "up_blocks", "mid_block")) and isinstance(proc, IPAdapterAttnProcessor2_0):
            proc.scale = [weight]
            count += 1
    return count


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_plain_models_agree(kind):
    """Harness check: the converted ComfyUI model computes what the diffusers UNet computes."""
    unet, model = unet_pair(kind)
    ours, theirs = run_comfy(model, kind, 2), run_diffusers(unet, kind, 2)
    diff = (ours - theirs).abs().max().item()
    _record("plain", kind, diff)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=PLAIN_ATOL, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_adapter_detected_and_fits_the_model(variant, adapters):
    unet, adapter, sites, _ = adapters(variant)
    kind, layout = VARIANTS[variant]
    n_sites = {"sd15": 16, "sdxl": 70}[kind]
    assert len(sites) == n_sites
    assert adapter.detected.layer_ids == tuple(range(1, 2 * n_sites, 2))
    assert adapter.detected.layout.value == {"linear": "linear", "resampler": "resampler", "full": "mlp"}[layout]
    assert set_diffusers_scale(unet, 1.0) == n_sites  # diffusers put an IP processor on every attn2


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_tokens_match_diffusers(variant, adapters):
    unet, adapter, _, _ = adapters(variant)
    _, layout = VARIANTS[variant]
    tokens = pack("nodes.core.references").project_references(adapter, references(2))
    cond_in, uncond_in = reference_inputs(layout, 2)
    with torch.no_grad():
        theirs_cond, theirs_uncond = (unet.encoder_hid_proj([e[None]])[0][0] for e in (cond_in, uncond_in))
    expected_tokens = SEQ if layout == "full" else (16 if layout == "resampler" else 4)
    assert tokens.cond.shape == theirs_cond.shape == (2, expected_tokens, CONTEXT)
    assert tokens.uncond.shape == theirs_uncond.shape
    diff = max((tokens.cond - theirs_cond).abs().max().item(), (tokens.uncond - theirs_uncond).abs().max().item())
    _record("tokens", variant, diff)
    torch.testing.assert_close(tokens.cond, theirs_cond, atol=TOKEN_ATOL[layout], rtol=0)
    torch.testing.assert_close(tokens.uncond, theirs_uncond, atol=TOKEN_ATOL[layout], rtol=0)
    assert not torch.allclose(tokens.cond[0], tokens.cond[1], atol=1e-3)  # the two references differ


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_projection_in_float64_matches_diffusers(variant, adapters):
    """The same projections in float64: separates rounding from a real difference in the math."""
    unet, adapter, _, _ = adapters(variant)
    _, layout = VARIANTS[variant]
    ours_module = copy.deepcopy(adapter.projection).double()
    theirs_module = copy.deepcopy(unet.encoder_hid_proj).double()
    for x in reference_inputs(layout, 2):
        with torch.no_grad():
            ours = ours_module(x.double())
            theirs = theirs_module([x[None].double()])[0][0]
        _record("tokens-f64", variant, (ours - theirs).abs().max().item())
        torch.testing.assert_close(ours, theirs, atol=TOKEN_ATOL_F64[layout], rtol=0)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_unet_output_matches_diffusers(variant, case, adapters):
    unet, adapter, sites, model = adapters(variant)
    kind, layout = VARIANTS[variant]
    weight, n_refs, chunks, per_chunk = CASES[case]
    rows = len(chunks) * per_chunk

    # Likeness: project, build the prompt for every site, install on a clone, run the UNet directly.
    tokens = pack("nodes.core.references").project_references(adapter, references(n_refs))
    prompt = pack("nodes.core.apply").build_image_prompt(adapter, tokens, sites, weight, "linear", "V only",
                                                         sigma_start=1e9, sigma_end=0.0)
    assert len(prompt.site_kv) == len(sites)
    patched = pack("nodes.host.patch").install(model, prompt)
    options = dict(patched.model_options["transformer_options"])
    options.update(cond_or_uncond=list(chunks), sigmas=torch.tensor([1.0]))
    ours = run_comfy(patched, kind, rows, options)

    # diffusers: each row gets the cond or uncond encoder features of its chunk, [rows, n_images, ...].
    cond_in, uncond_in = reference_inputs(layout, n_refs)
    embeds = torch.stack([cond_in if c == 0 else uncond_in for c in chunks for _ in range(per_chunk)])
    set_diffusers_scale(unet, weight)
    theirs = run_diffusers(unet, kind, rows, embeds)

    plain = run_comfy(model, kind, rows)
    effect = (ours - plain).abs().max().item()
    diff = (ours - theirs).abs().max().item()
    _record("output", variant, diff)
    print(f"  {case}: adapter effect {effect:.3g}")
    assert effect > 100 * OUTPUT_ATOL, "the adapter hardly changes the output; the comparison would prove nothing"
    torch.testing.assert_close(ours, theirs, atol=OUTPUT_ATOL, rtol=0)
    if 1 in chunks and 0 in chunks:  # sensitive to which rows get the uncond tokens
        swapped = torch.stack([uncond_in if c == 0 else cond_in for c in chunks for _ in range(per_chunk)])
        assert (ours - run_diffusers(unet, kind, rows, swapped)).abs().max() > 100 * OUTPUT_ATOL
