"""Per-step overhead of 1, 2 and 4 chained Likeness adapters vs the plain model, real UNet layouts.

One sampling step = one CFG forward (cond + uncond in one batch) at sigma_max, timed inside a KSAMPLER.
Usage: python benchmarks/bench_forward.py [sd15|sdxl] [latent side, e.g. 32 for 256 px] [rounds]
Issue-6 targets: at most half the leading pack's overhead (+2.2/+4.1/+7.9 % for 1/2/4 at SD1.5 256 px on this
kind of machine), and 4 adapters at most 2.5x the overhead of one.
"""

import sys
import tempfile
from pathlib import Path

import torch
from common import (DEVICE, interleaved, leading_pack, leading_pack_apply, machine, official_adapter, pack,
                    real_unet, report)

import comfy.sample  # noqa: E402  (common puts ComfyUI on the path)
import comfy.samplers  # noqa: E402

ADAPTERS = {"sd15": "ip-adapter-plus_sd15.safetensors", "sdxl": "ip-adapter-plus_sdxl_vit-h.safetensors"}


def one_step(model, kind, side):
    ctx = 768 if kind == "sd15" else 2048
    gen = torch.Generator().manual_seed(0)
    extra = {"pooled_output": torch.randn(1, 1280, generator=gen)} if kind == "sdxl" else {}
    positive = [[torch.randn(1, 77, ctx, generator=gen), dict(extra)]]
    negative = [[torch.randn(1, 77, ctx, generator=gen), dict(extra)]]
    latent = torch.zeros(1, 4, side, side)
    noise = torch.randn(latent.shape, generator=gen)
    sigmas = model.get_model_object("model_sampling").sigma_max.reshape(1).repeat(2)
    sigmas[1] = 0

    def sampler_fn(denoise, x, sigmas, extra_args=None, callback=None, disable=None):
        return denoise(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))

    sampler = comfy.samplers.KSAMPLER(sampler_fn)
    return lambda: comfy.sample.sample_custom(model, noise, 7.0, sampler, sigmas, positive, negative, latent,
                                              disable_pbar=True, seed=0)


def main(kind="sd15", side=32, rounds=5):
    print(f"Likeness per-step benchmark, {kind} at {side * 8}px:", machine())
    adapter_mod = pack("nodes.core.adapter")
    refs = pack("nodes.core.references")
    apply_node = pack("nodes.apply")
    base = real_unet(kind)
    tmp = tempfile.TemporaryDirectory()
    adapter_file = official_adapter(Path(tmp.name) / ADAPTERS[kind], ADAPTERS[kind])
    adapter = adapter_mod.load_adapter(str(adapter_file))
    gen = torch.Generator().manual_seed(0)
    feats = refs.References.from_images(refs.EncoderInfo.from_widths(1280, 1024), torch.randn(1, 1024, generator=gen),
                                        torch.randn(1, 257, 1280, generator=gen), torch.randn(1, 257, 1280,
                                                                                             generator=gen))
    tokens = refs.project_references(adapter, feats, device=DEVICE)
    models = {"plain": base}
    chained = base
    for n in range(1, 5):
        with torch.inference_mode():  # as in ComfyUI's executor
            chained = apply_node.apply_tokens(chained, adapter, tokens, 1.0)
        if n in (1, 2, 4):
            models[f"{n} adapter{'s' if n > 1 else ''}"] = chained
    leading = leading_pack()
    if leading is not None:
        outs = leading_pack_apply(leading, base, adapter_file, feats.image.penultimate,
                                  feats.image.empty_penultimate, 4)
        for n in (1, 2, 4):
            models[f"leading pack, {n}"] = outs[n - 1]
    results = interleaved({name: one_step(m, kind, side) for name, m in models.items()}, rounds)
    report(f"{kind} one CFG step (batch 2), latent {side}x{side}, {rounds} rounds", results, unit=1.0,
           unit_name="s")
    over = {n: r["min_s"] / results["plain"]["min_s"] - 1 for n, r in results.items()}  # minimums: least noise
    print("  (ratios below use the minimums, the least noisy statistic on a shared CPU)")
    if over["1 adapter"] > 0:
        print(f"  4 adapters / 1 adapter overhead: {over['4 adapters'] / over['1 adapter']:.2f}x")
    if leading is not None:
        for n, label in ((1, "1 adapter"), (2, "2 adapters"), (4, "4 adapters")):
            theirs = over[f"leading pack, {n}"]
            ratio = over[label] / theirs if theirs > 0 else float("nan")
            print(f"  {n} adapter(s): Likeness overhead / leading pack overhead = {ratio:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "sd15", int(args[1]) if len(args) > 1 else 32, int(args[2]) if len(args) > 2 else 5)
