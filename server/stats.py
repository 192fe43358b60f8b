"""Aggregate the completion log: acceptance, accepted-and-retained characters, latency percentiles."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable

SHOWN = ("shown", "accepted", "partial", "dismissed")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 1)


def _summary(rows: list[dict]) -> dict:
    shown = [r for r in rows if r["outcome"] in SHOWN or r["shown_at"]]
    accepted = [r for r in rows if r["outcome"] in ("accepted", "partial")]
    model_lat = [r["latency_ms"] for r in rows if r["latency_ms"] is not None and r["source"] == "model"]
    all_lat = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    acc_chars = sum(r["accepted_chars"] or 0 for r in accepted)
    measured = [r for r in accepted if r["retained_chars"] is not None]
    return {
        "completions": len(rows),
        "shown": len(shown),
        "accepted": len(accepted),
        "dismissed": sum(1 for r in rows if r["outcome"] == "dismissed"),
        "acceptance_rate": round(len(accepted) / len(shown), 4) if shown else None,
        "accepted_chars": acc_chars,
        "retained_chars": sum(r["retained_chars"] for r in measured),
        "retention_rate": (round(sum(r["retained_chars"] for r in measured)
                                 / max(1, sum(r["accepted_chars"] or 0 for r in measured)), 4) if measured else None),
        "latency_ms_p50": _pct(model_lat, 50),
        "latency_ms_p90": _pct(model_lat, 90),
        "latency_ms_p95": _pct(model_lat, 95),
        "latency_ms_p50_all": _pct(all_lat, 50),
        "without_model": sum(1 for r in rows if r["source"] != "model"),
    }


def compute(rows: Iterable[dict]) -> dict:
    rows = list(rows)
    by_model: dict[str, list[dict]] = defaultdict(list)
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_model[r["model_version"] or r["model"] or "?"].append(r)
        by_lang[r["language"] or "?"].append(r)
    return {
        "total": _summary(rows),
        "by_model_version": {k: _summary(v) for k, v in sorted(by_model.items())},
        "by_language": {k: _summary(v) for k, v in sorted(by_lang.items())},
    }


def render(stats: dict) -> str:
    """A readable table for the terminal."""
    cols = [("completions", "n"), ("shown", "shown"), ("acceptance_rate", "accept%"),
            ("accepted_chars", "acc.chars"), ("retained_chars", "kept.chars"),
            ("latency_ms_p50", "p50 ms"), ("latency_ms_p95", "p95 ms")]

    def fmt(key: str, v) -> str:
        if v is None:
            return "-"
        if key == "acceptance_rate":
            return f"{100 * v:.1f}"
        return f"{v:g}" if isinstance(v, float) else str(v)

    lines = []
    for title, groups in (("all", {"total": stats["total"]}), ("by model version", stats["by_model_version"]),
                          ("by language", stats["by_language"])):
        lines.append(f"{title}:")
        lines.append("  " + f"{'':24}" + "".join(f"{h:>11}" for _, h in cols))
        for name, s in groups.items():
            lines.append("  " + f"{name[:24]:24}" + "".join(f"{fmt(k, s[k]):>11}" for k, _ in cols))
    return "\n".join(lines)
