"""Sampling on the real tiny FIM model: raw samples persisted as produced, resumable, deterministic."""

import pytest

from distill.records import Prompt, read_jsonl
from distill.sample import Sample, SampleConfig, degenerate, dropped_path, sample


@pytest.mark.parametrize("text, why", [
    ("", "empty"), ("   \n  ", "empty"), ("x = 1\nx = 1\nx = 1", "repeated_line"),
    ("a" * 30, "repetition_loop"), ("(((((((((((((((((((((((((", "repetition_loop"),
    ("return a + b", None), ("for i in range(3):\n    print(i)", None),
])
def test_degenerate(text, why):
    assert degenerate(text) == why


PROMPTS = [Prompt(f"p{i}", "fim_line", "m.py", "python", f"def f{i}(x):\n    return ", "\n\nprint(1)\n", "x")
           for i in range(6)] + [Prompt("n", "next_line", "m.py", "python", "import os\n", "", "import sys")]


@pytest.mark.slow
def test_samples_persist_resume_and_are_deterministic(tiny_fim_model, tmp_path):
    cfg = SampleConfig(n_per_prompt=2, max_new_tokens=16, max_new_tokens_line=12, seed=7)
    out = tmp_path / "samples.jsonl"
    stats = sample(tiny_fim_model.gguf_q8, PROMPTS[:3], out, cfg, progress=False)
    assert stats.kept + sum(stats.dropped.values()) == 6 and stats.tokens > 0
    first = read_jsonl(out, Sample)
    assert len(first) == stats.kept
    dropped = read_jsonl(dropped_path(out), Sample) if dropped_path(out).exists() else []
    assert sorted(s.drop_reason for s in dropped) == sorted(stats.dropped.elements())
    # a restart with more prompts only samples what is missing (dropped samples are not redone),
    # and its counts cover everything on disk
    stats2 = sample(tiny_fim_model.gguf_q8, PROMPTS, out, cfg, progress=False)
    assert stats2.resumed == 6
    assert stats2.kept + sum(stats2.dropped.values()) == 2 * len(PROMPTS)
    assert stats2.kept == len(read_jsonl(out, Sample))
    # deterministic given the seed: a fresh run reproduces the same samples
    again = tmp_path / "again.jsonl"
    sample(tiny_fim_model.gguf_q8, PROMPTS[:3], again, cfg, progress=False)
    assert [s.completion for s in read_jsonl(again, Sample)] == [s.completion for s in first]
    for s in first:
        assert s.completion.strip() and "\n" not in s.completion  # fim_line mid-line: one line
        assert s.prefix.endswith("return ") and s.suffix.startswith("\n\nprint(1)")


@pytest.mark.slow
def test_an_empty_prompt_is_dropped_and_counted_not_fatal(smollm_gguf, tmp_path):
    """The start of a file for a prefix-only model without BOS (SmolLM2): no tokens to continue."""
    start = Prompt("start", "next_line", "new.py", "python", "", "", "import os")
    later = Prompt("later", "next_line", "new.py", "python", "import os\n", "", "import sys")
    out = tmp_path / "samples.jsonl"
    stats = sample(smollm_gguf, [start, later], out, SampleConfig(max_new_tokens=8, max_new_tokens_line=8), progress=False)
    assert stats.dropped["empty_prompt"] == 1 and stats.kept + sum(stats.dropped.values()) == 2
    assert [s.prompt_id for s in read_jsonl(dropped_path(out), Sample) if s.drop_reason == "empty_prompt"] == ["start"]
