"""`strop stats --html`: a known log (real SQLite through server/completion_log.py, two model
versions on two days, in two log files as a team would merge them) and a real registry (a distilled
version promoted through distill/registry.py, a later one carrying the bootstrap gate's fields), the
page written by the real `strop` command, then opened in a real headless Chromium (Debian's) that
reports what it laid out: the tables' text and the charts' rendered size.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.registry import repo_key
from distill.registry import Registry
from core.completion_log import CompletionLog, Record
from server.stats_html import read_log, team_rows

REPO_ROOT = Path(__file__).resolve().parents[1]
DAY = 86400.0
BASE = "smollm2-135m-instruct-q4_1"

# What the browser reports after layout: every table's cell text, every chart's rendered box.
PROBE = """<script>
window.addEventListener('load', () => {
  const charts = [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg'); const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {id: f.id, width: box.width, height: box.height, paths: svg ? svg.querySelectorAll('path').length : 0};
  });
  const tables = {};
  for (const t of document.querySelectorAll('table'))
    tables[t.id] = [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim()));
  const pre = document.createElement('pre'); pre.id = 'render-check';
  pre.textContent = JSON.stringify({charts, tables, images: [...document.images].map(i => i.naturalWidth)});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def rec(cid: str, version: str, latency: float, repo: str) -> Record:
    return Record(id=cid, repo=repo, path="a.py", language="python", model="m", model_version=version,
                  prefix="def f():\n    ", suffix="", snippets=[], completion="return 1234567890", multiline=False,
                  latency_ms=latency)


def build_logs(tmp: Path, repo: str, now: float, distilled: str) -> tuple[Path, Path]:
    """Two logs: the base model's day (10 shown, 4 accepted) and the distilled version's (5 shown, 3
    accepted), one completion copied into both (a merged log counts it once)."""
    a, b = CompletionLog(tmp / "alice.sqlite3"), CompletionLog(tmp / "bob.sqlite3")
    day1, day2 = now - DAY, now
    for i in range(10):  # latencies 100..1000 ms: p50 550, p90 910, p95 955
        cid = f"base{i}"
        a.add(rec(cid, BASE, 100.0 * (i + 1), repo), now=day1 + i)
        a.mark_shown(cid)
        if i < 4:
            a.mark_outcome(cid, "accepted", 10)
            a.mark_retention(cid, 8)
        elif i < 7:
            a.mark_outcome(cid, "dismissed")
    # bob's checkout lives elsewhere: same repository name, other path
    other = str(Path("/home/bob/src") / Path(repo).name)
    outcomes = [(50, 20, 20), (60, 20, 20), (70, 20, 10), (80, None, None), (90, None, None)]
    for i, (lat, acc, kept) in enumerate(outcomes):
        cid = f"dist{i}"
        b.add(rec(cid, distilled, float(lat), other), now=day2 + i)
        b.mark_shown(cid)
        if acc:
            b.mark_outcome(cid, "accepted", acc)
            b.mark_retention(cid, kept)
    b.add(rec("base0", BASE, 100.0, repo), now=day1)  # the copy of alice's first completion
    b.mark_shown("base0")
    b.mark_outcome("base0", "accepted", 10)
    b.mark_retention("base0", 8)
    b.add(rec("elsewhere", BASE, 1.0, "/srv/another-repo"), now=day2)  # another repository: left out
    a.close()
    b.close()
    return a.path, b.path


def build_registry(home: Path, repo: Path) -> str:
    """v0001 distilled and promoted (report without intervals), v0002 with the gate's es_ci/em_ci;
    returns v0001's version id."""
    registry = Registry(home / "registry")
    key = repo_key(repo)
    gguf = home.parent / "fake.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    for ver, cand_es, gate in ((1, 0.191, None),
                               (2, 0.20, {"es_gain": 0.0123, "es_ci": [0.004, 0.0201], "em_gain": -0.002,
                                          "em_ci": [-0.01, 0.006], "n_items": 240})):
        manifest = {"name": "r-distilled", "source": "distill",
                    "metrics": {"candidate": {"n": 48, "exact_match": 0.021, "edit_similarity": cand_es,
                                              "perplexity": 32.9},
                                "baseline": {"n": 48, "exact_match": 0.021, "edit_similarity": 0.160,
                                             "perplexity": 29.7}},
                    "decision": {"promote": ver == 1, "reasons": [f"reason of v{ver}"]}}
        if gate:
            manifest["gate"] = gate
        entry = registry.add_version(key, gguf, manifest)
        if ver == 1:
            registry.promote(key, entry.version, validate=False)
            promoted = entry.version
    return promoted


