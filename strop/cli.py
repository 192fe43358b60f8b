"""`strop`: sub-commands for serving, inspecting the log, models and distillation.

Every StropError becomes `strop: error: <message>` on stderr and exit code 1; nothing else is caught.
Each side registers its own sub-commands; a command imports only its side (the serving commands
never import `distill`, so `strop serve` runs without the training stack installed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from core.errors import StropError
from core.private import UMASK
from server import __version__

# command → the module that registers it (its `register(subparsers)`)
COMMANDS = {
    "serve": "server.cli", "complete": "server.cli", "stats": "server.cli", "log": "server.cli",
    "doctor": "server.cli", "models": "distill.models_cli", "distill": "distill.cli", "eval": "distill.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser for `command` alone when it is known (so only its side is imported), else for all."""
    parser = argparse.ArgumentParser(prog="strop", description="Local code completion that self-distils "
                                     "a model for your repository.")
    parser.add_argument("--version", action="version", version=f"strop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = [COMMANDS[command]] if command in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for name in wanted:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            if command in COMMANDS:
                raise StropError(f"`strop {command}` needs {err.name}, which is not installed: "
                                 "pip install 'strop[distill]' adds the training stack.") from err
            continue  # `strop --help` on a serving-only install lists what it can run
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.umask(UMASK)  # everything strop writes (STROP_HOME: the log, models, distillation data) is owner-only
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    try:
        args = build_parser(command).parse_args(argv)
        return args.func(args)
    except StropError as err:
        print(f"strop: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("strop: interrupted", file=sys.stderr)
        return 130
