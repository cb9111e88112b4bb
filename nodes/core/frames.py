"""Per-frame weights for animation: a weight curve over frames, and how a batch of reference images is spread over
the frames (one image held for a stretch of frames, or two images cross-faded).

The options and their meanings are the leading ComfyUI IP-Adapter pack's "IPAdapter Weights" node, so its
workflows convert one to one (its `ease_in` rises fast and `ease_out` slowly: kept as they are, see the help page).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from .errors import InputError

TIMINGS = ("custom", "linear", "ease_in_out", "ease_in", "ease_out", "random")
METHODS = ("full batch", "shift batches", "alternate batches")


@dataclass(frozen=True)
class FrameStrategy:
    """The settings of a frame schedule, passed between nodes so another schedule can repeat them."""

    weights: str = "1.0, 0.0"
    timing: str = "linear"
    frames: int = 0
    start_frame: int = 0
    end_frame: int = 9999
    add_starting_frames: int = 0
    add_ending_frames: int = 0
    method: str = "full batch"
    frame_count: int = 0  # reference images the schedule was made for

    def __post_init__(self):
        if self.timing not in TIMINGS:
            raise InputError(f"timing `{self.timing}` is not one of: {', '.join(TIMINGS)}.")
        if self.method not in METHODS:
            raise InputError(f"method `{self.method}` is not one of: {', '.join(METHODS)}.")


def parse_weights_text(text: str) -> list[float]:
    """`"1.0, 0.5\\n0"` -> [1.0, 0.5, 0.0] (commas or new lines)."""
    out = []
    for token in text.replace("\n", ",").split(","):
        if not token.strip():
            continue
        try:
            value = float(token)
        except ValueError:
            raise InputError(f"weights: `{token.strip()}` is not a number. Write numbers separated by commas or new "
                             "lines, e.g. `1.0, 0.0`.") from None
        if not math.isfinite(value):
            raise InputError(f"weights: `{token.strip()}` is not a finite number.")
        out.append(value)
    return out


def _seed(strategy: FrameStrategy) -> int:
    """`random` timing is seeded by the settings, so a workflow gives the same weights every run."""
    return int.from_bytes(hashlib.sha256(repr(strategy).encode()).digest()[:8], "little")


def frame_curve(strategy: FrameStrategy) -> list[float]:
    """The weight of each frame for one image (or pair of images).

    custom: the listed weights, as they are. Otherwise from the first listed weight s to the last e (0 -> 1 when
    none) over max(frames, 2) frames: s up to start_frame, then the curve over the frames up to
    min(end_frame, frames), then e; with x = i / (n - 1) over the n frames of the curve:
        linear       s + (e - s) x
        ease_in_out  s + (e - s) (1 - cos(pi x)) / 2
        ease_in      s + (e - s) sin(pi x / 2)
        ease_out     s + (e - s) (1 - cos(pi x / 2))
        random       uniform between s and e (the last curve frame included)
    and the last curve frame is exactly e except for random."""
    listed = parse_weights_text(strategy.weights)
    if strategy.timing == "custom":
        return listed or [0.0]
    start, end = (listed[0], listed[-1]) if listed else (0.0, 1.0)
    frames = max(strategy.frames, 2)
    end_frame = min(strategy.end_frame, frames)
    duration = end_frame - strategy.start_frame
    if duration < 1:
        raise InputError(f"start_frame ({strategy.start_frame}) must be before end_frame ({end_frame}, at most "
                         f"frames = {frames}): the curve would have no frames.")
    rng = random.Random(_seed(strategy))
    curve = {
        "linear": lambda x: start + (end - start) * x,
        "ease_in_out": lambda x: start + (end - start) * (1 - math.cos(x * math.pi)) / 2,
        "ease_in": lambda x: start + (end - start) * math.sin(x * math.pi / 2),
        "ease_out": lambda x: start + (end - start) * (1 - math.cos(x * math.pi / 2)),
        "random": lambda x: rng.uniform(start, end),
    }[strategy.timing]
    weights = [start] * strategy.start_frame
    weights += [curve(i / (duration - 1) if duration > 1 else 1.0) for i in range(duration)]
    if strategy.timing != "random":
        weights[-1] = end
    weights += [end] * (frames - end_frame)
    return weights


@dataclass(frozen=True)
class FrameSchedule:
    """Weights per frame and, when images were given, which image each frame shows (indices into the batch)."""

    weights: tuple[float, ...]
    image_1: tuple[int, ...] | None
    image_2: tuple[int, ...] | None

    @property
    def weights_invert(self) -> tuple[float, ...]:
        return self.weights[::-1]

    @property
    def total_frames(self) -> int:
        return len(self.weights)


def _repeat_each(indices: list[int], times: int) -> list[int]:
    return [i for i in indices for _ in range(times)]


def frame_schedule(strategy: FrameStrategy, images: int = 0) -> FrameSchedule:
    """Spread `images` reference images over the frames of the curve.

    full batch         each image holds for one curve: weights = curve repeated per image
    shift batches      image k fades into image k + 1: image_1 = 0..N-2, image_2 = 1..N-1, one curve each
    alternate batches  pairs alternate which image fades in; every second curve is inverted within its range
                       (w -> max - (w - min)); image_1 takes the even images, image_2 the odd ones
    add_starting_frames / add_ending_frames hold the first / last weight and image for that many more frames."""
    curve = frame_curve(strategy)
    if images <= 0:
        return FrameSchedule(tuple(curve), None, None)
    n = len(curve)
    image_2 = None
    if strategy.method == "shift batches":
        if images < 2:
            raise InputError("method `shift batches` fades each image into the next, so it needs at least 2 images.")
        weights = curve * (images - 1)
        image_1, image_2 = list(range(images - 1)), list(range(1, images))
    elif strategy.method == "alternate batches":
        if images < 2:
            raise InputError("method `alternate batches` alternates between images, so it needs at least 2 images.")
        low, high = min(curve), max(curve)
        pair = curve + [high - (w - low) for w in curve]
        image_1 = _repeat_each(list(range(0, images, 2)), 2)[1:]
        image_2 = _repeat_each(list(range(1, images, 2)), 2)
        weights = pair * (len(image_1) // 2)
        if images % 2:
            image_1 = image_1[:-1]
        else:
            image_2 = image_2[:-1]
            weights = weights + curve
    else:
        weights = curve * images
        image_1 = list(range(images))
    image_1 = _repeat_each(image_1, n)
    image_2 = None if image_2 is None else _repeat_each(image_2, n)
    if strategy.add_starting_frames > 0:
        k = strategy.add_starting_frames
        weights = [weights[0]] * k + weights
        image_1 = [0] * k + image_1
        image_2 = None if image_2 is None else [0] * k + image_2
    if strategy.add_ending_frames > 0:
        k = strategy.add_ending_frames
        weights = weights + [weights[-1]] * k
        image_1 = image_1 + [images - 1] * k
        image_2 = None if image_2 is None else image_2 + [images - 1] * k
    return FrameSchedule(tuple(weights), tuple(image_1), None if image_2 is None else tuple(image_2))


def frame_weights_list(value) -> list[float] | None:
    """A weight input that may carry a per-frame list (a FLOAT output holding a list, as schedule nodes give):
    the list of floats, or None for a plain number."""
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            if isinstance(item, (list, tuple)):
                out.extend(float(x) for x in item)
            else:
                out.append(float(item))
        if not out:
            raise InputError("the per-frame weights list is empty.")
        if not all(math.isfinite(x) for x in out):
            raise InputError("the per-frame weights list holds a value that is not a finite number.")
        return out
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # a tensor or array of weights
        return frame_weights_list(value.reshape(-1).tolist())
    return None
