"""The promotion gate (distill/gate.py): paired bootstrap decisions on realistic per-item scores."""

from __future__ import annotations

import numpy as np
import pytest

from distill.gate import (GateError, GuardCheck, ItemScore, choose_on_validation, decide, gate_plot,
                          paired_scores)


def base_items(n: int, seed: int = 0) -> list[ItemScore]:
    """Per-item scores shaped like a small model's on held-out lines: ES spread over 0..1 with many
    near-misses and some exact hits (mean ES ≈ 0.45, EM ≈ 0.15)."""
    rng = np.random.default_rng(seed)
    es = np.clip(rng.beta(1.6, 2.0, n), 0, 1)
    em = (rng.random(n) < 0.15).astype(float)
    es = np.where(em == 1, 1.0, es)
    return [ItemScore(f"item-{i}", float(em[i]), float(es[i])) for i in range(n)]


def shifted(items: list[ItemScore], es_shift: float, noise: float, seed: int, em_flip: float = 0.0) -> list[ItemScore]:
    """The same items scored by another model: ES moved by `es_shift` plus per-item noise."""
    rng = np.random.default_rng(seed)
    out = []
    for it in items:
        em = it.exact_match
        if em_flip and rng.random() < em_flip:
            em = 1.0 - em
        es = 1.0 if em == 1 else float(np.clip(it.edit_similarity + es_shift + rng.normal(0, noise), 0, 0.99))
        out.append(ItemScore(it.id, em, es))
    return out


def test_identical_scores_are_never_promoted():
    base = base_items(200)
    d = decide(base, list(base))
    assert not d.promote
    assert d.es_gain == 0.0 and d.es_ci == (0.0, 0.0)
    assert any("not distinguishable from noise" in r for r in d.reasons)


def test_base_against_itself_with_tiny_noise_is_not_promoted():
    base = base_items(200, seed=3)
    d = decide(base, shifted(base, 0.0, 0.01, seed=4))
    assert not d.promote
    assert d.es_ci[0] <= 0 <= d.es_ci[1]


def exchangeable_pair(n: int, noise: float, seed: int) -> tuple[list[ItemScore], list[ItemScore]]:
    """Two equally good models: each item has a true quality, and both scores are it plus independent
    noise of the same law, so the expected gain is exactly 0."""
    rng = np.random.default_rng(seed)
    q = rng.beta(1.6, 2.0, n)
    a, b = (np.clip(q + rng.normal(0, noise, n), 0, 1) for _ in range(2))
    hit = rng.random(n) < 0.15
    return ([ItemScore(f"item-{i}", float(hit[i]), 1.0 if hit[i] else float(a[i])) for i in range(n)],
            [ItemScore(f"item-{i}", float(hit[i]), 1.0 if hit[i] else float(b[i])) for i in range(n)])


def test_false_promotion_rate_of_an_equal_candidate_is_at_most_nominal():
    # 200 pairs of equally good models with realistic per-item noise: the one-sided 97.5 % bound
    # promotes about 2.5 % of them by chance; a gate that compared means would promote about half.
    decisions = [decide(*exchangeable_pair(200, 0.15, seed=100 + k), n_resamples=2000, seed=k) for k in range(200)]
    promoted = sum(d.promote for d in decisions)
    assert promoted <= 10, promoted
    assert sum(d.es_gain > 0 for d in decisions) > 70  # the means alone would have promoted these


