"""Reference encoding cost: 1 vs 10 references, batched vs one at a time, on the real ViT-H/14 layout (random
weights), through Likeness's own encode path (crop, ComfyUI preprocessing, CLIP vision, empty-image features).

Target (issue 6): 10 references cost at most 10x one reference, and the batched path beats one at a time.
Usage: python benchmarks/bench_encode.py [rounds]
"""

import os
import sys

import torch
from common import interleaved, machine, pack, report

import comfy.clip_vision  # noqa: E402


def vit_h():
    config = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")
    cv = comfy.clip_vision.ClipVisionModel(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in cv.model.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    return cv


def main(rounds: int = 3):
    print("Likeness reference-encoding benchmark (ViT-H/14, 224 px):", machine())
    encode = pack("nodes.host.encode").encode_references
    cv = vit_h()
    gen = torch.Generator().manual_seed(1)
    one = torch.rand(1, 320, 256, 3, generator=gen)
    ten = torch.rand(10, 320, 256, 3, generator=gen)
    results = interleaved({
        "1 reference": lambda: encode(cv, one),
        "10 references, one batch": lambda: encode(cv, ten, batch_size=0),
        "10 references, one at a time": lambda: encode(cv, ten, batch_size=1),
    }, rounds, warmup=1)
    report(f"encode (median of {rounds} rounds)", results, unit=1.0, unit_name="s")
    base = results["1 reference"]["median_s"]
    batched = results["10 references, one batch"]["median_s"]
    single = results["10 references, one at a time"]["median_s"]
    print(f"  10 batched / 1 = {batched / base:.2f}x (target <= 10x); batched vs one at a time = "
          f"{batched / single:.2f}x (target < 1)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
