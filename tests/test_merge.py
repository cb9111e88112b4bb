"""Several references of one subject: each merge mode against its formula, weights, outlier rejection, batched
encoding with cancel, and ten references through the real executor."""

from __future__ import annotations

import json

import pytest
import torch

import builders
from conftest import CAPTURED, pack, run_prompt
from test_end_to_end import sampling_prompt, write_adapter
from test_patching import make_adapter, sample

merge = pack("nodes.core.merge")
references = pack("nodes.core.references")
errors = pack("nodes.core.errors")
apply_node = pack("nodes.apply")
host_encode = pack("nodes.host.encode")
merge_node = pack("nodes.merge")


# ------------------------------------------------------------------ test data

def image_part(n, seed=0, hidden=64, embed=32, tokens=17, empty=None):
    gen = torch.Generator().manual_seed(seed)
    empty = torch.ones(1, tokens, hidden) if empty is None else empty
    return references.ImageFeatures(references.EncoderInfo.from_widths(hidden, embed),
                                    torch.randn(n, embed, generator=gen), torch.randn(n, tokens, hidden, generator=gen),
                                    empty)


def face_part(n, seed=0, model="buffalo_l"):
    gen = torch.Generator().manual_seed(seed + 100)
    raw = torch.randn(n, 512, generator=gen) * (10 + torch.rand(n, 1, generator=gen) * 10)
    return references.FaceIdentity(model, raw / raw.norm(dim=-1, keepdim=True), raw)


def image_refs(n, seed=0, **kw):
    return references.References(image=image_part(n, seed, **kw))


def face_refs(n, seed=0, model="buffalo_l", with_crops=True):
    return references.References(image=image_part(n, seed) if with_crops else None, face=face_part(n, seed, model))


def gathered(*refs):
    return merge.gather([(f"references_{i + 1}", r) for i, r in enumerate(refs)])


def fields(refs):
    out = {}
    if refs.image is not None:
        out.update(image_embeds=refs.image.image_embeds, penultimate=refs.image.penultimate)
    if refs.face is not None:
        out.update(normed=refs.face.normed, raw=refs.face.raw)
    return out


# ------------------------------------------------------------------ the formulas, written out row by row

def expected(mode, rows, w):
    """The documented formula on a list of per-reference tensors (float64, written independently of combine)."""
    rows = [r.double() for r in rows]
    k = len(rows)
    if mode == "average":
        total = torch.zeros_like(rows[0])
        for r in rows:
            total += r
        return total / k
    if mode == "weighted average":
        total = torch.zeros_like(rows[0])
        for r, wi in zip(rows, w):
            total += wi * r
        return total / sum(w)
    if mode == "norm average":
        direction = torch.zeros_like(rows[0])
        length = torch.zeros(rows[0].shape[:-1] + (1,), dtype=torch.float64)
        for r, wi in zip(rows, w):
            n = r.norm(dim=-1, keepdim=True)
            direction += wi * r / n
            length += wi * n
        return direction / direction.norm(dim=-1, keepdim=True) * length / sum(w)
    if mode == "norm average (per element)":  # the leading pack's formula: the norm runs across the references
        norm = torch.zeros_like(rows[0])
        for r in rows:
            norm += r * r
        norm = norm.sqrt()
        total = torch.zeros_like(rows[0])
        for r in rows:
            total += r / norm
        return total / k
    if mode == "add":
        total = torch.zeros_like(rows[0])
        for r, wi in zip(rows, w):
            total += wi * r
        return total
    if mode == "subtract":
        rest = torch.zeros_like(rows[0])
        for r, wi in zip(rows[1:], w[1:]):
            rest += wi * r
        return w[0] * rows[0] - rest / (k - 1)
    if mode == "max":
        out = rows[0].clone()
        for r in rows[1:]:
            out = torch.where(r > out, r, out)
        return out
    if mode == "min":
        out = rows[0].clone()
        for r in rows[1:]:
            out = torch.where(r < out, r, out)
        return out
    raise ValueError(mode)


@pytest.mark.parametrize("mode,weights", [
    ("average", None), ("weighted average", (1.0, 0.5, 2.0, 0.25)), ("norm average", (1.0, 0.5, 2.0, 0.25)),
    ("norm average", None), ("subtract", None), ("subtract", (1.5, 0.5, 1.0, 2.0)), ("max", None), ("min", None),
    ("norm average (per element)", None), ("add", None), ("add", (0.6, 1.5, -0.5, 0.25))])
