"""Per-step overhead of 1, 2 and 4 chained Likeness adapters vs the plain model, real UNet layouts.

One sampling step = one CFG forward (cond + uncond in one batch) at sigma_max, run through ComfyUI's sampler.
Two measurements come from the same steps:
- whole step: wall time of the forward. On a shared CPU its noise (a few %) is larger than an adapter's cost.
- cross-attention sites: every attn2 site of the UNet is timed in place, during those same forwards, whatever
  runs there (the pack's replace, or ComfyUI's own attention at a site nobody patched). Adapters change only
  what runs at these sites, so "site time with adapters - site time of the plain model" is the per-step
  overhead, free of the noise of the convolutions around it. The remainder (whole-step difference minus site
  difference) is printed too, as a check that nothing else costs per step.
On a GPU the in-place timers would have to synchronise every call, so there only whole steps are timed.

Usage: python benchmarks/bench_forward.py [sd15|sdxl] [latent side, e.g. 32 for 256 px] [rounds] [max chain]
                                          [max chain for the leading pack: its chained applies copy the adapter]
Issue-6 targets: at most half the leading pack's overhead (+2.2/+4.1/+7.9 % for 1/2/4 at SD1.5 256 px on this
kind of machine), and 4 adapters at most 2.5x the overhead of one.
"""

import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (DEVICE, GPU, leading_pack, leading_pack_apply, machine, official_adapter, pack, real_unet,
                    sync)

import comfy.ldm.modules.attention as comfy_attention  # noqa: E402  (common puts ComfyUI on the path)
import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

ADAPTERS = {"sd15": "ip-adapter-plus_sd15.safetensors", "sdxl": "ip-adapter-plus_sdxl_vit-h.safetensors"}


class SiteClock:
    """attn2 replace that runs what ComfyUI would run at this site and adds its wall time to `clock[0]`."""

    def __init__(self, inner, clock: list):
        self.inner, self.clock = inner, clock

    def __deepcopy__(self, memo):  # the sampler's clones keep counting into the same clock
        return self

    def __call__(self, q, k, v, extra):
        t0 = time.perf_counter()
        if self.inner is not None:
            out = self.inner(q, k, v, extra)
        else:  # exactly what an unpatched CrossAttention runs between its projections
            out = comfy_attention.optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get(
                "attn_precision"), transformer_options=extra)
        self.clock[0] += time.perf_counter() - t0
        return out


def clocked(model, sites, clock: list):
    """A clone of `model` with a SiteClock at every attn2 site, wrapping the replace ComfyUI would look up."""
    out = model.clone()
    replaces = out.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for s in sites:
        inner = replaces.get(s.key) or replaces.get(s.key[:2])
        out.set_model_attn2_replace(SiteClock(inner, clock), *s.key)
    return out


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

    def step():
        with torch.inference_mode():  # as ComfyUI's executor runs every node
            return comfy.sample.sample_custom(model, noise, 7.0, sampler, sigmas, positive, negative, latent,
                                              disable_pbar=True, seed=0)
    return step


def build_models(kind, chain, leading_chain):
    adapter_mod = pack("nodes.core.adapter")
    refs = pack("nodes.core.references")
    apply_node = pack("nodes.apply")
    base = real_unet(kind)
    tmp = tempfile.TemporaryDirectory()
    adapter_file = official_adapter(Path(tmp.name) / ADAPTERS[kind], ADAPTERS[kind])
    adapter = adapter_mod.load_adapter(str(adapter_file))
    gen = torch.Generator().manual_seed(0)
    feats = refs.References.from_images(refs.EncoderInfo.from_widths(1280, 1024), torch.randn(1, 1024, generator=gen),
                                        torch.randn(1, 257, 1280, generator=gen),
                                        torch.randn(1, 257, 1280, generator=gen))
    tokens = refs.project_references(adapter, feats, device=DEVICE)
    counts = [n for n in (1, 2, 4) if n <= chain]
    models = {"plain": base}
    chained = base
    for n in range(1, max(counts) + 1):
        with torch.inference_mode():  # as in ComfyUI's executor
            chained = apply_node.apply_tokens(chained, adapter, tokens, 1.0)
        if n in counts:
            models[f"Likeness {n}"] = chained
    leading = leading_pack()
    if leading is not None:
        leading_counts = [n for n in counts if n <= leading_chain]
        outs = leading_pack_apply(leading, base, adapter_file, feats.image.penultimate,
                                  feats.image.empty_penultimate, max(leading_counts))
        for n in leading_counts:
            models[f"leading pack {n}"] = outs[n - 1]
    return models, counts, leading is not None, tmp


