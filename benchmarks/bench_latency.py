"""Latency benchmark: time to a *useful* suggestion, on a real repository, through LSP only.

It drives the real `strop serve` over stdio with an LSP client that sends what the editor plugins
send (benchmarks/latency/editor.py), on files of a public repository that is not strop, with the
text after the cursor held out (benchmarks/latency/positions.py), then, after the server has exited
(the two never share the cores), runs raw llama-cpp-python on the same model file. Sections:

1. open → move → type one character: the file opened at the position (as a jump does: one
   didMoveCursor after the debounce), then a key; time from the keystroke to the first non-empty
   suggestion (the plugin's debounce included; an empty answer counts as never), after a dwell of
   `--dwell` seconds between the move and the key, and with no dwell (other positions, other files);
2. warm keystrokes: `--keystrokes` more characters of the real text at the same position, each
   after the previous answer; LSP round trip (request → answer);
3. typed-through: typing the first character of the suggestion shown: model calls (strop/status
   `modelCalls`), and whether the answer is the rest of the same suggestion;
4. quality at the same time: of every answer in 1–2, the share shown, whole lines/statements
   (completion log `stop_reason`; and a Python check that the first line ends the line), exact
   match and edit similarity (rapidfuzz Levenshtein) of its first line against what the file really
   says there; beside it raw llama-cpp-python, greedy on the full prompt with no time limit
   (benchmarks/latency/raw.py), at the same document states;
5. overhead on identical work: strop's LSP round trip ÷ raw llama-cpp-python evaluating the same
   tokens (each prompt rebuilt from the log's prefix/suffix/snippets with core.fim.layout, its
   token count checked against the log) with the same KV-cache reuse, sampling as many tokens;
6. typing replay: the real next lines typed through the LSP client in real time (keys 1/`--cps`
   apart, `--pause-ms` before each word), a suggestion accepted whenever it matches what remains,
   whole or up to a word boundary (benchmarks/latency/typist.py): share of characters not typed and
   wrong suggestions per line; beside it the same replay with raw llama-cpp-python answering at
   every keystroke, at once, greedy on the full prompt (the ceiling).

Writes benchmarks/results/latency.json (machine, model, repository and commit, settings, summaries,
per-request rows) and prints a table. Full runs, on a quiet 2-core machine (estimates from token
counts at SmolLM2's ~170 prompt / ~20 generated tokens per second: server ~7 min, raw ~11 min):

    python benchmarks/bench_latency.py                                   # SmolLM2 (embedded), ~20 min
    python benchmarks/bench_latency.py --positions 5 --replay 4 \
        --model /work/models/qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf --out benchmarks/results/latency-qwen.json

Qwen2.5-Coder-0.5B (4.7× the parameters) is several times slower, and its raw FIM prompt puts the suffix after the
typed text, so raw runs re-read ~500 suffix tokens per keystroke: ~40 min with the flags above
(about twice that with the defaults). Development: `--positions 1 --replay 1 --skip-raw`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import re
import statistics
import sys
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.latency import metrics as M
from benchmarks.latency.editor import Editor, first_item, item_id, server_argv
from benchmarks.latency.positions import (
    Position,
    checkout,
    keystrokes,
    plan,
    repo_name_of,
)
from benchmarks.latency.raw import RawModel
from benchmarks.latency.typist import Replay, Suggestion
from tests.lsp_support import rows as log_rows

DEFAULT_SOURCE = Path("/work/.mirror/encode+httpx/repo")  # `fetch github:encode/httpx`
DEFAULT_REV = "ae1b9f66238f75ced3ced5e4485408435de10768"
GOALS = {"first_p50_ms": 1000, "first_p90_ms": 2000, "warm_p50_ms": 250, "warm_p90_ms": 600,
         "typed_through_model_calls": 0, "whole_share": 0.95, "es_gap_points": 1.0, "overhead": 1.05}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Time to a useful suggestion: strop serve driven over LSP as the editor plugins drive it, "
                    "on a real repository, beside raw llama-cpp-python on the same model.",
        epilog="Sections: 1 open→move→type one character (with and without dwell), 2 warm keystrokes, "
               "3 typed-through, 4 quality (whole lines, exact match, edit similarity) vs raw with unlimited "
               "time, 5 overhead on identical work, 6 typing replay vs raw ceiling. See the module docstring.")
    ap.add_argument("--model", type=Path, default=None,
                    help="a .gguf file passed to `strop serve --model` (default: none, so the server picks the "
                         "embedded SmolLM2-135M as a new user's would)")
    ap.add_argument("--repo", type=Path, default=DEFAULT_SOURCE,
                    help="git directory (bare or not) of the public repository whose files are used (default %(default)s, from the search tool's `fetch github:encode/httpx`)")
    ap.add_argument("--rev", default=DEFAULT_REV, help="commit of --repo to check out (default %(default)s)")
    ap.add_argument("--repo-name", default=None, help="owner/name recorded in the results (default: from --repo)")
    ap.add_argument("--positions", type=int, default=10,
                    help="positions for sections 1–5, for each of 'with dwell' and 'no dwell' (one file each; default %(default)s)")
    ap.add_argument("--replay", type=int, default=8, help="positions of the typing replay, section 6 (default %(default)s)")
    ap.add_argument("--replay-lines", type=int, default=2, help="real lines typed per replay position (default %(default)s)")
    ap.add_argument("--keystrokes", type=int, default=3, help="warm keystrokes after the first one, section 2 (default %(default)s)")
    ap.add_argument("--dwell", type=float, default=1.0,
                    help="seconds between the move to a position and the first keystroke (default %(default)s; "
                         "section 1 also runs with none)")
    ap.add_argument("--cps", type=float, default=8.0, help="typing speed of the replay, characters per second (default %(default)s)")
    ap.add_argument("--pause-ms", type=float, default=400.0,
                    help="replay: extra pause before each key that starts a word (0: steady typing, which the "
                         "plugins' debounce never answers; default %(default)s)")
    ap.add_argument("--debounce-ms", type=float, default=150.0,
                    help="quiet after a keystroke before the plugin asks (editors/nvim debounce_ms; default %(default)s)")
    ap.add_argument("--cursor-debounce-ms", type=float, default=150.0,
                    help="quiet after a cursor move before strop/didMoveCursor (default %(default)s)")
    ap.add_argument("--raw-prefix-tokens", type=int, default=1500,
                    help="raw runs: prefix window in tokens; a model without FIM gets prefix + suffix tokens of prefix (default %(default)s)")
    ap.add_argument("--raw-suffix-tokens", type=int, default=500, help="raw runs: suffix window in tokens, FIM models (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="picks the files and positions (default %(default)s)")
    ap.add_argument("--cores", type=int, default=2,
                    help="on a machine with more cores, pin the server and raw runs to this many (default %(default)s)")
    ap.add_argument("--server-set", action="append", default=[], metavar="NAME=VALUE",
                    help="a serving setting for this run, as STROP_<NAME> (e.g. speculative=1); repeatable")
    ap.add_argument("--skip-raw", action="store_true", help="server sections only, no raw llama-cpp-python (development)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work",
                    help="where the repository is checked out and the server log kept (git-ignored; default %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "latency.json",
                    help="the JSON results (default %(default)s)")
    return ap.parse_args()


def now() -> float:
    return time.perf_counter()


def ms_since(t0: float) -> float:
    return (now() - t0) * 1000


def line_head(text: str, cursor: int) -> str:
    return text[text.rfind("\n", 0, cursor) + 1:cursor]


@contextlib.contextmanager
def on_disk(root: Path, pos: Position):
    """The file on disk says what the document says while it is open (a server reading the
    repository must not find the held-out text there)."""
    path = root / pos.path
    path.write_text(pos.document, encoding="utf-8")
    try:
        yield
    finally:
        path.write_text(pos.original, encoding="utf-8")


# --- the server phase -----------------------------------------------------------------------------
class Session:
    def __init__(self, editor: Editor, root: Path, args: argparse.Namespace) -> None:
        self.ed, self.root, self.args = editor, root, args
        self.debounce_s = args.debounce_ms / 1000

    async def ask(self) -> dict:
        """One inlineCompletion request; waits for its answer."""
        _, fut = self.ed.request()
        t0 = now()
        try:
            result, error = await asyncio.wait_for(fut, 120), None
        except Exception as err:  # noqa: BLE001 - a failed or lost request is recorded as no suggestion
            result, error = None, f"{type(err).__name__}: {err}"
        item = first_item(result)
        return {"roundtrip_ms": ms_since(t0), "sent_at": t0, "text": item.insert_text if item else "",
                "id": item_id(item) if item else None, "command": item.command if item else None, "error": error}

    async def key_then_ask(self, key: str) -> tuple[float, dict]:
        """A keystroke, the plugin's debounce, the request: (time of the key, answer)."""
        t_key = now()
        self.ed.insert(key)
        await asyncio.sleep(self.debounce_s)
        return t_key, await self.ask()

    async def first_and_warm(self, pos: Position, variant: str, dwell_s: float) -> list[dict]:
        """Sections 1–3 at one position: open, move, (dwell), the first key, warm keys, typed-through."""
        ed = self.ed
        await ed.wait_idle()
        calls_at_open = (await ed.status()).get("modelCalls", 0)
        out: list[dict] = []
        keys = keystrokes(pos.target)
        with on_disk(self.root, pos):
            ed.open((self.root / pos.path).as_uri(), pos.document, pos.cut)
            if dwell_s:
                await asyncio.sleep(dwell_s)
            shown: Suggestion | None = None
            typed = 0
            for k, key in enumerate(keys[: 1 + self.args.keystrokes]):
                through = shown is not None and shown.rest.startswith(key) and len(shown.rest) > len(key)
                if shown is not None and not through:
                    ed.dismissed(shown.id)
                if k:  # the user types on at the typing speed at most
                    await asyncio.sleep(max(0.0, 1 / self.args.cps - (now() - out[-1]["answered_at"])))
                t_key, got = await self.key_then_ask(key)
                typed += len(key)
                situation = "first" if k == 0 else ("typed_through_real" if through else "warm")
                out.append(self._record(pos, variant, situation, key, t_key, got, typed))
                shown = Suggestion(got["id"], got["text"], got["command"]) if got["text"] else None
                if shown is not None:
                    ed.shown(shown.id)
            if shown is not None and len(shown.rest) >= 2:  # section 3
                before = await ed.status()
                t_key, got = await self.key_then_ask(shown.rest[0])
                after = await ed.status()
                rec = self._record(pos, variant, "typed_through", shown.rest[0], t_key, got, None)
                rec["model_calls"] = after.get("modelCalls", 0) - before.get("modelCalls", 0)
                rec["warmups"] = (after.get("warmups") or 0) - (before.get("warmups") or 0)
                rec["typed_through_ok"] = got["text"] == shown.rest[1:] and got["id"] == shown.id
                out.append(rec)
                shown = Suggestion(got["id"], got["text"]) if got["text"] else None
            if shown is not None:
                ed.dismissed(shown.id)
            ed.close()
        out[0]["model_calls_at_position"] = (await ed.status()).get("modelCalls", 0) - calls_at_open
        return out

    def _record(self, pos: Position, variant: str, situation: str, key: str, t_key: float, got: dict,
                typed: int | None) -> dict:
        ed = self.ed
        rec = {"position": f"{pos.path}:{pos.describe()['line']}", "kind": pos.kind, "variant": variant,
               "situation": situation, "key": key, "key_to_answer_ms": ms_since(t_key),
               "answered_at": now(), **{k: v for k, v in got.items() if k != "command"}}
        rec["command"] = got["command"]
        if typed is not None:  # the state, for the quality and raw sections
            rec["truth"] = M.first_line(pos.target[typed:])
            rec["state"] = (ed.text, ed.cursor)
            rec["line_head"] = line_head(ed.text, ed.cursor)
        return rec

    async def replay(self, pos: Position) -> dict:
        """Section 6 at one position, in real time."""
        ed, loop = self.ed, asyncio.get_running_loop()
        await ed.wait_idle()
        calls0 = (await ed.status()).get("modelCalls", 0)
        rep = Replay(pos.target, pos.document[pos.cut - 1:pos.cut], self.args.cps, self.args.pause_ms / 1000)
        live = {"gen": 0, "timer": None, "pending": None}
        requests: list[dict] = []

        def send() -> None:
            live["timer"] = None
            gen = live["gen"]
            msg_id, fut = ed.request()
            req = {"sent_at": now(), "key_at": live["key_at"], "outcome": "pending"}
            requests.append(req)
            live["pending"] = (msg_id, fut, req)
            fut.add_done_callback(lambda f: answered(f, gen, req))

        def answered(fut: asyncio.Future, gen: int, req: dict) -> None:
            req["roundtrip_ms"] = ms_since(req["sent_at"])
            if live["pending"] and live["pending"][2] is req:
                live["pending"] = None
            if fut.cancelled() or fut.exception() is not None:
                req["outcome"] = "cancelled" if req.get("cancelled") else "error"
                if not fut.cancelled() and not req.get("cancelled"):
                    req["error"] = f"{type(fut.exception()).__name__}: {fut.exception()}"[:300]
                return
            item = first_item(fut.result())
            if gen != live["gen"] or rep.done:
                req["outcome"] = "stale"  # the plugin drops an answer to an older keystroke
                return
            if item is None:
                req["outcome"] = "empty"
                return
            req["outcome"], req["id"] = "shown", item_id(item)
            req["key_to_shown_ms"] = ms_since(req["key_at"])
            if rep.show(Suggestion(item_id(item), item.insert_text, item.command)):
                ed.shown(rep.shown.id)

        def keystroke(ask: bool) -> None:
            """ghost.lua on_keystroke: a key that types through the suggestion asks nothing; any other
            cancels the request in flight and asks again after the debounce."""
            live["key_at"] = now()
            if not ask:
                return
            live["gen"] += 1
            if live["timer"] is not None:
                live["timer"].cancel()
            if live["pending"] is not None:
                ed.cancel(live["pending"][0])
                live["pending"][2]["cancelled"] = True
                live["pending"] = None
            live["timer"] = loop.call_later(self.debounce_s, send)

        t0 = now()
        with on_disk(self.root, pos):
            ed.open((self.root / pos.path).as_uri(), pos.document, pos.cut)
            t_next = now() + self.args.dwell
            while not rep.done:
                await asyncio.sleep(max(0.0, t_next - now()))
                step = rep.act()
                ed.insert(step.inserted)
                if step.event is not None:
                    kind, s = step.event[0], step.event[1]
                    if kind == "dismissed":
                        ed.dismissed(s.id)
                    elif kind == "partial":
                        ed.partially_accepted(s.id, step.event[2])
                    elif kind == "accepted" and s.command is not None:
                        ed.accepted(s.command)
                keystroke(step.ask)
                t_next = max(t_next, now()) + rep.delay_s()
            if live["timer"] is not None:
                live["timer"].cancel()
            if live["pending"] is not None:
                ed.cancel(live["pending"][0])
                live["pending"][2]["cancelled"] = True
            left = rep.finish()
            if left is not None:
                ed.dismissed(left.id)
            ed.close()
        await asyncio.sleep(0.2)  # let the last answers and cancellations land
        calls = (await ed.status()).get("modelCalls", 0) - calls0
        return {"position": f"{pos.path}:{pos.describe()['line']}", "kind": pos.kind, **rep.summary(),
                "model_calls": calls, "seconds": round(now() - t0, 1),
                "requests": [{k: v for k, v in r.items() if k.endswith("_ms") or k in ("outcome", "id", "error")}
                             for r in requests]}


