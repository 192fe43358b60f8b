"""One position, one token sequence: what `strop serve` sends the model for a cursor is what the
distillation samples it on, trains it on and evaluates it on — for a FIM model and a prefix-only one.

The served side is the real server path (server.completer.Completer on the supervised worker-process
engine); the offline side goes through the completion log (a real SQLite log row), the harvester, the
sampler (a real model), the training tokenizer and the evaluator.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from core.fim import Snippet
from core.llama_model import tokenize_pieces
from core.models import ResolvedModel
from server.config import ServeConfig

pytestmark = pytest.mark.slow

REPO_NAME = "tally"
# A position in the middle of a real-looking module, with another open document as context.
DOC = "".join(f"def rate_{i}(amount, currency='EUR'):\n    return round(amount * {i} / 100, 2)\n\n\n"
              for i in range(40)) + "def total(ledger):\n    return sum(entry.amount for entry in ledger)\n"
OTHER = "".join(f"CATEGORY_{i} = 'category-{i}'\n" for i in range(60))


@pytest.fixture(params=["fim", "prefix-only"])
def model(request, tiny_fim_model, smollm_gguf):
    if request.param == "fim":
        return tiny_fim_model.gguf_f32, str(tiny_fim_model.hf_dir)
    return smollm_gguf, smollm_gguf


def _tokenizer(where: str):
    from distill.train import load_base  # the training side's own loader (GGUF → transformers)

    path = Path(where)
    if path.is_dir():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    return load_base(path)[1]


async def test_served_sampled_trained_and_evaluated_prompts_are_the_same_tokens(model, tmp_path, monkeypatch):
    from core.context import OtherDocument
    from core.decode import InProcessEngine
    from distill.mix import MixConfig, training_examples
    from distill.evaluate import EvalConfig, Evaluator
    from distill.harvest import HarvestConfig, logged_prompt
    from distill.records import EvalItem, LoggedContext, Prompt
    from distill.sample import Sample, SampleConfig, dropped_path, repository_targets, sample
    from distill.records import read_jsonl
    from distill.tokenize import IGNORE_INDEX, encode_example
    from distill.train import TrainConfig
    from server.completer import Completer, Request
    from core.completion_log import CompletionLog, Record
    from server.engine import Engine

    gguf, tok_source = model
    monkeypatch.setenv("STROP_HOME", str(tmp_path / "home"))
    resolved = ResolvedModel(Path(gguf), "m", "v1", "flag")
    cfg = ServeConfig(prompt_budget_ms=0, warm_budget_ms=0, n_ctx=4096)  # the full (warm) prompt
    engine = Engine(n_ctx=cfg.n_ctx, n_threads=2, n_gpu_layers=0, slots=1)
    offset = DOC.index("sum(entry")
    req = Request(uri="file:///r/tally/ledger.py", path="src/tally/ledger.py", language="python", text=DOC,
                  offset=offset, others=(OtherDocument("src/tally/categories.py", OTHER, 10),))
    try:
        engine.load(resolved)
        completer = Completer(engine, cfg, None, repo=str(tmp_path), repo_name=REPO_NAME)
        ctx, job, _ = completer.plan(req)
        served = engine.tokenize(job.pieces)
        fmt = engine.model.fim
    finally:
        engine.close()
    assert ctx.snippets and ctx.snippets[0].path == "src/tally/categories.py"  # repository context is in it
    assert len(served) > 200

    # The served context goes through the log, as a completion the user accepted.
    log = CompletionLog(tmp_path / "log.sqlite3")
    log.add(Record(id="c1", repo=str(tmp_path), path=req.path, language=req.language, model="m", model_version="v1",
                   prefix=ctx.prefix, suffix=ctx.suffix, snippets=[dataclasses.asdict(s) for s in ctx.snippets],
                   completion="sum(e.amount for e in ledger)", multiline=False, rules=(), trigger="automatic",
                   latency_ms=1.0, prompt_ms=1.0, gen_ms=1.0, n_prompt_tokens=len(served), n_reused_tokens=0,
                   n_gen_tokens=5, source="model", stop_reason="eog"))
    (row,) = [dict(r) for r in log.rows()]
    logged = LoggedContext(row["path"], row["language"], row["prefix"], row["suffix"], row["completion"], 5, 5,
                           snippets=tuple(json.loads(row["snippets"])))
    prompt = logged_prompt(logged, HarvestConfig())
    assert prompt is not None

    # Sampled: the sampler's prompt has exactly the served length, and its record rebuilds it.
    out = tmp_path / "samples.jsonl"
    sample(Path(gguf), [prompt], out, SampleConfig(max_new_tokens=4, max_new_tokens_line=4, n_threads=2),
           progress=False, repo_name=REPO_NAME)
    (record,) = [r for f in (out, dropped_path(out)) if f.exists() for r in read_jsonl(f, Sample)]
    assert record.n_prompt_tokens == len(served)
    assert [Snippet(*s) for s in record.snippets] == list(ctx.snippets) and record.repo_name == REPO_NAME

    # A repository target at the same position (the real code there) is laid out as the sample is.
    hole = Prompt("r1", "fim_line" if fmt else "next_line", req.path, req.language, ctx.prefix, ctx.suffix,
                  "sum(entry.amount for entry in ledger)", snippets=tuple(dataclasses.asdict(s) for s in ctx.snippets))
    targets_out = tmp_path / "targets.jsonl"
    assert repository_targets(Path(gguf), [hole], targets_out, SampleConfig(n_threads=2), repo_name=REPO_NAME) == 1
    targets = read_jsonl(targets_out, Sample)

    # Trained: the training ids of that sample, of the repository target and of the accepted
    # completion all start with the served ids.
    tokenizer = _tokenizer(tok_source)
    mixed = training_examples([record], [prompt], REPO_NAME, MixConfig(repository=1.0), targets)
    examples = mixed.examples
    assert mixed.counts == {"ssd": 1, "repository": 1, "log": 1}
    assert [e.completion for e in examples][1] == "sum(entry.amount for entry in ledger)"
    for ex in examples:
        enc = encode_example(tokenizer, fmt, ex, max_prompt_tokens=TrainConfig().max_seq_tokens - 256,
                             max_completion_tokens=256)
        assert enc["input_ids"][: enc["labels"].count(IGNORE_INDEX)] == served

    # Evaluated: an evaluation item at the same position is scored on the same prompt.
    item = EvalItem("e1", "fim_line" if fmt else "next_line", req.path, req.language, ctx.prefix,
                    ctx.suffix, "sum(entry.amount for entry in ledger)",
                    snippets=tuple(dataclasses.asdict(s) for s in ctx.snippets))
    ev = Evaluator(Path(gguf), EvalConfig(), repo_name=REPO_NAME)
    try:
        assert tokenize_pieces(ev.model, ev._context(item).pieces) == served
        # ... and decoded as serving decodes it: token healing (Qwen2.5-Coder on encode/httpx scored
        # 0.541 unhealed against 0.597 healed, which is what users got), the same caps; so is a sample.
        from core.completion import CompletionPath

        served_rules = (job.heal, job.max_tokens, job.single_line)
        assert served_rules[0] is True
        for limits in (EvalConfig(), SampleConfig()):
            path = CompletionPath(fmt, ev.engine.count_tokens, completer.prompt, limits, repo_name=REPO_NAME)
            other = path.job(ev._context(item), key="e", sampling=job.sampling, multiline=not job.single_line)
            assert (other.heal, other.max_tokens, other.single_line) == served_rules, type(limits).__name__
    finally:
        ev.close()
