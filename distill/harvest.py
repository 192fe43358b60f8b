"""Harvest: choose the places in a repository where the model will be sampled for self-distillation.

Which files: the repository's tracked files (`git ls-files`; a plain directory is walked), minus
secret files (never opened, see scrub.is_secret_file), vendored directories, lock files, files over
the size limit, binary, generated and minified files, and the user's exclude globs. Every text that
leaves this module has been through scrub.redact; newlines are normalised to "\\n".

Where to cut (offsets into a file's text; prefix + reference + suffix == the text for FIM kinds):
- fim_line: a whole line after its indentation (the cursor sits where the editor auto-indents);
- fim_block: 2..max_block_lines lines, preferably the body of an indented block;
- fim_span: from a token boundary to a later token boundary, within a line or up to 3 lines on;
- next_line / next_block: as fim_line / fim_block, with everything after the cursor dropped.
Prompts are deterministic: files in sorted order, each with random.Random(seed, stable hash of path).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path, PurePosixPath

from distill.records import LoggedContext, Prompt
from distill.scrub import REDACTED, is_secret_file, redact
from core import git, repo_files
from core.errors import StropError

DEFAULT_MAX_PREFIX_CHARS = 6000
DEFAULT_MAX_SUFFIX_CHARS = 2000

# --- which files ----------------------------------------------------------------------------------

# LSP language ids (https://microsoft.github.io/language-server-protocol/specification#textDocumentItem)
LANGUAGE_BY_EXTENSION: Mapping[str, str] = {
    ".py": "python", ".pyi": "python", ".pyw": "python",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascriptreact",
    ".ts": "typescript", ".mts": "typescript", ".cts": "typescript", ".tsx": "typescriptreact",
    ".go": "go", ".rs": "rust", ".java": "java", ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala",
    ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp",
    ".hxx": "cpp", ".m": "objective-c", ".mm": "objective-cpp", ".cs": "csharp", ".fs": "fsharp",
    ".swift": "swift", ".dart": "dart", ".lua": "lua", ".rb": "ruby", ".php": "php", ".pl": "perl",
    ".pm": "perl", ".r": "r", ".jl": "julia", ".ex": "elixir", ".exs": "elixir", ".erl": "erlang",
    ".hs": "haskell", ".ml": "ocaml", ".mli": "ocaml", ".clj": "clojure", ".zig": "zig", ".nim": "nim",
    ".sh": "shellscript", ".bash": "shellscript", ".zsh": "shellscript", ".fish": "fish",
    ".ps1": "powershell", ".bat": "bat", ".sql": "sql", ".vim": "vim",
    ".html": "html", ".htm": "html", ".css": "css", ".scss": "scss", ".less": "less",
    ".vue": "vue", ".svelte": "svelte", ".xml": "xml", ".json": "json", ".jsonc": "jsonc",
    ".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".ini": "ini", ".cfg": "ini",
    ".md": "markdown", ".rst": "restructuredtext", ".tex": "latex", ".proto": "proto3",
    ".tf": "terraform", ".cmake": "cmake",
}
LANGUAGE_BY_NAME: Mapping[str, str] = {
    "Makefile": "makefile", "makefile": "makefile", "GNUmakefile": "makefile",
    "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake", "Rakefile": "ruby", "Gemfile": "ruby",
}

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
    exclude_globs: tuple[str, ...] = ()  # on the relative path; `**` spans directories; a pattern
    # without "/" also matches the file name alone (as in .gitignore)
    max_line_chars: int = 2000  # a longer line marks the file as minified
    max_avg_line_chars: float = 160.0  # so does a longer average
    languages: tuple[str, ...] | None = None  # LSP language ids to keep; None keeps every known
    # language except prose and data (PROSE_AND_DATA), where completions matter little and
    # exact match says little


PROSE_AND_DATA = frozenset({"markdown", "restructuredtext", "latex", "json", "jsonc", "xml"})
LANGUAGE_BY_INTERPRETER: Mapping[str, str] = {
    "python": "python", "sh": "shellscript", "bash": "shellscript",
    "zsh": "shellscript", "dash": "shellscript", "ksh": "shellscript", "node": "javascript",
    "ruby": "ruby", "perl": "perl", "lua": "lua", "php": "php", "fish": "fish",
}
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


def _language_reason(language: str | None, files: FileFilter) -> str | None:
    if language is None:
        return "unknown_language"
    if files.languages is None and language in PROSE_AND_DATA:
        return "prose_or_data"
    if files.languages is not None and language not in files.languages:
        return "language_not_selected"
    return None


@lru_cache(maxsize=256)
def _glob_regex(pattern: str) -> re.Pattern:
    # Hand-rolled: fnmatch's `*` crosses "/" and has no `**`; PurePath.full_match needs Python 3.13.
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            close = pattern.find("]", i + 2)
            if close < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1: close]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = close + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def matches_glob(path: str, pattern: str) -> bool:
    """Does a relative posix path match an exclude glob? `dir/` excludes everything under dir."""
    pattern = pattern.strip().lstrip("/")
    if pattern.endswith("/"):
        pattern += "**"
    rx = _glob_regex(pattern)
    if rx.fullmatch(path):
        return True
    if "/" not in pattern:  # a bare pattern matches the name, or a directory name, anywhere
        return any(rx.fullmatch(part) for part in PurePosixPath(path).parts)
    return False


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
    if any(matches_glob(path, g) for g in files.exclude_globs):
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


def load_source_files(repo_root: str | os.PathLike, cfg: "FileFilter | HarvestConfig" = FileFilter()) -> SourceFiles:
    """Read the files strop learns from. Secret files are judged on the path and never opened."""
    files = cfg.files if isinstance(cfg, HarvestConfig) else cfg
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


def list_source_files(repo_root: str | os.PathLike, cfg: "FileFilter | HarvestConfig" = FileFilter()) -> list[str]:
    """Sorted relative paths of the files strop learns from (see load_source_files)."""
    return sorted(load_source_files(repo_root, cfg).texts)


# --- where to cut ---------------------------------------------------------------------------------


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same in every process (unlike hash())."""
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode("utf-8", "surrogateescape"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big")


def record_id(*parts: object) -> str:
    return f"{stable_hash(*parts):016x}"


class Lines:
    """Offsets of a text's lines: start, end of indentation, end of content (trailing blanks cut)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.start: list[int] = []
        self.indent_end: list[int] = []
        self.content_end: list[int] = []
        pos = 0
        for line in text.split("\n"):
            self.start.append(pos)
            self.indent_end.append(pos + len(line) - len(line.lstrip(" \t")))
            self.content_end.append(pos + len(line.rstrip()))
            pos += len(line) + 1

    def __len__(self) -> int:
        return len(self.start)

    def indent(self, i: int) -> int:
        return self.indent_end[i] - self.start[i]

    def blank(self, i: int) -> bool:
        return self.content_end[i] <= self.indent_end[i]

    def content(self, i: int) -> str:
        return self.text[self.indent_end[i]: self.content_end[i]]

    @cached_property
    def worthwhile(self) -> list[int]:
        """The lines worth completing (see meaningful), in order."""
        return [i for i in range(len(self)) if self.meaningful(i)]

    def meaningful(self, i: int) -> bool:
        """Worth completing: two or more characters, at least one of them a letter or digit."""
        content = self.content(i)
        return len(content) >= 2 and any(c.isalnum() for c in content) and REDACTED not in content

    def opens_block(self, i: int) -> bool:
        """Line i starts an indented body: the previous non-blank line is indented less."""
        j = i - 1
        while j >= 0 and self.blank(j):
            j -= 1
        return j >= 0 and not self.blank(i) and self.indent(j) < self.indent(i)

    def block_end(self, i: int, max_lines: int) -> int:
        """Last line of the block starting at line i, at most max_lines lines long: the following
        lines indented at least as much, up to a dedent, or up to a blank line after which the
        code goes on at line i's level (a paragraph break). No trailing blank lines."""
        last = i
        j = i + 1
        after_blank = False
        while j < len(self) and j - i < max_lines:
            if self.blank(j):
                after_blank = True
            else:
                if self.indent(j) < self.indent(i) or (after_blank and self.indent(j) == self.indent(i)):
                    break
                last = j
                after_blank = False
            j += 1
        return last


@dataclass(frozen=True)
class Cut:
    kind: str
    start: int  # hole [start, end) in the file's text
    end: int


_BOUNDARY = re.compile(r"\w+|[^\w\s]+|\s+")


def token_starts(text: str, begin: int, end: int) -> list[int]:
    """Offsets in [begin, end) where a word, a punctuation run or a space run starts."""
    return [begin + m.start() for m in _BOUNDARY.finditer(text[begin:end])]


def trim_prefix(prefix: str, max_chars: int) -> str:
    """The last max_chars of prefix, starting at a line start when one is in reach."""
    if len(prefix) <= max_chars:
        return prefix
    cut = len(prefix) - max_chars
    nl = prefix.find("\n", cut)
    return prefix[nl + 1:] if nl >= 0 else prefix[cut:]


def trim_suffix(suffix: str, max_chars: int) -> str:
    """The first max_chars of suffix, ending after a newline when one is in reach."""
    if len(suffix) <= max_chars:
        return suffix
    nl = suffix.rfind("\n", 0, max_chars)
    return suffix[: nl + 1] if nl >= 0 else suffix[:max_chars]


@dataclass(frozen=True)
class HarvestConfig:
    seed: int = 0
    files: FileFilter = field(default_factory=FileFilter)
    prompts_per_file: int = 8  # at most
    lines_per_prompt: int = 12  # a file gets one prompt per this many worthwhile lines (≥ 1)
    kind_mix: tuple[tuple[str, float], ...] = (
        ("fim_line", 0.25), ("fim_block", 0.2), ("fim_span", 0.2), ("next_line", 0.2), ("next_block", 0.15),
    )
    max_block_lines: int = 8
    max_span_chars: int = 120
    max_prefix_chars: int = DEFAULT_MAX_PREFIX_CHARS
    max_suffix_chars: int = DEFAULT_MAX_SUFFIX_CHARS
    retained_bonus: float = 1.0  # a logged completion weighs weight × (1 + bonus × retained fraction)

    def __post_init__(self) -> None:
        kinds = {k for k, _ in self.kind_mix}
        unknown = kinds - {"fim_line", "fim_block", "fim_span", "next_line", "next_block"}
        if unknown or not any(w > 0 for _, w in self.kind_mix):
            raise ValueError(f"kind_mix needs positive weights over repository kinds; got {self.kind_mix}")


def choose_cut(kind: str, lines: Lines, rng: random.Random, cfg: HarvestConfig) -> Cut | None:
    """One cut of `kind` at a random worthwhile place, or None if the file has no such place."""
    candidates = lines.worthwhile
    if not candidates:
        return None
    if kind in ("fim_line", "next_line"):
        i = rng.choice(candidates)
        return Cut(kind, lines.indent_end[i], lines.content_end[i])
    if kind in ("fim_block", "next_block"):
        def block_of(i: int) -> Cut | None:
            last = lines.block_end(i, rng.randint(2, max(2, cfg.max_block_lines)))
            return Cut(kind, lines.indent_end[i], lines.content_end[last]) if last > i else None

        bodies = [i for i in candidates if lines.opens_block(i)]
        for pool in ([bodies] if bodies and rng.random() < 0.7 else []) + [candidates]:
            for i in rng.sample(pool, min(len(pool), 8)):
                if (cut := block_of(i)) is not None:
                    return cut
        return None
    if kind == "fim_span":
        i = rng.choice(candidates)
        starts = [p for p in token_starts(lines.text, lines.indent_end[i], lines.content_end[i])
                  if not lines.text[p].isspace()]
        start = rng.choice(starts)
        last = i
        if rng.random() < 0.35:  # across lines: end 1–3 lines further down, inside the same block
            last = lines.block_end(i, rng.randint(2, 4))
        # end where a token starts (or at the line's end), never right after a space
        ends = [p for p in token_starts(lines.text, lines.indent_end[last], lines.content_end[last])
                if p > start and not lines.text[p - 1].isspace()] + [lines.content_end[last]]
        ends = [p for p in ends if p - start <= cfg.max_span_chars] or [min(ends)]
        end = rng.choice(ends)
        hole = lines.text[start:end]
        return Cut(kind, start, end) if hole.strip() and REDACTED not in hole else None
    raise ValueError(f"unknown cut kind {kind!r}")


def cut_prompts(path: str, text: str, cfg: HarvestConfig) -> list[Prompt]:
    """The prompts of one (already redacted) file."""
    language = language_of(path, text) or "plaintext"
    lines = Lines(text)
    if not lines.worthwhile:
        return []
    n = min(cfg.prompts_per_file, max(1, len(lines.worthwhile) // cfg.lines_per_prompt))
    rng = random.Random(cfg.seed * (1 << 64) + stable_hash(path))
    kinds = [k for k, _ in cfg.kind_mix]
    weights = [w for _, w in cfg.kind_mix]
    prompts: list[Prompt] = []
    seen: set[tuple[str, int, int]] = set()
    for _ in range(n * 3):  # a few spare draws for duplicates and kinds the file cannot offer
        if len(prompts) == n:
            break
        kind = rng.choices(kinds, weights)[0]
        cut = choose_cut(kind, lines, rng, cfg)
        if cut is None or (cut.kind, cut.start, cut.end) in seen:
            continue
        seen.add((cut.kind, cut.start, cut.end))
        fim = cut.kind.startswith("fim_")
        prompts.append(Prompt(
            id=record_id(path, cut.kind, cut.start, cut.end),
            kind=cut.kind,
            path=path,
            language=language,
            prefix=trim_prefix(text[: cut.start], cfg.max_prefix_chars),
            suffix=trim_suffix(text[cut.end:], cfg.max_suffix_chars) if fim else "",
            reference=text[cut.start: cut.end],
        ))
    return prompts


def logged_prompt(ctx: LoggedContext, cfg: HarvestConfig) -> Prompt | None:
    """A completion-log context as a prompt, weighted up by how much of it the user kept."""
    if skip_reason_for_path(ctx.path, cfg.files) in ("secret_file", "excluded", "vendored", "lock_file"):
        return None
    retained = min(1.0, max(0.0, ctx.retained_chars / ctx.accepted_chars)) if ctx.accepted_chars > 0 else 0.0
    weight = ctx.weight * (1.0 + cfg.retained_bonus * retained)
    if not weight > 0:
        return None
    prefix, _ = redact(ctx.prefix)
    suffix, _ = redact(ctx.suffix)
    completion, _ = redact(ctx.completion)
    return Prompt(
        id=record_id("log", ctx.path, ctx.prefix, ctx.suffix, ctx.completion),
        kind="logged",
        path=ctx.path,
        language=ctx.language,
        prefix=prefix,  # the served windows, as they were: trimming them would change the prompt
        suffix=suffix,
        reference=completion,
        weight=weight,
        source="log",
        snippets=tuple((path, redact(text)[0]) for path, text in ctx.snippets),
    )


def harvest(
    repo_root: str | os.PathLike,
    files: Mapping[str, str] | None,
    cfg: HarvestConfig = HarvestConfig(),
    logged: Iterable[LoggedContext] = (),
) -> list[Prompt]:
    """Prompts for self-distillation.

    `files` maps relative paths to text — normally `split_repo(...).train_files`, so held-out code
    never becomes a prompt; None reads `repo_root` (load_source_files). Either way the file filter
    applies and every text is redacted. Logged contexts follow the repository's prompts.
    """
    if files is None:
        texts = load_source_files(repo_root, cfg).texts
    else:
        texts = {}
        for path, text in files.items():
            if skip_reason_for_path(path, cfg.files) is not None:
                continue
            decoded, reason = decode_source(text.encode("utf-8", "surrogateescape"), cfg.files)
            if reason is None and skip_reason_for_text(path, decoded, cfg.files) is None:
                texts[path] = redact(decoded)[0]
    prompts: list[Prompt] = []
    for path in sorted(texts):
        prompts.extend(cut_prompts(path, texts[path], cfg))
    for ctx in logged:
        if (prompt := logged_prompt(ctx, cfg)) is not None:
            prompts.append(prompt)
    return prompts


def count_by_kind(prompts: Iterable[Prompt]) -> dict[str, int]:
    return dict(Counter(p.kind for p in prompts))