def server_env(home: Path, pinned: int | None, settings: list[str] = ()) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STROP_")}  # the server's own defaults
    env["STROP_HOME"] = str(home)
    for item in settings:
        name, _, value = item.partition("=")
        env[f"STROP_{name.strip().upper()}"] = value
    if pinned:
        env["STROP_N_THREADS"] = str(pinned)
    return env


async def server_phase(args, groups: dict[str, list[Position]], root: Path, home: Path, log_path: Path,
                       pinned: int | None) -> dict:
    t0 = now()
    ed = await Editor.start(server_argv(args.model), server_env(home, pinned, args.server_set), root, log_path, cwd=ROOT,
                            debounce_s=args.debounce_ms / 1000, cursor_debounce_s=args.cursor_debounce_ms / 1000)
    ready_s = now() - t0
    session = Session(ed, root, args)
    requests: list[dict] = []
    replays: list[dict] = []
    try:
        status0 = await ed.status()
        for i in range(args.positions):  # interleaved, so that a change of load hits both alike
            requests += await session.first_and_warm(groups["dwell"][i], "dwell", args.dwell)
            requests += await session.first_and_warm(groups["no_dwell"][i], "no_dwell", 0.0)
            print(f"  position {i + 1}/{args.positions}", file=sys.stderr, flush=True)
        for j, pos in enumerate(groups["replay"]):
            replays.append(await session.replay(pos))
            print(f"  replay {j + 1}/{len(groups['replay'])}", file=sys.stderr, flush=True)
        status1 = await ed.status()
    finally:
        stop_failed = await ed.stop()
    logged = {r["id"]: r for r in log_rows(home)} if (home / "completions.sqlite3").exists() else {}
    return {"ready_s": round(ready_s, 2), "status": status0, "status_end": status1, "requests": requests,
            "replays": replays, "logged": logged, "sent": ed.sent, "messages": ed.messages,
            "stop_failed": stop_failed, "seconds": round(now() - t0, 1)}


