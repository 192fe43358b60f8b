import pytest

from core.metrics import edit_similarity
from distill.evaluate import EvalConfig, Scores, comparable, gate, pick_temperature
from distill.records import EvalItem


@pytest.mark.parametrize("a, b, d", [("", "", 0), ("abc", "abc", 0), ("abc", "abd", 1), ("kitten", "sitting", 3),
                                     ("", "xyz", 3), ("return a + b", "return a - b", 1), ("ab", "ba", 2)])
def test_edit_similarity_is_one_minus_levenshtein_over_the_longer_length(a, b, d):
    expected = 1.0 if not a and not b else 1.0 - d / max(len(a), len(b))
    assert edit_similarity(a, b) == expected == edit_similarity(b, a)


def test_edit_similarity_bounds():
    assert edit_similarity("same", "same") == 1.0
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abcd", "wxyz") == 0.0
    assert 0.9 < edit_similarity("return a + b", "return a - b") < 1.0


def test_line_items_compare_first_line_block_items_whole():
    line = EvalItem("1", "next_line", "a.py", "python", "x = 1\n", "", "y = 2")
    assert comparable(line, "y = 2\nz = 3") == ("y = 2", "y = 2")
    block = EvalItem("2", "fim_block", "a.py", "python", "def f():\n", "\n", "    a = 1\n    return a")
    assert comparable(block, "    a = 1\n    return a\n") == ("a = 1\n    return a", "a = 1\n    return a")


def _scores(es: list[float], em: list[float], ppl: float = 3.0) -> Scores:
    items = [{"id": f"i{k}", "exact_match": m, "edit_similarity": e} for k, (e, m) in enumerate(zip(es, em))]
    return Scores(len(items), sum(em) / len(em), sum(es) / len(es), ppl, per_item=items)


BASE_ES = [0.3 + 0.4 * ((k * 37) % 100) / 100 for k in range(200)]  # spread like real per-item scores
BASE_EM = [float(k % 5 == 0) for k in range(200)]


@pytest.mark.parametrize("cand, promote, why", [
    (_scores([e + 0.1 for e in BASE_ES], BASE_EM), True, "above 0"),
    (_scores(BASE_ES, BASE_EM), False, "not distinguishable from noise"),  # equal to the base: never
    (_scores([e + 0.1 for e in BASE_ES], [0.0] * 200), False, "exact match is significantly worse"),
    (_scores([e + 0.1 for e in BASE_ES], BASE_EM, ppl=4.0), False, "guard held-out perplexity: FAILS"),
])
def test_gate_is_the_paired_bootstrap_with_perplexity_as_a_guard(cand, promote, why):
    decision = gate(cand, _scores(BASE_ES, BASE_EM), EvalConfig())
    assert decision.promote is promote
    assert any(why in r for r in decision.reasons), decision.reasons


@pytest.mark.parametrize("curve, margin, expected", [
    # measured on strop's own history: 0.6 won validation by 0.003, and lost the test slice by 0.03
    ({0.0: 0.1553, 0.3: 0.1366, 0.6: 0.1585, 0.9: 0.1221}, 0.005, 0.0),
    ({0.0: 0.150, 0.3: 0.170, 0.6: 0.172, 0.9: 0.120}, 0.005, 0.3),  # a clear gain, then a plateau
    ({0.0: 0.150, 0.3: 0.150}, 0.0, 0.0),  # exact ties go to the lower temperature
    ({0.3: 0.20, 0.9: 0.26}, 0.005, 0.9),
    ({0.0: 0.150, 0.3: 0.170, 0.6: 0.170}, -1.0, 0.3),  # a gate that admits anything still picks a best
])
def test_pick_temperature_needs_the_margin_to_leave_a_lower_one(curve, margin, expected):
    assert pick_temperature(curve, margin) == expected


def test_offline_scores_and_samples_never_depend_on_the_machines_speed():
    """Evaluation and sampling stop on token limits only (a busy machine must not change a score or
    the gate's decision); serving keeps its time cap."""
    from core import context
    from core.completion import make_job
    from core.decode import Sampling
    from distill.sample import SampleConfig
    from server.config import ServeConfig

    ctx = context.build("def f():\n    return ", len("def f():\n    return "), fmt=None, count=len)
    for limits in (EvalConfig(), SampleConfig()):
        job = make_job(ctx, key="k", limits=limits, sampling=Sampling())
        assert job.predict_hard_ms is None and job.predict_soft_ms is None
    assert make_job(ctx, key="k", limits=ServeConfig(), sampling=Sampling()).predict_hard_ms == ServeConfig().time_cap_ms
