"""A buffalo_l-shaped face model pack with random weights: SCRFD-10G with keypoints as det_10g.onnx and ArcFace
IResNet-50 as w600k_r50.onnx. The layers are those of the published files, so the compute cost is theirs.

Written from the architecture descriptions in deepinsight/insightface (read, not copied):
- SCRFD-10G (`detection/scrfd/configs/scrfd/scrfd_10g_bnkps.py`): a ResNet-D-style backbone with a three-conv
  stem, a 2x2 max-pool and average-pool shortcuts, basic blocks 3/4/2/3 at 56/88/88/224 channels; a path
  aggregation FPN (56 channels) on the stride 8/16/32 stages; one head per stride of three 80-wide conv-BN-ReLU
  layers shared by score, box and keypoint 3x3 convolutions, two anchors per cell.
- IResNet-50 (`recognition/arcface_torch/backbones/iresnet.py`): pre-activation blocks (BN, conv, BN, PReLU,
  strided conv, BN) 3/4/14/3 at 64/128/256/512 channels on 112 px, then BN, a 25088 -> 512 linear layer and BN.

Random weights find no face, so the detector file holds two networks on one input: the test suite's stand-in
detector (tests/face_models.py), which finds the bright discs of `face_image`, gives the answers, and SCRFD-10G
runs beside it; its outputs are added times a zero computed from the input at run time, so no optimiser (torch's
exporter or onnxruntime's) can prove them unused and drop them. The file costs what SCRFD-10G costs (the
stand-in is a few pooling layers) and answers what the stand-in answers. insightface's model router files it as
a 9-output SCRFD with keypoints, exactly as the real det_10g.onnx.

Usage: python benchmarks/face_arch.py [folder]   writes <folder>/models/buffalo_l/ and prints the size figures
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from onnx import helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from face_models import OPSET, detector_model  # noqa: E402

DETECTOR_FILE, RECOGNISER_FILE = "det_10g.onnx", "w600k_r50.onnx"
PUBLISHED = {DETECTOR_FILE: "4.23 M parameters, 10 GFLOPs at 640x480 (SCRFD README: all figures at VGA)",
             RECOGNISER_FILE: "43.6 M parameters, 6.3 GFLOPs at 112x112 (arcface_torch model table)"}


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def rows(x: torch.Tensor, width: int) -> torch.Tensor:
    """[1, anchors * width, h, w] -> [h * w * anchors, width], the row order insightface's SCRFD decoder reads."""
    return x.permute(0, 2, 3, 1).reshape(-1, width)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus the shortcut; a strided shortcut average-pools before its 1x1 projection."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride), conv_bn(cout, cout, relu=False))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            pool = nn.Identity() if stride == 1 else nn.AvgPool2d(stride, stride, ceil_mode=True,
                                                                  count_include_pad=False)
            self.shortcut = nn.Sequential(pool, conv_bn(cin, cout, kernel=1, relu=False))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class SCRFD10G(nn.Module):
    """Outputs: scores, box distances and keypoint offsets for strides 8, 16, 32 (in strides), 2D as in det_10g."""

    STAGES = ((3, 56, 1), (4, 88, 2), (2, 88, 2), (3, 224, 2))  # blocks, channels, stride of the first block
    NECK, HEAD, ANCHORS, HEAD_CONVS = 56, 80, 2, 3

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 28, 2), conv_bn(28, 28), conv_bn(28, 56), nn.MaxPool2d(2, 2))
        stages, cin = [], 56
        for blocks, width, stride in self.STAGES:
            stages.append(nn.Sequential(*(BasicBlock(cin if i == 0 else width, width, stride if i == 0 else 1)
                                          for i in range(blocks))))
            cin = width
        self.stages = nn.ModuleList(stages)
        n, h, levels = self.NECK, self.HEAD, [width for _, width, _ in self.STAGES[1:]]
        self.lateral = nn.ModuleList(nn.Conv2d(w, n, 1) for w in levels)
        self.smooth = nn.ModuleList(nn.Conv2d(n, n, 3, padding=1) for _ in levels)
        self.down = nn.ModuleList(nn.Conv2d(n, n, 3, 2, 1) for _ in levels[1:])
        self.fuse = nn.ModuleList(nn.Conv2d(n, n, 3, padding=1) for _ in levels[1:])
        self.towers = nn.ModuleList(nn.Sequential(*(conv_bn(n if i == 0 else h, h) for i in range(self.HEAD_CONVS)))
                                    for _ in levels)
        self.score = nn.ModuleList(nn.Conv2d(h, self.ANCHORS, 3, padding=1) for _ in levels)
        self.box = nn.ModuleList(nn.Conv2d(h, 4 * self.ANCHORS, 3, padding=1) for _ in levels)
        self.kps = nn.ModuleList(nn.Conv2d(h, 10 * self.ANCHORS, 3, padding=1) for _ in levels)
        self.box_scale = nn.Parameter(torch.ones(len(levels)))

    def forward(self, x):
        x, feats = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        top_down = [conv(f) for conv, f in zip(self.lateral, feats[1:])]
        for i in range(len(top_down) - 1, 0, -1):
            top_down[i - 1] = top_down[i - 1] + F.interpolate(top_down[i], size=top_down[i - 1].shape[-2:])
        bottom_up = [conv(t) for conv, t in zip(self.smooth, top_down)]
        for i, down in enumerate(self.down):
            bottom_up[i + 1] = bottom_up[i + 1] + down(bottom_up[i])
        levels = bottom_up[:1] + [conv(b) for conv, b in zip(self.fuse, bottom_up[1:])]
        scores, boxes, kps = [], [], []
        for i, level in enumerate(levels):
            t = self.towers[i](level)
            scores.append(rows(self.score[i](t), 1).sigmoid())
            boxes.append(rows(self.box[i](t) * self.box_scale[i], 4))
            kps.append(rows(self.kps[i](t), 10))
        return (*scores, *boxes, *kps)


class IBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout), nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.shortcut(x)


class IResNet50(nn.Module):
    STAGES = ((3, 64), (4, 128), (14, 256), (3, 512))  # blocks, channels; every stage starts with stride 2

    def __init__(self, size: int = 112, embedding: int = 512):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks, cin = [], 64
        for count, width in self.STAGES:
            blocks += [IBasicBlock(cin if i == 0 else width, width, 2 if i == 0 else 1) for i in range(count)]
            cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin * (size // 16) ** 2, embedding)
        self.features = nn.BatchNorm1d(embedding)

    def forward(self, x):
        return self.features(self.fc(torch.flatten(self.bn(self.blocks(self.stem(x))), 1)))


def seeded(cls, seed: int) -> nn.Module:
    """`cls()` with torch's default initialisation drawn from `seed`, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls().eval()


def size_figures(cls, height: int, width: int) -> tuple[float, float]:
    """(millions of parameters, G multiply-adds of the convolutions and linear layers at height x width): the
    figure the SCRFD and arcface_torch tables call GFLOPs. Shapes only, on the meta device."""
    macs = []

    def count(module, inputs, output):
        kernel = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1] \
            if isinstance(module, nn.Conv2d) else module.in_features
        macs.append(output.numel() * kernel)

    with torch.device("meta"):
        model = cls().eval()
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.register_forward_hook(count)
        with torch.no_grad():
            model(torch.empty(1, 3, height, width))
    return sum(p.numel() for p in model.parameters()) / 1e6, sum(macs) / 1e9


def export(model: nn.Module, example: torch.Tensor, outputs: list[str], dynamic: dict) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["input.1"],
                          output_names=outputs, dynamic_axes=dynamic)
    return onnx.load_from_string(buffer.getvalue())


def scrfd_onnx(seed: int = 0) -> onnx.ModelProto:
    names = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in (8, 16, 32)]
    dynamic = {"input.1": {2: "height", 3: "width"}, **{n: {0: f"n{n.split('_')[1]}"} for n in names}}
    return export(seeded(SCRFD10G, seed), torch.zeros(1, 3, 640, 640), names, dynamic)


def iresnet50_onnx(seed: int = 1) -> onnx.ModelProto:
    return export(seeded(IResNet50, seed), torch.zeros(1, 3, 112, 112), ["embedding"],
                  {"input.1": {0: "batch"}, "embedding": {0: "batch"}})


def with_stand_in(scrfd: onnx.ModelProto) -> onnx.ModelProto:
    """One detector graph: the stand-in's outputs + runtime_zero * SCRFD's outputs, output by output."""
    stand_in = detector_model()
    a = onnx.compose.add_prefix(stand_in, "stand_in/")
    b = onnx.compose.add_prefix(scrfd, "scrfd/")
    nodes = [helper.make_node("Identity", ["input.1"], [g.graph.input[0].name]) for g in (a, b)]
    # relu(-|max(input)|) is 0 for any finite image, but only the running graph knows it
    nodes += [helper.make_node("ReduceMax", ["input.1"], ["input_max"], keepdims=0),
              helper.make_node("Abs", ["input_max"], ["input_max_abs"]),
              helper.make_node("Neg", ["input_max_abs"], ["input_max_neg"]),
              helper.make_node("Relu", ["input_max_neg"], ["runtime_zero"])]
    nodes += list(a.graph.node) + list(b.graph.node)
    for out, answer, cost in zip(stand_in.graph.output, a.graph.output, b.graph.output):
        nodes += [helper.make_node("Mul", [cost.name, "runtime_zero"], [f"{out.name}_times_zero"]),
                  helper.make_node("Add", [answer.name, f"{out.name}_times_zero"], [out.name])]
    graph = helper.make_graph(nodes, "scrfd_10g_bnkps_with_stand_in", list(stand_in.graph.input),
                              list(stand_in.graph.output), list(a.graph.initializer) + list(b.graph.initializer))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_pack(folder: str, scrfd_alone: bool = False) -> str:
    """<folder>/det_10g.onnx and w600k_r50.onnx (and scrfd_10g_alone.onnx.ref, SCRFD without the stand-in, for
    timing it apart: the .ref suffix keeps it out of the pack). Returns the folder."""
    os.makedirs(folder, exist_ok=True)
    scrfd = scrfd_onnx()
    onnx.save(with_stand_in(scrfd), os.path.join(folder, DETECTOR_FILE))
    onnx.save(iresnet50_onnx(), os.path.join(folder, RECOGNISER_FILE))
    if scrfd_alone:
        onnx.save(scrfd, os.path.join(folder, "scrfd_10g_alone.onnx.ref"))
    return folder


def describe() -> list[str]:
    """One line per network: its size figures next to the published ones."""
    lines = []
    for file, cls, sizes in ((DETECTOR_FILE, SCRFD10G, ((640, 480), (640, 640))),
                             (RECOGNISER_FILE, IResNet50, ((112, 112),))):
        figures = [size_figures(cls, h, w) for w, h in sizes]
        flops = ", ".join(f"{g:.2f} GFLOPs at {w}x{h}" for (_, g), (w, h) in zip(figures, sizes))
        lines.append(f"{file}: {figures[0][0]:.2f} M parameters, {flops} (published: {PUBLISHED[file]})")
    return lines


if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out/insightface"
    print("\n".join(describe()))
    print("wrote", write_pack(os.path.join(root, "models", "buffalo_l")))