# --- the raw phase --------------------------------------------------------------------------------
def attach_log(requests: list[dict], logged: dict) -> list[str]:
    """Log facts onto each answer; returns what the log lacks for the overhead section."""
    lacks: set[str] = set()
    needed = ("prefix", "suffix", "snippets", "n_prompt_tokens", "n_reused_tokens", "n_gen_tokens", "stop_reason")
    seen: set[str] = set()
    for req in requests:
        row = logged.get(req["id"]) if req["id"] else None
        if req["id"] and row is None:
            lacks.add("a row for a shown completion")
        if row is None:
            continue
        lacks.update(k for k in needed if k not in row)
        req["log"] = {k: row.get(k) for k in ("stop_reason", "rules", "multiline", "n_prompt_tokens",
                                               "n_reused_tokens", "n_gen_tokens", "prompt_ms", "gen_ms", "latency_ms")}
        req["model_call"] = req["situation"] in ("first", "warm") and req["id"] not in seen
        seen.add(req["id"])
        req["whole"] = M.whole_by_stop(row.get("stop_reason"), row.get("rules"), bool(row.get("multiline")))
    for req in requests:
        if req.get("text") and "state" in req:
            req["whole_syntax"] = M.completes_line(req["line_head"], req["text"])
    return sorted(lacks)


