"""`strop stats --html OUT.html`: one self-contained page for a team lead.

What it shows, per model version and per day (UTC): suggestions shown, acceptance rate, accepted and
retained characters, model latency p50 / p90 / p95; the promotions from the registry's promoted.json
(the current one at its `promoted_at`; earlier ones carry no time of their own there, so they are
placed at their version's `created_at` and marked as such); and each distillation report in the
registry with its gains, and their bootstrap intervals (`es_ci`, `em_ci`) where the report has them.

Every number on the page is in a table as text too; the charts (server/stats_charts.py, matplotlib)
are inline SVG. Nothing is fetched: no scripts, fonts or styles from elsewhere.

The HTML is assembled with string.Template and html.escape, by hand: a template engine (jinja2) would
be a new serving dependency for one page of tables.
"""

from __future__ import annotations

import base64
import html
import json
import sqlite3
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from string import Template

from core.errors import StropError
from core.registry import RegistryReader, repo_key

from . import stats
from core.completion_log import CompletionLog

METRIC_COLUMNS = (  # (summary key, header)
    ("completions", "completions"), ("shown", "shown"), ("accepted", "accepted"),
    ("acceptance_rate", "acceptance"), ("accepted_chars", "accepted chars"),
    ("retained_chars", "retained chars"), ("latency_ms_p50", "p50 ms"), ("latency_ms_p90", "p90 ms"),
    ("latency_ms_p95", "p95 ms"),
)
GATE_KEYS = ("es_gain", "es_ci", "em_gain", "em_ci")


# --- reading ---------------------------------------------------------------------------------------


def read_log(path: Path) -> list[dict]:
    """All rows of the completion log at `path` (a teammate's, say), without pruning it."""
    path = Path(path)
    if not path.is_file():
        raise StropError(f"--log {path}: no such file. Pass a strop completion log (completions.sqlite3).")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            known = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'completions'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise StropError(f"--log {path} is not an SQLite file ({err}); pass a strop completion log.") from err
    if not known:
        raise StropError(f"--log {path} has no completions table: it is not a strop completion log.")
    log = CompletionLog(path, retention_days=None)
    try:
        return list(log.rows())
    finally:
        log.close()


def combine(*row_lists: list[dict]) -> list[dict]:
    """Rows of several logs as one; a completion present in two of them (merged copies) counts once."""
    seen: dict[str, dict] = {}
    for rows in row_lists:
        for r in rows:
            seen.setdefault(r["id"], r)
    return sorted(seen.values(), key=lambda r: r["created_at"])


def team_rows(logs: list[Path], repo: Path | None) -> list[dict]:
    """The rows of several logs (`combine`), of one repository if given. Teammates' checkouts live at
    other paths, so a row counts for `repo` when its path is `repo` or ends in a directory of its name."""
    rows = combine(*(read_log(p) for p in logs))
    if repo is None:
        return rows
    return [r for r in rows if r["repo"] == str(repo) or Path(r["repo"]).name == repo.name]


def _version(row: dict) -> str:
    return row["model_version"] or row["model"] or "?"


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d")


def versions_in_order(rows: list[dict]) -> list[str]:
    """Model versions by first appearance in the log."""
    first: dict[str, float] = {}
    for r in rows:
        first.setdefault(_version(r), r["created_at"])
    return sorted(first, key=lambda v: first[v])


def timeline(rows: list[dict]) -> list[dict]:
    """One summary (server/stats.py's) per (UTC day, model version), in time order."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(_day(r["created_at"]), _version(r))].append(r)
    order = {v: i for i, v in enumerate(versions_in_order(rows))}
    return [{"day": day, "version": v, **stats.compute(g)["total"]}
            for (day, v), g in sorted(groups.items(), key=lambda kv: (kv[0][0], order[kv[0][1]]))]


def _when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def promotions(reader: RegistryReader, key: str) -> list[dict]:
    """Promotion events from promoted.json: earlier ones (its history), then the current one."""
    state = reader.read_promoted(key)
    if not state:
        return []
    created = {e.version: e.created_at for e in reader.versions(key)}
    events = [{"version": v, "at": _when(created.get(v)), "exact": False,
               "note": "time not recorded in promoted.json; placed at the version's creation"}
              for v in state["history"]]
    events.append({"version": state["version"], "at": _when(state.get("promoted_at")), "exact": True,
                   "note": "current (promoted_at)"})
    return events


def _gate(manifest: dict, report: dict) -> dict:
    """The bootstrap gate's fields, wherever the writer put them (own section or top level)."""
    for place in (manifest.get("gate"), report.get("gate"), manifest.get("decision"), report, manifest):
        if isinstance(place, dict) and any(k in place for k in GATE_KEYS):
            return place
    return {}


