"""Sample the model in service's own completions on harvested prompts (simple self-distillation).

Raised temperature with top-k/top-p truncation (applied temperature → top-k → top-p, as in the SSD
paper), N samples per prompt, no correctness filter: only degenerate samples (empty, whitespace,
repetition loops) are dropped, and counted by reason. Prompts go through the serving path
(`core.completion.CompletionPath`: the same context, job and hygiene as `strop serve`), so the model
learns the sequences it is served with; each sample records the windows, snippets and repository name
its prompt was laid out with. Samples are appended to a JSONL file as they are produced; a restarted
run skips the (prompt, index) pairs already there.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.completion import CompletionPath, PromptSettings, position_of
from core.decode import InProcessEngine, Sampling
from core.models import ResolvedModel

from .records import Prompt, append_jsonl, read_jsonl, store_snippets


@dataclass(frozen=True)
class SampleConfig:
    # SSD's headline setting (Qwen3-instruct): T_train 1.6, top-k 20, top-p 0.8; the paper used
    # 0.8/20/0.8 for Llama-3.1-8B. No min-p, no repetition penalty.
    temperature: float = 1.6
    top_k: int = 20
    top_p: float = 0.8
    n_per_prompt: int = 1
    max_new_tokens: int = 64
    max_new_tokens_line: int = 32
    time_cap_ms: int = 0  # 0: none; samples stop on the token limits, never on the machine's speed
    heal: bool = True  # token healing at the cursor, as `strop serve` decodes ([serve] heal)
    seed: int = 0
    n_ctx: int = 4096  # the [prompt] budget plus the completion
    n_threads: int = 0  # 0: all cores


@dataclass(frozen=True)
class Sample:
    prompt_id: str
    index: int
    path: str
    language: str
    prefix: str  # the prompt's context windows as the server builds them
    suffix: str
    completion: str
    weight: float
    n_tokens: int
    stop_reason: str
    source: str = "repo"
    drop_reason: str = ""  # set on records of the dropped-samples file (see `dropped_path`)
    n_prompt_tokens: int = 0  # the prompt as the model saw it
    snippets: tuple = ()  # the repository context laid out before the file: ((path, text), ...)
    repo_name: str = ""

    def __post_init__(self) -> None:
        store_snippets(self)


@dataclass
class SampleStats:
    """kept/dropped count every sample on disk (a resumed run's too); tokens and seconds only this
    run's sampling (for its throughput)."""

    prompts: int = 0
    kept: int = 0
    resumed: int = 0
    dropped: Counter = field(default_factory=Counter)
    tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["dropped"] = dict(self.dropped)
        d["tokens_per_s"] = round(self.tokens_per_s, 2)
        return d


def degenerate(text: str) -> str | None:
    """Why a sample is degenerate (to be dropped), or None. Only these are filtered: no verifier."""
    if not text.strip():
        return "empty"
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) >= 3 and len(set(lines)) == 1:
        return "repeated_line"
    if len(text) >= 24:
        for width in (1, 2, 3, 4):
            unit = text[-width:]
            if unit.strip() and text.endswith(unit * (24 // width)):
                return "repetition_loop"
    return None


def seed_for(base: int, prompt_id: str, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{base}:{prompt_id}:{index}".encode(), digest_size=4).digest(), "big")


def dropped_path(out_path: Path) -> Path:
    """Where the degenerate samples go (samples.jsonl → samples.dropped.jsonl): kept for auditing
    what was dropped, and so that a resumed run does not sample them again."""
    return out_path.with_name(out_path.stem + ".dropped" + out_path.suffix)


def sample(model_path: Path, prompts: list[Prompt], out_path: Path, cfg: SampleConfig = SampleConfig(), *,
           progress: bool = True, engine: InProcessEngine | None = None,
           prompt: PromptSettings = PromptSettings(), repo_name: str = "", retriever=None) -> SampleStats:
    """Append samples for every (prompt, index) not yet in `out_path` (kept) or its dropped file;
    return what happened."""
    import os

    from tqdm import tqdm

    drop_path = dropped_path(out_path)
    kept = read_jsonl(out_path, Sample) if out_path.exists() else []
    dropped = read_jsonl(drop_path, Sample) if drop_path.exists() else []
    done = {(s.prompt_id, s.index) for s in kept + dropped}
    todo = [(p, i) for p in prompts for i in range(cfg.n_per_prompt) if (p.id, i) not in done]
    stats = SampleStats(prompts=len(prompts), resumed=len(done), kept=len(kept),
                        dropped=Counter(s.drop_reason for s in dropped))
    if not todo:
        return stats
    own_engine = engine is None
    if engine is None:
        engine = InProcessEngine(n_ctx=cfg.n_ctx, n_threads=cfg.n_threads or (os.cpu_count() or 1), n_gpu_layers=-1)
        engine.load(ResolvedModel(Path(model_path), Path(model_path).stem, Path(model_path).stem, "flag"))
    model = engine.model
    path = CompletionPath(model.fim, engine.count_tokens, prompt, cfg, repo_name=repo_name, retriever=retriever)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="sample", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        for point, index in todo:
            out = path.run(engine, position_of(point.prefix, point.suffix, path=point.path, language=point.language,
                                               snippets=point.snippets), key="sample",
                           sampling=Sampling(cfg.temperature, cfg.top_k, cfg.top_p, seed=seed_for(cfg.seed, point.id, index)))
            ctx, gen = out.context, out.generation
            if gen is None:  # an empty prompt (the start of a file, for a model without BOS)
                text, why, n_tokens, stop_reason, n_prompt = "", "empty_prompt", 0, "", 0
            else:
                text = out.text
                why, n_tokens, stop_reason, n_prompt = (degenerate(text), len(gen.tokens), gen.stop_reason,
                                                        gen.n_prompt_tokens)
            stats.tokens += n_tokens
            # Weight 1: an unverified own sample. (A logged prompt's weight belongs to the completion
            # the user accepted there, which trains as its own example; see distill.cycle.)
            record = Sample(point.id, index, point.path, point.language, ctx.prefix, ctx.suffix, text,
                            1.0, n_tokens, stop_reason, point.source, why or "", n_prompt, ctx.snippets, ctx.repo_name)
            if why:
                stats.dropped[why] += 1
            else:
                stats.kept += 1
            append_jsonl(drop_path if why else out_path, [record])
            stats.seconds = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(tok_s=f"{stats.tokens_per_s:.1f}", kept=stats.kept, dropped=sum(stats.dropped.values()))
    finally:
        bar.close()
        if own_engine:
            engine.close()
    return stats


def repository_targets(model_path: Path, prompts: list[Prompt], out_path: Path, cfg: SampleConfig = SampleConfig(), *,
                       engine: InProcessEngine | None = None, prompt: PromptSettings = PromptSettings(),
                       repo_name: str = "", retriever=None) -> int:
    """The repository's own answer at each repository prompt (the hole's real middle, the real next
    line), laid out exactly as `sample` lays out that prompt (windows, snippets, repository name), as
    Sample records (stop_reason "target"). Written at once to `out_path`; returns how many."""
    import os

    from .records import write_jsonl

    points = [p for p in prompts if p.source == "repo" and p.reference.strip()]
    own_engine = engine is None
    if engine is None:
        engine = InProcessEngine(n_ctx=cfg.n_ctx, n_threads=cfg.n_threads or (os.cpu_count() or 1), n_gpu_layers=-1)
        engine.load(ResolvedModel(Path(model_path), Path(model_path).stem, Path(model_path).stem, "flag"))
    try:
        path = CompletionPath(engine.model.fim, engine.count_tokens, prompt, cfg, repo_name=repo_name,
                              retriever=retriever)
        records = []
        for point in points:
            ctx = path.context(position_of(point.prefix, point.suffix, path=point.path, language=point.language,
                                           snippets=point.snippets))
            if not ctx.prefix.strip() and not ctx.suffix.strip():
                continue  # nothing to condition on (the start of a file)
            records.append(Sample(point.id, 0, point.path, point.language, ctx.prefix, ctx.suffix, point.reference,
                                  point.weight, 0, "target", point.source, "", 0, ctx.snippets, ctx.repo_name))
    finally:
        if own_engine:
            engine.close()
    write_jsonl(out_path, records)
    return len(records)
