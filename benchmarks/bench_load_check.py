"""What the NaN/inf check on loaded weights costs, against loading the file: it must stay a small part of loading.

Every model file Likeness loads is checked once for NaN and infinite values (nodes/core/checkpoint.py), as part
of the cache entry, so sampling never pays for it. This measures that one-off cost on the largest adapters, full
size with synthetic fp16 weights in the exact official layouts, written to a temporary folder:

* ip-adapter-faceid-plusv2_sdxl.bin (the largest file: the FaceID Plus projection, 70 sites of image K/V and the
  rank-128 LoRA on every attention projection; a torch .bin, read weights-only);
* ip-adapter-plus_sdxl_vit-h.safetensors (the largest safetensors adapter).

Per round, interleaved: reading the file without the check, the check alone on the tensors just read, and the
whole loader (read, check, build the projection) with and without the check. The check is also timed with the
obvious alternative, `torch.isfinite(t).all()`, which makes a temporary the size of each tensor. safetensors
files are memory-mapped, so their "read" is lazy: the check is what first touches their data, which Apply would
otherwise do a moment later.

    python benchmarks/bench_load_check.py [rounds] [threads]
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, pack

import builders  # noqa: E402

FILES = ("ip-adapter-faceid-plusv2_sdxl.bin", "ip-adapter-plus_sdxl_vit-h.safetensors")


def write_official(path: Path, name: str, seed: int = 0) -> Path:
    """Full-size synthetic weights, fp16 as published, one tensor at a time (peak memory: the file)."""
    gen = torch.Generator().manual_seed(seed)
    state = {k: (torch.randn(shape, generator=gen) * 0.02).half() for k, shape in
             sorted(builders.official_shapes(name).items())}
    if name.endswith(".bin"):  # the h94 .bin layout: {"image_proj": {...}, "ip_adapter": {...}}
        nested = {}
        for key, value in state.items():
            group, rest = key.split(".", 1)
            nested.setdefault(group, {})[rest] = value
        torch.save(nested, path)
    else:
        builders.save_safetensors(str(path), state)
    return path


def isfinite_all(state: dict) -> None:
    for t in state.values():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise AssertionError


def main(rounds: int = 3, threads: int = 1):
    torch.set_num_threads(threads)  # the machine is shared: one thread gives steadier ratios
    checkpoint, adapter_mod = pack("nodes.core.checkpoint"), pack("nodes.core.adapter")
    checked = checkpoint.first_nonfinite

    def load_unchecked(path):
        checkpoint.first_nonfinite = lambda state: None
        try:
            return adapter_mod.load_adapter(path)
        finally:
            checkpoint.first_nonfinite = checked

    print("Likeness: cost of the NaN/inf check on loaded weights,", machine())
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            path = write_official(Path(tmp) / name, name)
            size = path.stat().st_size
            state = checkpoint.load_file(str(path), finite=False)
            assert checked(state) is None
            runs = {
                "read": lambda: checkpoint.load_file(str(path), finite=False),
                "check": lambda: checked(state),
                "isfinite": lambda: isfinite_all(state),
                "load": lambda: adapter_mod.load_adapter(str(path)),
                "load_unchecked": lambda: load_unchecked(str(path)),
            }
            times = {k: [] for k in runs}
            for r in range(rounds + 1):  # the first round warms the page cache and is not counted
                for key in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    t0 = time.perf_counter()
                    runs[key]()
                    if r:
                        times[key].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}

            def paired(a, b):
                return statistics.median(x / y for x, y in zip(times[a], times[b])) * 100

            print(f"\n{name}: {size / 2**20:.0f} MB, {len(state)} tensors, {rounds} rounds, {threads} thread(s)")
            print(f"  read the file, no check       {med['read'] * 1e3:8.0f} ms")
            print(f"  the check (aminmax)           {med['check'] * 1e3:8.0f} ms   {paired('check', 'read'):5.1f} % of "
                  "the read")
            print(f"  isfinite().all() instead      {med['isfinite'] * 1e3:8.0f} ms   {paired('isfinite', 'read'):5.1f} % "
                  "of the read")
            print(f"  load_adapter, as shipped      {med['load'] * 1e3:8.0f} ms   the check is "
                  f"{paired('check', 'load'):4.1f} % of it")
            print(f"  load_adapter without check    {med['load_unchecked'] * 1e3:8.0f} ms   as shipped / without: "
                  f"{paired('load', 'load_unchecked') / 100:.3f}")
            path.unlink()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
