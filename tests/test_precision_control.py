"""The gate's precision control: a candidate is exported at `cycle.quantization`, so against a base of
another type it must also beat the base re-quantised to that type without training (real tiny model,
llama.cpp's own quantiser, the real evaluator)."""

from __future__ import annotations

import json
import shutil

import llama_cpp
import pytest

from distill.evaluate import EvalConfig, compare
from distill.quantize import file_type, precision_control
from distill.records import EvalItem
from tests.fixtures.fixture_repo import fixture_repo  # noqa: F401  (a pytest fixture)

pytestmark = pytest.mark.slow

ITEMS = [EvalItem(f"t{i}", "next_line", "m.py", "python", f"def f{i}(x):\n    return x + {i}\n\n", "",
                  f"def g{i}(y):") for i in range(24)]
# The mechanism on a tiny model: no item floor, no perplexity or HumanEval guard, an EM drop allowed.
CFG = EvalConfig(t_eval_grid=(0.0,), min_items=1, perplexity=False, humaneval_tasks=0, guard_exact_match_drop=1.0,
                 max_new_tokens=8, max_new_tokens_line=8)


def test_the_control_is_the_base_at_the_candidates_type_and_none_when_it_already_is(tiny_fim_model, tmp_path):
    assert file_type(tiny_fim_model.gguf_f32) == llama_cpp.LLAMA_FTYPE_ALL_F32
    control = precision_control(tiny_fim_model.gguf_f32, "Q8_0", tmp_path / "control.gguf")
    assert control is not None and file_type(control) == llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert precision_control(tiny_fim_model.gguf_q8, "Q8_0", tmp_path / "none.gguf") is None
    assert not (tmp_path / "none.gguf").exists()


def test_a_candidate_that_is_only_the_exports_precision_is_not_promoted(tiny_fim_model, tmp_path):
    """The untrained base at Q8_0 as the 'candidate' against its f32 base: whatever the gate says of
    it against the base, the precision guard refuses it (its gain over the control is exactly 0)."""
    control = precision_control(tiny_fim_model.gguf_f32, "Q8_0", tmp_path / "control.gguf")
    candidate = shutil.copy(control, tmp_path / "candidate.gguf")
    verdict = compare(candidate, tiny_fim_model.gguf_f32, ITEMS[:4], ITEMS, CFG, control=control, progress=False,
                      repo_name="tiny")
    guard = next(g for g in verdict.gate["guards"] if g["name"].startswith("gain over the base re-quantised"))
    assert not guard["holds"] and guard["base"] == guard["candidate"]
    assert not verdict.promote
    assert any("gain over the base re-quantised like the candidate, untrained: FAILS" in r for r in verdict.reasons)
    # Without the control the same pair is judged on its gain over the base alone (no such guard).
    plain = compare(candidate, tiny_fim_model.gguf_f32, ITEMS[:4], ITEMS, CFG, progress=False, repo_name="tiny")
    assert not any(g["name"].startswith("gain over the base re-quantised") for g in plain.gate["guards"])


def test_the_cycles_evaluate_stage_scores_the_control_for_a_base_of_another_type(tiny_fim_model, tmp_path,
                                                                                  monkeypatch, fixture_repo):  # noqa: F811
    """An f32 base, Q8_0 candidates: the evaluate stage re-quantises the base, the report carries the
    guard, and the control file does not stay behind."""
    from distill.cycle import STAGES, Cycle, CycleConfig

    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    cfg = CycleConfig(base_model=tiny_fim_model.gguf_f32, max_prompts=10, max_eval_items=12, eval=CFG)
    c = Cycle(fixture_repo, cfg, progress=False)
    d = c.root / "cycle-precision"
    d.mkdir()
    c._run_stages(d, STAGES[:2])  # split, harvest: the held-out items
    precision_control(tiny_fim_model.gguf_f32, "Q8_0", d / "candidate-q8_0.gguf")  # an untrained "candidate"
    c._run_stages(d, (STAGES[5],))
    report = json.loads((d / "report.json").read_text())
    guard = next(g for g in report["gate"]["guards"] if g["name"].startswith("gain over the base re-quantised"))
    assert not guard["holds"] and not report["promote"]
    assert not (d / "control-q8_0.gguf").exists()
