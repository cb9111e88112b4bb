"""Per-frame weight schedules (Likeness Frame Weights) follow the leading pack's formulas and frame layouts."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import pack, run_prompt

frames = pack("nodes.core.frames")
errors = pack("nodes.core.errors")


def strategy(**kw):
    return frames.FrameStrategy(**kw)


@pytest.mark.parametrize("timing, f", [
    ("linear", lambda x: x), ("ease_in_out", lambda x: (1 - math.cos(math.pi * x)) / 2),
    ("ease_in", lambda x: math.sin(math.pi * x / 2)), ("ease_out", lambda x: 1 - math.cos(math.pi * x / 2))])
def test_curves(timing, f):
    got = frames.frame_curve(strategy(weights="0.2, 1.0", timing=timing, frames=6))
    assert got == pytest.approx([0.2 + 0.8 * f(i / 5) for i in range(6)])
    assert got[-1] == 1.0


def test_start_and_end_frames_hold_the_ends():
    got = frames.frame_curve(strategy(weights="1, 0", timing="linear", frames=8, start_frame=2, end_frame=5))
    assert got == pytest.approx([1, 1, 1, 0.5, 0, 0, 0, 0])


def test_custom_and_random():
    assert frames.frame_curve(strategy(weights="1\n0.5, 0.25,", timing="custom")) == [1.0, 0.5, 0.25]
    assert frames.frame_curve(strategy(weights="", timing="custom")) == [0.0]
    rnd = frames.frame_curve(strategy(weights="0.3, 0.6", timing="random", frames=20))
    assert len(rnd) == 20 and all(0.3 <= w <= 0.6 for w in rnd) and len(set(rnd)) > 10
    assert rnd == frames.frame_curve(strategy(weights="0.3, 0.6", timing="random", frames=20)), "seeded"
    assert frames.frame_curve(strategy(weights="", timing="linear", frames=3)) == pytest.approx([0, 0.5, 1])
    assert frames.frame_curve(strategy(timing="linear", frames=0)) == [1.0, 0.0], "at least two frames"


def test_full_batch_holds_each_image_for_one_curve():
    s = frames.frame_schedule(strategy(weights="1, 0", timing="linear", frames=3), images=2)
    assert s.weights == pytest.approx((1, 0.5, 0, 1, 0.5, 0))
    assert s.image_1 == (0, 0, 0, 1, 1, 1) and s.image_2 is None
    assert s.weights_invert == s.weights[::-1] and s.total_frames == 6


def test_shift_batches_fade_each_image_into_the_next():
    s = frames.frame_schedule(strategy(weights="1, 0", timing="linear", frames=2, method="shift batches"), images=3)
    assert s.weights == (1, 0, 1, 0) and s.image_1 == (0, 0, 1, 1) and s.image_2 == (1, 1, 2, 2)


@pytest.mark.parametrize("images, image_1, image_2, weights", [
    (4, (0, 2, 2), (1, 1, 3), [1, 0, 0, 1, 1, 0]),
    (5, (0, 2, 2, 4), (1, 1, 3, 3), [1, 0, 0, 1, 1, 0, 0, 1]),
])
def test_alternate_batches(images, image_1, image_2, weights):
    s = frames.frame_schedule(strategy(weights="1, 0", timing="linear", frames=2, method="alternate batches"),
                              images=images)
    assert s.image_1 == tuple(i for i in image_1 for _ in range(2))
    assert s.image_2 == tuple(i for i in image_2 for _ in range(2))
    assert list(s.weights) == weights


def test_added_frames_hold_the_first_and_last_image():
    s = frames.frame_schedule(strategy(weights="0.5, 1", timing="linear", frames=2, add_starting_frames=2,
                                       add_ending_frames=1), images=2)
    assert s.weights == (0.5, 0.5, 0.5, 1, 0.5, 1, 1)
    assert s.image_1 == (0, 0, 0, 0, 1, 1, 1)
    bare = frames.frame_schedule(strategy(weights="0.5, 1", timing="linear", frames=2, add_starting_frames=2))
    assert bare.weights == (0.5, 1) and bare.image_1 is None, "without images the extra frames are not added"


def test_bad_settings_say_what_to_do():
    with pytest.raises(errors.InputError, match="`x` is not a number"):
        frames.frame_curve(strategy(weights="1, x"))
    with pytest.raises(errors.InputError, match="start_frame .* must be before end_frame"):
        frames.frame_curve(strategy(frames=4, start_frame=4))
    with pytest.raises(errors.InputError, match="needs at least 2 images"):
        frames.frame_schedule(strategy(method="shift batches"), images=1)
    with pytest.raises(errors.InputError, match="timing `smooth`"):
        strategy(timing="smooth")


def test_weight_lists_from_other_nodes():
    assert frames.frame_weights_list(0.5) is None
    assert frames.frame_weights_list([1, 0.5]) == [1.0, 0.5]
    assert frames.frame_weights_list(torch.tensor([[1.0], [0.0]])) == [1.0, 0.0]
    with pytest.raises(errors.InputError, match="empty"):
        frames.frame_weights_list([])


def test_the_node_runs_and_passes_its_strategy_on(tmp_path):
    import folder_paths
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (16, 16), (80 * i, 0, 0)).save(tmp_path / f"f{i}.png")
    previous = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        widgets = dict(weights="1, 0", timing="ease_in_out", frames=4, start_frame=0, end_frame=9999,
                       add_starting_frames=1, add_ending_frames=0, method="shift batches")
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "f0.png"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "f1.png"}},
            "3": {"class_type": "LoadImage", "inputs": {"image": "f2.png"}},
            "4": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
            "5": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["3", 0]}},
            "6": {"class_type": "LikenessFrameWeights", "inputs": dict(widgets, image=["5", 0])},
            "7": {"class_type": "LikenessFrameWeights",
                  "inputs": dict(widgets, timing="linear", image=["5", 0], weights_strategy=["6", 5])},
            "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 4]}},
        }
        result = run_prompt(prompt)
        assert result.success, result.error or result.execution_error()
        text = result.executor.history_result["outputs"]["7"]["text"][0]
        assert text.startswith("9 frames")
    finally:
        folder_paths.set_input_directory(previous)