def _ci(value) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(x, (int, float)) for x in value):
        return float(value[0]), float(value[1])
    return None


def distill_reports(reader: RegistryReader, key: str) -> list[dict]:
    """One row per registered version that carries evaluation metrics (a distillation report)."""
    current = reader.promoted_version(key)
    out = []
    for entry in reader.versions(key):
        report_path = entry.report("report.json")
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            report = {}
        metrics = entry.metrics or {k: report[k] for k in ("candidate", "baseline") if k in report}
        cand, base = metrics.get("candidate") or {}, metrics.get("baseline") or {}
        if not cand:
            continue
        gate = _gate(entry.manifest, report)
        decision = entry.manifest.get("decision") or {}
        row = {"version": entry.version, "created_at": entry.created_at, "source": entry.source,
               "parent": entry.parent, "current": entry.version == current, "n": cand.get("n"),
               "em_base": base.get("exact_match"), "em_cand": cand.get("exact_match"),
               "es_base": base.get("edit_similarity"), "es_cand": cand.get("edit_similarity"),
               "ppl_base": base.get("perplexity"), "ppl_cand": cand.get("perplexity"),
               "decision": decision.get("promote", report.get("promote")),
               "reasons": decision.get("reasons") or report.get("reasons") or []}
        for m, c, b in (("es", "es_cand", "es_base"), ("em", "em_cand", "em_base")):
            point = row[c] - row[b] if row[c] is not None and row[b] is not None else None
            row[f"{m}_gain"] = gate.get(f"{m}_gain", point)
            row[f"{m}_ci"] = _ci(gate.get(f"{m}_ci"))
        png = entry.report("report.png")
        row["png"] = base64.b64encode(png.read_bytes()).decode() if png.is_file() else None
        out.append(row)
    return out


# --- writing ---------------------------------------------------------------------------------------


def _fmt(key: str, v) -> str:
    if v is None:
        return "–"
    if key == "acceptance_rate":
        return f"{100 * v:.1f} %"
    if isinstance(v, float):
        return f"{v:.1f}" if key.startswith("latency") else f"{v:g}"
    return str(v)


