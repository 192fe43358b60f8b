"""What the LoRA learns from: the distillation mix, each source a switch with a weight ([mix]).

    ssd         the model's own completions on the repository prompts, sampled hot (SSD: it reshapes
                the model's distribution; it cannot teach what the model never saw)
    repository  the repository's own answer at the same prompts: the real middle of each harvested
                hole, the real next line or block (loss on the target only, like every example)
    log         completions users accepted, as far as they accepted them, weighted up by how much of
                it they kept (the local log and the team's bundles)

A weight multiplies each example's own weight; 0 turns the source off (with `ssd = 0` the cycle does
not sample at all). The weights and how many examples each source gave go into the manifest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .records import Prompt
from .sample import Sample
from .tokenize import TrainExample

SOURCES = ("ssd", "repository", "log")


@dataclass(frozen=True)
class MixConfig:
    ssd: float = 1.0
    repository: float = 1.0  # on: benchmarks/results/mix-httpx-*.json (README, Benchmarks)
    log: float = 1.0

    def __post_init__(self) -> None:
        weights = asdict(self)
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise ValueError(f"[mix] weights must be ≥ 0 with at least one above 0; got {weights}")


@dataclass(frozen=True)
class Mixed:
    examples: list[TrainExample]
    counts: dict[str, int]  # examples per source

    def manifest(self, mix: MixConfig) -> dict:
        return {"weights": asdict(mix), "examples": self.counts}


def training_examples(samples: list[Sample], prompts: list[Prompt], repo_name: str = "",
                      mix: MixConfig = MixConfig(), targets: list[Sample] = ()) -> Mixed:
    """The training examples of a cycle by `mix`: its own samples, its repository targets (Sample
    records whose completion is the real code: `distill.sample.repository_targets`), and its logged
    prompts' accepted completions (a logged prompt keeps the served windows and snippets as they were)."""
    out: list[TrainExample] = []
    counts = {s: 0 for s in SOURCES}
    for source, records in (("ssd", samples), ("repository", targets)):
        if getattr(mix, source) > 0:
            out += [TrainExample(r.prefix, r.suffix, r.completion, r.weight * getattr(mix, source), r.path,
                                 r.language, r.snippets, r.repo_name) for r in records]
            counts[source] = len(records)
    if mix.log > 0:
        logged = [p for p in prompts if p.source == "log" and p.reference.strip()]
        out += [TrainExample(p.prefix, p.suffix, p.reference, p.weight * mix.log, p.path, p.language, p.snippets,
                             repo_name) for p in logged]
        counts["log"] = len(logged)
    return Mixed(out, counts)