def logged_tokens(raw: RawModel, fmt, row: dict) -> list[int]:
    """The prompt strop ran, rebuilt from its log row the way strop lays it out."""
    from core.fim import Snippet, Special, layout

    snippets = [Snippet(s["path"], s["text"]) for s in json.loads(row["snippets"] or "[]")]
    pieces = layout(fmt, row["prefix"], row["suffix"], snippets=snippets, path=row["path"], language=row["language"],
                    repo_name=Path(row["repo"]).name if row.get("repo") else "")
    ids = list(raw.bos)
    for piece in pieces:
        ids += [raw.special(piece.token)] if isinstance(piece, Special) else raw.tokens(piece)
    return ids


def raw_phase(args, model_path: Path, groups, server: dict, n_threads: int) -> dict:
    from server.config import ServeConfig

    cfg = ServeConfig()
    t0 = now()
    raw = RawModel(model_path, n_ctx=cfg.n_ctx, n_threads=n_threads, n_gpu_layers=cfg.n_gpu_layers,
                   prefix_tokens=args.raw_prefix_tokens, suffix_tokens=args.raw_suffix_tokens)
    out: dict = {"fim": raw.fim, "n_threads": n_threads}
    try:
        # 5. identical work, in the order strop ran it
        fmt = raw.fim_format()
        calls = sorted((r for r in server["requests"] if r.get("model_call")), key=lambda r: r["sent_at"])
        for req in calls:
            row = server["logged"][req["id"]]
            try:
                tokens = logged_tokens(raw, fmt, row)
            except Exception as err:  # noqa: BLE001 - the log or the layout changed shape: say so, do not guess
                req["overhead_error"] = f"{type(err).__name__}: {err}"
                continue
            # strop stops after the token that ends the line or block, or on an end-of-generation
            # token it samples but does not keep: raw samples as many.
            n_samples = (row.get("n_gen_tokens") or 0) + (1 if row.get("stop_reason") == "eog" else 0)
            got = raw.replay_logged(tokens, row.get("n_reused_tokens") or 0, max(1, n_samples))
            first = (row.get("completion") or "").split("\n", 1)[0].strip()
            req["raw_same"] = {"ms": got["ms"], "prompt_ms": got["prompt_ms"], "n_prompt": len(tokens),
                               "tokens_match": len(tokens) == row.get("n_prompt_tokens"),
                               "same_text": got["text"].lstrip().startswith(first) if first else None}
        out["overhead_seconds"] = round(now() - t0, 1)

        # 4. the full prompt and unlimited time, at the states strop answered
        t4 = now()
        by_position: dict[str, list[dict]] = {}
        for req in server["requests"]:
            if "state" in req:
                by_position.setdefault(req["position"], []).append(req)
        for reqs in by_position.values():
            text, cursor = reqs[0]["state"]
            first_cursor = cursor - len(reqs[0]["key"])
            win = raw.window(text[:first_cursor] + text[cursor:], first_cursor)
            for req in reqs:
                req["raw"] = raw.first_line(*req["state"], win)
                req["raw"]["whole_syntax"] = M.completes_line(req["line_head"], req["raw"]["text"])
        out["quality_seconds"] = round(now() - t4, 1)

        # 6. the replay with every request answered at once by raw greedy on the full prompt
        t6 = now()
        out["replays"] = [ceiling_replay(raw, pos, args) for pos in groups["replay"]]
        out["replay_seconds"] = round(now() - t6, 1)
    finally:
        raw.close()
    out["seconds"] = round(now() - t0, 1)
    return out


