"""Per-step cost of PuLID-FLUX at FLUX.1 [dev]'s real widths, beside the plain step and the FLOPs bound, in one run.

One FLUX.1 [dev] step is 19 double and 38 single blocks, 3072 wide (24 heads of 128), over 4096 image tokens (a
1024 x 1024 image) and 512 text tokens. PuLID-FLUX adds 20 cross-attention modules (image tokens 3072 -> 2048
wide queries over 32 identity tokens, back to 3072), each through Likeness's block replace as sampling runs it:
the identity keys and values are made once when the node runs, so a step pays the queries, a 32-key attention
and the output projection.

A whole 12B step does not fit a few CPU minutes, so the script times, with seeded random weights:
* one real-width double block and one single block (ComfyUI's own classes), and the plain step as
  19 x double + 38 x single (embedding and final layer are < 0.1 % of the FLOPs and left out);
* one PuLID insertion (FluxBlockInsertion over a block that returns its input), x 20;
and prints, next to the measured share, the share the FLOPs alone predict.

Run from the pack folder: `python benchmarks/bench_pulid_flux.py` (`--tokens 1024` for a quicker look).
"""

from __future__ import annotations

import argparse

import torch

from common import DEVICE, DTYPE, interleaved, machine, pack

import comfy.ldm.flux.layers as flux_layers
import comfy.ops

pulid_encoders = pack("nodes.core.pulid_encoders")
pulid_flux = pack("nodes.core.pulid_flux")

WIDTH, HEADS, MLP = 3072, 24, 4.0
CA_INNER, CA_KV, IDENTITY_TOKENS, MODULES = 2048, 2048, 32, 20
DOUBLE, SINGLE, TEXT = 19, 38, 512


def seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return module.to(DEVICE, DTYPE).eval()


def block_flops(params: int, tokens: int) -> float:
    """2 FLOPs per weight per token, plus the joint attention's two products over all tokens."""
    return 2.0 * params * tokens + 4.0 * tokens * tokens * WIDTH


def ca_flops(image_tokens: int) -> float:
    projections = 2.0 * image_tokens * (WIDTH * CA_INNER + CA_INNER * WIDTH)
    attention = 4.0 * image_tokens * IDENTITY_TOKENS * CA_INNER
    return projections + attention


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4096, help="image tokens (4096 = 1024 x 1024)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n, total = args.tokens, args.tokens + TEXT
    print("Likeness PuLID-FLUX step benchmark:", machine())
    ops = comfy.ops.disable_weight_init
    double = seeded(flux_layers.DoubleStreamBlock(WIDTH, HEADS, MLP, qkv_bias=True, operations=ops), 1)
    single = seeded(flux_layers.SingleStreamBlock(WIDTH, HEADS, MLP, operations=ops), 2)
    ca = seeded(pulid_encoders.PulidFluxCrossAttention(WIDTH, CA_KV, CA_INNER), 3)
    identity = torch.randn(IDENTITY_TOKENS, CA_KV, generator=torch.Generator().manual_seed(4))
    insertion = pulid_flux.IdentityInsertion([ca], [("double_block", 0)], identity, identity, 1.0, 1e9, 0.0)
    replace = pulid_flux.FluxBlockInsertion(("double_block", 0), ((insertion, 0),)).to(DEVICE).to(DTYPE)

    gen = torch.Generator().manual_seed(5)
    img = torch.randn(1, n, WIDTH, generator=gen).to(DEVICE, DTYPE)
    txt = torch.randn(1, TEXT, WIDTH, generator=gen).to(DEVICE, DTYPE)
    joint = torch.cat([txt, img], dim=1)
    vec = torch.randn(1, WIDTH, generator=gen).to(DEVICE, DTYPE)
    ids = torch.zeros(1, total, 3)
    ids[0, TEXT:, 1] = torch.arange(n) // int(n ** 0.5)
    ids[0, TEXT:, 2] = torch.arange(n) % int(n ** 0.5)
    pe = flux_layers.EmbedND(dim=WIDTH // HEADS, theta=10000, axes_dim=[16, 56, 56])(ids).to(DEVICE, DTYPE)
    options = {"sigmas": torch.tensor([0.5]), "cond_or_uncond": [0]}
    passthrough = {"original_block": lambda a: {"img": a["img"], "txt": a["txt"]}}

    configs = {
        "double block": lambda: double(img=img, txt=txt.clone(), vec=vec, pe=pe),
        "single block": lambda: single(joint, vec=vec, pe=pe),
        "PuLID insertion": lambda: replace({"img": img, "txt": txt, "transformer_options": options}, passthrough),
    }
    with torch.inference_mode():
        times = interleaved(configs, rounds=args.rounds, warmup=0)
    t_double, t_single = times["double block"]["median_s"], times["single block"]["median_s"]
    t_ca = times["PuLID insertion"]["median_s"]
    step = DOUBLE * t_double + SINGLE * t_single
    pulid = MODULES * t_ca

    def count(m):
        return sum(p.numel() for p in m.parameters())

    f_step = DOUBLE * block_flops(count(double), total) + SINGLE * block_flops(count(single), total)
    f_pulid = MODULES * ca_flops(n)
    print(f"\n{n} image + {TEXT} text tokens, batch 1, {args.rounds} rounds (medians)")
    print(f"  double block        {t_double * 1e3:10.1f} ms   {block_flops(count(double), total) / 1e9:8.1f} GFLOP")
    print(f"  single block        {t_single * 1e3:10.1f} ms   {block_flops(count(single), total) / 1e9:8.1f} GFLOP")
    print(f"  plain step (19 + 38){step:10.2f} s    {f_step / 1e12:8.2f} TFLOP")
    print(f"  PuLID insertion     {t_ca * 1e3:10.1f} ms   {ca_flops(n) / 1e9:8.1f} GFLOP")
    print(f"  PuLID per step (20) {pulid:10.2f} s    {f_pulid / 1e12:8.2f} TFLOP")
    print(f"  overhead per step: measured {pulid / step * 100:.2f} %   FLOPs bound {f_pulid / f_step * 100:.2f} %")
    print(f"  throughput: blocks {f_step / step / 1e9:.1f} GFLOP/s, PuLID {f_pulid / pulid / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
