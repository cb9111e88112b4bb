"""The identity-check formulas, checked against numpy written from the definitions in nodes/core/identity.py.

Calibration (leave-one-out baseline, centroid, calibrated score, auto threshold), the optimal assignment of faces
to people, and the swap and blend flags, on embeddings whose answers are known.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from conftest import pack

identity = pack("nodes.core.identity")
errors = pack("nodes.core.errors")


def units(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def person_embeddings(rng, k, d=64, spread=0.6, centre=None):
    centre = rng.standard_normal(d) if centre is None else centre
    return centre[None] + spread * rng.standard_normal((k, d)) * np.linalg.norm(centre) / np.sqrt(d)


@pytest.mark.parametrize("k", [2, 3, 5, 9])
def test_baseline_is_the_mean_leave_one_out_cosine(k):
    rng = np.random.default_rng(k)
    refs = person_embeddings(rng, k) * rng.uniform(0.5, 3.0, (k, 1))  # lengths must not matter
    u = units(refs)
    expected_loo = [cos(u[i], u[np.arange(k) != i].mean(axis=0)) for i in range(k)]
    cal = identity.calibrate(torch.tensor(refs, dtype=torch.float32), single_baseline=0.4)
    assert cal.count == k and not cal.fixed
    assert np.allclose(cal.leave_one_out, expected_loo, atol=1e-5)
    assert cal.baseline == pytest.approx(np.mean(expected_loo), abs=1e-5)
    assert np.allclose(cal.centroid.numpy(), u.mean(axis=0), atol=1e-6)


def test_score_is_the_cosine_to_the_mean_of_all_references_over_the_baseline():
    rng = np.random.default_rng(1)
    refs = person_embeddings(rng, 4)
    faces = np.concatenate([person_embeddings(rng, 3, centre=refs.mean(axis=0)), rng.standard_normal((2, 64))])
    cal = identity.calibrate(torch.tensor(refs, dtype=torch.float32), 0.4)
    mean_of_units = units(refs).mean(axis=0)
    got = identity.cosines(torch.tensor(faces, dtype=torch.float32), cal.centroid).numpy()
    expected = np.array([cos(f, mean_of_units) for f in faces])
    assert np.allclose(got, expected, atol=1e-5)
    for c, e in zip(got, expected):
        assert identity.calibrated(float(c), cal.baseline) == pytest.approx(max(0.0, e / cal.baseline), abs=1e-5)
    assert identity.calibrated(-0.3, 0.7) == 0.0  # an unlike face scores 0, not below


def test_a_new_photo_of_the_person_scores_about_one():
    """What calibration is for: a fresh photo, as alike to the references as they are to each other, scores ~1."""
    rng = np.random.default_rng(2)
    centre = rng.standard_normal(256)
    refs = person_embeddings(rng, 6, d=256, centre=centre)
    fresh = person_embeddings(rng, 200, d=256, centre=centre)
    cal = identity.calibrate(torch.tensor(refs, dtype=torch.float32), 0.4)
    scores = identity.cosines(torch.tensor(fresh, dtype=torch.float32), cal.centroid).numpy() / cal.baseline
    assert 0.95 < np.median(scores) < 1.1


def test_one_reference_uses_the_fixed_baseline():
    v = torch.tensor([[3.0, 4.0, 0.0]])
    cal = identity.calibrate(v, single_baseline=identity.FACE_SINGLE_BASELINE)
    assert cal.fixed and cal.baseline == identity.FACE_SINGLE_BASELINE == identity.VERIFICATION_THRESHOLD == 0.4
    assert cal.leave_one_out == ()
    assert torch.allclose(cal.centroid, torch.tensor([0.6, 0.8, 0.0]))
    person = identity.make_person("person 1 (references)", cal, 0.0, identity.VERIFICATION_THRESHOLD, "line")
    assert person.threshold == pytest.approx(1.0)  # the verification line itself
    assert "fixed" in person.describe()


@pytest.mark.parametrize("baseline, line, expected", [(0.8, 0.4, 0.5), (0.5, 0.4, 0.8), (0.35, 0.4, 1.0),
                                                      (0.9, 0.63, 0.7)])
def test_auto_threshold_is_the_line_over_the_baseline_capped_at_one(baseline, line, expected):
    assert identity.auto_threshold(baseline, line) == pytest.approx(expected)


def test_make_person_auto_and_manual_thresholds():
    rng = np.random.default_rng(3)
    cal = identity.calibrate(torch.tensor(person_embeddings(rng, 3), dtype=torch.float32), 0.4)
    auto = identity.make_person("p", cal, 0.0, 0.4, "verification threshold")
    assert auto.threshold == pytest.approx(min(1.0, 0.4 / cal.baseline))
    assert auto.threshold_note.startswith("auto: verification threshold 0.400")
    manual = identity.make_person("p", cal, 0.85, 0.4, "verification threshold")
    assert manual.threshold == 0.85 and manual.threshold_note == "set on the node"
    blank_cos = 0.3
    subject = identity.make_person("s", cal, 0.0, identity.subject_line(blank_cos, cal.baseline), "halfway")
    assert subject.threshold == pytest.approx(min(1.0, (blank_cos + cal.baseline) / 2 / cal.baseline))
    capped = identity.make_person("p", dataclasses.replace(cal, baseline=0.3), 0.0, 0.4, "line")
    assert capped.threshold == 1.0 and "capped at 1" in capped.threshold_note


def test_references_of_different_people_have_no_baseline():
    rng = np.random.default_rng(4)
    strangers = torch.tensor(units(rng.standard_normal((4, 512))), dtype=torch.float32)  # cosines ~0
    with pytest.raises(errors.InputError, match="not alike.*drop_outliers"):
        identity.calibrate(strangers, 0.4, "person 1 (references)")


def test_empty_references_are_refused():
    with pytest.raises(errors.InputError, match="empty"):
        identity.calibrate(torch.zeros(0, 512), 0.4, "person 1 (references)")


# ---------------------------------------------------------------- several people

def people_for(rng, n_people, d=128):
    centres = [rng.standard_normal(d) for _ in range(n_people)]
    people = [identity.make_person(f"person {k + 1} (r{k})",
                                   identity.calibrate(torch.tensor(person_embeddings(rng, 4, d, 0.5, c),
                                                                   dtype=torch.float32), 0.4),
                                   0.0, identity.VERIFICATION_THRESHOLD, "line")
              for k, c in enumerate(centres)]
    return centres, people


def brute_force(c):
    """The largest summed cosine over every way to match faces to people (one face per person at most)."""
    f, p = c.shape
    k = min(f, p)
    return max(sum(c[i, j] for i, j in zip(faces, people))
               for faces in itertools.permutations(range(f), k) for people in itertools.combinations(range(p), k))


@pytest.mark.parametrize("faces, people", [(2, 2), (3, 2), (2, 3), (4, 4), (5, 3)])
def test_assignment_maximises_the_summed_cosine(faces, people):
    rng = np.random.default_rng(faces * 10 + people)
    for _ in range(20):
        c = rng.uniform(-0.2, 0.9, (faces, people))
        pairs = identity.assign(c)
        assert len(pairs) == min(faces, people)
        assert len({f for f, _ in pairs}) == len(pairs) == len({p for _, p in pairs})
        assert sum(c[f, p] for f, p in pairs) == pytest.approx(brute_force(c))


def test_each_person_gets_their_own_face_and_the_image_score_is_the_lowest():
    rng = np.random.default_rng(5)
    centres, people = people_for(rng, 3)
    faces = torch.tensor(np.stack([centres[2], centres[0] + 0.3 * rng.standard_normal(128), centres[1]]),
                         dtype=torch.float32)
    r = identity.judge(0, faces, people)
    assert [f.person for f in r.faces] == [2, 0, 1]
    assert r.person_faces == (1, 2, 0)
    expected = []
    for q, f in enumerate(r.person_faces):
        c = cos(faces[f].numpy(), people[q].calibration.centroid.numpy())
        expected.append(max(0.0, c / people[q].calibration.baseline))
    assert np.allclose(r.person_scores, expected, atol=1e-5)
    assert r.score == pytest.approx(min(expected))
    assert not r.flagged and r.passed


def test_a_person_without_a_face_scores_zero_and_fails_the_image():
    rng = np.random.default_rng(6)
    centres, people = people_for(rng, 2)
    r = identity.judge(3, torch.tensor(centres[1][None], dtype=torch.float32), people)
    assert r.person_faces == (None, 0) and r.person_scores[0] == 0.0 and r.score == 0.0 and not r.passed
    text = identity.describe_image(r, people)
    assert "No face found for person 1" in text


def test_no_face_at_all_scores_zero():
    rng = np.random.default_rng(7)
    _, people = people_for(rng, 1)
    r = identity.judge(2, torch.zeros(0, 128), people)
    assert r.score == 0.0 and not r.passed and r.faces == ()
    assert "no face found" in identity.describe_image(r, people).lower()


def test_the_same_person_twice_is_a_swap():
    rng = np.random.default_rng(8)
    centres, people = people_for(rng, 2)
    twice = torch.tensor(np.stack([centres[0] + 0.2 * rng.standard_normal(128),
                                   centres[0] + 0.4 * rng.standard_normal(128)]), dtype=torch.float32)
    r = identity.judge(0, twice, people)
    swapped = [f for f in r.faces if f.swap_with is not None]
    assert len(swapped) == 1 and swapped[0].person == 1 and swapped[0].swap_with == 0
    assert r.flagged and not r.passed
    assert "SWAP" in identity.describe_image(r, people)


def test_a_face_reaching_two_thresholds_is_a_blend():
    rng = np.random.default_rng(9)
    centres, people = people_for(rng, 2)
    mixed = torch.tensor(np.stack([units(centres[0]) + units(centres[1]), centres[1]]), dtype=torch.float32)
    manual = [identity.Person(p.label, p.calibration, 0.3, "set") for p in people]
    r = identity.judge(0, mixed, manual)
    assert r.faces[0].blend_of == (0, 1) and r.faces[0].person == 0
    assert not r.passed
    assert "BLEND" in identity.describe_image(r, manual)


def test_extra_faces_are_reported_but_do_not_change_the_score():
    rng = np.random.default_rng(10)
    centres, people = people_for(rng, 1)
    alone = identity.judge(0, torch.tensor(centres[0][None], dtype=torch.float32), people)
    crowd = identity.judge(0, torch.tensor(np.stack([rng.standard_normal(128), centres[0]]), dtype=torch.float32),
                           people)
    assert crowd.score == pytest.approx(alone.score) and crowd.faces[1].person == 0 and crowd.faces[0].person is None
    assert "not matched" in identity.describe_image(crowd, people)


def test_best_and_passed_over_a_batch():
    rng = np.random.default_rng(11)
    centres, people = people_for(rng, 1)
    c = centres[0]
    batch = [c + 1.5 * rng.standard_normal(128), c + 0.1 * rng.standard_normal(128), rng.standard_normal(128), None]
    results = tuple(identity.judge(i, torch.zeros(0, 128) if v is None else torch.tensor(v[None], dtype=torch.float32),
                                   people) for i, v in enumerate(batch))
    verdict = identity.Verdict(tuple(people), results)
    assert verdict.best == 1 == int(np.argmax(verdict.scores))
    assert verdict.passed == [i for i, r in enumerate(results) if r.score >= people[0].threshold]
    assert 1 in verdict.passed and 2 not in verdict.passed and 3 not in verdict.passed
    assert "Best: image 1" in verdict.text()


def test_a_flagged_image_is_never_best_while_an_unflagged_one_exists():
    rng = np.random.default_rng(12)
    centres, people = people_for(rng, 2)
    manual = [identity.Person(p.label, p.calibration, 0.3, "set") for p in people]
    both = units(centres[0]) + units(centres[1])
    blended = identity.judge(0, torch.tensor(np.stack([both, both]), dtype=torch.float32), manual)
    honest = identity.judge(1, torch.tensor(np.stack([centres[0] + 0.8 * rng.standard_normal(128), centres[1]]),
                                            dtype=torch.float32), manual)
    assert blended.flagged and not honest.flagged
    assert identity.Verdict(tuple(manual), (blended, honest)).best == 1


def test_threshold_bounds():
    identity.check_threshold(0.0)
    identity.check_threshold(2.0)
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(errors.InputError, match="threshold"):
            identity.check_threshold(bad)
