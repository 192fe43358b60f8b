"""`strop doctor`: check the install end to end and say what to fix.

Checks, in the order a failure would matter: the llama.cpp build and the CPU it runs on, the model
that `strop serve` would pick and its FIM format, a real load in the worker process with the canary
decode (the verdict strop remembers, and measured prompt/generation speed), STROP_HOME permissions
and the completion log's schema.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import StropError

CPU_FEATURES = ("amx_tile", "amx_int8", "amx_bf16", "avx512f", "avx512_vnni", "avx512_bf16", "avx2", "fma", "f16c")


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


def _build(checks: list[Check]) -> None:
    from . import canary

    try:
        info = canary.build_info()
    except Exception as err:  # an import or ABI failure of the native library
        checks.append(Check("llama.cpp", "fail", f"llama-cpp-python does not load: {err}",
                            "reinstall it: pip install --force-reinstall --no-cache-dir llama-cpp-python"))
        return
    checks.append(Check("llama.cpp", "ok", f"llama-cpp-python {info['llama_cpp_python']}; {info['system_info']}"))
    flags = set(canary.cpu_flags().split())
    present = [f for f in CPU_FEATURES if f in flags]
    checks.append(Check("cpu", "ok", f"{os.cpu_count()} cores; features: {', '.join(present) or 'none of note'}"
                        + ("; AMX present: llama.cpp's AMX kernels are checked by the canary below" if
                           any(f.startswith("amx") for f in present) else "")))


def _model(checks: list[Check], explicit: Path | None, repo: Path | None):
    from core.llama_model import load_vocab
    from core.models import resolve

    try:
        resolved = resolve(explicit, repo)
    except StropError as err:
        checks.append(Check("model", "fail", str(err)))
        return None
    size = Path(resolved.path).stat().st_size if Path(resolved.path).is_file() else 0
    try:
        vocab = load_vocab(resolved, n_ctx=512)
    except StropError as err:
        checks.append(Check("model", "fail", str(err)))
        return None
    fim = vocab.fim.name if vocab.fim else None
    vocab.close()
    checks.append(Check("model", "ok", f"{resolved.name} ({resolved.source}, {resolved.version}), {resolved.path}, "
                        f"{size / 2**20:.0f} MiB; FIM: {fim or 'none (prefix-only prompts)'}"))
    return resolved


def _canary(checks: list[Check], resolved, n_threads: int) -> None:
    from .config import ServeConfig
    from .engine import Engine

    budget_ms = ServeConfig().configured().prompt_budget_ms
    engine = Engine(n_ctx=1024, n_threads=n_threads, n_gpu_layers=-1, slots=1)
    t0 = time.perf_counter()
    try:
        engine.load(resolved)
    except StropError as err:
        checks.append(Check("canary", "fail", str(err),
                            "report the llama.cpp build line above; meanwhile try a build without native CPU "
                            "tuning: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install --force-reinstall llama-cpp-python"))
        return
    finally:
        seconds = time.perf_counter() - t0
    settings, reason, speeds = engine.settings, engine.fallback_reason, engine.speeds
    engine.close()
    if reason:
        checks.append(Check("canary", "warn", f"llama.cpp crashed with its default settings ({reason}); strop uses "
                            f"{settings} on this machine (remembered).",
                            "nothing to do: serving works; a llama.cpp build without the failing CPU feature "
                            "would be faster"))
    else:
        checks.append(Check("canary", "ok", f"a real decode in the worker process works with {settings} "
                            f"(load + canary {seconds:.1f} s)"))
    tps, gps = speeds.get("prompt_tps", 0), speeds.get("gen_tps", 0)
    slow = tps < 100
    checks.append(Check("speed", "warn" if slow else "ok",
                        f"prompt evaluation {tps:.0f} tokens/s, generation {gps:.0f} tokens/s on {n_threads} threads; "
                        f"a cold prompt within {budget_ms} ms holds ~{int(tps * budget_ms / 1000)} tokens",
                        "a smaller model or a GPU build (CMAKE_ARGS=\"-DGGML_CUDA=on\") for larger cold contexts"
                        if slow else ""))


def _home(checks: list[Check]) -> None:
    from core.paths import log_db_path, strop_home

    home = strop_home()
    loose = []
    for path in [home, *home.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            loose.append(str(path))
    checks.append(Check("STROP_HOME", "warn" if loose else "ok",
                        f"{home}" + (f": {len(loose)} entries readable by others, e.g. {loose[0]}" if loose else
                                     " (owner-only)"),
                        f"chmod -R go-rwx {home}" if loose else ""))
    from core.completion_log import SCHEMA_VERSION, CompletionLog

    try:
        clog = CompletionLog(log_db_path())
        n = clog._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        version = clog._db.execute("PRAGMA user_version").fetchone()[0]
        checks.append(Check("log", "ok", f"{log_db_path()}: schema v{version} (this strop: v{SCHEMA_VERSION}), {n} rows"))
    except StropError as err:
        checks.append(Check("log", "fail", str(err)))


def _remote(checks: list[Check], url: str, resolved) -> None:
    from .remote_engine import RemoteEngine

    engine = None
    try:
        engine = RemoteEngine(url, n_ctx=512, slots=1)
        engine.load(resolved)
        info = engine.info
        checks.append(Check("remote engine", "ok" if info.tokenizer == "matches" else "warn",
                            f"{info.url}: {info.kind}, model {info.model}, prompt as {info.prompt_form}, "
                            f"{info.latency_ms:.0f} ms round trip, tokenizer {info.tokenizer}",
                            "" if info.tokenizer == "matches" else
                            "the server has no tokenize endpoint: make sure it serves the local model"))
    except StropError as err:
        checks.append(Check("remote engine", "fail", str(err)))
    finally:
        if engine is not None:
            engine.close()


def run(explicit: Path | None = None, repo: Path | None = None, n_threads: int | None = None,
        engine_url: str | None = None) -> list[Check]:
    checks: list[Check] = []
    _build(checks)
    resolved = _model(checks, explicit, repo)
    if resolved is not None:
        _canary(checks, resolved, n_threads or max(1, min(8, os.cpu_count() or 1)))
        if engine_url:
            _remote(checks, engine_url, resolved)
    _home(checks)
    if repo is not None:
        _index(checks, repo)
    return checks


def _index(checks: list[Check], repo: Path) -> None:
    """The repository's retrieval index as `strop serve` keeps it (built or refreshed here, persisted)."""
    from core.retrieval import RepoIndex, store_dir_for

    try:
        index = RepoIndex.build(repo, store_dir=store_dir_for(repo))
    except StropError as err:
        checks.append(Check("index", "warn", f"no repository retrieval: {err}",
                            "completions still work, without chunks of the repository in the prompt"))
        return
    st = index.stats()
    size = sum(f.stat().st_size for f in store_dir_for(repo).glob("*") if f.is_file())
    checks.append(Check("index", "ok", f"{repo}: {st['files']} files, {st['chunks']} chunks, {size / 2**20:.1f} MiB on "
                                       f"disk, refreshed in {st['build_seconds']:.2f} s "
                                       f"({st['tokenised_files']} files re-read)"))


def render(checks: list[Check]) -> str:
    mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
    lines = []
    for c in checks:
        lines.append(f"[{mark[c.status]}] {c.name}: {c.detail}")
        if c.fix:
            lines.append(f"       fix: {c.fix}")
    worst = "fail" if any(c.status == "fail" for c in checks) else "warn" if any(c.status == "warn" for c in checks) else "ok"
    lines.append({"ok": "strop is ready.", "warn": "strop works; see the warnings above.",
                  "fail": "strop cannot serve completions until the failures above are fixed."}[worst])
    return "\n".join(lines)


def as_json(checks: list[Check]) -> str:
    return json.dumps([c.__dict__ for c in checks], indent=2)
