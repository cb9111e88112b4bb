"""Identity Score cost per image on the CPU, through the node's own path (`score_faces` and the outputs), with a
buffalo_l-shaped pack: SCRFD-10G and IResNet-50 at their published size with random weights (face_arch.py), the
photos and the split of bench_face.py, in the same run:

* each image's time split into the detector and recogniser networks (onnxruntime's `run`), insightface's glue
  around them, and Likeness's own work (IMAGE -> uint8 BGR, the faces' order, alignment, cosines, calibration,
  the assignment, the report and the outputs);
* memory: how much the process grows while scoring a batch of 8 and of 64 images (the batch itself is made
  before), sampled every few milliseconds. Flat means the 64-image batch grows it no more than the 8-image one.

Usage: python benchmarks/bench_identity.py [rounds] [batch]
"""

import os
import sys
import tempfile
import threading
import time

import face_arch
import psutil
from bench_face import PHOTO, time_parts
from common import machine, pack
from face_models import face_image, to_comfy

import folder_paths  # noqa: E402  (common puts ComfyUI on the path)

MEMORY_PHOTO = 512  # px: 64 of them are 200 MB of IMAGE, made before the measurement starts


def photos(count: int, size: int, seed: int) -> list:
    return [face_image(size, size, faces=((size // 2, size * 2 // 5, size // 8),), seed=seed + i) for i in range(count)]


def peak_growth(fn) -> float:
    """MB the process's resident memory grows above its level before `fn`, at the highest point during it."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak, done = [start], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], process.memory_info().rss) - start) / 2 ** 20


def main(rounds: int = 5, batch: int = 8):
    print("Likeness Identity Score benchmark (buffalo_l shapes, random weights):", machine())
    for line in face_arch.describe():
        print(" ", line)
    tmp = tempfile.TemporaryDirectory()
    root = os.path.join(tmp.name, "insightface")
    face_arch.write_pack(os.path.join(root, "models", "buffalo_l"), scrfd_alone=True)
    folder_paths.add_model_folder_path("insightface", root, is_default=True)
    host = pack("nodes.host.face")
    check = pack("nodes.host.check")
    model = host.load_face_model("buffalo_l", "CPU")
    references = host.embed_faces(model, to_comfy(*photos(3, PHOTO, seed=0)))[0]

    def score(images):
        verdict = check.score_faces(model, [("references", references)], images, 0.0)
        return check.outputs(verdict, images)

    images = {"1 image": to_comfy(*photos(1, PHOTO, seed=100)), f"{batch} images": to_comfy(*photos(batch, PHOTO, 100))}
    score(images["1 image"])  # makes insightface's 640x640 detector session
    time_parts(model, images, score, rounds, "image")

    print(f"\nmemory growth while scoring ({MEMORY_PHOTO} px images; the batch is made before)")
    del images
    for count in (8, 64, 8, 64):
        batch_images = to_comfy(*photos(count, MEMORY_PHOTO, seed=200))
        outputs = []
        grown = peak_growth(lambda: outputs.append(score(batch_images)))
        passed = outputs[0][2]
        kept = "all passed: `passed` is the batch itself" if passed is batch_images else \
            f"{getattr(passed, 'shape', [0])[0]} passed (copied)"
        print(f"  {count:>3} images ({batch_images.numel() * 4 / 2 ** 20:4.0f} MB of IMAGE): +{grown:6.1f} MB ({kept})")
        if count == 64:
            control = peak_growth(lambda: batch_images.clone())
            print(f"      control, one copy of the 64-image batch (what a full-batch conversion would add): "
                  f"+{control:6.1f} MB")
        del batch_images, outputs
    tmp.cleanup()


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
