"""`strop distill` and `strop eval`: argument parsing only; the work is in distill.cycle / distill.evaluate."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

PROGRESS_LOGGER = "strop.distill"


def configure_logging() -> None:
    """Progress messages (the `strop.distill` logger) as `strop distill: ...` lines on stderr;
    other libraries' records at INFO and above as `LEVEL name: message`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines repeat what the export's progress bar says
    progress = logging.getLogger(PROGRESS_LOGGER)
    if not progress.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("strop distill: %(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


def _duration_s(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def register(sub) -> None:
    p = sub.add_parser("distill", help="self-distil a model for a repository (harvest → sample → train → "
                                       "export → evaluate → promote)")
    p.add_argument("--repo", type=Path, default=Path("."), help="repository root (default: .)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="run one cycle and exit (for cron/systemd timers)")
    when.add_argument("--every", type=_duration_s, metavar="DURATION",
                      help="keep running, one cycle every DURATION (e.g. 24h, 90m)")
    p.add_argument("--config", type=Path, help="TOML file with cycle settings (see README)")
    p.add_argument("--force", action="store_true", help="run even if neither the repository nor the log changed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one cycle setting, e.g. --set sample.n_per_prompt=2")
    p.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="never learn from or evaluate on files matching GLOB, a .gitignore line "
                        "(repeatable; e.g. 'generated/', '*.pb.go', '!keep.py')")
    p.add_argument("--log", action="append", default=[], type=Path, metavar="BUNDLE",
                   help="also learn from a team bundle of accepted completions (`strop log export`); "
                        "repeatable, duplicates across bundles count once")
    p.set_defaults(func=cmd_distill)

    e = sub.add_parser("eval", help="evaluate a model on the repository's held-out code")
    e.add_argument("--model", type=Path, required=True, help="candidate GGUF")
    e.add_argument("--against", type=Path, help="baseline GGUF (default: the model in service)")
    e.add_argument("--repo", type=Path, default=Path("."))
    e.add_argument("--limit", type=int, default=200, help="held-out items at most")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)


def cmd_distill(args) -> int:
    from . import cycle

    configure_logging()
    return cycle.main(args)


def cmd_eval(args) -> int:
    from . import cycle

    configure_logging()
    return cycle.eval_main(args)
