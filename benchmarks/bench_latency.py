"""Latency: strop's end-to-end LSP round trip versus raw llama-cpp-python on the exact same tokens.

One run, three situations per cursor position (positions are line ends of a real source file):
- cold: the document is new to the model (a unique first line, so no KV-cache prefix is shared);
- warm: one keystroke later (a character that does not match the suggestion);
- typed-through: the user types the first character of the suggestion shown (goal: no model call).

Phase 1 drives the real `strop serve` over stdio with a real LSP client. Phase 2, after the server
has exited (the two never share the cores), replays the exact token sequences the server built
(rebuilt with server.context/server.engine and checked against the token counts the server logged)
through raw `Llama.generate`, producing the same number of tokens, in the same cold/warm order.

    python benchmarks/bench_latency.py [--model PATH.gguf] [--positions 12] [--out benchmarks/results/latency.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lsprotocol import types as t  # noqa: E402

from server import context as ctxmod  # noqa: E402
from server.config import ServeConfig  # noqa: E402
from server.engine import load_model, tokenize_pieces  # noqa: E402
from server.models import ResolvedModel, embedded_default  # noqa: E402
from tests.lsp_support import change_full, inline, item_id, open_doc, rows, start, status  # noqa: E402


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(pct(values, 50), 2), "p95_ms": round(pct(values, 95), 2),
            "mean_ms": round(statistics.fmean(values), 2)} if values else {"n": 0}


def positions(text: str, n: int) -> list[int]:
    """Offsets at the end of non-blank lines, spread over the file, skipping the first 20 lines."""
    lines = text.split("\n")
    ends, off = [], 0
    for i, line in enumerate(lines):
        off += len(line) + 1
        if i > 20 and line.strip() and not line.strip().startswith("#"):
            ends.append(off - 1)
    step = max(1, len(ends) // n)
    return ends[::step][:n]


async def server_phase(model: Path, source: str, offsets: list[int], home: Path, root: Path) -> list[dict]:
    client = await start(model, home, root)
    out = []
    try:
        for k, off in enumerate(offsets):
            uri = (root / f"doc{k}.py").as_uri()
            text = f"# benchmark document {k}: {time.time_ns()}\n" + source
            off += len(text) - len(source)
            line = text.count("\n", 0, off)
            col = off - (text.rfind("\n", 0, off) + 1)
            open_doc(client, uri, text)
            rec = {"offset": off}
            # cold
            t0 = time.perf_counter()
            res = await inline(client, uri, line, col)
            rec["cold_ms"] = (time.perf_counter() - t0) * 1000
            if not res.items:
                continue
            cid, sugg = item_id(res.items[0]), res.items[0].insert_text
            # warm: one keystroke that does not follow the suggestion
            key = "#" if not sugg.startswith("#") else "@"
            text2 = text[:off] + key + text[off:]
            change_full(client, uri, text2, 2)
            t0 = time.perf_counter()
            res2 = await inline(client, uri, line, col + 1)
            rec["warm_ms"] = (time.perf_counter() - t0) * 1000
            cid2 = item_id(res2.items[0]) if res2.items else None
            # typed-through: type the first character of the warm suggestion
            if res2.items and len(res2.items[0].insert_text) > 1:
                s2 = res2.items[0].insert_text
                text3 = text2[:off + 1] + s2[0] + text2[off + 1:]
                calls = (await status(client))["modelCalls"]
                change_full(client, uri, text3, 3)
                t0 = time.perf_counter()
                res3 = await inline(client, uri, line, col + 2)
                rec["typed_ms"] = (time.perf_counter() - t0) * 1000
                rec["typed_model_calls"] = (await status(client))["modelCalls"] - calls
                rec["typed_ok"] = bool(res3.items) and res3.items[0].insert_text == s2[1:]
            rec.update(cold_id=cid, warm_id=cid2, text=text, warm_text=text2, col=col, line=line)
            out.append(rec)
    finally:
        await client.shutdown_session()
    logged = {r["id"]: r for r in rows(home)}
    for rec in out:
        for kind in ("cold", "warm"):
            row = logged.get(rec.get(f"{kind}_id"))
            if row:
                rec[f"{kind}_row"] = {k: row[k] for k in ("n_prompt_tokens", "n_reused_tokens", "n_gen_tokens",
                                                          "prompt_ms", "gen_ms", "latency_ms")}
    return out


def raw_phase(model: Path, records: list[dict], cfg: ServeConfig) -> None:
    loaded = load_model(ResolvedModel(model, model.stem, model.stem, "flag"), n_ctx=cfg.n_ctx,
                        n_threads=cfg.n_threads, n_gpu_layers=cfg.n_gpu_layers)
    llm = loaded.llm

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode(), add_bos=False, special=False))

    budget = ctxmod.Budget(total_tokens=cfg.budget_tokens, prefix_share=cfg.prefix_share,
                           extra_share=cfg.extra_share, chunk_lines=cfg.chunk_lines)

    def run(tokens: list[int], n_gen: int) -> float:
        t0 = time.perf_counter()
        produced = 0
        gen = llm.generate(tokens, temp=0.0, top_k=cfg.top_k, top_p=cfg.top_p, min_p=0.0, repeat_penalty=1.0)
        for _ in gen:
            produced += 1
            if produced >= max(1, n_gen):
                break
        gen.close()
        return (time.perf_counter() - t0) * 1000

    for rec in records:
        for kind, text, off in (("cold", rec["text"], rec["offset"]), ("warm", rec["warm_text"], rec["offset"] + 1)):
            row = rec.get(f"{kind}_row")
            if row is None:
                continue
            ctx = ctxmod.build(text, off, fmt=loaded.fim, count=count, budget=budget,
                               path=f"doc.py", language="python")
            tokens = tokenize_pieces(loaded, ctx.pieces)
            rec[f"{kind}_tokens_match"] = len(tokens) == row["n_prompt_tokens"]
            if kind == "cold":
                llm.reset()  # the server saw this document fresh, too
            # the server generated n_gen_tokens plus the stop token it detected
            rec[f"raw_{kind}_ms"] = run(tokens, row["n_gen_tokens"] + 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=embedded_default())
    ap.add_argument("--source", type=Path, default=ROOT / "server" / "lsp.py", help="file to complete in")
    ap.add_argument("--positions", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    args = ap.parse_args()
    source = args.source.read_text()
    offsets = positions(source, args.positions)
    with tempfile.TemporaryDirectory() as tmp:
        home, root = Path(tmp) / "home", Path(tmp) / "repo"
        root.mkdir()
        records = asyncio.run(server_phase(args.model, source, offsets, home, root))
    cfg = ServeConfig().with_env()
    raw_phase(args.model, records, cfg)

    def col(key):
        return [r[key] for r in records if key in r]

    cold, warm, typed = col("cold_ms"), col("warm_ms"), col("typed_ms")
    raw_cold, raw_warm = col("raw_cold_ms"), col("raw_warm_ms")
    result = {
        "model": str(args.model), "source": str(args.source.relative_to(ROOT)) if args.source.is_relative_to(ROOT)
        else str(args.source), "positions": len(records),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "n_threads": cfg.n_threads},
        "strop_roundtrip": {"cold": summary(cold), "warm_keystroke": summary(warm), "typed_through": summary(typed)},
        "raw_llama_cpp": {"cold": summary(raw_cold), "warm_keystroke": summary(raw_warm)},
        "ratios": {
            "roundtrip_over_raw_cold_p50": round(pct(cold, 50) / pct(raw_cold, 50), 3) if raw_cold else None,
            "roundtrip_over_raw_warm_p50": round(pct(warm, 50) / pct(raw_warm, 50), 3) if raw_warm else None,
            "warm_over_cold_p50": round(pct(warm, 50) / pct(cold, 50), 3) if cold and warm else None,
        },
        "typed_through_model_calls": sum(col("typed_model_calls")),
        "typed_through_correct": f"{sum(col('typed_ok'))}/{len(typed)}",
        "token_sequences_match_server": all(col("cold_tokens_match") + col("warm_tokens_match")),
        "goals": {"roundtrip_over_raw": "<= 1.05", "warm_over_cold": "<= 0.15", "typed_through_model_calls": 0},
        "reused_tokens_warm_mean": round(statistics.fmean([r["warm_row"]["n_reused_tokens"] / r["warm_row"]["n_prompt_tokens"]
                                                           for r in records if "warm_row" in r]), 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