def ceiling_replay(raw: RawModel, pos: Position, args) -> dict:
    rep = Replay(pos.target, pos.document[pos.cut - 1:pos.cut], args.cps, args.pause_ms / 1000)
    text, cursor = pos.document, pos.cut
    win = raw.window(text, cursor)
    ask, n, spent = True, 0, []
    while not rep.done:
        if ask and rep.shown is None:
            got = raw.suggest_until(text, cursor, win, rep.remaining)
            spent.append(got["ms"])
            n += 1
            rep.show(Suggestion(str(n), got["text"]))
        step = rep.act()
        text, cursor = text[:cursor] + step.inserted + text[cursor:], cursor + len(step.inserted)
        ask = step.ask
    rep.finish()
    return {"position": f"{pos.path}:{pos.describe()['line']}", "kind": pos.kind, **rep.summary(),
            "raw_calls": n, "raw_ms_p50": round(statistics.median(spent), 1) if spent else None}


# --- summaries ------------------------------------------------------------------------------------
def error_counts(errors) -> dict[str, int]:
    """Failed requests by message, object addresses and request ids left out."""
    out: dict[str, int] = {}
    for err in errors:
        if err:
            key = re.sub(r"0x[0-9a-f]+|[0-9a-f]{32}", "…", err)
            out[key] = out.get(key, 0) + 1
    return out


def first_times(reqs: list[dict]) -> dict:
    return M.times([r["key_to_answer_ms"] if r["text"] else math.inf for r in reqs])


def replay_summary(reps: list[dict]) -> dict:
    chars = sum(r["chars"] for r in reps)
    lines = sum(r["lines"] for r in reps)
    out = {"positions": len(reps), "chars": chars, "lines": lines,
           "saved_share": round(sum(r["accepted_chars"] for r in reps) / chars, 4) if chars else None,
           "wrong_per_line": round(sum(r["wrong"] for r in reps) / lines, 3) if lines else None}
    for k in ("shown", "wrong", "accepts_whole", "accepts_words", "accept_keys", "keys_typed", "typed_through_keys"):
        out[k] = sum(r[k] for r in reps)
    reqs = [q for r in reps for q in r.get("requests", [])]
    if reqs:
        out["requests"] = {o: sum(1 for q in reqs if q["outcome"] == o)
                           for o in ("shown", "empty", "stale", "cancelled", "error", "pending")}
        out["requests"]["sent"] = len(reqs)
        out["key_to_shown"] = M.times([q["key_to_shown_ms"] for q in reqs if "key_to_shown_ms" in q])
        out["model_calls"] = sum(r["model_calls"] for r in reps)
        out["errors"] = error_counts(q.get("error") for q in reqs)
        whole = [q["whole"] for q in reqs if q.get("whole") is not None]
        out["whole_share_of_shown"] = round(statistics.fmean(whole), 4) if whole else None
    return out


