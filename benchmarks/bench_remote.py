"""Remote-engine overhead: the same jobs (same token ids) through the local engine (the supervised
worker) and through the remote engine talking to a real server on 127.0.0.1, on this machine.

Positions come from a real repository (encode/httpx, as benchmarks/bench_latency.py); each job is
built as serving builds it (core.context + server.completer.make_job), timing-free (no soft stop, a
30 s cap) and without token healing (a remote server cannot heal), so both engines must produce the
same greedy tokens. The local engine and the server are both up, but never compute at once: the
jobs are interleaved, alternating which goes first, so load from elsewhere falls on both alike.
Reports p50/p90 of the wall time from submit to the Generation, their ratio, the paired (same job)
median ratio, and whether the suggestions (after output hygiene) are identical and whole.

    python benchmarks/bench_remote.py [--positions 30] [--threads 2] [--budget 512]
    python benchmarks/bench_remote.py --engine http://gpu-box:8080   # an existing server instead

Writes benchmarks/results/remote.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_latency import DEFAULT_REV, DEFAULT_SOURCE  # noqa: E402
from benchmarks.latency.positions import checkout, plan  # noqa: E402
from core import context as ctxmod  # noqa: E402
from core.decode import Sampling  # noqa: E402
from core.models import embedded_default, resolve  # noqa: E402
from core.completion import clean_generation, make_job  # noqa: E402
from server.config import ServeConfig  # noqa: E402
from server.engine import Engine  # noqa: E402
from server.remote_engine import RemoteEngine  # noqa: E402
from tests.test_remote_engine import ModelServer  # noqa: E402


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def build_jobs(engine, positions, cfg: ServeConfig):
    jobs = []
    for i, pos in enumerate(positions):
        text = pos.document
        ctx = ctxmod.build(text, pos.cut, fmt=engine.model.fim, count=engine.count_tokens,
                           budget=ctxmod.Budget(total_tokens=cfg.budget_tokens, prefix_share=cfg.prefix_share,
                                                extra_share=0.0, chunk_lines=cfg.chunk_lines),
                           path=pos.path, language="python", others=(), repo_name="httpx")
        job = make_job(ctx, key=f"pos{i}", limits=cfg, sampling=Sampling(temperature=0.0, top_k=cfg.top_k,
                                                                          top_p=cfg.top_p))
        jobs.append((pos, ctx, replace(job, tokens=engine.tokenize(ctx.pieces), heal=False)))
    return jobs


def run(engine, jobs) -> list[dict]:
    out = []
    for pos, ctx, job in jobs:
        t0 = time.perf_counter()
        gen = engine.submit(job).result(300)
        ms = (time.perf_counter() - t0) * 1000
        cleaned = clean_generation(gen, ctx, pos.document[pos.cut:], ctx.multiline)
        out.append({"ms": round(ms, 1), "tokens": list(gen.tokens), "text": gen.text, "stop": gen.stop_reason,
                    "suggestion": cleaned.text, "whole": gen.complete and bool(cleaned.text.strip()),
                    "prompt_tokens": len(job.tokens)})
    return out


def summary(rows: list[dict]) -> dict:
    ms = [r["ms"] for r in rows]
    return {"p50_ms": round(quantile(ms, 0.5), 1), "p90_ms": round(quantile(ms, 0.9), 1),
            "mean_ms": round(statistics.fmean(ms), 1), "whole": sum(r["whole"] for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--budget", type=int, default=512, help="prompt tokens per job (serving uses up to 2048; "
                    "512 keeps 2×30 cold jobs within minutes on 2 cores)")
    ap.add_argument("--engine", help="an existing server's URL (default: start llama_cpp.server here)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/remote.json")
    args = ap.parse_args()

    model = embedded_default()
    resolved = resolve(model, None)
    cfg = replace(ServeConfig(), prompt_budget_ms=0, predict_soft_ms=0, time_cap_ms=30000, n_threads=args.threads,
                  budget_tokens=args.budget)
    work = Path(tempfile.gettempdir()) / "strop-bench-remote"
    root, commit = checkout(DEFAULT_SOURCE, DEFAULT_REV, work)
    positions = [p for group in plan(root, args.seed, {"p": (args.positions, 1)}).values() for p in group]

    local = Engine(n_ctx=cfg.n_ctx, n_threads=args.threads, n_gpu_layers=0, slots=1)
    local.load(resolved)
    jobs = build_jobs(local, positions, cfg)
    server = None if args.engine else ModelServer(model, work / "server.log", threads=args.threads)
    url = args.engine or server.url
    remote = RemoteEngine(url, n_ctx=cfg.n_ctx, first_token_ms=60000)
    local_rows, remote_rows = [], []
    try:
        remote.load(resolved)
        info = remote.info
        run(local, jobs[:1])  # first-use costs (page faults, thread start) out of the measurement
        run(remote, jobs[:1])
        # Interleaved, the order alternating: only one of the two computes at a time, and load from
        # elsewhere on a shared machine falls on both alike.
        for i, job in enumerate(jobs):
            first, second = (local, remote) if i % 2 == 0 else (remote, local)
            a, b = run(first, [job])[0], run(second, [job])[0]
            local_rows.append(a if first is local else b)
            remote_rows.append(b if first is local else a)
    finally:
        remote.close()
        local.close()
        if server is not None:
            server.stop()

    same_tokens = sum(a["tokens"] == b["tokens"] for a, b in zip(local_rows, remote_rows))
    same_text = sum(a["suggestion"] == b["suggestion"] for a, b in zip(local_rows, remote_rows))
    loc, rem = summary(local_rows), summary(remote_rows)
    result = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "threads": args.threads},
        "model": str(model), "repository": "encode/httpx", "commit": commit, "positions": len(jobs),
        "server": {"url": url, "kind": info.kind, "prompt_form": info.prompt_form, "model": info.model,
                   "program": "llama_cpp.server (llama-cpp-python)" if server else "given"},
        "settings": {"heal": False, "predict_soft_ms": 0, "time_cap_ms": 30000, "temperature": 0.0,
                     "budget_tokens": cfg.budget_tokens},
        "local": loc, "remote": rem,
        "ratio_p50": round(rem["p50_ms"] / loc["p50_ms"], 3), "ratio_p90": round(rem["p90_ms"] / loc["p90_ms"], 3),
        "paired_ratio_median": round(statistics.median(b["ms"] / a["ms"] for a, b in zip(local_rows, remote_rows)), 3),
        "paired_overhead_ms_median": round(statistics.median(b["ms"] - a["ms"] for a, b in zip(local_rows, remote_rows)), 1),
        "identical_tokens": same_tokens, "identical_suggestions": same_text,
        "rows": [{**p.describe(), "local_ms": a["ms"], "remote_ms": b["ms"], "prompt_tokens": a["prompt_tokens"],
                  "same_tokens": a["tokens"] == b["tokens"], "local": a["suggestion"], "remote": b["suggestion"],
                  "local_stop": a["stop"], "remote_stop": b["stop"]}
                 for (p, _, _), a, b in zip(jobs, local_rows, remote_rows)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(jobs)} positions; local p50 {loc['p50_ms']} ms p90 {loc['p90_ms']} ms; remote p50 {rem['p50_ms']} ms "
          f"p90 {rem['p90_ms']} ms; ratio p50 {result['ratio_p50']} p90 {result['ratio_p90']}, paired median "
          f"{result['paired_ratio_median']} ({result['paired_overhead_ms_median']:+} ms); identical tokens "
          f"{same_tokens}/{len(jobs)}, suggestions {same_text}/{len(jobs)}; whole local {loc['whole']} remote {rem['whole']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