def _metrics_table(table_id: str, lead: list[tuple[str, str]], rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in (*lead, *METRIC_COLUMNS))
    body = []
    for r in rows:
        cells = "".join(f'<td data-key="{k}">{html.escape(str(r[k]))}</td>' for k, _ in lead)
        cells += "".join(f'<td data-key="{k}" class="num">{html.escape(_fmt(k, r[k]))}</td>' for k, _ in METRIC_COLUMNS)
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _num(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _gain_cell(gain, ci) -> str:
    if gain is None:
        return "–"
    text = f"{gain:+.4f}"
    return f"{text} [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else f"{text} (no interval)"


def _reports_table(reports: list[dict]) -> str:
    if not reports:
        return ('<p id="distill-reports" class="empty">No distillation report in the registry for this repository '
                '(or no --repo given).</p>')
    head = ("version", "created", "in service now", "test items", "exact match (in service → candidate)",
            "edit similarity (in service → candidate)", "perplexity", "ES gain [es_ci]", "EM gain [em_ci]",
            "gate said", "reasons")
    rows = []
    for r in reports:
        ppl = f"{_num(r['ppl_base'], 2)} → {_num(r['ppl_cand'], 2)}"
        decision = "–" if r["decision"] is None else ("promote" if r["decision"] else "keep")
        cells = [r["version"], r["created_at"], "yes" if r["current"] else "", str(r["n"] or "–"),
                 f"{_num(r['em_base'])} → {_num(r['em_cand'])}", f"{_num(r['es_base'])} → {_num(r['es_cand'])}",
                 ppl, _gain_cell(r["es_gain"], r["es_ci"]), _gain_cell(r["em_gain"], r["em_ci"]), decision,
                 "; ".join(r["reasons"])]
        keys = ("version", "created", "current", "n", "em", "es", "ppl", "es_gain", "em_gain", "decision", "reasons")
        rows.append("<tr>" + "".join(f'<td data-key="{k}">{html.escape(c)}</td>'
                                     for k, c in zip(keys, cells)) + "</tr>")
    table = (f'<table id="distill-reports"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table>')
    pngs = "".join(f'<details><summary>{html.escape(r["version"])}: report.png</summary>'
                   f'<img alt="evaluation report of {html.escape(r["version"])}" '
                   f'src="data:image/png;base64,{r["png"]}"></details>' for r in reports if r["png"])
    note = ("<p class=\"note\">Gains are candidate minus the model in service on the held-out test slice. "
            "An interval in brackets is the gate's bootstrap interval (<code>es_ci</code>, <code>em_ci</code>); "
            "“no interval” marks a report written before the gate recorded one (the gain is then the plain "
            "difference of the two scores).</p>")
    return table + note + pngs


def _promotions_table(events: list[dict]) -> str:
    if not events:
        return ('<p id="promotions" class="empty">No promotion recorded in the registry for this repository '
                '(or no --repo given).</p>')
    rows = "".join(
        f'<tr><td data-key="version">{html.escape(e["version"])}</td>'
        f'<td data-key="at">{html.escape(e["at"].strftime("%Y-%m-%d %H:%M UTC") if e["at"] else "unknown")}</td>'
        f'<td data-key="note">{html.escape(e["note"])}</td></tr>' for e in events)
    return (f'<table id="promotions"><thead><tr><th>version</th><th>promoted</th><th></th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _chart(chart_id: str, svg: str) -> str:
    return f'<figure class="chart" id="{chart_id}">{svg}</figure>'


PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; } th { background: #f5f5f5; }
figure.chart { margin: 1em 0; } figure.chart svg { max-width: 100%; height: auto; }
.note, .empty { color: #555; } code { background: #f5f5f5; padding: 0 .2em; }
details img { max-width: 100%; }
</style></head>
<body>
<h1>$title</h1>
<p class="note">$scope Generated $generated. Days are UTC. Latency is request received → suggestion ready, model
answers only. Retained characters are those of accepted suggestions still standing after later edits.</p>
<h2>By model version</h2>
$by_version
<h2>Over time</h2>
$charts
<h3>Per day and model version</h3>
$timeline
<h2>Promotions</h2>
$promotions
<h2>Distillation reports</h2>
$gains_chart
$reports
</body></html>
""")


def render(rows: list[dict], events: list[dict], reports: list[dict], *, scope: str,
           title: str = "strop: team stats") -> str:
    from . import stats_charts as charts

    versions = versions_in_order(rows)
    days = timeline(rows)
    per_version = [{"version": v, **stats.compute([r for r in rows if _version(r) == v])["total"]} for v in versions]
    per_version.append({"version": "all", **stats.compute(rows)["total"]})
    if rows:
        chart_html = "".join((
            _chart("chart-acceptance", charts.per_day(days, versions, events, key="acceptance_rate", scale=100,
                                                      title="acceptance rate per day (accepted ÷ shown)",
                                                      ylabel="%", salt="acceptance")),
            _chart("chart-shown", charts.per_day(days, versions, events, key="shown", title="suggestions shown per day",
                                                 ylabel="suggestions", salt="shown")),
            _chart("chart-chars", charts.characters(days, versions, events)),
            _chart("chart-latency", charts.latency(days, versions, events)),
        ))
    else:
        chart_html = '<p class="empty">The log holds no completions yet.</p>'
    gains = [r for r in reports if r["es_gain"] is not None or r["em_gain"] is not None]
    return PAGE.substitute(
        title=html.escape(title), scope=html.escape(scope),
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        by_version=_metrics_table("by-version", [("version", "model version")], per_version),
        charts=chart_html,
        timeline=_metrics_table("timeline", [("day", "day"), ("version", "model version")], days),
        promotions=_promotions_table(events),
        gains_chart=_chart("chart-gains", charts.gains(gains)) if gains else "",
        reports=_reports_table(reports),
    )


def write(out: Path, rows: list[dict], repo: Path | None, *, scope: str, registry_root: Path | None = None) -> Path:
    """Write the page for `rows`, with the registry of `repo` (if any) for promotions and reports."""
    from . import stats_charts

    stats_charts.require()
    events: list[dict] = []
    reports: list[dict] = []
    if repo is not None:
        reader = RegistryReader(registry_root)
        key = repo_key(repo)
        events, reports = promotions(reader, key), distill_reports(reader, key)
    page = render(rows, events, reports, scope=scope)
    out = Path(out)
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as err:
        raise StropError(f"--html {out}: cannot write the page ({err.strerror}); choose a writable path.") from err
    return out