def overhead_summary(reqs: list[dict]) -> dict:
    pairs = [(r["roundtrip_ms"], r["raw_same"]["ms"], r) for r in reqs if "raw_same" in r]
    out: dict = {"n": len(pairs), "errors": sorted({r["overhead_error"] for r in reqs if "overhead_error" in r}),
                 "token_counts_match": f"{sum(r['raw_same']['tokens_match'] for _, _, r in pairs)}/{len(pairs)}",
                 "same_first_line": f"{sum(bool(r['raw_same']['same_text']) for _, _, r in pairs)}/"
                                    f"{sum(r['raw_same']['same_text'] is not None for _, _, r in pairs)}"}
    for name, group in (("first", ("first",)), ("warm", ("warm",)), ("all", ("first", "warm"))):
        sel = [(a, b) for a, b, r in pairs if r["situation"] in group and r["raw_same"]["tokens_match"]]
        ratios = [a / b for a, b in sel if b > 0]
        out[name] = {"n": len(sel), "p50_of_ratios": round(M.pct(ratios, 50), 3) if ratios else None,
                     "total_over_total": round(sum(a for a, _ in sel) / sum(b for _, b in sel), 3) if sel else None,
                     "strop_p50_ms": round(M.pct([a for a, _ in sel], 50), 1) if sel else None,
                     "raw_p50_ms": round(M.pct([b for _, b in sel], 50), 1) if sel else None}
    # The two phases run minutes apart and the host's speed drifts between them (raw's per-token time
    # moved ±20 % between runs of the same code). Split strop's round trip into the model's time in its
    # worker (prompt + generation, from the log) and strop's own time around it (transport, planning,
    # hygiene, log): `model_over_raw` far from 1 is drift, and `own_plus_raw_over_raw` is the ratio with
    # strop's model time replaced by raw's on the same tokens.
    sel = [r for _, _, r in pairs if r["situation"] in ("first", "warm") and r["raw_same"]["tokens_match"]
           and r["raw_same"]["ms"] > 0 and r.get("log", {}).get("gen_ms") is not None]
    own = [r["roundtrip_ms"] - r["log"]["prompt_ms"] - r["log"]["gen_ms"] for r in sel]
    if sel:
        out["decomposed"] = {
            "own_ms_p50": round(M.pct(own, 50), 1),
            "model_over_raw_p50": round(M.pct([(r["log"]["prompt_ms"] + r["log"]["gen_ms"]) / r["raw_same"]["ms"]
                                               for r in sel], 50), 3),
            "own_plus_raw_over_raw_p50": round(M.pct([(o + r["raw_same"]["ms"]) / r["raw_same"]["ms"]
                                                      for o, r in zip(own, sel)], 50), 3)}
        drift = abs(out["decomposed"]["model_over_raw_p50"] - 1) > 0.05
        out["for_goal"] = out["decomposed"]["own_plus_raw_over_raw_p50"] if drift else out["all"]["p50_of_ratios"]
        out["for_goal_is"] = "own_plus_raw_over_raw (the phases ran at different speeds)" if drift else "all"
    if (out["all"]["p50_of_ratios"] or 1) < 0.9:
        out["note"] = ("strop faster than raw on identical work: the host ran the raw phase slower "
                       f"(strop's model time ÷ raw's {out.get('decomposed', {}).get('model_over_raw_p50')})")
    return out


def summarise(args, server: dict, raw: dict | None) -> dict:
    reqs = server["requests"]

    def sel(*situations, variant=None):
        return [r for r in reqs if r["situation"] in situations and (variant is None or r["variant"] == variant)]

    first_d, first_n, warm = sel("first", variant="dwell"), sel("first", variant="no_dwell"), sel("warm")
    typed = sel("typed_through")
    states = sel("first", "warm", "typed_through_real")  # every answer shown at a known state
    s1 = {v: {"key_to_first_suggestion": first_times(g), "roundtrip": M.times([r["roundtrip_ms"] for r in g]),
              "what_the_user_gets": M.quality(g)} for v, g in (("dwell", first_d), ("no_dwell", first_n))}
    s1["dwell_s"] = args.dwell
    s2 = {"roundtrip": M.times([r["roundtrip_ms"] for r in warm]),
          "key_to_answer": M.times([r["key_to_answer_ms"] for r in warm]),
          "key_to_suggestion": first_times(warm), "what_the_user_gets": M.quality(warm),
          "typed_through_real_keys": len(sel("typed_through_real"))}
    s3 = {"n": len(typed), "model_calls": sum(r["model_calls"] for r in typed),
          "correct": f"{sum(r['typed_through_ok'] for r in typed)}/{len(typed)}",
          "roundtrip": M.times([r["roundtrip_ms"] for r in typed])}
    s4 = {"strop": M.quality(states)}
    if raw is not None:
        s4["raw_unlimited"] = M.quality([{**r, "text": r["raw"]["text"], "whole": r["raw"]["whole"],
                                          "whole_syntax": r["raw"]["whole_syntax"]} for r in states])
        s4["raw_unlimited"]["p50_ms"] = round(M.pct([r["raw"]["ms"] for r in states], 50), 1) if states else None
        es = (s4["strop"]["edit_similarity"], s4["raw_unlimited"]["edit_similarity"])
        s4["es_gap_points"] = round((es[1] - es[0]) * 100, 2) if None not in es else None
    s4["stop_reasons"] = {}
    for r in states:
        if "log" in r:
            reason = r["log"]["stop_reason"] or "unknown"
            s4["stop_reasons"][reason] = s4["stop_reasons"].get(reason, 0) + 1
    s4["empty_answers"] = sum(1 for r in states if not r["text"])
    s4["failed_requests"] = error_counts(r.get("error") for r in reqs)
    s4["mean_generated_tokens"] = round(statistics.fmean(
        [r["log"]["n_gen_tokens"] for r in states if r.get("log", {}).get("n_gen_tokens") is not None] or [0]), 2)
    out = {"1_open_move_type": s1, "2_warm_keystrokes": s2, "3_typed_through": s3, "4_quality": s4,
           "6_typing_replay": {"strop": replay_summary(server["replays"])}}
    if raw is not None:
        out["5_overhead"] = overhead_summary(reqs)
        out["6_typing_replay"]["raw_unlimited"] = replay_summary(raw["replays"])
    return out