@pytest.mark.parametrize("kind", ["image", "face"])
def test_each_mode_matches_its_formula(mode, weights, kind):
    refs = image_refs(4, seed=1) if kind == "image" else face_refs(4, seed=1)
    merged, report = merge.merge_references(gathered(refs), mode, weights)
    assert merged.count == 1 and report.result_count == 1
    w = weights or (1.0,) * 4
    for name, tensor in fields(refs).items():
        want = expected(mode, list(tensor), w)
        got = fields(merged)[name]
        assert got.shape == (1, *tensor.shape[1:]) and got.dtype == torch.float32
        torch.testing.assert_close(got[0].double(), want, rtol=1e-5, atol=1e-5, msg=f"{mode} on {name}")
    if kind == "image":
        assert merged.image.empty_penultimate is refs.image.empty_penultimate
        assert merged.image.encoder is refs.image.encoder


def test_add_reproduces_the_leading_packs_encoder_weights_then_combine():
    """Its Encoder `weight` scales each reference's features before combining: `add` with those weights is exact,
    and its `average` of weighted encodes is `add` with the weights divided by the count."""
    refs = image_refs(2, seed=5)
    x = refs.image.penultimate
    merged, _ = merge.merge_references(gathered(refs), "add", (0.6 / 2, 1.5 / 2))
    torch.testing.assert_close(merged.image.penultimate[0], (0.6 * x[0] + 1.5 * x[1]) / 2)


def test_concat_with_one_weight_is_the_leading_packs_encoder_weight_on_a_batch():
    """Its Encoder multiplies the features of every image of a batch by `weight`, and keeps them apart: concat with
    one weight does that for any batch size, to image features and to face identities (keypoints kept)."""
    refs = image_refs(3, seed=7)
    merged, report = merge.merge_references(gathered(refs), "concat", merge.parse_weights("1.5"))
    assert merged.count == 3
    for name, tensor in fields(refs).items():
        torch.testing.assert_close(fields(merged)[name], 1.5 * tensor, msg=name)
    assert merged.image.empty_penultimate is refs.image.empty_penultimate  # the default negative is not scaled
    assert "features scaled: references_1 #1 x1.5" in report.text()
    faces = face_refs(2, seed=8)
    scaled, _ = merge.merge_references(gathered(faces), "concat", (-0.5, 2.0))
    torch.testing.assert_close(scaled.face.normed, faces.face.normed * torch.tensor([[-0.5], [2.0]]))
    torch.testing.assert_close(scaled.face.raw, faces.face.raw * torch.tensor([[-0.5], [2.0]]))
    same, _ = merge.merge_references(gathered(faces), "concat", (1.0, 1.0))
    assert same is faces or same.face is faces.face  # weights of 1 leave the references as they are
    two = merge.merge_references(gathered(image_refs(2, seed=9)), "add", (0.5,))[0]  # one weight for both rows
    x = image_refs(2, seed=9).image.penultimate
    torch.testing.assert_close(two.image.penultimate[0], 0.5 * (x[0] + x[1]))


def test_per_element_norm_average_leaves_a_single_reference_alone():
    refs = image_refs(1, seed=6)
    merged, _ = merge.merge_references(gathered(refs), "norm average (per element)")
    assert torch.equal(merged.image.penultimate, refs.image.penultimate)


def test_concat_keeps_every_reference_in_input_order():
    a, b, c = image_refs(2, seed=1), image_refs(1, seed=2), image_refs(3, seed=3)
    g = gathered(a, b, c)
    merged, report = merge.merge_references(g, "concat")
    assert merged.count == 6 and report.result_count == 6
    assert torch.equal(merged.image.penultimate, torch.cat([a.image.penultimate, b.image.penultimate,
                                                            c.image.penultimate]))
    assert g.labels == ("references_1 #1", "references_1 #2", "references_2", "references_3 #1",
                        "references_3 #2", "references_3 #3")
    dropped, _ = merge.merge_references(g, "concat", (1, 0, 1, 1, 0, 1))
    assert torch.equal(dropped.image.image_embeds, merged.image.image_embeds[[0, 2, 3, 5]])