def test_a_clearly_better_candidate_is_promoted(tmp_path):
    base = base_items(200, seed=1)
    cand = shifted(base, 0.10, 0.15, seed=2)
    d = decide(base, cand)
    assert d.promote, d.reasons
    assert d.n_items == 200
    assert 0.05 < d.es_gain < 0.15
    assert 0 < d.es_ci[0] < d.es_gain < d.es_ci[1]
    assert d.em_ci[0] <= d.em_gain <= d.em_ci[1]
    png = gate_plot(d, tmp_path / "gate.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = gate_plot(d, tmp_path / "gate.svg")
    assert b"<svg" in svg.read_bytes()[:2000]
    assert d.to_json()["es_ci"] == d.es_ci and "es_boot" not in d.to_json()


def test_better_on_average_but_noisy_with_few_items_is_refused():
    # 48 items (all the repository has), mean ES gain exactly +0.03, per-item differences spread ±0.3.
    rng = np.random.default_rng(7)
    es_base = rng.uniform(0.3, 0.65, 48)
    noise = rng.uniform(-0.3, 0.3, 48)
    es_cand = es_base + 0.03 + (noise - noise.mean())
    base = [ItemScore(f"i{k}", 0.0, float(es_base[k])) for k in range(48)]
    cand = [ItemScore(f"i{k}", 0.0, float(es_cand[k])) for k in range(48)]
    d = decide(base, cand, available_items=48)
    assert d.es_gain == pytest.approx(0.03)
    assert d.es_ci[0] < 0 < d.es_ci[1]
    assert not d.promote
    assert any("fewer than min_items=200: the repository has no more" in r for r in d.reasons)


def test_too_few_items_when_the_repository_has_more_is_refused():
    base = base_items(120, seed=9)
    d = decide(base, shifted(base, 0.2, 0.05, seed=10))
    assert d.es_ci[0] > 0
    assert not d.promote
    assert any("only 120 paired items, 200 required" in r for r in d.reasons)
    assert decide(base, shifted(base, 0.2, 0.05, seed=10), available_items=120).promote


def test_exact_match_loss_blocks_an_edit_similarity_gain():
    base = [ItemScore(f"i{k}", 1.0 if k % 3 == 0 else 0.0, 0.5) for k in range(300)]
    cand = [ItemScore(it.id, 0.0, 0.6) for it in base]  # closer on average, but every exact hit lost
    d = decide(base, cand)
    assert d.es_ci[0] > 0
    assert d.em_ci[1] < 0
    assert not d.promote
    assert any("exact match is significantly worse" in r for r in d.reasons)


def test_mismatched_ids_are_an_error():
    base = base_items(200)
    cand = shifted(base, 0.1, 0.1, seed=1)
    cand[5] = ItemScore("some-other-item", cand[5].exact_match, cand[5].edit_similarity)
    with pytest.raises(GateError, match="not scored on the same items.*item-5.*some-other-item"):
        decide(base, cand)
    with pytest.raises(GateError, match="appears twice"):
        decide(base + base[:1], cand)


def test_a_failing_guard_blocks_promotion():
    base = base_items(200, seed=1)
    cand = shifted(base, 0.10, 0.15, seed=2)
    ok = GuardCheck("humaneval-infilling", True, "pass@1 20.0% → 20.3%")
    bad = GuardCheck("humaneval-infilling", False, "pass@1 20.0% → 15.0%")
    assert decide(base, cand, guards=[ok]).promote
    d = decide(base, cand, guards=[ok, bad])
    assert not d.promote
    assert "guard humaneval-infilling: FAILS (pass@1 20.0% → 15.0%)" in d.reasons
    assert d.guards == [ok, bad]


def test_scores_accepted_as_dicts_and_mappings():
    base = base_items(50)
    as_dicts = [{"id": it.id, "exact_match": it.exact_match, "edit_similarity": it.edit_similarity} for it in base]
    as_map = {it.id: (it.exact_match, it.edit_similarity) for it in base}
    ids, b, c = paired_scores(as_dicts, as_map)
    assert len(ids) == 50 and np.array_equal(b, c)
    with pytest.raises(GateError, match="lacks 'edit_similarity'"):
        paired_scores([{"id": "x", "exact_match": 1}], as_map)


def test_choose_on_validation_picks_the_best_mean_edit_similarity():
    val = base_items(60, seed=11)
    trials = [({"t": 0.0}, val), ({"t": 0.3}, shifted(val, 0.05, 0.02, seed=12)),
              ({"t": 0.6}, shifted(val, -0.05, 0.02, seed=13))]
    params, es = choose_on_validation(trials)
    assert params == {"t": 0.3}
    assert es == pytest.approx(np.mean([it.edit_similarity for it in trials[1][1]]))
    assert choose_on_validation([({"t": 0.0}, val), ({"t": 0.3}, list(val))])[0] == {"t": 0.0}  # ties: first
    with pytest.raises(GateError, match="no trials"):
        choose_on_validation([])
