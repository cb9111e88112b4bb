"""A loaded adapter: its detected family, projection module and per-layer image key/value weights."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from torch import nn

from . import checkpoint
from .errors import AdapterFileError
from .projection import build_projection
from .pulid_encoders import build_flux_cross_attention
from .variants import FLUX, Detected, detect


@dataclass(frozen=True, eq=False)
class Adapter:
    name: str  # file name, for messages
    detected: Detected
    projection: nn.Module
    kv_weights: dict  # checkpoint layer id -> (W_k [width, C], W_v [width, C]), stored dtype, CPU
    lora: dict = field(default_factory=dict)  # FaceID LoRA tensors found in the file, by key
    flux_modules: tuple = ()  # PuLID-FLUX: the cross-attention modules inserted after DiT blocks, in order

    def __deepcopy__(self, memo):
        return self

    @property
    def context_width(self) -> int:
        return self.detected.context_width

    def describe(self) -> str:
        return f"`{self.name}`: {self.detected.summary()}"

    def as_variant(self, title: str) -> "Adapter":
        """This adapter taken for another published family of the same layout (the tensors are shared)."""
        if self.detected.variant is not None and self.detected.variant.title == title:
            return self
        return dataclasses.replace(self, detected=self.detected.as_variant(title))


def load_adapter(path: str) -> Adapter:
    name = os.path.basename(path)
    state = checkpoint.load_state_dict(path)
    detected = detect({k: tuple(v.shape) for k, v in state.items()}, name,
                      {k: checkpoint.dtype_name(v.dtype) for k, v in state.items()}, path)
    proj_state = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
    try:
        projection = build_projection(detected.layout, proj_state)
    except (RuntimeError, KeyError, ValueError) as e:
        raise AdapterFileError(
            f"`{name}` looks like a {detected.layout.value} adapter but its `image_proj` tensors do not fit "
            f"that layout ({str(e).splitlines()[0]}). The file is damaged or of an unsupported kind.") from None
    if detected.model_family == FLUX:
        return Adapter(name, detected, projection, {}, {}, _flux_modules(name, state, detected.layer_ids))
    kv = {i: (state[f"ip_adapter.{i}.to_k_ip.weight"], state[f"ip_adapter.{i}.to_v_ip.weight"])
          for i in detected.layer_ids}
    lora = {k[len("ip_adapter."):]: v for k, v in state.items() if "_lora." in k and k.startswith("ip_adapter.")}
    return Adapter(name, detected, projection, kv, lora)


def _flux_modules(name: str, state: dict, ids) -> tuple:
    modules = []
    for i in ids:
        prefix = f"pulid_ca.{i}."
        try:
            modules.append(build_flux_cross_attention({k[len(prefix):]: v for k, v in state.items()
                                                       if k.startswith(prefix)}))
        except (RuntimeError, KeyError, ValueError) as e:
            raise AdapterFileError(
                f"`{name}`: PuLID-FLUX cross-attention module {i} does not fit its layout "
                f"({str(e).splitlines()[0]}). The file is damaged; download it again.") from None
    return tuple(modules)


def read_detection(path: str) -> Detected:
    """Detect without loading tensor data (safetensors header only)."""
    shapes, dtypes = checkpoint.read_header(path)
    return detect(shapes, os.path.basename(path), dtypes, path)

