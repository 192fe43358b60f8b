"""The serving side's sub-commands of `strop` (serve, complete, stats, log, doctor); `strop/cli.py`
puts them together with the distillation side's and turns a StropError into a one-line message."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path


from core.errors import StropError


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="run the LSP server on stdio (what editors start)")
    p.add_argument("--model", type=Path, help="a .gguf file (default: the repository's promoted model, "
                                                "else the embedded SmolLM2-135M)")
    p.add_argument("--repo", type=Path, help="repository root (default: from the editor's workspace)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-file", type=Path, help="also write the server log here")
    _add_engine_flag(p)
    p.set_defaults(func=cmd_serve)


def _add_engine_flag(p) -> None:
    p.add_argument("--engine", metavar="URL", help="complete on a remote inference server (llama-server or an "
                   "OpenAI-compatible /v1/completions; default: STROP_ENGINE_URL, else the local model)")


def cmd_serve(args) -> int:
    from .config import ServeConfig
    from .lsp import build_server
    from .transport import serve_stdio

    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]  # stdout carries LSP
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file))
    logging.basicConfig(level=args.log_level, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # pygls logs every message it sends at INFO and a traceback for every malformed message at
        # ERROR; strop answers those itself (server/rpc.py) and logs one line per event worth knowing.
        logging.getLogger("pygls").setLevel(logging.CRITICAL)
    if args.model is not None and not args.model.is_file():
        raise StropError(f"--model {args.model}: no such file. Pass the path of a .gguf model file.")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>` dumps every thread's stack to stderr
    cfg = ServeConfig(repo_root=args.repo.resolve() if args.repo else None).configured()
    if args.engine:
        cfg = replace(cfg, engine_url=args.engine)
    server = build_server(cfg, explicit_model=args.model)
    # The LSP stream gets its own descriptor, and fd 1 becomes a copy of stderr: llama-cpp-python
    # points fd 1 at /dev/null while it loads a model (verbose=False), which would swallow any LSP
    # message written meanwhile (a hot swap loads while serving), and C code that prints must not
    # corrupt the stream either.
    lsp_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # The exit code is LSP's: 0 after shutdown + exit, else 1.
    return serve_stdio(server, sys.stdin.buffer, lsp_out, max_message_bytes=cfg.max_message_bytes)


def _add_complete(sub) -> None:
    p = sub.add_parser("complete", help="one completion at FILE:LINE:COL through the serving path")
    p.add_argument("file", type=Path)
    p.add_argument("--line", type=int, required=True, help="1-based line")
    p.add_argument("--col", type=int, required=True, help="1-based column, in characters")
    p.add_argument("--model", type=Path)
    p.add_argument("--repo", type=Path)
    p.add_argument("--json", action="store_true", help="print a JSON object with timings")
    p.add_argument("--no-log", action="store_true", help="do not record this completion in the log")
    _add_engine_flag(p)
    p.set_defaults(func=cmd_complete)


def cmd_complete(args) -> int:
    from .completer import Completer, Request
    from core.completion_log import open_log
    from .config import ServeConfig
    from .documents import is_secret_document
    from .engine_factory import make_engine
    from core.languages import language_of
    from core.git import toplevel as git_root
    from core.models import resolve

    path = args.file.resolve()
    if is_secret_document(path.as_uri()):  # decided on the path: the file is never opened
        raise StropError(f"{args.file} is a secret file (.env, keys, credentials): strop never completes in one.")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StropError(f"{args.file}: no such file.") from None
    except UnicodeDecodeError:
        raise StropError(f"{args.file} is not UTF-8 text; strop completes source files.") from None
    lines = text.split("\n")
    if not 1 <= args.line <= len(lines):
        raise StropError(f"--line {args.line} is outside {args.file} (1..{len(lines)}).")
    if not 1 <= args.col <= len(lines[args.line - 1]) + 1:
        raise StropError(f"--col {args.col} is outside line {args.line} (1..{len(lines[args.line - 1]) + 1}).")
    offset = sum(len(line) + 1 for line in lines[: args.line - 1]) + args.col - 1
    repo = (args.repo.resolve() if args.repo else None) or git_root(path.parent)
    # One cold completion: the whole context, not the interactive prompt budget.
    cfg = replace(ServeConfig(repo_root=repo).configured(), prompt_budget_ms=0)
    if args.engine:
        cfg = replace(cfg, engine_url=args.engine)
    engine = make_engine(cfg, slots=1)
    resolved = resolve(args.model, repo)
    engine.load(resolved)
    clog = None if args.no_log else open_log()
    retriever = None
    if repo is not None and cfg.retrieval_k > 0:  # the repository index, as `strop serve` keeps it
        from core.repo_context import RetrievalSettings, Retriever
        from core.retrieval import RepoIndex, store_dir_for

        try:
            index = RepoIndex.build(repo, store_dir=store_dir_for(repo))
        except StropError as err:
            logging.getLogger(__name__).warning("no repository retrieval: %s", err)
        else:
            retriever = Retriever(lambda: index, RetrievalSettings(k=cfg.retrieval_k))
    completer = Completer(engine, cfg, clog, repo=str(repo or ""), repo_name=repo.name if repo else "",
                          retriever=retriever)
    rel = str(path.relative_to(repo)) if repo and path.is_relative_to(repo) else path.name
    req = Request(uri=path.as_uri(), path=rel, language=language_of(rel, text) or "plaintext",
                  text=text, offset=offset, trigger="cli")
    try:
        result = asyncio.run(completer.complete(req))
    finally:
        engine.close()
    if args.json:
        print(json.dumps({"id": result.id if result else None, "completion": result.insert_text if result else "",
                          "latency_ms": round(result.latency_ms, 1) if result else None,
                          "model": resolved.name, "model_version": resolved.version}))
    elif result:
        print(result.insert_text)
    return 0


def _add_stats(sub) -> None:
    p = sub.add_parser("stats", help="acceptance, retained characters and latency from the log")
    p.add_argument("--json", action="store_true")
    p.add_argument("--repo", type=Path, help="only this repository (and its registry's promotions and reports "
                                              "on the --html page)")
    p.add_argument("--log", type=Path, nargs="+", action="extend", metavar="FILE",
                   help="read these completion logs (e.g. a team's, copied together) instead of this machine's; "
                        "with --repo, rows of a checkout of the same name elsewhere count too")
    p.add_argument("--html", type=Path, metavar="OUT.html",
                   help="write one self-contained page (tables and charts per model version and day); "
                        "needs matplotlib: pip install 'strop[stats]'")
    p.set_defaults(func=cmd_stats)


def cmd_stats(args) -> int:
    from . import stats
    from core.completion_log import open_log

    repo = args.repo.resolve() if args.repo else None
    sources = [str(p) for p in args.log or ()]
    if args.log:
        from .stats_html import team_rows

        rows = team_rows(args.log, repo)
    else:
        clog = open_log()
        sources = [str(clog.path)]
        rows = list(clog.rows("repo = ?", (str(repo),)) if repo else clog.rows())
    if args.html:
        from .stats_html import write

        logs = ", ".join(sources)
        scope = (f"Repository {repo}; logs: {logs}." if repo else
                 f"All repositories (pass --repo DIR for one, with its promotions and reports); logs: {logs}.")
        out = write(args.html, rows, repo, scope=scope)
        print(f"wrote {out} ({len(rows)} completions)")
        return 0
    result = stats.compute(rows)
    print(json.dumps(result, indent=2) if args.json else stats.render(result))
    return 0


def _add_log(sub) -> None:
    p = sub.add_parser("log", help="recent completions, newest first; `strop log purge` deletes them",
                       description="Rows older than STROP_LOG_RETENTION_DAYS (default 30; `never` keeps "
                                   "all) are deleted whenever the log is opened.")
    p.add_argument("action", nargs="?", choices=["purge", "export"],
                   help="purge: delete the logged completions (all, or --older-than) and rewrite the file "
                        "so that their bytes are gone from the disk; export OUT.bundle: the repository's "
                        "accepted-and-retained completions, secrets scrubbed, for `strop distill --log`")
    p.add_argument("out", nargs="?", type=Path, metavar="OUT.bundle", help="with export: the bundle to write")
    p.add_argument("--repo", type=Path, metavar="DIR", help="with export: the repository (default: the git root of .)")
    p.add_argument("--older-than", type=_positive_days, metavar="DAYS", help="with purge: only rows older than this")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_log)


def _positive_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days (e.g. 7 or 0.5)")
    return days


LOG_FIELDS = ("id", "created_at", "path", "language", "model_version", "completion", "outcome",
              "accepted_chars", "retained_chars", "latency_ms", "source")


def cmd_log(args) -> int:
    from core.completion_log import open_log

    clog = open_log()
    if args.action == "purge":
        n = clog.purge(args.older_than)
        which = f"older than {args.older_than:g} days" if args.older_than is not None else "all"
        print(f"purged {n} completions ({which}) from {clog.path}")
        return 0
    if args.action == "export":
        from .log_export import export

        return export(clog, args.out, args.repo)
    if args.older_than is not None:
        raise StropError("--older-than goes with purge: strop log purge --older-than DAYS")
    rows = [{k: r[k] for k in LOG_FIELDS} for r in clog.recent(args.limit)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        first = r["completion"].split("\n", 1)[0][:60]
        lat = f"{r['latency_ms']:.0f}ms" if r["latency_ms"] is not None else "-"
        print(f"{r['id'][:8]}  {r['outcome']:9}  {lat:>7}  {r['path'][:30]:30}  {first!r}")
    return 0


def _add_doctor(sub) -> None:
    p = sub.add_parser("doctor", help="check the install (llama.cpp build, CPU, model, canary decode, speed, "
                                      "STROP_HOME) and say what to fix")
    p.add_argument("--model", type=Path)
    p.add_argument("--repo", type=Path)
    p.add_argument("--json", action="store_true")
    _add_engine_flag(p)
    p.set_defaults(func=cmd_doctor)


def cmd_doctor(args) -> int:
    from . import doctor
    from .config import ServeConfig
    from core.git import toplevel as git_root

    logging.basicConfig(level=logging.ERROR)
    repo = (args.repo.resolve() if args.repo else None) or git_root(Path.cwd())
    checks = doctor.run(args.model, repo, engine_url=args.engine or ServeConfig().configured().engine_url)
    print(doctor.as_json(checks) if args.json else doctor.render(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


def register(sub) -> None:
    """The serving side's sub-commands (strop/cli.py builds the whole command line)."""
    _add_serve(sub)
    _add_complete(sub)
    _add_stats(sub)
    _add_log(sub)
    _add_doctor(sub)