def render_in_chromium(page: Path, tmp: Path) -> dict:
    probe = tmp / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--window-size=1280,2000",
           "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="render-check">(.*?)</pre>', out.stdout, re.S)
    assert m, f"chromium did not run the probe (rc {out.returncode}):\n{out.stderr[-2000:]}"
    shot = subprocess.run([*cmd[:-2], f"--screenshot={tmp / 'page.png'}", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0 and (tmp / "page.png").stat().st_size > 10_000, shot.stderr[-2000:]
    return json.loads(html.unescape(m.group(1)))


def rows_of(tables: dict, table: str, first: str) -> list[list[str]]:
    return [r for r in tables[table] if r and r[0] == first]


@pytest.mark.slow
def test_page_renders_the_known_numbers_in_real_chromium(tmp_path):
    if chromium() is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; tests/run.sh sets it up)")
    home, repo = tmp_path / "home", tmp_path / "team-repo"
    repo.mkdir()
    now = time.time()
    distilled = build_registry(home, repo)
    alice, bob = build_logs(tmp_path, str(repo), now, distilled)
    page = tmp_path / "stats.html"
    env = {**os.environ, "STROP_HOME": str(home), "PYTHONPATH": str(REPO_ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "strop", "stats", "--html", str(page), "--repo", str(repo),
                           "--log", str(alice), str(bob)], capture_output=True, text=True, env=env, timeout=300)
    write_s = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert "(15 completions)" in done.stdout  # 10 + 5: the copy counted once, another repository left out

    text = page.read_text(encoding="utf-8")
    # Self-contained: no script, stylesheet, image or font fetched from anywhere.
    assert not re.search(r'<(script|link|iframe)\b', text)
    assert not re.search(r'(src|href)\s*=\s*"(?!data:|#)', text)
    assert not re.search(r'url\((?!#)', text) and "@import" not in text  # url(#id): the SVG's own clip paths

    t0 = time.perf_counter()
    seen = render_in_chromium(page, tmp_path)
    print(f"page {len(text) / 1024:.0f} KiB written in {write_s:.1f} s, rendered in "
          f"{time.perf_counter() - t0:.1f} s")

    tables = seen["tables"]
    header = tables["by-version"][0]
    col = {h: i for i, h in enumerate(header)}
    base, = rows_of(tables, "by-version", BASE)
    dist, = rows_of(tables, "by-version", distilled)
    total, = rows_of(tables, "by-version", "all")
    assert [base[col[k]] for k in ("shown", "accepted", "acceptance", "accepted chars", "retained chars",
                                   "p50 ms", "p90 ms", "p95 ms")] == \
        ["10", "4", "40.0 %", "40", "32", "550.0", "910.0", "955.0"]
    assert [dist[col[k]] for k in ("shown", "accepted", "acceptance", "accepted chars", "retained chars",
                                   "p50 ms")] == ["5", "3", "60.0 %", "60", "50", "70.0"]
    assert [total[col[k]] for k in ("shown", "accepted", "acceptance", "accepted chars")] == \
        ["15", "7", "46.7 %", "100"]
    # per day and version: the base model on the first day, the distilled version on the second
    th = {h: i for i, h in enumerate(tables["timeline"][0])}
    days = tables["timeline"][1:]
    assert [(r[th["model version"]], r[th["acceptance"]], r[th["p50 ms"]]) for r in days] == \
        [(BASE, "40.0 %", "550.0"), (distilled, "60.0 %", "70.0")]
    assert days[0][th["day"]] < days[1][th["day"]]

    promoted = tables["promotions"][1:]
    assert len(promoted) == 1 and promoted[0][0] == distilled and "UTC" in promoted[0][1]

    reports = {r[0].split("-")[0]: r for r in tables["distill-reports"][1:]}
    rh = {h: i for i, h in enumerate(tables["distill-reports"][0])}
    assert reports["v0001"][rh["ES gain [es_ci]"]] == "+0.0310 (no interval)"
    assert reports["v0001"][rh["in service now"]] == "yes"
    assert reports["v0002"][rh["ES gain [es_ci]"]] == "+0.0123 [+0.0040, +0.0201]"
    assert reports["v0002"][rh["EM gain [em_ci]"]] == "-0.0020 [-0.0100, +0.0060]"
    assert reports["v0002"][rh["gate said"]] == "keep"

    charts = {c["id"]: c for c in seen["charts"]}
    assert set(charts) == {"chart-acceptance", "chart-shown", "chart-chars", "chart-latency", "chart-gains"}
    for c in charts.values():
        assert c["width"] > 200 and c["height"] > 80 and c["paths"] > 20, c


def test_an_empty_log_still_makes_a_page(tmp_path):
    log = CompletionLog(tmp_path / "empty.sqlite3")
    log.close()
    page = tmp_path / "p.html"
    env = {**os.environ, "STROP_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "strop", "stats", "--html", str(page), "--log", str(log.path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    text = page.read_text(encoding="utf-8")
    assert "The log holds no completions yet." in text and "(or no --repo given)" in text


def test_a_file_that_is_not_a_log_is_refused_with_a_clear_message(tmp_path):
    from core.errors import StropError

    with pytest.raises(StropError, match="no such file"):
        read_log(tmp_path / "missing.sqlite3")
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StropError, match="not an SQLite file"):
        read_log(junk)
    import sqlite3

    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StropError, match="not a strop completion log"):
        team_rows([other], None)
    assert "completions" not in str(sqlite3.connect(other).execute("SELECT name FROM sqlite_master").fetchall())
