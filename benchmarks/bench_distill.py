"""Distillation: one real `strop distill` cycle on SmolLM2-135M and a real repository with history.

    python benchmarks/bench_distill.py [--repo DIR] [--rev HEAD] [--model GGUF] [--prompts 192]

The repository (default: this one) is cloned at `--rev` into a temporary directory, the model is
imported and promoted there as the model in service, and `distill.cycle.Cycle` runs every stage
(split → harvest → sample → train → export → evaluate → register) exactly as `strop distill --once`
does. Then, in the same run:

- sampling throughput: strop's sampler on the first `--throughput-prompts` prompts versus raw
  `Llama.generate` on the same token sequences, with the same sampling settings and seeds, producing
  the same number of tokens (goal ≥ 0.9×);
- training throughput: strop's `train()` versus a plain torch+peft loop on the same batches of the
  cycle's own samples (benchmarks/bench_train.py's comparison; goal ≥ 0.9×);
- held-out quality: base versus distilled exact match and edit similarity on the temporal test
  slice, each under greedy decoding and under its own T_eval tuned on the validation slice, plus a
  control: the base re-quantised to the candidate's type without training (what export alone does).

Part `wide` (not run by default) scores both models greedily on up to `--wide-items` items of the
test slice, more than the cycle's gate uses. Results go to benchmarks/results/distill.json (and
the cycle's report.txt/png beside it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results"


def default_model() -> Path:
    from core.models import embedded_default

    return embedded_default()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def clone(repo: Path, rev: str, dest: Path) -> str:
    """A private clone at `rev` (the working tree's uncommitted changes are not part of it)."""
    subprocess.run(["git", "clone", "--quiet", "--no-local", str(repo), str(dest)], check=True)
    commit = git(repo, "rev-parse", rev)
    git(dest, "checkout", "--quiet", "--detach", commit)
    return commit


def sampling_throughput(model: Path, prompts: list, cfg, work: Path, rounds: int = 3, prompt=None) -> dict:
    """strop's sampler versus raw llama-cpp-python generation on the same prompts and tokens,
    alternated `rounds` times (strop, raw, strop, raw, ...) so that drift in the machine's speed
    falls on both."""
    from distill.records import read_jsonl
    from distill.sample import Sample, seed_for, dropped_path, sample
    from core.completion import CompletionPath, PromptSettings, position_of
    from core.llama_model import load_model, tokenize_pieces
    from core.models import ResolvedModel

    loaded = load_model(ResolvedModel(model, model.stem, model.stem, "flag"), n_ctx=cfg.n_ctx,
                        n_threads=cfg.n_threads or (os.cpu_count() or 1), n_gpu_layers=-1)
    llm = loaded.llm
    prompt = prompt or PromptSettings()

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8", "surrogatepass"), add_bos=False, special=False))

    rows, matched = [], True
    try:
        for r in range(rounds):
            out = work / f"throughput-samples-{r}.jsonl"
            for stale in (out, dropped_path(out)):
                stale.unlink(missing_ok=True)
            stats = sample(model, prompts, out, cfg, progress=False, prompt=prompt)
            done = read_jsonl(out, Sample) + (read_jsonl(dropped_path(out), Sample) if dropped_path(out).exists() else [])
            by_key = {(s.prompt_id, s.index): s for s in done}
            generated, started = 0, time.perf_counter()
            for p in prompts:
                ctx = CompletionPath(loaded.fim, count, prompt, cfg).context(
                    position_of(p.prefix, p.suffix, path=p.path, language=p.language, snippets=p.snippets))
                ids = tokenize_pieces(loaded, ctx.pieces)
                for i in range(cfg.n_per_prompt):
                    s = by_key[(p.id, i)]
                    matched &= len(ids) == s.n_prompt_tokens or s.drop_reason == "empty_prompt"
                    if not ids:
                        continue
                    # the same samples as strop drew: the token that ended the line or block, or an
                    # end-of-generation token that strop samples but does not keep
                    n = s.n_tokens + (1 if s.stop_reason == "eog" else 0)
                    llm.set_seed(seed_for(cfg.seed, p.id, i))
                    gen = llm.generate(ids, temp=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=0.0,
                                       repeat_penalty=1.0, reset=True)
                    for produced, _ in enumerate(gen, start=1):
                        if produced >= n:
                            break
                    gen.close()
                    generated += s.n_tokens
            raw_s = time.perf_counter() - started
            rows.append({"strop_tokens": stats.tokens, "strop_seconds": round(stats.seconds, 2),
                         "strop_tokens_per_s": round(stats.tokens_per_s, 2), "raw_tokens": generated,
                         "raw_seconds": round(raw_s, 2), "raw_tokens_per_s": round(generated / raw_s, 2),
                         "ratio": round(stats.tokens_per_s / (generated / raw_s), 3)})
            print(f"sampling round {r}: {json.dumps(rows[-1])}", flush=True)
    finally:
        llm.close()
    strop_tps = sum(r["strop_tokens"] for r in rows) / sum(r["strop_seconds"] for r in rows)
    raw_tps = sum(r["raw_tokens"] for r in rows) / sum(r["raw_seconds"] for r in rows)
    return {"prompts": len(prompts), "rounds": rows, "strop_tokens_per_s": round(strop_tps, 2),
            "raw_tokens_per_s": round(raw_tps, 2), "ratio": round(strop_tps / raw_tps, 3),
            "token_sequences_match": matched, "goal_ratio": 0.9,
            "note": "tokens/s = kept generated tokens over the whole loop (prompt evaluation included on both "
                    "sides; strop's loop also builds contexts, cleans and persists each sample)"}


def requantised_control(base: Path, qtype: str, dest: Path) -> Path:
    """The base model re-quantised to the candidate's type, with no training: isolates what export's
    quantisation alone changes (SmolLM2 ships as Q4_1; candidates are exported as Q8_0)."""
    from distill.quantize import quantize_gguf

    return quantize_gguf(base, dest, qtype, allow_requantize=True)


def quality(report: dict, base: Path, control: Path, validation: list, test: list, cfg, **prompt) -> dict:
    """Greedy and tuned-T_eval scores of each model on the same held-out slices. The cycle's
    evaluation already scored the distilled model both ways and the base greedily (it serves at
    T=0); the base's own tuned T_eval and the re-quantised control are added here, on the cycle's
    prompts (`prompt`: its [prompt] settings, repository name and retrieval)."""
    from distill.evaluate import Evaluator

    out = {"distilled": {"greedy": _scores(report["candidate_greedy"]), "t_eval": report["t_eval"],
                         "validation_edit_similarity_by_t": report["t_eval_curve"],
                         "tuned": _scores(report["candidate"])},
           "base": {"greedy": _scores(report["baseline_greedy"])}}
    ev = Evaluator(base, cfg, **prompt)
    try:
        t_eval, curve = ev.tune_temperature(validation)
        out["base"].update(t_eval=t_eval, validation_edit_similarity_by_t={str(k): v for k, v in curve.items()},
                           tuned=out["base"]["greedy"] if t_eval == 0.0 else _scores(dataclasses.asdict(
                               ev.score(test, t_eval, perplexity=cfg.perplexity))))
    finally:
        ev.close()
    ev = Evaluator(control, cfg, **prompt)
    try:
        out["base_requantised"] = {"greedy": _scores(dataclasses.asdict(ev.score(test, 0.0, perplexity=cfg.perplexity)))}
    finally:
        ev.close()
    return out


def _scores(s: dict) -> dict:
    return {"n": s["n"], "exact_match": round(s["exact_match"], 4), "edit_similarity": round(s["edit_similarity"], 4),
            "perplexity": round(s["perplexity"], 3) if s.get("perplexity") else None,
            "by_kind": {k: {m: round(v, 4) if isinstance(v, float) else v for m, v in d.items()}
                        for k, d in s["by_kind"].items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, default=ROOT)
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--model", type=Path, default=None, help="GGUF in service (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--prompts", type=int, default=192)
    ap.add_argument("--eval-items", type=int, default=96, help="validation + test items")
    ap.add_argument("--budget-tokens", type=int, default=512, help="prompt budget of sampling and evaluation")
    ap.add_argument("--throughput-prompts", type=int, default=24)
    ap.add_argument("--train-compare-steps", type=int, default=6)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more cycle settings")
    ap.add_argument("--keep", type=Path, help="keep the work directory here")
    ap.add_argument("--wide-items", type=int, default=240, help="test items of the `wide` part")
    ap.add_argument("--parts", default="cycle,sampling,training,quality",
                    help="what to measure; without `cycle`, the kept cycle of --keep is measured again")
    ap.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    args = ap.parse_args(argv)
    model = (args.model or default_model()).resolve()

    work = Path(tempfile.mkdtemp(prefix="strop-bench-distill-")) if args.keep is None else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["STROP_HOME"] = str(work / "home")
    os.environ.setdefault("TQDM_MININTERVAL", "10")
    from bench_train import compare_loops
    from distill.cli import configure_logging
    from distill.cycle import Cycle, load_config, repository_retriever
    from distill.records import EvalItem, Prompt, read_jsonl
    from core.registry import repo_key
    from distill.registry import Registry
    from distill.sample import Sample
    from distill.tokenize import TrainExample

    settings = [f"cycle.max_prompts={args.prompts}", f"cycle.max_eval_items={args.eval_items}",
                f"prompt.budget_tokens={args.budget_tokens}",
                "train.max_seq_tokens=768", "train.max_completion_tokens=128", *args.set]
    cfg = load_config(None, settings)
    configure_logging()  # the cycle's progress, as `strop distill` prints it
    parts = set(args.parts.split(","))
    repo = work / "repo"
    result: dict = {}
    if "cycle" in parts:
        if repo.exists():
            shutil.rmtree(repo)
        commit = clone(args.repo.resolve(), args.rev, repo)
        registry = Registry()
        key = repo_key(repo)
        base_entry = registry.add_version(key, model, {"name": model.stem, "source": "import"})
        registry.promote(key, base_entry.version)
        started = time.perf_counter()
        outcome = Cycle(repo, cfg).run(force=True)
        d = outcome.cycle_dir
        print(f"cycle done in {time.perf_counter() - started:.0f}s: {outcome.seconds_by_stage}", flush=True)
        train_json = json.loads((d / "train.json").read_text())
        result.update({
            "benchmark": "bench_distill",
            "repository": {"source": str(args.repo.resolve()), "commit": commit,
                           "commits": int(git(repo, "rev-list", "--count", "HEAD"))},
            "model": model.name,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "settings": settings,
            "split": json.loads((d / "split.json").read_text()),
            "prompts": len(read_jsonl(d / "prompts.jsonl", Prompt)),
            "sample_stats": json.loads((d / "sample_stats.json").read_text()),
            "train": {k: v for k, v in train_json.items() if k != "losses"},
            "export_roundtrip": json.loads((d / "export.json").read_text()),
            "seconds_by_stage": json.loads((d / "state.json").read_text()).get("seconds", {}),
            "cycle_seconds": round(time.perf_counter() - started, 1),
            "gate": {"promoted": outcome.promoted, "version": outcome.version, "reasons": outcome.reasons,
                     "t_eval": json.loads((d / "report.json").read_text())["t_eval"]},
            "goals": {"sampling_over_raw": ">= 0.9", "training_over_plain": ">= 0.9"},
        })
    else:  # re-measure parts on the cycle a kept work directory holds; the rest of the results stay
        if args.keep is None or not args.out.exists():
            raise SystemExit("--parts without `cycle` needs --keep DIR of an earlier run and its --out file")
        result = json.loads(args.out.read_text())
        d = max((Cycle(repo, cfg).root).glob("cycle-*"))
    report = json.loads((d / "report.json").read_text())
    losses = json.loads((d / "train.json").read_text())["losses"]
    result.pop("train_loss_first_last", None)
    # Medians over 5 steps: the last step of an epoch may hold a single example.
    result["train_loss_median_first_last_5_steps"] = [round(statistics.median(losses[:5]), 4),
                                                      round(statistics.median(losses[-5:]), 4)]

    if "sampling" in parts:
        prompts = read_jsonl(d / "prompts.jsonl", Prompt)
        result["sampling_throughput"] = sampling_throughput(model, prompts[: args.throughput_prompts], cfg.sample, work)

    if "training" in parts:
        samples = read_jsonl(d / "samples.jsonl", Sample)
        examples = [TrainExample(s.prefix, s.suffix, s.completion, s.weight, s.path, s.language) for s in samples]
        train_cfg = dataclasses.replace(cfg.train, max_steps=args.train_compare_steps, checkpoint_every_steps=10_000,
                                        num_threads=os.cpu_count() or 1)
        training = compare_loops(model, examples, train_cfg)
        training.pop("runs", None)
        result["training_throughput"] = training
        print(f"training throughput: strop {training['strop_tokens_per_s']} vs plain "
              f"{training['plain_tokens_per_s']} tokens/s (ratio {training['ratio']})", flush=True)

    if "wide" in parts:  # more of the held-out test slice than the cycle's gate used, greedy only
        from distill.evaluate import Evaluator
        from distill.split import split_repo

        test = split_repo(repo, cfg.split).test()[: args.wide_items]
        candidate = Path(Registry().get(repo_key(repo), result["gate"]["version"]).gguf)
        wide = {"n": len(test), "decoding": "greedy"}
        for name, path in (("distilled", candidate), ("base", model)):
            ev = Evaluator(path, cfg.eval, prompt=cfg.prompt, repo_name=repo.name,
                           retriever=repository_retriever(repo, cfg))
            try:
                wide[name] = _scores(dataclasses.asdict(ev.score(test, 0.0, progress=True)))
            finally:
                ev.close()
        result["held_out_quality_wide"] = wide
        print(f"wide test slice: {json.dumps(wide)}", flush=True)

    if "quality" in parts:
        control = requantised_control(model, cfg.quantization, work / f"base-{cfg.quantization.lower()}.gguf")
        result["held_out_quality"] = quality(report, model, control, read_jsonl(d / "validation.jsonl", EvalItem),
                                             read_jsonl(d / "test.jsonl", EvalItem), cfg.eval, prompt=cfg.prompt,
                                             repo_name=repo.name, retriever=repository_retriever(repo, cfg))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("report.txt", "report.png"):
        shutil.copyfile(d / name, args.out.with_name(f"{args.out.stem}-{name}"))
    print(json.dumps({k: result.get(k) for k in ("seconds_by_stage", "gate", "sampling_throughput",
                                                 "held_out_quality")}, indent=2))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
