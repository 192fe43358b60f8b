"""Which repository files strop learns from (harvest's prompts and split's evaluation items alike).

The repository's tracked files (`git ls-files`; a plain directory is walked), minus secret files
(never opened, see scrub.is_secret_file), vendored directories, lock files, files over the size
limit, binary, generated and minified files, files of unknown or unselected languages, and the
user's exclude globs (gitignore semantics, by pathspec). Every text that leaves this module has
been through scrub.redact; newlines are normalised to "\\n".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pathspec

from core import git, repo_files
from core.errors import StropError
from core.languages import LANGUAGE_BY_NAME, language_of
from distill.scrub import is_secret_file, redact

# Directories of other people's code, environments and caches, skipped at any depth.
VENDORED_DIRS = frozenset({
    "vendor", "vendors", "_vendor", "vendored", "third_party", "third-party", "thirdparty",
    "external", "node_modules", "bower_components", "jspm_packages", ".venv", "venv", "site-packages",
    "dist-packages", "__pycache__", ".git", ".hg", ".svn", ".tox", ".nox", ".eggs", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".next", ".nuxt", ".gradle", "Pods", "Carthage", "htmlcov",
})
# Build output, skipped only at the top level: deeper down these names are often real packages
# (pip/_internal/operations/build/).
BUILD_OUTPUT_DIRS = frozenset({"dist", "build", "out", "target"})
LOCK_FILES = frozenset({
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "poetry.lock",
    "pipfile.lock", "uv.lock", "pdm.lock", "cargo.lock", "gemfile.lock", "composer.lock", "go.sum",
    "flake.lock", "mix.lock", "pubspec.lock", "podfile.lock", "packages.lock.json", "bun.lockb",
    "gradle.lockfile", "conda-lock.yml",
})


@dataclass(frozen=True)
class FileFilter:
    """Which repository files strop learns from (shared by harvest and split)."""

    max_file_bytes: int = 256_000
    exclude_globs: tuple[str, ...] = ()  # .gitignore lines, on the relative path: `build/` is a
    # directory at any depth, `/build/` only at the top, `**` spans directories, `!keep.py` re-includes
    max_line_chars: int = 2000  # a longer line marks the file as minified
    max_avg_line_chars: float = 160.0  # so does a longer average
    languages: tuple[str, ...] | None = None  # LSP language ids to keep; None keeps every known
    # language except prose and data (PROSE_AND_DATA), where completions matter little and
    # exact match says little


PROSE_AND_DATA = frozenset({"markdown", "restructuredtext", "latex", "json", "jsonc", "xml"})


def _language_reason(language: str | None, files: FileFilter) -> str | None:
    if language is None:
        return "unknown_language"
    if files.languages is None and language in PROSE_AND_DATA:
        return "prose_or_data"
    if files.languages is not None and language not in files.languages:
        return "language_not_selected"
    return None


@lru_cache(maxsize=64)
def _exclude_spec(globs: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(g.strip() for g in globs)


def excluded(path: str, globs: tuple[str, ...]) -> bool:
    """Do the exclude globs (one .gitignore, read top to bottom) exclude a relative posix path?"""
    return bool(globs) and _exclude_spec(tuple(globs)).match_file(path)


def skip_reason_for_path(path: str, files: FileFilter) -> str | None:
    """Why a file is not learnt from, judged on its path alone (before anything reads it)."""
    if is_secret_file(path):
        return "secret_file"
    parts = PurePosixPath(path).parts
    if any(part in VENDORED_DIRS for part in parts[:-1]) or (len(parts) > 1 and parts[0] in BUILD_OUTPUT_DIRS):
        return "vendored"
    name = parts[-1].lower()
    if name in LOCK_FILES or name.endswith(".lock"):
        return "lock_file"
    if excluded(path, files.exclude_globs):
        return "excluded"
    if not PurePosixPath(path).suffix and PurePosixPath(path).name not in LANGUAGE_BY_NAME:
        return None  # an extensionless file: its shebang decides, once read (skip_reason_for_text)
    return _language_reason(language_of(path), files)


def skip_reason_for_text(path: str, text: str, files: FileFilter) -> str | None:
    """Why a decoded file is not learnt from, now that its first line is known."""
    return _language_reason(language_of(path, text), files)


def decode_source(data: bytes, files: FileFilter) -> tuple[str | None, str | None]:
    """(text, None) for a file to learn from, else (None, why not). Newlines become "\\n"."""
    return repo_files.decode_source(data, max_file_bytes=files.max_file_bytes,
                                    max_line_chars=files.max_line_chars,
                                    max_avg_line_chars=files.max_avg_line_chars)


def _walk(root: Path) -> list[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == root
        dirnames[:] = sorted(d for d in dirnames
                             if d not in VENDORED_DIRS and not (top and d in BUILD_OUTPUT_DIRS))
        rel_dir = Path(dirpath).relative_to(root)
        paths.extend((rel_dir / f).as_posix() for f in filenames)
    return paths


@dataclass(frozen=True)
class SourceFiles:
    texts: dict[str, str]  # relative path → redacted text
    skipped: dict[str, str]  # relative path → reason
    redactions: int  # secrets replaced across texts


def load_source_files(repo_root: str | os.PathLike, files: FileFilter = FileFilter()) -> SourceFiles:
    """Read the files strop learns from. Secret files are judged on the path and never opened."""
    root = Path(repo_root)
    if not root.is_dir():
        raise StropError(
            f"repository {root} is not a directory; pass the root of the project to learn from."
        )
    listed = git.ls_files(root)
    paths = sorted(set(listed if listed is not None else _walk(root)))
    texts: dict[str, str] = {}
    skipped: dict[str, str] = {}
    redactions = 0
    for path in paths:
        reason = skip_reason_for_path(path, files)
        full = root / path
        if reason is None and (full.is_symlink() or not full.is_file()):
            reason = "not_a_regular_file"  # symlinks may point outside the repository (~/.ssh)
        if reason is None and full.stat().st_size > files.max_file_bytes:
            reason = "too_large"
        if reason is None:
            text, reason = decode_source(full.read_bytes(), files)
        if reason is None:
            reason = skip_reason_for_text(path, text, files)
        if reason is not None:
            skipped[path] = reason
            continue
        texts[path], count = redact(text)
        redactions += count
    return SourceFiles(texts, skipped, redactions)


def list_source_files(repo_root: str | os.PathLike, files: FileFilter = FileFilter()) -> list[str]:
    """Sorted relative paths of the files strop learns from (see load_source_files)."""
    return sorted(load_source_files(repo_root, files).texts)