def test_norm_average_of_face_identities_is_a_unit_vector_with_the_mean_raw_length():
    refs = face_refs(5, seed=3, with_crops=False)
    merged, _ = merge.merge_references(gathered(refs), "norm average", (1, 2, 1, 0.5, 1))
    torch.testing.assert_close(merged.face.normed.norm(dim=-1), torch.ones(1))
    w = torch.tensor([1, 2, 1, 0.5, 1])
    mean_length = (w * refs.face.raw.norm(dim=-1)).sum() / w.sum()
    torch.testing.assert_close(merged.face.raw.norm(dim=-1), mean_length[None])
    torch.testing.assert_close(merged.face.normed, merged.face.raw / merged.face.raw.norm(dim=-1, keepdim=True))
    plain, _ = merge.merge_references(gathered(refs), "average")
    assert float(plain.face.normed.norm()) < 0.99  # why norm average exists: a plain average shrinks


def test_weighted_average_with_weights_one_zero_is_the_first_reference_exactly():
    a, b = face_refs(1, seed=1), face_refs(1, seed=2)
    merged, report = merge.merge_references(gathered(a, b), "weighted average", (1, 0))
    for name, tensor in fields(a).items():
        assert torch.equal(fields(merged)[name], tensor), name
    assert report.dropped_by_weight == (1,)
    assert "dropped by weight 0: references_2" in report.text()


def test_face_references_merge_both_their_parts_with_the_same_rows():
    refs = face_refs(3, seed=4)
    merged, _ = merge.merge_references(gathered(refs), "average", (1, 0, 1))
    torch.testing.assert_close(merged.face.raw[0], (refs.face.raw[0] + refs.face.raw[2]) / 2)
    torch.testing.assert_close(merged.image.penultimate[0], (refs.image.penultimate[0] + refs.image.penultimate[2]) / 2)


# ------------------------------------------------------------------ the same model output

@pytest.fixture(scope="module")
def sd15():
    return builders.build_unet("sd15", seed=0)


@pytest.mark.parametrize("layout", ["linear", "resampler"])
def test_concat_of_a_reference_with_itself_gives_the_single_reference_output(tmp_path, sd15, layout):
    adapter = make_adapter(tmp_path, layout=layout, seed=7)
    one = image_refs(1, seed=5)
    twice, _ = merge.merge_references(gathered(one, one), "concat")
    assert twice.count == 2
    single = sample(apply_node.apply_tokens(sd15, adapter, references.project_references(adapter, one), 1.0))
    doubled_tokens = references.project_references(adapter, twice)
    assert doubled_tokens.cond.shape[0] == 2
    doubled = sample(apply_node.apply_tokens(sd15, adapter, doubled_tokens, 1.0))
    assert not torch.equal(single, sample(sd15))
    torch.testing.assert_close(doubled, single, rtol=1e-5, atol=1e-5)


def test_weights_one_zero_give_the_first_reference_output(tmp_path, sd15):
    adapter = make_adapter(tmp_path, layout="resampler", seed=8)
    a, b = image_refs(1, seed=1), image_refs(1, seed=2)
    merged, _ = merge.merge_references(gathered(a, b), "weighted average", (1, 0))
    out_a = sample(apply_node.apply_tokens(sd15, adapter, references.project_references(adapter, a), 1.0))
    out_m = sample(apply_node.apply_tokens(sd15, adapter, references.project_references(adapter, merged), 1.0))
    assert torch.equal(out_m, out_a)


# ------------------------------------------------------------------ refusals

def test_mixing_encoders_is_refused_with_both_named():
    with pytest.raises(errors.IncompatibleError) as e:
        gathered(image_refs(2), image_refs(1, hidden=96, embed=48))
    msg = str(e.value)
    assert "references_1" in msg and "references_2" in msg and "64-wide hidden" in msg and "96-wide hidden" in msg
    assert "same Load CLIP Vision" in msg


def test_two_encoders_of_the_same_width_are_told_apart_by_their_blank_image_features():
    with pytest.raises(errors.IncompatibleError) as e:
        gathered(image_refs(1, empty=torch.zeros(1, 17, 64)), image_refs(1, empty=torch.ones(1, 17, 64)))
    assert "not the same one" in str(e.value)


def test_mixing_face_and_image_references_or_face_models_is_refused():
    with pytest.raises(errors.IncompatibleError) as e:
        gathered(image_refs(1), face_refs(1))
    assert "image references" in str(e.value) and "face references (`buffalo_l`" in str(e.value)
    with pytest.raises(errors.IncompatibleError) as e:
        gathered(face_refs(1, with_crops=False), face_refs(1, model="antelopev2", with_crops=False))
    assert "`buffalo_l`" in str(e.value) and "`antelopev2`" in str(e.value)


