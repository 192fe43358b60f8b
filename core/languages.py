"""The languages strop knows, read once from core/languages.toml (the one table both sides use).

Lookups: a file's LSP language id by its name, suffix or shebang line (language_of), and a
language id's line-comment marker (line_comment).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import PurePosixPath
from types import MappingProxyType


def _load() -> tuple[dict[str, dict], str]:
    data = tomllib.loads(resources.files("core").joinpath("languages.toml").read_text(encoding="utf-8"))
    return data["language"], data["default_line_comment"]


def _index(languages: Mapping[str, Mapping], key: str, fold=lambda s: s) -> Mapping[str, str]:
    index: dict[str, str] = {}
    for language, entry in languages.items():
        for name in entry.get(key, ()):
            name = fold(name)
            if index.setdefault(name, language) != language:
                raise ValueError(f"core/languages.toml: {key} {name!r} is listed for both "
                                 f"{index[name]!r} and {language!r}; keep one.")
    return MappingProxyType(index)


_LANGUAGES, DEFAULT_LINE_COMMENT = _load()
LANGUAGE_BY_EXTENSION = _index(_LANGUAGES, "extensions", str.lower)
LANGUAGE_BY_NAME = _index(_LANGUAGES, "filenames")
LANGUAGE_BY_INTERPRETER = _index(_LANGUAGES, "interpreters")
_LINE_COMMENT = MappingProxyType({k: v["line_comment"] for k, v in _LANGUAGES.items() if "line_comment" in v})
_SHEBANG = re.compile(r"#!\s*(?:/usr/bin/env\s+(?:-S\s+)?)?(?:\S*/)?([A-Za-z]+)")


def language_of(path: str, text: str | None = None) -> str | None:
    """The LSP language id of a file, or None when strop does not know the file type.

    Decided by the file name or extension; an extensionless file (bin/ scripts) by its shebang
    line when `text` is given.
    """
    pure = PurePosixPath(path)
    if pure.name in LANGUAGE_BY_NAME:
        return LANGUAGE_BY_NAME[pure.name]
    if pure.suffix:
        return LANGUAGE_BY_EXTENSION.get(pure.suffix.lower())
    if text is not None and (m := _SHEBANG.match(text)):
        return LANGUAGE_BY_INTERPRETER.get(m.group(1))  # python3.11 → "python"
    return None


def line_comment(language: str) -> str:
    """The line-comment marker of an LSP language id ("//" for one the table does not know)."""
    return _LINE_COMMENT.get(language, DEFAULT_LINE_COMMENT)
