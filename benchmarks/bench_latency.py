"""Latency: strop's end-to-end LSP round trip versus raw llama-cpp-python on the exact same tokens.

One run, per cursor position (line ends in the second half of real source files of this
repository, one file after another so that consecutive documents share no prompt prefix):
- cold: the document is new to the model (nothing of its prompt is in the KV cache);
- warm: a keystroke later (a character the suggestion did not predict), `--keystrokes` times;
- typed-through: the user types the first character of the suggestion shown (goal: no model call).

Phase 1 drives the real `strop serve` over stdio with a real LSP client and times each request
from send to answer. Phase 2, after the server has exited (the two never share the cores),
rebuilds every prompt the server ran from the completion log (its stored prefix/suffix windows and
snippets, laid out by server.fim and tokenized by server.engine; the token count is checked
against what the server logged) and replays them through raw `Llama.generate` in the same order,
so raw llama.cpp sees the same KV-cache reuse, producing the same number of tokens.

    python benchmarks/bench_latency.py [--model PATH.gguf] [--positions 12] [--keystrokes 3]
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
from server.llama_model import load_model, tokenize_pieces  # noqa: E402
from server.fim import Snippet, layout  # noqa: E402
from server.models import ResolvedModel, embedded_default  # noqa: E402
from tests.lsp_support import change_full, close_all_docs, inline, item_id, open_doc, rows, start, status  # noqa: E402

SOURCES = ("server/lsp.py", "server/engine.py", "distill/train.py", "distill/export.py", "distill/evaluate.py",
           "distill/cycle.py", "distill/harvest.py", "distill/registry.py")
KEYS = " _x#"  # keystrokes that (mostly) do not follow the suggestion


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": round(pct(values, 50), 1), "p95_ms": round(pct(values, 95), 1),
            "mean_ms": round(statistics.fmean(values), 1)} if values else {"n": 0}


def position_of(text: str, offset: int) -> tuple[int, int]:
    """(line, UTF-16 column) of a code-point offset."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset), len(text[line_start:offset].encode("utf-16-le")) // 2


