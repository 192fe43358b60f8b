"""The distillation mix, ablated: which training data makes the model better on held-out code of the
same repository?

    python benchmarks/bench_mix.py --repo GITDIR [--rev REV] [--model GGUF] [--prompts 128]
                                   [--test-items 200] [--validation-items 60] [--arms ssd,repository,...]

One real repository with history is cloned at `--rev`, the model is imported as the model in
service, and the cycle's own stages run once for the data every arm shares: the temporal split
(validation and test slices), the harvest, SSD sampling and the repository targets (distill/mix.py).
Then each arm trains its own LoRA on its mix and exports it exactly as `strop distill` does (the
cycle's train and export stages), and every model is scored greedily, on the same items, through the
cycle's evaluator (the served prompt layout, repository retrieval over the training side):

- the model in service, and a control: the same model re-quantised to the candidates' type without
  training (what the export's quantisation alone changes);
- arms: `ssd` (SSD samples only), `repository` (the repository's real targets only), `ssd+repository`,
  `ssd+repository+log` (plus completions a user would have accepted; see below).

Validation scores choose the default mix; test scores, with the gate's paired bootstrap intervals
against the model in service, say what it buys. Each arm reports its training time and tokens/s.

The log arm: this repository has no strop users, so its log is simulated by the one rule a real log
follows: a user accepts a suggestion that is what they were going to type. The base model's SSD
samples whose first line equals the repository's real line at that prompt become accepted-and-kept
completions (logged prompts with the log's weighting), trained on as the log's are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

RESULTS = ROOT / "benchmarks" / "results"
ARMS = {
    "ssd": {"ssd": 1.0, "repository": 0.0, "log": 0.0},
    "repository": {"ssd": 0.0, "repository": 1.0, "log": 0.0},
    "ssd+repository": {"ssd": 1.0, "repository": 1.0, "log": 0.0},
    "ssd+repository+log": {"ssd": 1.0, "repository": 1.0, "log": 1.0},
}
SHARED = ("validation.jsonl", "test.jsonl", "split.json", "prompts.jsonl", "samples.jsonl", "samples.dropped.jsonl",
          "targets.jsonl", "sample_stats.json")


def first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def simulated_log(d: Path, harvest_cfg) -> list:
    """Logged prompts for the samples a user would have accepted (first line = the repository's)."""
    from distill.harvest import logged_prompt
    from distill.records import LoggedContext, Prompt, read_jsonl
    from distill.sample import Sample

    reference = {p.id: p.reference for p in read_jsonl(d / "prompts.jsonl", Prompt)}
    out = []
    for s in read_jsonl(d / "samples.jsonl", Sample):
        ref = reference.get(s.prompt_id, "")
        if first_line(s.completion) and first_line(s.completion) == first_line(ref):
            accepted = s.completion.split("\n")[0] if "\n" not in ref.strip() else s.completion
            ctx = LoggedContext(s.path, s.language, s.prefix, s.suffix, accepted, len(accepted), len(accepted),
                                snippets=s.snippets)
            if (p := logged_prompt(ctx, harvest_cfg)) is not None:
                out.append(p)
    return out


def score(model: Path, items: list, cfg, **prompt):
    from distill.evaluate import Evaluator

    ev = Evaluator(model, cfg.eval, **prompt)
    try:
        return ev.score(items, 0.0, progress=True)
    finally:
        ev.close()


def summary(s) -> dict:
    return {"n": s.n, "exact_match": round(s.exact_match, 4), "edit_similarity": round(s.edit_similarity, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="a git repository with history (not strop, not pallets/*)")
    ap.add_argument("--rev", default="HEAD")
    ap.add_argument("--model", type=Path, default=None, help="GGUF in service (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--test-items", type=int, default=200)
    ap.add_argument("--validation-items", type=int, default=60)
    ap.add_argument("--budget-tokens", type=int, default=512, help="prompt budget of sampling, training and evaluation")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more cycle settings")
    ap.add_argument("--keep", type=Path, help="keep the work directory here (a rerun reuses finished arms)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from bench_distill import clone, default_model, git, requantised_control

    model = (args.model or default_model()).resolve()
    work = Path(tempfile.mkdtemp(prefix="strop-bench-mix-")) if args.keep is None else args.keep.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["STROP_HOME"] = str(work / "home")
    os.environ.setdefault("TQDM_MININTERVAL", "10")
    from core.registry import repo_key
    from distill.cli import configure_logging
    from distill.cycle import STAGES, Cycle, load_config, repository_retriever
    from distill.mix import MixConfig
    from distill.records import EvalItem, Prompt, read_jsonl, write_jsonl
    from distill.gate import decide
    from distill.registry import Registry

    total = args.test_items + args.validation_items
    settings = [f"cycle.max_prompts={args.prompts}", f"cycle.max_eval_items={total}",
                f"split.validation_frac={args.validation_items / total}", f"prompt.budget_tokens={args.budget_tokens}",
                "train.max_seq_tokens=768", "train.max_completion_tokens=128", "cycle.promote=false", *args.set]
    cfg = load_config(None, settings + ["mix.ssd=1", "mix.repository=1"])
    configure_logging()
    source = args.repo.resolve()
    name = source.parent.name.split("+")[-1] if source.name in ("repo", ".git") else source.name
    repo = work / name  # the repository's name is part of a FIM model's prompt
    if not repo.exists():
        commit = clone(args.repo.resolve(), args.rev, repo)
        registry = Registry()
        entry = registry.add_version(repo_key(repo), model, {"name": model.stem, "source": "import"})
        registry.promote(repo_key(repo), entry.version)
    commit = git(repo, "rev-parse", "HEAD")
    data = Cycle(repo, cfg)
    shared = data.root / "cycle-mix-shared"
    shared.mkdir(parents=True, exist_ok=True)
    if not (shared / "state.json").exists():
        (shared / "state.json").write_text(json.dumps({"stage": None}))
    t0 = time.perf_counter()
    data._run_stages(shared, STAGES[:3])  # split, harvest, sample (SSD samples and repository targets)
    shared_seconds = json.loads((shared / "state.json").read_text())["seconds"]
    print(f"shared data ready in {time.perf_counter() - t0:.0f}s: {shared_seconds}", flush=True)
    logged = simulated_log(shared, cfg.harvest)

    result: dict = {
        "benchmark": "bench_mix",
        "repository": {"source": str(args.repo.resolve()), "commit": commit,
                       "commits": int(git(repo, "rev-list", "--count", "HEAD"))},
        "model": model.name,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "settings": settings, "split": json.loads((shared / "split.json").read_text()),
        "sample_stats": json.loads((shared / "sample_stats.json").read_text()),
        "shared_seconds_by_stage": shared_seconds, "simulated_log_completions": len(logged),
        "decoding": "greedy (the served default)", "arms": {},
    }
    validation = read_jsonl(shared / "validation.jsonl", EvalItem)
    test = read_jsonl(shared / "test.jsonl", EvalItem)
    prompt = dict(prompt=cfg.prompt, repo_name=repo.name, retriever=repository_retriever(repo, cfg))
    base = {"validation": score(model, validation, cfg, **prompt), "test": score(model, test, cfg, **prompt)}
    control_path = requantised_control(model, cfg.quantization, work / f"base-{cfg.quantization.lower()}.gguf")
    control = score(control_path, test, cfg, **prompt)
    result["in_service"] = {k: summary(v) for k, v in base.items()}

    def gate_json(cand, against=None) -> dict:
        """The gate's paired bootstrap on the test slice (as the cycle decides, without its guards)."""
        g = decide((against or base["test"]).per_item, cand.per_item, min_items=cfg.eval.min_items,
                   available_items=len(test), min_es_gain=cfg.eval.min_es_gain).to_json()
        return {k: g[k] for k in ("promote", "reasons", "es_gain", "es_ci", "em_gain", "em_ci", "n_items")}

    result["control_requantised"] = {"test": summary(control), "gate_vs_in_service": gate_json(control)}

    for name in args.arms.split(","):
        mix = MixConfig(**ARMS[name])
        arm_cfg = dataclasses.replace(cfg, mix=mix)
        d = data.root / f"cycle-mix-{name.replace('+', '-')}"
        if not (d / "state.json").exists() or json.loads((d / "state.json").read_text()).get("stage") != "export":
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            for f in SHARED:
                if (shared / f).exists():
                    shutil.copy2(shared / f, d / f)
            if mix.log > 0 and logged:
                write_jsonl(d / "prompts.jsonl", read_jsonl(d / "prompts.jsonl", Prompt) + logged)
            (d / "state.json").write_text(json.dumps({"stage": "sample", "seconds": {}}))
            Cycle(repo, arm_cfg)._run_stages(d, STAGES[:5])  # train, export
        state = json.loads((d / "state.json").read_text())
        train = json.loads((d / "train.json").read_text())
        candidate = d / f"candidate-{cfg.quantization.lower()}.gguf"
        arm = {"mix": train["mix"], "train_seconds": state["seconds"].get("train"),
               "export_seconds": state["seconds"].get("export"),
               "train_tokens": train.get("train_tokens"), "train_tokens_per_s": round(train.get("tokens_per_s", 0), 1),
               "steps": train.get("steps"), "final_loss": round(train.get("final_loss", 0), 4)}
        val_scores = score(candidate, validation, cfg, **prompt)
        test_scores = score(candidate, test, cfg, **prompt)
        arm.update(validation=summary(val_scores), test=summary(test_scores), gate_vs_in_service=gate_json(test_scores),
                   gate_vs_control=gate_json(test_scores, control))
        result["arms"][name] = arm
        print(f"{name}: validation ES {arm['validation']['edit_similarity']} (in service "
              f"{result['in_service']['validation']['edit_similarity']}), test ES {arm['test']['edit_similarity']}; "
              f"{arm['gate_vs_in_service']['reasons'][0]}", flush=True)
        out = args.out or RESULTS / f"mix-{name}-{model.stem}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")  # after every arm: a long run keeps what it measured

    arms = result["arms"]
    best = max(arms, key=lambda a: arms[a]["validation"]["edit_similarity"])
    result["chosen_on_validation"] = {
        "arm": best, "validation_edit_similarity": arms[best]["validation"]["edit_similarity"],
        "beats_in_service_on_validation": arms[best]["validation"]["edit_similarity"]
        > result["in_service"]["validation"]["edit_similarity"],
        "test": arms[best]["test"], "gate_vs_in_service": arms[best]["gate_vs_in_service"]}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["chosen_on_validation"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