def goals(summary: dict) -> dict:
    s1, s2 = summary["1_open_move_type"]["dwell"]["key_to_first_suggestion"], summary["2_warm_keystrokes"]["roundtrip"]
    s4 = summary["4_quality"]

    def le(value, goal):
        return None if value is None else value <= goal

    return {
        "first_p50_le_1000ms": le(s1["p50_ms"], GOALS["first_p50_ms"]) if s1["p50_ms"] is not None else False,
        "first_p90_le_2000ms": le(s1["p90_ms"], GOALS["first_p90_ms"]) if s1["p90_ms"] is not None else False,
        "warm_p50_le_250ms": le(s2["p50_ms"], GOALS["warm_p50_ms"]),
        "warm_p90_le_600ms": le(s2["p90_ms"], GOALS["warm_p90_ms"]),
        "typed_through_0_model_calls": summary["3_typed_through"]["model_calls"] == 0,
        "whole_share_ge_95pct": None if s4["strop"]["whole_share_of_shown"] is None
        else s4["strop"]["whole_share_of_shown"] >= GOALS["whole_share"],
        "es_within_1_point_of_raw": le(s4.get("es_gap_points"), GOALS["es_gap_points"]),
        "overhead_le_1_05": le(summary.get("5_overhead", {}).get("for_goal"), GOALS["overhead"]),
    }


def request_rows(reqs: list[dict]) -> list[dict]:
    keep = ("position", "kind", "variant", "situation", "key", "key_to_answer_ms", "roundtrip_ms", "text", "truth",
            "error", "whole", "whole_syntax", "model_calls", "typed_through_ok", "model_calls_at_position", "log",
            "raw", "raw_same", "overhead_error")
    out = []
    for r in reqs:
        row = {k: r[k] for k in keep if k in r}
        for k in ("key_to_answer_ms", "roundtrip_ms"):
            row[k] = round(row[k], 1)
        if "truth" in r:
            row["em"] = M.exact(M.first_line(r["text"]), r["truth"])
            row["es"] = round(M.similarity(M.first_line(r["text"]), r["truth"]), 4)
        if "raw" in r:
            row["raw"] = {**r["raw"], "em": M.exact(r["raw"]["text"], r["truth"]),
                          "es": round(M.similarity(r["raw"]["text"], r["truth"]), 4)}
        out.append(row)
    return out


def machine(pinned: int | None, n_threads: int, load_start: tuple, load_raw: tuple) -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import llama_cpp

    return {"cpu": cpu, "cpus": os.cpu_count(), "pinned_to_cores": pinned, "n_threads": n_threads,
            "platform": platform.platform(), "python": platform.python_version(),
            "llama_cpp_python": llama_cpp.__version__, "loadavg_start": load_start, "loadavg_raw_start": load_raw,
            "loadavg_end": os.getloadavg()}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the table ------------------------------------------------------------------------------------
def fmt_ms(times: dict, key: str = "p50_ms") -> str:
    """A percentile of `metrics.times`: '–' without data, 'never' where empty answers decide it."""
    v = times.get(key)
    return "–" if not times.get("n") else ("never" if v is None else f"{v:,.0f} ms")


