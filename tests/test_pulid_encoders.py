"""PuLID's ID encoders and PuLID-FLUX's cross-attention module against plain-torch versions written here from the
published method (ToTheBeginning/PuLID: pulid/encoders.py, pulid/encoders_transformer.py), reading the state dict
directly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import builders
from conftest import pack

adapter_mod = pack("nodes.core.adapter")
checkpoint = pack("nodes.core.checkpoint")
pulid_encoders = pack("nodes.core.pulid_encoders")


def layer_norm(x, sd, p):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)


def mapping(sd, p, x):
    """Linear -> LayerNorm -> LeakyReLU(0.01), twice, then Linear (Sequential indices 0, 1, 3, 4, 6)."""
    for i in (0, 3):
        x = F.leaky_relu(layer_norm(F.linear(x, sd[f"{p}{i}.weight"], sd[f"{p}{i}.bias"]), sd, f"{p}{i + 1}"), 0.01)
    return F.linear(x, sd[p + "6.weight"], sd[p + "6.bias"])


def heads_of(x, heads):
    b, n, w = x.shape
    return x.view(b, n, heads, w // heads).transpose(1, 2)


def perceiver(sd, p, context, latents, head_width):
    """PerceiverAttention: latents attend to [context; latents]; scores (q k^T) / sqrt(d), softmax in fp32."""
    ctx, lat = layer_norm(context, sd, p + "norm1"), layer_norm(latents, sd, p + "norm2")
    heads = sd[p + "to_q.weight"].shape[0] // head_width
    q = heads_of(lat @ sd[p + "to_q.weight"].T, heads)
    k, v = (torch.cat([ctx, lat], 1) @ sd[p + "to_kv.weight"].T).chunk(2, dim=-1)
    w = torch.softmax(q @ heads_of(k, heads).transpose(-1, -2) / math.sqrt(head_width), dim=-1)
    out = (w @ heads_of(v, heads)).transpose(1, 2).reshape(lat.shape[0], lat.shape[1], -1)
    return out @ sd[p + "to_out.weight"].T


def reference_id_encoder(sd, id_vec, hidden):
    """IDEncoder: body(x) -> 5 tokens; per level mapping_i(cls) + mean over patches of mapping_patch_i(patch)."""
    c = sd["mapping_0.6.weight"].shape[0]
    tokens = [mapping(sd, "body.", id_vec).reshape(id_vec.shape[0], -1, c)]
    for i, h in enumerate(hidden):
        tokens.append(mapping(sd, f"mapping_{i}.", h[:, :1])
                      + mapping(sd, f"mapping_patch_{i}.", h[:, 1:]).mean(dim=1, keepdim=True))
    return torch.cat(tokens, dim=1)


def reference_id_former(sd, id_vec, hidden):
    """IDFormer: [queries; id tokens] go through depth/5 (attention + feed-forward) layers per level, each level's
    context being [id tokens; mapping_i(hidden_i)]; the queries, times proj_out, are the output."""
    dim, queries = sd["latents"].shape[2], sd["latents"].shape[1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    faces = id_vec.shape[1] if id_vec.ndim == 3 else 1
    ids = mapping(sd, "id_embedding_mapping.", id_vec).reshape(id_vec.shape[0], -1, dim)
    assert ids.shape[1] == 5 * faces
    latents = torch.cat([sd["latents"].repeat(id_vec.shape[0], 1, 1), ids], dim=1)
    per = depth // 5
    for i in range(5):
        context = torch.cat([ids, mapping(sd, f"mapping_{i}.", hidden[i])], dim=1)
        for layer in range(i * per, (i + 1) * per):
            p = f"layers.{layer}."
            latents = perceiver(sd, p + "0.", context, latents, 64) + latents
            ff = layer_norm(latents, sd, p + "1.0")
            latents = F.gelu(ff @ sd[p + "1.1.weight"].T) @ sd[p + "1.3.weight"].T + latents
    return latents[:, :queries] @ sd["proj_out"]


def reference_ca(sd, identity, image, head_width=128):
    """PerceiverAttentionCA: image tokens (norm2, to_q) attend to identity tokens (norm1, to_kv); the scale is split
    over q and k as sqrt(sqrt(d)) each, the softmax taken in fp32."""
    x, lat = layer_norm(identity, sd, "norm1"), layer_norm(image, sd, "norm2")
    heads = sd["to_q.weight"].shape[0] // head_width
    q = heads_of(lat @ sd["to_q.weight"].T, heads)
    k, v = (heads_of(t, heads) for t in (x @ sd["to_kv.weight"].T).chunk(2, dim=-1))
    scale = 1 / math.sqrt(math.sqrt(head_width))
    w = torch.softmax(((q * scale) @ (k * scale).transpose(-1, -2)).float(), dim=-1)
    out = (w @ v).transpose(1, 2).reshape(image.shape[0], image.shape[1], -1)
    return out @ sd["to_out.weight"].T


def group(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def inputs(faces=2, vit=64, tokens=17, eva_embed=32, seed=5):
    gen = torch.Generator().manual_seed(seed)
    identity = torch.randn(faces, 512, generator=gen) * 3  # antelopev2's raw embeddings are far from unit length
    eva = F.normalize(torch.randn(faces, eva_embed, generator=gen), dim=-1)
    hidden = [torch.randn(faces, tokens, vit, generator=gen) for _ in range(5)]
    return torch.cat([identity, eva], dim=-1), hidden


@pytest.mark.parametrize("kind", ["v1", "v1.1", "flux"])
def test_id_encoder_tokens_match_the_published_method(tmp_path, kind):
    state = builders.tiny_pulid_state(kind, seed=7, widths=[32] * 70)
    path = builders.save_safetensors(str(tmp_path / f"pulid_{kind}.safetensors"), state)
    adapter = adapter_mod.load_adapter(path)
    sd = group(state, "pulid_encoder." if kind == "flux" else "id_adapter.")
    id_vec, hidden = inputs()
    with torch.no_grad():
        if kind == "v1":
            expected = reference_id_encoder(sd, id_vec, hidden)
            got = adapter.projection(id_vec, hidden)
            assert got.shape == (2, 10, builders.TINY_CONTEXT)
        else:
            # several faces enter together, the reference's multi-image input: ID vectors [1, K, I] and hidden
            # states side by side along the tokens
            joined = [h.reshape(1, -1, h.shape[-1]) for h in hidden]
            expected = reference_id_former(sd, id_vec[None], joined)
            got = adapter.projection(id_vec[None], joined)
            assert got.shape == (1, 8, builders.TINY_CONTEXT)
            single = adapter.projection(id_vec[:1], [h[:1] for h in hidden])
            torch.testing.assert_close(single, reference_id_former(sd, id_vec[:1], [h[:1] for h in hidden]),
                                       rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_flux_cross_attention_matches_perceiver_attention_ca(tmp_path):
    state = builders.tiny_pulid_state("flux", seed=2, flux_blocks=4, flux_dim=64)
    adapter = adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / "f.safetensors"), state))
    gen = torch.Generator().manual_seed(1)
    identity = torch.randn(2, 8, builders.TINY_CONTEXT, generator=gen)
    image = torch.randn(2, 24, 64, generator=gen)
    for i, module in enumerate(adapter.flux_modules):
        with torch.no_grad():
            got = module(identity, image)
            keys, values = module.identity_keys_values(identity)
            split = module.attend(image, keys, values)
        expected = reference_ca(group(state, f"pulid_ca.{i}."), identity, image)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(split, got)


def test_fp16_files_keep_their_dtype_and_agree_in_float32(tmp_path):
    state = builders.tiny_pulid_state("v1.1", seed=4, widths=[32] * 70)
    half = {k: v.half() for k, v in state.items()}
    adapter = adapter_mod.load_adapter(builders.save_safetensors(str(tmp_path / "h.safetensors"), half))
    assert next(adapter.projection.parameters()).dtype == torch.float16
    sd = {k: v.float() for k, v in group(half, "id_adapter.").items()}
    id_vec, hidden = inputs(faces=1)
    work = pulid_encoders.build_id_former({k: v for k, v in sd.items()})
    torch.testing.assert_close(work(id_vec, hidden), reference_id_former(sd, id_vec, hidden), rtol=1e-4, atol=1e-5)