def test_a_weights_list_of_the_wrong_length_names_the_counts():
    g = gathered(image_refs(3), image_refs(1, seed=1))
    with pytest.raises(errors.InputError) as e:
        merge.merge_references(g, "weighted average", merge.parse_weights("1, 0.5, 1"), weights_text="1, 0.5, 1")
    msg = str(e.value)
    assert "3 numbers" in msg and "4 references: references_1 (3), references_2 (1)" in msg


@pytest.mark.parametrize("mode,weights,words", [
    ("average", (1, 0.5), "weighted average"),
    ("max", (2, 1), "keep (1) or drop (0)"),
    ("weighted average", (1, -1), "0 or more"),
    ("average", (0, 0), "every weight is 0"),
    ("subtract", (0, 1), "its weight is 0"),
])
def test_bad_weights_say_what_to_do(mode, weights, words):
    with pytest.raises(errors.InputError) as e:
        merge.merge_references(gathered(image_refs(2)), mode, weights)
    assert words in str(e.value)


def test_weights_text_parsing():
    assert merge.parse_weights("") is None and merge.parse_weights("  ") is None
    assert merge.parse_weights("1, 0.5,1 ; 2  3") == (1.0, 0.5, 1.0, 2.0, 3.0)
    with pytest.raises(errors.InputError) as e:
        merge.parse_weights("1, half")
    assert "`half` is not a number" in str(e.value)
    with pytest.raises(errors.InputError):
        merge.parse_weights("1, nan")
    assert merge_node.LikenessMergeReferences.validate_inputs(weights="1, x").startswith("weights `1, x`")
    assert merge_node.LikenessMergeReferences.validate_inputs(weights="1, 2") is True


def test_unknown_mode_and_subtract_of_one():
    with pytest.raises(errors.InputError):
        merge.merge_references(gathered(image_refs(2)), "median")
    with pytest.raises(errors.InputError) as e:
        merge.merge_references(gathered(image_refs(1)), "subtract")
    assert "only one reference" in str(e.value)


# ------------------------------------------------------------------ outlier rejection