def fmt_share(v) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def table(result: dict) -> str:
    s = result["summary"]
    head = (f"strop latency — {result['model']['name']} on {result['machine']['n_threads']} threads, "
            f"{result['repo']['name']}@{result['repo']['commit'][:12]}, {result['settings']['positions']} positions "
            f"× 2 + {result['settings']['replay']} replays, 1-min load {result['machine']['loadavg_start'][0]:.1f} "
            f"(server) {result['machine']['loadavg_raw_start'][0]:.1f} (raw) {result['machine']['loadavg_end'][0]:.1f} (end)")
    lines = [head, ""]
    row = "{:<44}{:>12}{:>12}{:>9}{:>9}{:>8}{:>8}"
    lines.append(row.format("", "p50", "p90", "shown", "whole", "EM", "ES"))

    def q_cells(q):
        return (fmt_share(q["shown_share"]), fmt_share(q["whole_share_of_shown"]),
                f"{q['exact_match']:.2f}" if q["exact_match"] is not None else "–",
                f"{q['edit_similarity']:.2f}" if q["edit_similarity"] is not None else "–")

    s1 = s["1_open_move_type"]
    for v, label in (("dwell", f"1 key → first suggestion ({s1['dwell_s']:g} s dwell)"),
                     ("no_dwell", "1 key → first suggestion (no dwell)")):
        t = s1[v]["key_to_first_suggestion"]
        lines.append(row.format(label, fmt_ms(t), fmt_ms(t, "p90_ms"), *q_cells(s1[v]["what_the_user_gets"])))
    s2 = s["2_warm_keystrokes"]
    lines.append(row.format("2 warm keystroke, LSP round trip", fmt_ms(s2["roundtrip"]),
                            fmt_ms(s2["roundtrip"], "p90_ms"), *q_cells(s2["what_the_user_gets"])))
    s3 = s["3_typed_through"]
    lines.append(row.format(f"3 typed-through: {s3['model_calls']} model calls, {s3['correct']} same",
                            fmt_ms(s3["roundtrip"]), fmt_ms(s3["roundtrip"], "p90_ms"), "", "", "", ""))
    s4 = s["4_quality"]
    lines.append(row.format("4 every answer of 1–2: strop", "", "", *q_cells(s4["strop"])))
    if "raw_unlimited" in s4:
        raw_p50 = s4["raw_unlimited"]["p50_ms"]
        lines.append(row.format("  raw llama.cpp, full prompt, unlimited", f"{raw_p50:,.0f} ms" if raw_p50 else "–", "",
                                *q_cells(s4["raw_unlimited"])))
        lines.append(f"  ES gap raw − strop: {s4['es_gap_points']} points; stop reasons {s4['stop_reasons']}; "
                     f"{s4['empty_answers']} empty answers")
    if "5_overhead" in s:
        o = s["5_overhead"]
        lines.append(f"5 overhead (strop round trip ÷ raw, same tokens): first {o['first']['p50_of_ratios']}×, "
                     f"warm {o['warm']['p50_of_ratios']}×, all {o['all']['p50_of_ratios']}× (median of {o['all']['n']}); "
                     f"token counts match {o['token_counts_match']}, same first line {o['same_first_line']}"
                     + (f"\n  strop's own time around the model p50 {o['decomposed']['own_ms_p50']} ms; model time "
                        f"÷ raw {o['decomposed']['model_over_raw_p50']}×; with raw's model time "
                        f"{o['decomposed']['own_plus_raw_over_raw_p50']}×; the goal reads {o['for_goal_is']}"
                        if o.get("decomposed") else "")
                     + (f"\n  note: {o['note']}" if o.get("note") else ""))
    r6 = s["6_typing_replay"]
    for name in ("strop", "raw_unlimited"):
        if name in r6:
            r = r6[name]
            extra = (f", requests {r['requests']}, key→shown p50 {fmt_ms(r['key_to_shown'])}"
                     if "requests" in r else "")
            lines.append(f"6 replay {name:<14} saved {fmt_share(r['saved_share'])} of {r['chars']} chars, "
                         f"{r['wrong_per_line']} wrong/line, {r['shown']} shown, {r['accepts_whole']} whole + "
                         f"{r['accepts_words']} word accepts{extra}")
    lines.append("")
    lines.append("goals: " + ", ".join(f"{k} {'✓' if v else ('✗' if v is False else '?')}"
                                       for k, v in result["goals"].items()))
    lines.append(f"took {result['seconds']['total']:.0f} s (server {result['seconds']['server']:.0f} s, "
                 f"raw {result['seconds'].get('raw', 0):.0f} s)")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    t_start, load_start = now(), os.getloadavg()
    pinned = None
    if (os.cpu_count() or 1) > args.cores:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.cores]))
        pinned = args.cores
    from server.config import ServeConfig

    n_threads = pinned or ServeConfig().n_threads
    root, commit = checkout(args.repo, args.rev, args.work)
    groups = plan(root, args.seed, {"dwell": (args.positions, 1), "no_dwell": (args.positions, 1),
                                    "replay": (args.replay, args.replay_lines)})
    model_path = args.model
    if model_path is None:
        from core.models import embedded_default

        model_path = embedded_default()
    model_path = model_path.resolve()
    print(f"strop serve on {root} ({repo_name_of(args.repo)}@{commit[:12]}), model {model_path.name}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="strop-bench-") as tmp:
        log_path = args.work / "last-server.log"
        log_path.unlink(missing_ok=True)
        server = asyncio.run(server_phase(args, groups, root, Path(tmp) / "home", log_path, pinned))
        if (Path(tmp) / "home" / "completions.sqlite3").exists():  # kept for a look at per-request timings
            shutil.copy(Path(tmp) / "home" / "completions.sqlite3", args.work / "last-completions.sqlite3")
    load_raw = os.getloadavg()
    lacks = attach_log(server["requests"], server["logged"])
    for rep in server["replays"]:
        for q in rep["requests"]:
            row = server["logged"].get(q.get("id"))
            if row is not None:
                q["whole"] = M.whole_by_stop(row.get("stop_reason"), row.get("rules"), bool(row.get("multiline")))
                q["stop_reason"] = row.get("stop_reason")
    raw = None
    if not args.skip_raw:
        print("raw llama-cpp-python …", file=sys.stderr, flush=True)
        raw = raw_phase(args, model_path, groups, server, n_threads)
    summary = summarise(args, server, raw)
    result = {
        "benchmark": "time to a useful suggestion (benchmarks/bench_latency.py)",
        "machine": machine(pinned, n_threads, load_start, load_raw),
        "model": {"name": model_path.name, "path": str(model_path), "sha256": sha256(model_path),
                  "passed_to_server": args.model is not None, "server_says": {
                      k: server["status"].get(k) for k in ("model", "modelVersion", "fim", "modelPath")},
                  "fim_raw": raw["fim"] if raw else None},
        "repo": {"name": args.repo_name or repo_name_of(args.repo), "commit": commit, "checkout": str(root),
                 "files": sorted({p.path for g in groups.values() for p in g})},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "server": {"ready_s": server["ready_s"], "config_defaults": {
            k: v for k, v in vars(ServeConfig()).items() if isinstance(v, (int, float, str, bool))},
            "sent": server["sent"], "messages": server["messages"], "shutdown_failed": server["stop_failed"],
            "status_end": {k: server["status_end"].get(k) for k in ("state", "modelCalls", "warmups", "message",
                                                                   "droppedIncomplete", "unanswered")},
            "log_lacks": lacks},
        "positions": {name: [p.describe() for p in g] for name, g in groups.items()},
        "summary": summary,
        "seconds": {"server": server["seconds"], **({"raw": raw["seconds"], "raw_parts": {
            k: raw[k] for k in ("overhead_seconds", "quality_seconds", "replay_seconds")}} if raw else {}),
            "total": round(now() - t_start, 1)},
        "requests": request_rows(server["requests"]),
        "replays": {"strop": server["replays"], **({"raw_unlimited": raw["replays"]} if raw else {})},
    }
    result["goals"] = goals(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n")
    print(table(result))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
