"""The charts of `strop stats --html`, drawn by matplotlib as inline SVG (text as paths, no fonts or
scripts to fetch), so the page stays one self-contained file.

matplotlib is not a serving dependency: this module is imported only by `strop stats --html`, and
`require()` says how to install it (`pip install 'strop[stats]'`) when it is missing.
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta

from core.errors import StropError

# One colour per model version, in order of first appearance (matplotlib's default cycle).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LATENCY_STYLES = (("latency_ms_p50", "-", "p50"), ("latency_ms_p90", "--", "p90"), ("latency_ms_p95", ":", "p95"))


def require() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise StropError("strop stats --html draws its charts with matplotlib, which is not installed: "
                         "pip install 'strop[stats]' (the distill extra has it too).") from None


def _figure():
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    return fig, fig.add_subplot()


def _svg(fig, salt: str) -> str:
    """The figure as an <svg> element. `salt` keeps clip-path ids of several inline charts apart."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt, "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML declaration and DOCTYPE: inline SVG in HTML5


def _days(timeline: list[dict], version: str, key: str) -> tuple[list[datetime], list[float]]:
    # A day's point sits at its noon (UTC), so a promotion during the day falls on the right side of it.
    points = [(datetime.fromisoformat(t["day"]) + timedelta(hours=12), t[key]) for t in timeline
              if t["version"] == version and t[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _mark_promotions(ax, promotions: list[dict]) -> None:
    for i, p in enumerate(e for e in promotions if e["at"] is not None):
        ax.axvline(p["at"], color="black", linestyle=(0, (4, 3)) if p["exact"] else (0, (1, 3)), linewidth=1,
                   label="promotion" if i == 0 else None)
        ax.annotate(p["version"].split("-")[0], (p["at"], 1), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize=7)


def _finish(ax, fig, title: str, ylabel: str) -> None:
    import matplotlib.dates as mdates

    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    locator = mdates.AutoDateLocator(maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def per_day(timeline: list[dict], versions: list[str], promotions: list[dict], *, key: str, title: str,
            ylabel: str, scale: float = 1.0, salt: str) -> str:
    """One line per model version of `key` by day, promotions as vertical lines."""
    fig, ax = _figure()
    for i, v in enumerate(versions):
        xs, ys = _days(timeline, v, key)
        if xs:
            ax.plot(xs, [y * scale for y in ys], marker="o", color=PALETTE[i % len(PALETTE)], label=v)
    _mark_promotions(ax, promotions)
    _finish(ax, fig, title, ylabel)
    return _svg(fig, salt)


def characters(timeline: list[dict], versions: list[str], promotions: list[dict]) -> str:
    """Accepted characters (solid) and those still standing after later edits (dashed), by day."""
    fig, ax = _figure()
    for i, v in enumerate(versions):
        colour = PALETTE[i % len(PALETTE)]
        for key, style, what in (("accepted_chars", "-", "accepted"), ("retained_chars", "--", "retained")):
            xs, ys = _days(timeline, v, key)
            if xs:
                ax.plot(xs, ys, style, marker="o", color=colour, label=f"{v} {what}")
    _mark_promotions(ax, promotions)
    _finish(ax, fig, "accepted and retained characters per day", "characters")
    return _svg(fig, "chars")


def latency(timeline: list[dict], versions: list[str], promotions: list[dict]) -> str:
    """Model latency p50 / p90 / p95 by day, one colour per version."""
    fig, ax = _figure()
    for i, v in enumerate(versions):
        for key, style, what in LATENCY_STYLES:
            xs, ys = _days(timeline, v, key)
            if xs:
                ax.plot(xs, ys, style, marker="o", color=PALETTE[i % len(PALETTE)], label=f"{v} {what}")
    _mark_promotions(ax, promotions)
    _finish(ax, fig, "model latency per day (request → suggestion ready)", "ms")
    return _svg(fig, "latency")


def gains(reports: list[dict]) -> str:
    """Edit-similarity and exact-match gain of each distilled version over the model in service, with
    the bootstrap interval where the report has one (`es_ci` / `em_ci`), a bare point where not."""
    fig, ax = _figure()
    names = [r["version"].split("-")[0] for r in reports]
    xs = range(len(reports))
    for offset, key, colour, what in ((-0.12, "es", PALETTE[0], "edit similarity"),
                                      (0.12, "em", PALETTE[1], "exact match")):
        labelled = False
        for x, r in zip(xs, reports):
            gain, ci = r[f"{key}_gain"], r[f"{key}_ci"]
            if gain is None:
                continue
            err = [[gain - ci[0]], [ci[1] - gain]] if ci else None
            ax.errorbar([x + offset], [gain], yerr=err, fmt="o" if ci else "x", color=colour, capsize=4,
                        label=None if labelled else what)
            labelled = True
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(list(xs), names)
    ax.set_title("distillation gain over the model in service (bars: interval, × : point only)", fontsize=10)
    ax.set_ylabel("candidate − in service")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _svg(fig, "gains")