def cursor_offsets(n: int, seed_line: int = 0) -> list[tuple[str, int]]:
    """n (source text, offset) pairs: the end of a code line in the second half of each file in turn."""
    out = []
    for k in range(n):
        text = (ROOT / SOURCES[k % len(SOURCES)]).read_text()
        lines = text.split("\n")
        ends, off = [], 0
        for i, line in enumerate(lines):
            off += len(line) + 1
            if i > len(lines) // 2 and len(line.strip()) > 8 and not line.strip().startswith(("#", '"', "'")):
                ends.append(off - 1)
        out.append((text, ends[(7 * (k // len(SOURCES)) + 3 * seed_line) % len(ends)]))
    return out


async def server_phase(model: Path, cursors: list[tuple[str, int]], keystrokes: int, home: Path,
                       root: Path) -> list[dict]:
    """The requests in the order they ran: {situation, ms, id (the completion's log id), ...}."""
    client = await start(model, home, root)
    requests: list[dict] = []

    async def ask(situation: str, uri: str, text: str, offset: int) -> t.InlineCompletionItem | None:
        line, col = position_of(text, offset)
        calls = (await status(client))["modelCalls"]
        t0 = time.perf_counter()
        result = await inline(client, uri, line, col)
        ms = (time.perf_counter() - t0) * 1000
        item = result.items[0] if result and result.items else None
        requests.append({"situation": situation, "ms": ms, "id": item_id(item) if item else None,
                         "model_calls": (await status(client))["modelCalls"] - calls,
                         "document": text, "offset": offset, "path": uri.rsplit("/", 1)[1]})
        return item

    try:
        for k, (source, offset) in enumerate(cursors):
            uri = (root / f"doc{k}.py").as_uri()
            text = source
            open_doc(client, uri, text)
            version = 1
            item = await ask("cold", uri, text, offset)
            for _ in range(keystrokes):
                shown = item.insert_text if item else ""
                key = next(c for c in KEYS if not shown.startswith(c))
                text, offset, version = text[:offset] + key + text[offset:], offset + 1, version + 1
                change_full(client, uri, text, version)
                item = await ask("warm", uri, text, offset)
            if item is not None and len(item.insert_text) > 1:
                shown = item.insert_text
                text, offset, version = text[:offset] + shown[0] + text[offset:], offset + 1, version + 1
                change_full(client, uri, text, version)
                got = await ask("typed", uri, text, offset)
                requests[-1]["typed_ok"] = got is not None and got.insert_text == shown[1:]
            close_all_docs(client)  # an open document would be repository context in the next prompt
    finally:
        await client.shutdown_session()
    logged = {r["id"]: r for r in rows(home)}
    for req in requests:
        row = logged.get(req["id"]) if req["situation"] != "typed" else None
        if row is not None:
            req["row"] = row
    return requests


def raw_phase(model: Path, requests: list[dict], cfg: ServeConfig) -> None:
    """Replay every model call of phase 1 through raw llama-cpp-python, in order."""
    loaded = load_model(ResolvedModel(model, model.stem, model.stem, "flag"), n_ctx=cfg.n_ctx,
                        n_threads=cfg.n_threads, n_gpu_layers=cfg.n_gpu_layers)
    llm = loaded.llm
    budget = ctxmod.Budget(total_tokens=cfg.budget_tokens, prefix_share=cfg.prefix_share,
                           extra_share=cfg.extra_share, chunk_lines=cfg.chunk_lines)

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    try:
        for req in requests:
            row = req.get("row")
            if row is not None:  # the prompt as the log recorded it
                snippets = [Snippet(s["path"], s["text"]) for s in json.loads(row["snippets"])]
                pieces = layout(loaded.fim, row["prefix"], row["suffix"], snippets=snippets, path=row["path"],
                                language=row["language"])
                tokens = tokenize_pieces(loaded, pieces)
                req["tokens_match"] = len(tokens) == row["n_prompt_tokens"]
                # strop stops after the token that ends the line/block, or on an end-of-generation
                # token that it samples but does not keep: raw generates the same number of samples.
                n = row["n_gen_tokens"] + (1 if row["stop_reason"] == "eog" else 0)
            elif req["model_calls"] == 1:
                # The model ran but its text was cleaned away, so nothing was logged: rebuild the
                # prompt the way the server does (one document open, no snippets) and evaluate it,
                # so that the KV cache the next request finds is the same. Not timed against strop.
                ctx = ctxmod.build(req["document"], req["offset"], fmt=loaded.fim, count=count, budget=budget,
                                   path=req["path"], language="python")
                tokens, n = tokenize_pieces(loaded, ctx.pieces), 1
                req["unlogged"] = True
            else:
                continue
            t0 = time.perf_counter()
            gen = llm.generate(tokens, temp=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=0.0,
                               repeat_penalty=1.0, reset=True)
            for produced, _ in enumerate(gen, start=1):
                if produced >= max(1, n):
                    break
            gen.close()
            req["raw_ms"] = (time.perf_counter() - t0) * 1000
    finally:
        llm.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=embedded_default())
    ap.add_argument("--positions", type=int, default=12)
    ap.add_argument("--keystrokes", type=int, default=3, help="warm keystrokes per position")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json")
    args = ap.parse_args()
    cursors = cursor_offsets(args.positions)
    with tempfile.TemporaryDirectory() as tmp:
        home, root = Path(tmp) / "home", Path(tmp) / "repo"
        root.mkdir()
        requests = asyncio.run(server_phase(args.model, cursors, args.keystrokes, home, root))
    cfg = ServeConfig().with_env()
    raw_phase(args.model, requests, cfg)

    def of(situation: str, key: str) -> list:
        return [r[key] for r in requests if r["situation"] == situation and key in r]

    def paired(situation: str) -> dict:
        pairs = [(r["ms"], r["raw_ms"]) for r in requests
                 if r["situation"] == situation and "raw_ms" in r and not r.get("unlogged")]
        ratios = [a / b for a, b in pairs]
        return {"n": len(pairs), "p50_of_ratios": round(pct(ratios, 50), 3) if ratios else None,
                "total_over_total": round(sum(a for a, _ in pairs) / sum(b for _, b in pairs), 3) if pairs else None}

    cold, warm, typed = of("cold", "ms"), of("warm", "ms"), of("typed", "ms")
    warm_rows = [r["row"] for r in requests if r["situation"] == "warm" and "row" in r]
    result = {
        "model": Path(args.model).name,
        "sources": sorted({SOURCES[k % len(SOURCES)] for k in range(args.positions)}),
        "positions": args.positions, "warm_keystrokes_per_position": args.keystrokes,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "n_threads": cfg.n_threads},
        "config": {"budget_tokens": cfg.budget_tokens, "max_new_tokens": cfg.max_new_tokens,
                   "max_new_tokens_line": cfg.max_new_tokens_line, "time_cap_ms": cfg.time_cap_ms},
        "strop_roundtrip": {"cold": summary(cold), "warm_keystroke": summary(warm), "typed_through": summary(typed)},
        "raw_llama_cpp": {s: summary([r["raw_ms"] for r in requests if r["situation"] == s.split("_")[0]
                                      and "raw_ms" in r and not r.get("unlogged")])
                          for s in ("cold", "warm_keystroke")},
        "empty_answers": {s: sum(1 for r in requests if r["situation"] == s and r["id"] is None) for s in ("cold", "warm")},
        "roundtrip_over_raw": {"cold": paired("cold"), "warm_keystroke": paired("warm")},
        "warm_over_cold_p50": round(pct(warm, 50) / pct(cold, 50), 3) if cold and warm else None,
        "typed_through_model_calls": sum(of("typed", "model_calls")),
        "typed_through_correct": f"{sum(of('typed', 'typed_ok'))}/{len(typed)}",
        "token_sequences_match_server": all(r.get("tokens_match", True) for r in requests),
        "warm_prompt_tokens_reused": round(sum(r["n_reused_tokens"] for r in warm_rows)
                                           / max(1, sum(r["n_prompt_tokens"] for r in warm_rows)), 4),
        "mean_prompt_tokens": {s: round(statistics.fmean([r["row"]["n_prompt_tokens"] for r in requests
                                                          if r["situation"] == s and "row" in r]), 1)
                               for s in ("cold", "warm")},
        "mean_generated_tokens": {s: round(statistics.fmean([r["row"]["n_gen_tokens"] for r in requests
                                                             if r["situation"] == s and "row" in r]), 1)
                                  for s in ("cold", "warm")},
        "stop_reasons": {reason: sum(1 for r in requests if r.get("row", {}).get("stop_reason") == reason)
                         for reason in ("eog", "newline", "block", "time", "max_tokens")},
        "goals": {"roundtrip_over_raw": "<= 1.05", "warm_over_cold": "<= 0.15", "typed_through_model_calls": 0},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
