"""Repository retrieval on httpx: build time, size on disk, query and update latency, event-loop
lag while the service builds, and a quality proxy on a temporal split.

    python benchmarks/bench_retrieval.py [--mirror /work/.mirror/encode+httpx/repo] [--out FILE]

Quality proxy: the index is built at an older commit (OLD = COMMIT~120). For lines added by the
later commits (under httpx/ and tests/, *.py), the query is the context before the line as its
commit wrote it (core.retrieval.query_around, the local window excluded). A line counts when it
uses an identifier that is not in the local prefix window (LOCAL_LINES lines above it) and not a
builtin or keyword: those are what repository context can add. hit@k: some such identifier
appears (as a word) in the top-k chunks; baseline: k random chunks; oracle: it appears anywhere
in the index (the ceiling for any retriever over this stale index).
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.code_tokens import KEYWORDS  # noqa: E402
from core.retrieval import RepoIndex, query_around  # noqa: E402
from server.index_service import IndexService  # noqa: E402

COMMIT = "ae1b9f66"
OLD_DISTANCE = 120
LOCAL_LINES = 40
QUERY_LINES = 12
K = 4
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
COMMON = set(dir(builtins)) | KEYWORDS


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True,
                          text=True, errors="surrogateescape").stdout


def checkout(git_dir: str, commit: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", f"--git-dir={git_dir}", "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "x"], cwd=dest, input=archive, check=True)
    env = ["-c", "user.email=b@example.com", "-c", "user.name=b"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", *env, "commit", "-q", "-m", commit], cwd=dest, check=True)
    return dest


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def measure_speed(root: Path, tmp: Path) -> dict:
    builds = []
    for i in range(3):
        t0 = time.perf_counter()
        index = RepoIndex.build(root, store_dir=tmp / f"store{i}")
        builds.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    reloaded = RepoIndex.build(root, store_dir=tmp / "store0")
    reload_s = time.perf_counter() - t0
    assert reloaded.stats()["tokenised_files"] == 0
    size = (tmp / "store0" / "index.json").stat().st_size

    rng = random.Random(0)
    py = [p for p in index.paths() if p.endswith(".py") and (root / p).stat().st_size > 0]
    lat = []
    for _ in range(200):
        path = rng.choice(py)
        text = (root / path).read_text()
        line = rng.randrange(len(text.splitlines()))
        t0 = time.perf_counter()
        query_around(index, path, text, line, k=K, lines_before=QUERY_LINES)
        lat.append(time.perf_counter() - t0)

    big = max(py, key=lambda p: (root / p).stat().st_size)
    text = (root / big).read_text()
    updates = []
    for i in range(5):
        t0 = time.perf_counter()
        index.update_file(big, text + f"\ndef bench_added_{i}(): pass\n")
        updates.append(time.perf_counter() - t0)
    stats = index.stats()
    return {
        "files": stats["files"], "chunks": stats["chunks"], "bytes_indexed": stats["bytes"],
        "vocabulary": stats["vocabulary"], "skipped": stats["skipped"],
        "build_seconds_cold": [round(b, 3) for b in builds],
        "reload_seconds_unchanged": round(reload_s, 3),
        "index_bytes_on_disk": size,
        "query_ms_p50": ms(statistics.median(lat)), "query_ms_p95": ms(pct(lat, 0.95)),
        "query_ms_max": ms(max(lat)), "queries": len(lat),
        "update_file": big, "update_ms_median": ms(statistics.median(updates)),
        "update_ms_all": [ms(u) for u in updates],
    }


async def loop_lag_while_building(root: Path, tmp: Path) -> dict:
    """How late a 1 ms timer fires on the asyncio loop while the service builds a cold index."""
    service = IndexService(root, store_dir=tmp / "lag-store")
    lags = []
    service.start()
    t_start = time.perf_counter()
    while not service._ready.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t0 - 0.001)
    ready_s = time.perf_counter() - t_start
    service.stop()
    return {"service_ready_seconds": round(ready_s, 3), "loop_lag_ms_p50": ms(statistics.median(lags)),
            "loop_lag_ms_p99": ms(pct(lags, 0.99)), "loop_lag_ms_max": ms(max(lags)), "timer_samples": len(lags)}


def added_lines(git_dir: str, old: str, new: str) -> list[dict]:
    """(commit, path, 0-based line) of lines added to httpx/ and tests/ *.py after `old`."""
    out = []
    for commit in git(git_dir, "rev-list", "--reverse", "--no-merges", f"{old}..{new}").split():
        diff = git(git_dir, "diff", "-U0", "--no-renames", f"{commit}^", commit, "--", "httpx/*.py", "tests/*.py")
        path = None
        for line in diff.splitlines():
            if line.startswith("+++ "):
                path = line[6:] if line.startswith("+++ b/") else None
            elif line.startswith("@@") and path:
                m = re.match(r"@@ -\S+ \+(\d+)(?:,(\d+))? @@", line)
                start, count = int(m.group(1)), int(m.group(2) or 1)
                out += [{"commit": commit, "path": path, "line": start - 1 + i} for i in range(count)]
    return out


def measure_quality(git_dir: str, old_root: Path, n: int = 100) -> dict:
    index = RepoIndex.build(old_root)
    everything = "\n".join(c.text for c in index.chunks())
    all_words = set(IDENT.findall(everything))
    chunks = index.chunks()
    rng = random.Random(1)
    candidates = added_lines(git_dir, f"{COMMIT}~{OLD_DISTANCE}", COMMIT)
    rng.shuffle(candidates)
    files: dict[tuple[str, str], list[str]] = {}
    rows = []
    for cand in candidates:
        key = (cand["commit"], cand["path"])
        if key not in files:
            files[key] = git(git_dir, "show", f"{cand['commit']}:{cand['path']}").splitlines(keepends=True)
        lines = files[key]
        i = cand["line"]
        local = set(IDENT.findall("".join(lines[max(0, i - LOCAL_LINES): i])))
        wanted = {w for w in IDENT.findall(lines[i]) if len(w) >= 3 and w not in COMMON and w not in local}
        if not wanted:
            continue
        text = "".join(lines[:i]) + lines[i][: len(lines[i]) - len(lines[i].lstrip())]  # cursor at the indent
        found = query_around(index, cand["path"], text, i, k=K, lines_before=QUERY_LINES,
                             exclude_lines=(i - LOCAL_LINES, i + 1))
        got = set(IDENT.findall("".join(c.text for c in found)))
        rand = set(IDENT.findall("".join(c.text for c in rng.sample(chunks, K))))
        rows.append({"hit": bool(wanted & got), "recall": len(wanted & got) / len(wanted),
                     "random_hit": bool(wanted & rand), "oracle": bool(wanted & all_words),
                     "top1_hit": bool(found and wanted & set(IDENT.findall(found[0].text)))})
        if len(rows) == n:
            break
    mean = lambda key: round(sum(r[key] for r in rows) / len(rows), 3)  # noqa: E731
    return {"old_commit": f"{COMMIT}~{OLD_DISTANCE}", "lines": len(rows), "k": K,
            "local_window_lines": LOCAL_LINES, "query_lines": QUERY_LINES,
            "hit_at_k": mean("hit"), "hit_at_1": mean("top1_hit"), "identifier_recall_at_k": mean("recall"),
            "random_k_chunks_hit": mean("random_hit"), "oracle_in_index": mean("oracle")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mirror", default="/work/.mirror/encode+httpx/repo")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrieval.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as d:
        tmp = Path(d)
        root = checkout(args.mirror, COMMIT, tmp / "httpx")
        result = {"repository": f"encode/httpx@{COMMIT}", "cpus": os.cpu_count(),
                  "loadavg_before": os.getloadavg()[0], **measure_speed(root, tmp)}
        result.update(asyncio.run(loop_lag_while_building(root, tmp)))
        old_root = checkout(args.mirror, f"{COMMIT}~{OLD_DISTANCE}", tmp / "httpx-old")
        result["quality"] = measure_quality(args.mirror, old_root)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