def clustered(n, outliers=(), seed=0, width=512):
    """Unit vectors around one direction, with the listed rows pointing elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(width, generator=gen)
    rows = centre + 0.6 * torch.randn(n, width, generator=gen)
    for i in outliers:
        rows[i] = torch.randn(width, generator=gen)
    return rows


def test_leave_one_out_similarity_formula():
    v = torch.randn(5, 8)
    got = merge.leave_one_out_similarity(v)
    u = v / v.norm(dim=-1, keepdim=True)
    for i in range(5):
        others = sum(u[j] for j in range(5) if j != i)
        torch.testing.assert_close(got[i], torch.dot(u[i], others) / others.norm())


def test_outliers_are_dropped_by_identity_and_reported():
    raw = clustered(6, outliers=(3,)) * 12
    face = references.FaceIdentity("buffalo_l", raw / raw.norm(dim=-1, keepdim=True), raw)
    refs = references.References(image=image_part(6), face=face)  # crops are random: only identities count
    g = merge.gather([("references_1", refs)])
    merged, report = merge.merge_references(g, "concat", None, outlier_threshold=0.3)
    assert report.dropped_as_outliers == (3,) and report.kept == (0, 1, 2, 4, 5)
    assert merged.count == 5 and torch.equal(merged.face.raw, raw[[0, 1, 2, 4, 5]])
    assert torch.equal(merged.image.penultimate, refs.image.penultimate[[0, 1, 2, 4, 5]])
    assert "dropped as outliers (similarity below 0.3): references_1 #4" in report.text()
    scores = dict(report.similarities)
    assert scores[3] < 0.3 < min(s for i, s in scores.items() if i != 3)


def test_outliers_of_image_references_use_the_image_embedding():
    feats = image_part(5)
    feats = references.ImageFeatures(feats.encoder, clustered(5, outliers=(0,), width=32), feats.penultimate,
                                     feats.empty_penultimate)
    merged, report = merge.merge_references(gathered(references.References(image=feats)), "average",
                                            outlier_threshold=0.3)
    assert report.dropped_as_outliers == (0,)
    torch.testing.assert_close(merged.image.image_embeds[0], feats.image_embeds[1:].mean(dim=0))


def test_all_references_dropped_is_an_error_listing_the_scores():
    raw = clustered(4, outliers=(0, 1, 2, 3))
    refs = references.References(face=references.FaceIdentity("buffalo_l", raw / raw.norm(dim=-1, keepdim=True), raw))
    with pytest.raises(errors.InputError) as e:
        merge.merge_references(gathered(refs), "average", outlier_threshold=0.9)
    msg = str(e.value)
    assert "dropped all 4 references" in msg and "identity" in msg and "references_1 #1" in msg
    assert "outlier_threshold" in msg


def test_outlier_rejection_keeps_everything_below_three_references():
    merged, report = merge.merge_references(gathered(image_refs(1), image_refs(1, seed=1)), "concat",
                                            outlier_threshold=0.99)
    assert merged.count == 2 and not report.dropped_as_outliers and "at least 3" in report.text()


def test_outlier_rejection_never_removes_the_base_of_subtract():
    raw = clustered(4, outliers=(0,))
    refs = references.References(face=references.FaceIdentity("buffalo_l", raw / raw.norm(dim=-1, keepdim=True), raw))
    with pytest.raises(errors.InputError) as e:
        merge.merge_references(gathered(refs), "subtract", outlier_threshold=0.3)
    assert "turn outlier rejection off" in str(e.value)


# ------------------------------------------------------------------ encoding many references

def tiny_clip(models_dir, name="tiny-clip-h.safetensors"):
    return builders.load_tiny_clip_vision(str(models_dir / "clip_vision" / name))


def test_batched_encoding_sees_each_image_once_and_matches_all_at_once(models_dir, monkeypatch):
    cv = tiny_clip(models_dir)
    images = torch.rand(10, 40, 48, 3, generator=torch.Generator().manual_seed(0))
    whole = host_encode.encode_references(cv, images)
    batches = []
    original = cv.encode_image
    monkeypatch.setattr(cv, "encode_image", lambda x, **kw: batches.append(x.shape[0]) or original(x, **kw))
    progress = []
    comfy_utils = pytest.importorskip("comfy.utils")
    monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        progress.append((value, total)))
    split = host_encode.encode_references(cv, images, batch_size=3)
    assert batches == [3, 3, 3, 1]  # linear cost: every image through the encoder exactly once
    assert progress == [(3, 10), (6, 10), (9, 10), (10, 10)]
    torch.testing.assert_close(split.image.image_embeds, whole.image.image_embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.image.penultimate, whole.image.penultimate, rtol=1e-5, atol=1e-5)


def test_cancel_stops_encoding_between_batches(models_dir, monkeypatch):
    mm = pytest.importorskip("comfy.model_management")
    cv = tiny_clip(models_dir)
    batches = []
    original = cv.encode_image

    def encode_then_cancel(x, **kw):
        batches.append(x.shape[0])
        mm.interrupt_current_processing(True)  # the user presses Cancel during the first batch
        return original(x, **kw)

    monkeypatch.setattr(cv, "encode_image", encode_then_cancel)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            host_encode.encode_references(cv, torch.rand(6, 32, 32, 3), batch_size=2)
    finally:
        mm.interrupt_current_processing(False)
    assert batches == [2]


# ------------------------------------------------------------------ the node

def test_the_node_offers_at_least_ten_inputs_and_a_plain_schema():
    node = merge_node.LikenessMergeReferences
    info = node.GET_SCHEMA().get_v1_info(node)
    slots = [k for part in ("required", "optional") for k, v in info.input.get(part, {}).items()
             if v[0] == "LIKENESS_REFS"]
    assert len(slots) >= 10 and slots[0] == "references_1"
    assert list(info.input["required"]["mode"][1]["options"]) == list(merge.MERGE_MODES)
    json.dumps(info.input)  # what /object_info sends and a saved workflow relies on


COLORS = [0x3366CC, 0xAA2211, 0x22AA44, 0xDDDD00, 0x884499, 0x11CCCC, 0xFF8800, 0x444444, 0xEEEEEE, 0x0000FF]


def ten_reference_prompt(adapter, key, merge_inputs, clip="tiny-clip-h.safetensors"):
    """Ten images encoded one by one (nodes 30-39), merged by node 40, projected and applied."""
    prompt = sampling_prompt(key=key, model_from=("13", 0))
    prompt.update({
        "10": {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": clip}},
        "11": {"class_type": "LikenessAdapterLoader", "inputs": {"adapter_name": adapter}},
        "14": {"class_type": "LikenessProject", "inputs": {"adapter": ["11", 0], "references": ["40", 0]}},
        "13": {"class_type": "LikenessApply", "inputs": {
            "model": ["1", 0], "adapter": ["11", 0], "tokens": ["14", 0], "weight": 1.0, "weight_type": "linear",
            "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}},
        "40": {"class_type": "LikenessMergeReferences", "inputs": dict(
            {"mode": "concat", "weights": "", "drop_outliers": False, "outlier_threshold": 0.3}, **merge_inputs)},
    })
    for i, color in enumerate(COLORS):
        prompt[f"2{i}"] = {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 40, "batch_size": 1,
                                                                  "color": color}}
        prompt[f"3{i}"] = {"class_type": "LikenessImageEncode", "inputs": {
            "clip_vision": ["10", 0], "image": [f"2{i}", 0], "crop": "center", "sharpen": 0.0}}
    return prompt


def ten_inputs():
    return {f"references_{i + 1}": [f"3{i}", 0] for i in range(10)}


def test_ten_references_through_the_executor(models_dir):
    adapter = write_adapter(models_dir, "merge-plus.safetensors", layout="resampler", seed=11)
    concat = run_prompt(ten_reference_prompt(adapter, "ten-concat", ten_inputs()))
    assert concat.success, concat.execution_error() or concat.node_errors
    report = concat.executor.history_result["outputs"]["40"]["text"][0]
    assert report.startswith("10 of 10 references kept; mode `concat` gives 10 references")

    # the same ten images as one batch, encoded one image at a time, give the same result as ten encodes
    batched = ten_reference_prompt(adapter, "ten-batch", {"references_1": ["41", 0]})
    previous = "20"
    for i in range(1, 10):
        batched[f"5{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": [previous, 0], "image2": [f"2{i}", 0]}}
        previous = f"5{i}"
    batched["41"] = {"class_type": "LikenessImageEncode", "inputs": {
        "clip_vision": ["10", 0], "image": [previous, 0], "crop": "center", "sharpen": 0.0, "encode_batch_size": 1}}
    result = run_prompt(batched)
    assert result.success, result.execution_error() or result.node_errors
    assert torch.equal(CAPTURED["ten-batch"], CAPTURED["ten-concat"])

    average = run_prompt(ten_reference_prompt(adapter, "ten-average", dict(ten_inputs(), mode="norm average")))
    assert average.success, average.execution_error()
    assert not torch.equal(CAPTURED["ten-average"], CAPTURED["ten-concat"])

    first_only = ten_reference_prompt(adapter, "ten-first", dict(
        ten_inputs(), mode="weighted average", weights="1" + ", 0" * 9))
    assert run_prompt(first_only).success
    single = ten_reference_prompt(adapter, "single", {"references_1": ["30", 0]})
    assert run_prompt(single).success
    assert torch.equal(CAPTURED["ten-first"], CAPTURED["single"])


def test_merge_errors_reach_the_user_through_the_executor(models_dir):
    adapter = write_adapter(models_dir, "merge-linear.safetensors", seed=12)
    result = run_prompt(ten_reference_prompt(adapter, "bad-weights", dict(ten_inputs(), weights="1, 1, 1")))
    assert not result.success
    err = result.execution_error()
    assert err["node_type"] == "LikenessMergeReferences" and err["exception_type"].endswith("InputError")
    assert "3 numbers" in err["exception_message"] and "10 references" in err["exception_message"]

    mixed = ten_reference_prompt(adapter, "mixed", ten_inputs())
    mixed["19"] = {"class_type": "LikenessTestTinyCLIPVision", "inputs": {"clip_name": "tiny-clip-g.safetensors"}}
    mixed["35"]["inputs"]["clip_vision"] = ["19", 0]
    err = run_prompt(mixed).execution_error()
    assert err["exception_type"].endswith("IncompatibleError")
    assert "references_1" in err["exception_message"] and "references_6" in err["exception_message"]

    invalid = run_prompt(ten_reference_prompt(adapter, "invalid", dict(ten_inputs(), weights="1, one")))
    assert not invalid.valid and "`one` is not a number" in json.dumps(invalid.node_errors)


def test_outlier_report_through_the_executor(models_dir):
    adapter = write_adapter(models_dir, "merge-outliers.safetensors", seed=13)
    everything = run_prompt(ten_reference_prompt(adapter, "outliers-all", dict(
        ten_inputs(), mode="average", drop_outliers=True, outlier_threshold=1.0)))
    err = everything.execution_error()
    assert err is not None and "dropped all 10 references" in err["exception_message"]
    some = run_prompt(ten_reference_prompt(adapter, "outliers-some", dict(
        ten_inputs(), mode="average", drop_outliers=True, outlier_threshold=-1.0)))
    assert some.success, some.execution_error()
    report = some.executor.history_result["outputs"]["40"]["text"][0]
    assert "10 of 10 references kept" in report and "similarity to the others: references_1 " in report
