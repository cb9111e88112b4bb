"""Cost of one cross-attention call with 0, 1, 2 and 4 Likeness adapters (SD1.5 shapes at 512 px).

q [2, T, C] (cond + uncond in one batch), text k/v [2, 77, C], 8 heads, 16 image tokens per adapter, under
inference mode as ComfyUI samples.
"plain" is ComfyUI's optimized_attention on the text tokens, exactly what an unpatched site runs.
Target (issue 6): 64 x 1280 with one adapter at most +60 % over plain.
"""

import torch

from common import DEVICE, DTYPE, interleaved, machine, pack, report

attention = pack("nodes.core.attention")
patch = pack("nodes.host.patch")

SHAPES = [(4096, 320), (1024, 640), (256, 1280), (64, 1280)]
KEY = ("input", 1, 0)


def prompt(width: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    kv = attention.SiteKV(*(torch.randn(16, width, generator=gen) * 0.1 for _ in range(4)))
    return attention.ImagePrompt({KEY: kv}, 1e9, 0.0)


def main(rounds: int = 7):
    print("Likeness attention-call benchmark:", machine())
    for tokens, width in SHAPES:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(2, tokens, width, generator=gen).to(DEVICE, DTYPE)
        k = torch.randn(2, 77, width, generator=gen).to(DEVICE, DTYPE)
        v = torch.randn(2, 77, width, generator=gen).to(DEVICE, DTYPE)
        extra = {"n_heads": 8, "attn_precision": None, "cond_or_uncond": [1, 0],
                 "sigmas": torch.tensor([5.0], device=DEVICE)}
        sites = {n: attention.DecoupledCrossAttention(KEY, [prompt(width, s) for s in range(n)], patch._attention)
                 for n in (1, 2, 4)}
        configs = {"plain": lambda: patch._attention(q, k, v, 8, transformer_options=extra)}
        for n, site in sites.items():
            configs[f"{n} adapter{'s' if n > 1 else ''}"] = lambda site=site: site(q, k, v, extra)
        repeat = max(1, int(2e6 // (tokens * width)))
        with torch.inference_mode():  # as ComfyUI samples
            results = interleaved(configs, rounds, repeat=repeat, warmup=2)
        report(f"{tokens} tokens x {width} (mean of {repeat} calls per round, {rounds} rounds)", results)


if __name__ == "__main__":
    main()
