"""Face embedding cost per photo on the CPU, through Likeness's own face path (`embed_faces`, what Likeness Face
Embed runs; no clip_vision, whose cost bench_encode.py measures) with a buffalo_l-shaped pack: SCRFD-10G and
IResNet-50 at their published size with random weights. face_arch.py says how that detector still finds the
synthetic faces while costing what SCRFD-10G costs; the last table here checks it.

Each photo's time is split into the detector and recogniser networks (onnxruntime's `run`), insightface's glue
around them (letterbox resize, blobs, box decoding, NMS) and Likeness's own work (IMAGE -> uint8 BGR, choice of
face, alignment of the recogniser crop and of the output crop, normalising, the crops IMAGE). One photo and a
batch, rounds interleaved, medians per photo.

Usage: python benchmarks/bench_face.py [rounds] [batch]
"""

import collections
import os
import statistics
import sys
import tempfile
import time

import face_arch
import numpy as np
import onnxruntime
from common import interleaved, machine, pack, report
from face_models import face_image, to_comfy  # from tests/, which common and face_arch put on the path

import folder_paths  # noqa: E402  (common puts ComfyUI on the path)

PHOTO = 1024  # px square, the face disc 256 px across: a portrait photo
PARTS = ("detector network", "recogniser network", "insightface glue", "Likeness")


class Stopwatch:
    """Seconds spent inside wrapped methods, by label, since the last `take`."""

    def __init__(self):
        self.spent = collections.Counter()

    def wrap(self, obj, method: str, label: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[label] += time.perf_counter() - t0

        setattr(obj, method, timed)

    def take(self) -> collections.Counter:
        spent, self.spent = self.spent, collections.Counter()
        return spent


def split(total: float, spent: collections.Counter, photos: int) -> dict:
    detect_glue = spent["detect"] - spent["detector network"]
    feat_glue = spent["get_feat"] - spent["recogniser network"]
    likeness = total - spent["detect"] - spent["get_feat"]
    parts = (spent["detector network"], spent["recogniser network"], detect_glue + feat_glue, likeness)
    return {name: t / photos for name, t in zip(PARTS, parts)}


def time_parts(model, images: dict, work, rounds: int, unit: str) -> None:
    """Times `work(batch)` for each batch in `images` (rounds interleaved) and prints seconds per `unit`, split
    into the two networks, insightface's glue and Likeness's own code (the rest). The model's sessions must exist
    already (run `work` once before)."""
    watch = Stopwatch()
    watch.wrap(model.detector, "detect", "detect")
    for session in {id(s): s for s in model.detector.resolution_sessions.values()}.values():
        watch.wrap(session, "run", "detector network")
    watch.wrap(model.recogniser, "get_feat", "get_feat")
    watch.wrap(model.recogniser.session, "run", "recogniser network")
    splits = {name: [] for name in images}

    def run(name):
        watch.take()
        t0 = time.perf_counter()
        work(images[name])
        splits[name].append(split(time.perf_counter() - t0, watch.take(), images[name].shape[0]))

    results = interleaved({name: (lambda n=name: run(n)) for name in images}, rounds, warmup=1)
    print(f"\nseconds per {unit} (median of {rounds} rounds; parts are medians of their own)")
    print(f"  {'':<10} {'total':>8} " + " ".join(f"{p:>19}" for p in PARTS))
    for name, r in results.items():
        parts = {p: statistics.median(s[p] for s in splits[name][1:]) for p in PARTS}  # [0] is the warm-up
        total = r["median_s"] / images[name].shape[0]
        print(f"  {name:<10} {total:8.3f} " + " ".join(f"{parts[p]:10.4f} ({parts[p] / total:5.1%})" for p in PARTS))


def main(rounds: int = 5, batch: int = 8):
    print("Likeness face-embedding benchmark (buffalo_l shapes, random weights):", machine())
    for line in face_arch.describe():
        print(" ", line)
    tmp = tempfile.TemporaryDirectory()
    root = os.path.join(tmp.name, "insightface")
    folder = face_arch.write_pack(os.path.join(root, "models", "buffalo_l"), scrfd_alone=True)
    folder_paths.add_model_folder_path("insightface", root, is_default=True)
    host = pack("nodes.host.face")
    model = host.load_face_model("buffalo_l", "CPU")
    threads = model.detector.session.get_session_options().intra_op_num_threads
    print(f"  onnxruntime {onnxruntime.__version__} on {' + '.join(model.providers_used)}, intra-op threads: "
          f"{threads or 'default (one per physical core)'}; {os.cpu_count()} logical CPUs")

    photos = [face_image(PHOTO, PHOTO, faces=((PHOTO // 2, PHOTO * 2 // 5, PHOTO // 8),), seed=i)
              for i in range(batch)]
    images = {"1 photo": to_comfy(photos[0]), f"{batch} photos": to_comfy(*photos)}
    host.embed_faces(model, images["1 photo"])  # makes insightface's 640x640 detector session
    time_parts(model, images, lambda photos_: host.embed_faces(model, photos_), rounds, "photo")

    blob = {"input.1": np.random.default_rng(0).uniform(-1, 1, (1, 3, 640, 640)).astype(np.float32)}
    alone = onnxruntime.InferenceSession(os.path.join(folder, "scrfd_10g_alone.onnx.ref"),
                                         providers=["CPUExecutionProvider"])
    check = interleaved({"det_10g.onnx (SCRFD + stand-in)": lambda: model.detector.session.run(None, blob),
                         "SCRFD-10G alone": lambda: alone.run(None, blob)}, rounds, warmup=1)
    report(f"detector network at 640x640 (median of {rounds} rounds): the stand-in must add ~nothing", check)
    tmp.cleanup()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
