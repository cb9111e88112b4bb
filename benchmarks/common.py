"""Shared setup for the benchmarks: real ComfyUI on CPU (or GPU when present), the pack, real UNet layouts with
random weights, synthetic full-size adapters, and side-by-side timing.

Run a benchmark from the pack folder: `python benchmarks/bench_attention.py`. Every script prints ratios
measured in one process, rounds interleaved, medians reported; absolute times on a shared machine are noise.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK / "tests"))  # the synthetic checkpoint builders live with the tests


def find_comfyui() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    for c in ([Path(env)] if env else []) + list(PACK.parents) + [Path.home() / "ComfyUI"]:
        if (c / "comfy" / "model_patcher.py").is_file():
            return c.resolve()
    sys.exit("No ComfyUI found: set COMFYUI_PATH or put ComfyUI at ~/ComfyUI.")


COMFYUI = find_comfyui()
sys.path.insert(0, str(COMFYUI))
import comfy.cli_args  # noqa: E402

import torch  # noqa: E402

GPU = torch.cuda.is_available() and os.environ.get("LIKENESS_BENCH_CPU") != "1"
comfy.cli_args.args.cpu = not GPU
# LIKENESS_DYNAMIC_VRAM=on|off runs under ComfyUI's dynamic VRAM or explicitly without it (a ComfyUI that has it
# turns it on by default in main.py; a script that imports comfy gets it only when asked). Unset: untouched.
DYNAMIC_VRAM = os.environ.get("LIKENESS_DYNAMIC_VRAM", "")
for flag, wanted in (("disable_dynamic_vram", "off"), ("enable_dynamic_vram", "on")):
    if DYNAMIC_VRAM == wanted and hasattr(comfy.cli_args.args, flag):
        setattr(comfy.cli_args.args, flag, True)
import utils.install_util  # noqa: E402,F401
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.supported_models  # noqa: E402
import nodes  # noqa: E402

import builders  # noqa: E402

asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
assert asyncio.run(nodes.load_custom_node(str(PACK)))
PACK_MODULE = str(PACK).replace(".", "_x_")
DEVICE = comfy.model_management.get_torch_device()
DTYPE = torch.float16 if GPU else torch.float32


def start_dynamic_vram() -> str:
    """Turn dynamic VRAM on as ComfyUI's main.py does (comfy-aimdo on the device, the dynamic ModelPatcher as the
    core one), every step feature-detected. Returns "on" or why not."""
    patchers = comfy.model_patcher
    if not hasattr(patchers, "ModelPatcherDynamic"):
        return "unavailable: this ComfyUI has no dynamic VRAM"
    if not GPU:
        return "unavailable: needs a CUDA device"
    try:
        control = importlib.import_module("comfy_aimdo.control")
        index = DEVICE.index or 0
        if hasattr(control, "init_devices"):
            try:
                started = control.init_devices([index])
            except TypeError:  # newer comfy-aimdo takes (index, headroom bytes)
                started = control.init_devices([(index, 0)])
        else:
            started = control.init_device(index)
    except Exception as e:  # not installed, or its native part failed
        return f"unavailable: comfy-aimdo ({type(e).__name__}: {e})"
    if not started:
        return "unavailable: comfy-aimdo found no usable device"
    memory = importlib.import_module("comfy.memory_management")
    if hasattr(memory, "aimdo_enabled"):
        memory.aimdo_enabled = True
    if hasattr(memory, "aimdo_allocator"):
        memory.aimdo_allocator = importlib.import_module("comfy_aimdo.torch").get_torch_allocator()
    patchers.CoreModelPatcher = patchers.ModelPatcherDynamic
    return "on"


DYNAMIC_STATE = start_dynamic_vram() if DYNAMIC_VRAM == "on" else (DYNAMIC_VRAM or "not requested")


def pack(module: str):
    return importlib.import_module(f"{PACK_MODULE}.{module}")


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if GPU else f"CPU ({platform.processor() or platform.machine()}, " \
                                                     f"{torch.get_num_threads()} threads)"
    return (f"{dev}; torch {torch.__version__}; ComfyUI {comfyui_version()}; dtype {str(DTYPE).split('.')[-1]}; "
            f"dynamic VRAM {DYNAMIC_STATE}; {time.strftime('%Y-%m-%d')}")


def comfyui_version() -> str:
    try:
        return importlib.import_module("comfyui_version").__version__
    except Exception:
        return "unknown"


def real_unet(kind: str, seed: int = 0):
    """The real SD1.5/SDXL layout with seeded N(0, 0.02) weights on the benchmark device."""
    cls, cfg = builders._config(kind, tiny=False)
    cfg["dtype"] = DTYPE
    mc = cls(cfg)
    mc.set_inference_dtype(DTYPE, None)
    model = mc.get_model({}, device=DEVICE)
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02, generator=gen)
    if DYNAMIC_STATE == "on":  # dynamic VRAM streams weights from the offload device (RAM) as layers run
        cpu = torch.device("cpu")
        patcher = comfy.model_patcher.CoreModelPatcher(model.to(cpu), load_device=DEVICE, offload_device=cpu)
        assert patcher.is_dynamic(), "dynamic VRAM was started but the core ModelPatcher is not dynamic"
        return patcher
    return comfy.model_patcher.ModelPatcher(model, load_device=DEVICE, offload_device=DEVICE)


def official_adapter(path: Path, name: str, seed: int = 0) -> Path:
    """A synthetic adapter with the exact keys and shapes of an official file, fp16 like the published ones."""
    if not path.exists():
        state = {k: v.half() for k, v in builders.tensors_for(builders.official_shapes(name), seed).items()}
        builders.save_safetensors(str(path), state)
    return path


def sync():
    if GPU:
        torch.cuda.synchronize()


def timed(fn, repeat: int = 1) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeat


def interleaved(configs: dict, rounds: int, repeat: int = 1, warmup: int = 1) -> dict:
    """Median seconds per config, rounds interleaved (order reversed every other round), plus paired ratios
    against the first config."""
    names = list(configs)
    for _ in range(warmup):
        for n in names:
            configs[n]()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            gc.collect()
            times[n].append(timed(configs[n], repeat))
    base = names[0]
    out = {}
    for n in names:
        ratios = [t / b for t, b in zip(times[n], times[base])]
        out[n] = {"median_s": statistics.median(times[n]), "paired_ratio": statistics.median(ratios),
                  "min_s": min(times[n])}
    return out


def report(title: str, results: dict, unit: float = 1e3, unit_name: str = "ms") -> None:
    print(f"\n{title}")
    first = next(iter(results.values()))
    for name, r in results.items():
        over = (r["median_s"] / first["median_s"] - 1) * 100
        over_min = (r["min_s"] / first["min_s"] - 1) * 100
        print(f"  {name:<28} {r['median_s'] * unit:10.2f} {unit_name}   {over:+7.1f} % (medians)   "
              f"{(r['paired_ratio'] - 1) * 100:+7.1f} % (paired)   {over_min:+7.1f} % (minimums)")


def leading_pack():
    """The leading pack (cubiq/ComfyUI_IPAdapter_plus) when $CUBIQ_PATH points at a copy, else None. It is GPL
    and only run side by side here, never shipped."""
    path = os.environ.get("CUBIQ_PATH")
    if not path:
        return None
    if "IPAdapterEmbeds" not in nodes.NODE_CLASS_MAPPINGS:
        if not asyncio.run(nodes.load_custom_node(os.path.abspath(path))):
            sys.exit(f"CUBIQ_PATH={path} could not be loaded as a ComfyUI pack.")
    return nodes.NODE_CLASS_MAPPINGS


def leading_pack_apply(mappings, model, adapter_file: Path, pos_embed, neg_embed, count: int):
    """`count` chained applies of the leading pack's IPAdapterEmbeds (weight 1, linear, V only)."""
    import folder_paths

    folder_paths.add_model_folder_path("ipadapter", str(adapter_file.parent), is_default=True)
    loader = mappings["IPAdapterModelLoader"]
    with torch.inference_mode():
        ipadapter = getattr(loader(), loader.FUNCTION)(ipadapter_file=adapter_file.name)[0]
    apply_cls = mappings["IPAdapterEmbeds"]
    out = []
    for _ in range(count):  # ComfyUI runs every node under inference mode
        with torch.inference_mode():
            model = getattr(apply_cls(), apply_cls.FUNCTION)(
                model=model, ipadapter=ipadapter, pos_embed=pos_embed, weight=1.0, weight_type="linear", start_at=0.0,
                end_at=1.0, embeds_scaling="V only", neg_embed=neg_embed)[0]
        out.append(model)
    return out
