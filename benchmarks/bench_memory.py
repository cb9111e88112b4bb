"""Bytes held per chained adapter: the adapter's weights should exist once, however many applies and clones.

Counts distinct tensor storages reachable from each MODEL output's model_options (what ComfyUI keeps in its
node cache) plus the loaded adapter, with the UNet itself excluded. Leading pack, same machine kind
(perf-baseline.md): 4 chained applies of ip-adapter-plus_sd15 hold 10 module copies, +1994 MB, and a plain
clone adds 749 MB. Target: about 94 MB fp16 (the file) for any number of applies.
"""

import dataclasses
import inspect
import sys
import tempfile
from pathlib import Path

import torch
from common import DEVICE, leading_pack, leading_pack_apply, machine, official_adapter, pack

import comfy.model_base  # noqa: E402
import comfy.model_patcher  # noqa: E402
import builders  # noqa: E402

SKIP = (comfy.model_patcher.ModelPatcher, comfy.model_base.BaseModel)  # the UNet itself is not counted


def storages(*roots) -> dict:
    """data_ptr -> nbytes of every tensor storage reachable through containers and our dataclasses."""
    seen, found, stack = set(), {}, list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "meta":
                st = obj.untyped_storage()
                found[st.data_ptr()] = st.nbytes()
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, SKIP):
            continue
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.state_dict().values())
        elif inspect.ismethod(obj):
            stack.append(obj.__self__)
        elif inspect.isfunction(obj):  # closures hold state; module globals do not count
            stack.extend(c.cell_contents for c in (obj.__closure__ or ()) if c.cell_contents is not None)
        elif inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
            continue
        elif dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return found


def mb(n: int) -> str:
    return f"{n / 2**20:8.1f} MB"


def main(kind="sd15"):
    name = {"sd15": "ip-adapter-plus_sd15.safetensors", "sdxl": "ip-adapter-plus_sdxl_vit-h.safetensors"}[kind]
    print(f"Likeness memory per chained adapter ({name}, synthetic fp16 weights):", machine())
    adapter_mod, refs, apply_node = pack("nodes.core.adapter"), pack("nodes.core.references"), pack("nodes.apply")
    tmp = tempfile.TemporaryDirectory()
    path = official_adapter(Path(tmp.name) / name, name)
    file_bytes = path.stat().st_size
    adapter = adapter_mod.load_adapter(str(path))
    feats = refs.References.from_images(refs.EncoderInfo.from_widths(1280, 1024), torch.randn(1, 1024),
                                        torch.randn(1, 257, 1280), torch.randn(1, 257, 1280))
    tokens = refs.project_references(adapter, feats, device=DEVICE)
    model = builders.build_unet(kind, tiny=False)  # meta device: only adapter-side bytes are counted
    adapter_bytes = sum(storages(adapter).values())
    print(f"  file on disk                     {mb(file_bytes)}")
    print(f"  loaded adapter (kept by loader)  {mb(adapter_bytes)}")
    outputs, chained = [], model
    for n in range(1, 5):
        chained = apply_node.apply_tokens(chained, adapter, tokens, 1.0)
        outputs.append(chained)
        everything = storages(adapter, *[m.model_options for m in outputs])
        last = storages(chained.model_options)
        print(f"  after apply #{n}: all outputs + adapter {mb(sum(everything.values()))}; "
              f"last output's patch {mb(sum(last.values()))}")
    clone = chained.clone()
    everything = storages(adapter, clone.model_options, *[m.model_options for m in outputs])
    print(f"  + a plain clone of the 4-adapter model: {mb(sum(everything.values()))} "
          f"(clone adds {mb(sum(everything.values()) - sum(storages(adapter, *[m.model_options for m in outputs]).values()))})")
    added = sum(storages(*[m.model_options for m in outputs]).values()) / 4
    print(f"  bytes added per chained apply (image K/V for every site): {mb(int(added))}")
    leading = leading_pack()
    if leading is not None:
        print("  leading pack, same file and chain:")
        outs = leading_pack_apply(leading, model, path, feats.image.penultimate, feats.image.empty_penultimate, 4)
        for n in range(1, 5):
            total = sum(storages(*[m.model_options for m in outs[:n]]).values())
            print(f"    after apply #{n}: all outputs {mb(total)}")
        clone_total = sum(storages(outs[-1].clone().model_options, *[m.model_options for m in outs]).values())
        print(f"    + a plain clone: {mb(clone_total)}")
    tmp.cleanup()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sd15")
