"""The distillation mix ([mix]): SSD samples, repository targets and logged completions, each a switch
with a weight. The switches in the pure training-example builder, in the configuration, and in the real
split → harvest → sample stages with the tiny FIM model (repository targets laid out like the samples)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import StropError
from distill.cycle import STAGES, Cycle, CycleConfig, load_config
from distill.harvest import HarvestConfig, logged_prompt
from distill.mix import MixConfig, training_examples
from distill.records import LoggedContext, Prompt, read_jsonl
from distill.sample import Sample, SampleConfig
from tests.fixtures.fixture_repo import fixture_repo  # noqa: F401  (a pytest fixture)


def _sample(pid: str, completion: str, source: str = "repo", stop: str = "eog") -> Sample:
    return Sample(pid, 0, "a.py", "python", "x = ", "\n", completion, 1.0, 3, stop, source, repo_name="tally")


def _records():
    repo = Prompt("p1", "next_line", "a.py", "python", "x = ", "", "compute(1)")
    logged = logged_prompt(LoggedContext("b.py", "python", "y = ", "", "load(path)", 8, 8), HarvestConfig())
    samples = [_sample("p1", "foo(1)")]
    targets = [_sample("p1", "compute(1)", stop="target")]
    return samples, [repo, logged], targets


@pytest.mark.parametrize("mix, expected", [
    (MixConfig(), {"foo(1)": 1.0, "compute(1)": 1.0, "load(path)": 2.0}),  # the default: all three on
    (MixConfig(ssd=1, repository=0.5, log=1), {"foo(1)": 1.0, "compute(1)": 0.5, "load(path)": 2.0}),
    (MixConfig(ssd=0, repository=1, log=0), {"compute(1)": 1.0}),
    (MixConfig(ssd=2, repository=0, log=0), {"foo(1)": 2.0}),
    (MixConfig(ssd=0, repository=0, log=3), {"load(path)": 6.0}),
])
def test_each_source_is_a_switch_with_a_weight(mix, expected):
    samples, prompts, targets = _records()
    mixed = training_examples(samples, prompts, "tally", mix, targets)
    assert {e.completion: e.weight for e in mixed.examples} == expected
    assert sum(mixed.counts.values()) == len(expected)
    assert mixed.manifest(mix)["weights"] == {"ssd": mix.ssd, "repository": mix.repository, "log": mix.log}
    assert all(e.repo_name == "tally" for e in mixed.examples)


def test_the_mix_is_configured_and_refuses_weights_that_train_on_nothing():
    cfg = load_config(None, ["mix.repository=0.5", "mix.ssd=0"])
    assert cfg.mix == MixConfig(ssd=0.0, repository=0.5, log=1.0)
    with pytest.raises(ValueError, match=r"\[mix\] weights"):
        MixConfig(ssd=0, repository=0, log=0)
    with pytest.raises(StropError, match=r"\[mix\].*weights must be ≥ 0"):
        load_config(None, ["mix.log=-1"])
    with pytest.raises(StropError, match="unknown setting mix.repo"):
        load_config(None, ["mix.repo=1"])


def _cycle(tmp_path, monkeypatch, repo: Path, gguf: Path, mix: MixConfig) -> tuple[Cycle, Path]:
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    cfg = CycleConfig(base_model=gguf, max_prompts=8, max_eval_items=8, mix=mix,
                      sample=SampleConfig(max_new_tokens=8, max_new_tokens_line=8, n_threads=2))
    c = Cycle(repo, cfg, progress=False)
    d = c.root / "cycle-test"
    d.mkdir(parents=True)
    c._run_stages(d, STAGES[:3])  # split, harvest, sample
    return c, d


@pytest.mark.slow
def test_repository_targets_are_the_real_code_laid_out_as_the_samples_are(tmp_path, monkeypatch, fixture_repo,  # noqa: F811
                                                                          tiny_fim_model):
    _, d = _cycle(tmp_path, monkeypatch, fixture_repo, Path(tiny_fim_model.gguf_q8), MixConfig(ssd=1, repository=1))
    prompts = {p.id: p for p in read_jsonl(d / "prompts.jsonl", Prompt)}
    samples = {s.prompt_id: s for f in ("samples.jsonl", "samples.dropped.jsonl") if (d / f).exists()
               for s in read_jsonl(d / f, Sample)}
    targets = read_jsonl(d / "targets.jsonl", Sample)
    assert len(targets) >= 4
    for t in targets:
        p = prompts[t.prompt_id]
        assert t.completion == p.reference and t.stop_reason == "target"
        # the real code: the file at the split's cutoff holds prefix + target + suffix
        assert p.prefix.endswith(t.prefix[-200:]) and (t.prefix + t.completion + t.suffix) in (p.prefix + p.reference + p.suffix)
        s = samples[t.prompt_id]  # the same prompt, sampled: the same windows, snippets and repository name
        assert (s.prefix, s.suffix, s.snippets, s.repo_name) == (t.prefix, t.suffix, t.snippets, t.repo_name)
    stats = json.loads((d / "sample_stats.json").read_text())
    assert stats["repository_targets"] == len(targets) and stats["kept"] > 0


@pytest.mark.slow
def test_ssd_off_skips_sampling_and_trains_on_the_repository_alone(tmp_path, monkeypatch, fixture_repo,  # noqa: F811
                                                                    tiny_fim_model):
    _, d = _cycle(tmp_path, monkeypatch, fixture_repo, Path(tiny_fim_model.gguf_q8),
                  MixConfig(ssd=0, repository=1, log=0))
    assert read_jsonl(d / "samples.jsonl", Sample) == []
    stats = json.loads((d / "sample_stats.json").read_text())
    assert stats["skipped"] == "[mix] ssd = 0" and stats["repository_targets"] > 0
    mixed = training_examples(read_jsonl(d / "samples.jsonl", Sample), read_jsonl(d / "prompts.jsonl", Prompt),
                              fixture_repo.name, MixConfig(ssd=0, repository=1, log=0),
                              read_jsonl(d / "targets.jsonl", Sample))
    assert mixed.counts == {"ssd": 0, "repository": stats["repository_targets"], "log": 0}
