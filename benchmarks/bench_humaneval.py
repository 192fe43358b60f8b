"""The HumanEval single-line infilling guard (distill/humaneval.py) on real models: pass@1 and time.

    nice -n 10 python benchmarks/bench_humaneval.py [--n 300 | --all] [--seed 1234] [--model NAME=GGUF[:MODE]]...

Default models: SmolLM2-135M-Instruct (the embedded default, no FIM tokens: prefix-only) and
Qwen2.5-Coder-0.5B-Instruct Q4_K_M (FIM) when its GGUF is at /work/models (or $STROP_BENCH_QWEN;
obtained and sha256-checked as ../shared/models.md says; benchmarks only). All models run on the
same seeded task subset; results are never cached here (each run is measured). Writes
benchmarks/results/humaneval.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.models import embedded_default  # noqa: E402
from distill.atomic import write_json_atomic  # noqa: E402
from distill.humaneval import GuardConfig, load_tasks, run_guard, select_tasks  # noqa: E402

QWEN = Path(os.environ.get("STROP_BENCH_QWEN", "/work/models/qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300, help="seeded subset size (default 300)")
    ap.add_argument("--all", action="store_true", help="all 1,033 single-line tasks")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--model", action="append", default=[], help="NAME=GGUF[:fim|prefix] (repeatable)")
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads (default 1: on a shared 2-core machine 2 threads ran 7x slower)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "humaneval.json")
    args = ap.parse_args()

    models: list[tuple[str, Path, str | None]] = []
    for spec in args.model:
        name, _, rest = spec.partition("=")
        path, _, mode = rest.partition(":")
        models.append((name, Path(path), mode or None))
    if not models:
        models.append(("SmolLM2-135M-Instruct Q4_1", embedded_default(), "prefix"))
        if QWEN.is_file():
            models.append(("Qwen2.5-Coder-0.5B-Instruct Q4_K_M", QWEN, "fim"))
    all_tasks = load_tasks()
    tasks = select_tasks(all_tasks, None if args.all else args.n, args.seed)
    out = {"benchmark": "HumanEval-SingleLineInfilling pass@1, greedy single-line decode",
           "tasks": len(tasks), "of": len(all_tasks), "selection": "all" if args.all else f"seeded sha256 rank, seed {args.seed}",
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "nice": os.nice(0),
                       "llama_threads": args.threads},
           "results": []}
    for name, path, mode in models:
        cfg = GuardConfig(mode=mode, n_threads=args.threads)
        t0 = time.perf_counter()
        res = run_guard(path, tasks=tasks, cfg=cfg, cache=False, progress=True)
        wall = time.perf_counter() - t0
        per = sorted(t.seconds for t in res.per_task)
        row = {"model": name, "gguf": path.name, "sha256": res.model_sha256, "mode": res.mode,
               "pass_at_1": round(res.pass_at_1, 4), "passed": sum(t.passed for t in res.per_task), "n": res.n,
               "timeouts": sum(t.outcome == "timeout" for t in res.per_task),
               "seconds_total": round(wall, 1), "seconds_per_task_mean": round(wall / res.n, 3),
               "seconds_per_task_p50": per[len(per) // 2], "seconds_per_task_p95": per[int(len(per) * 0.95)]}
        print(row, flush=True)
        out["results"].append(row)
        write_json_atomic(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