def measure(models, kind, side, rounds):
    """Per config: lists of whole-step seconds and summed site seconds, rounds interleaved."""
    sites = pack("nodes.host.sites").find_sites(models["plain"])
    clocks = {name: [0.0] for name in models}
    steps = {name: one_step(m if GPU else clocked(m, sites, clocks[name]), kind, side) for name, m in models.items()}
    names = list(models)
    for n in names:  # warm-up: first-run casts and allocations
        steps[n]()
    whole = {n: [] for n in names}
    at_sites = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            gc.collect()
            clocks[n][0] = 0.0
            sync()
            t0 = time.perf_counter()
            steps[n]()
            sync()
            whole[n].append(time.perf_counter() - t0)
            at_sites[n].append(clocks[n][0])
    return whole, at_sites, len(sites)


def main(kind="sd15", side=32, rounds=7, chain=4, leading_chain=4):
    print(f"Likeness per-step benchmark, {kind} at {side * 8} px:", machine())
    models, counts, has_leading, tmp = build_models(kind, chain, leading_chain)
    whole, at_sites, n_sites = measure(models, kind, side, rounds)
    med = statistics.median
    plain = med(whole["plain"])
    print(f"\n{kind} one CFG step (batch 2), latent {side}x{side}, {rounds} rounds, {n_sites} cross-attention sites")
    print(f"  {'config':<18} {'step (median)':>14} {'whole-step overhead':>20} {'site time':>11} "
          f"{'per-step overhead at sites':>28} {'remainder':>10}")
    over = {}
    for name in models:
        step_over = med(a / b - 1 for a, b in zip(whole[name], whole["plain"])) * 100
        if GPU:
            over[name] = step_over
            print(f"  {name:<18} {med(whole[name]):12.3f} s {step_over:+18.2f} %")
            continue
        site_delta = [a - b for a, b in zip(at_sites[name], at_sites["plain"])]
        over[name] = med(site_delta) / plain * 100
        rest = med((wa - wb) - (sa - sb) for wa, wb, sa, sb in
                   zip(whole[name], whole["plain"], at_sites[name], at_sites["plain"])) / plain * 100
        print(f"  {name:<18} {med(whole[name]):12.3f} s {step_over:+18.2f} % {med(at_sites[name]) * 1e3:8.1f} ms "
              f"{med(site_delta) * 1e3:+11.1f} ms = {over[name]:+7.3f} % {rest:+9.2f} %")
        spread = (min(site_delta) * 1e3, max(site_delta) * 1e3)
        if name != "plain":
            print(f"  {'':<18} site overhead range over rounds: {spread[0]:+.1f} .. {spread[1]:+.1f} ms")
    print("\n  per-step overhead used below:", "whole steps (paired medians)" if GPU else
          "site time difference, % of the plain step's median")
    if 4 in counts and over["Likeness 1"] > 0:
        print(f"  Likeness: 4 adapters / 1 adapter overhead = {over['Likeness 4'] / over['Likeness 1']:.2f}x "
              f"(target <= 2.5x)")
    if has_leading:
        for n in (n for n in counts if f"leading pack {n}" in over):
            theirs = over[f"leading pack {n}"]
            ratio = over[f"Likeness {n}"] / theirs if theirs > 0 else float("nan")
            print(f"  {n} adapter(s): Likeness {over[f'Likeness {n}']:+.3f} % vs leading pack {theirs:+.3f} % "
                  f"-> ratio {ratio:.2f} (target <= 0.5)")
        if "leading pack 4" in over and over["leading pack 1"] > 0:
            print(f"  leading pack: 4 adapters / 1 adapter overhead = "
                  f"{over['leading pack 4'] / over['leading pack 1']:.2f}x")
    tmp.cleanup()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "sd15", *(int(a) for a in args[1:5]))
