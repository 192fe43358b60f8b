"""Cursor positions in a real repository, with what the file really says after the cursor held out.

A position is a place in a real file where the user is about to write what the file really says
there. That text (`target`) is cut out of the document the server is given; the user types it, and
suggestions are scored against it. Kinds (round-robin):
- `line_start`: the cursor after the indentation of a code line (the editor indented it); the
  target is the line's content;
- `mid_line`: the user has typed a line up to a token boundary; the target is the rest of the line
  (the cursor is at the end of the line as the document has it);
- `line_end`: the cursor at the end of a complete code line; the target is the next line, whose first
  key is Enter (the editor indents the new line as the file does).
With `lines` > 1 the target runs on through the following code lines (the typing replay).
Every position is in a file of its own, so no document's prompt is warm from an earlier one.
"""

from __future__ import annotations

import io
import random
import re
import subprocess
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("line_start", "mid_line", "line_end")
MIN_TARGET_CHARS = 8  # a line shorter than this (`else:`, `pass`, `return x`) is not worth a suggestion
MIN_LINE = 12  # 0-based: the cursor has at least this many lines of the file before it
FILE_BYTES = (3_000, 200_000)
_WORD = re.compile(r"[A-Za-z0-9_]")


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def repo_name_of(source: Path) -> str:
    """owner/name for a fetched mirror (`…/owner+name/repo`), else the folder's name."""
    for part in (source.name, source.parent.name):
        if "+" in part:
            return part.replace("+", "/", 1)
    return source.name


def checkout(source: Path, rev: str, work: Path) -> tuple[Path, str]:
    """A clone of `source` (a git directory, bare or not) at `rev` under `work`: (folder, commit).
    An existing clone at that commit is reused (and reset: positions are written into its files),
    even when `source` is gone, if `rev` is a full commit id."""
    name = repo_name_of(source)

    def dest_of(commit: str) -> Path:  # the folder keeps the repository's name: FIM prompts show it
        return work / f"{name.replace('/', '-')}-{commit[:12]}" / name.rsplit("/", 1)[-1]

    if re.fullmatch(r"[0-9a-f]{40}", rev) and (dest_of(rev) / ".git").is_dir():
        commit = rev
    elif not source.exists():
        raise SystemExit(f"--repo {source} does not exist: fetch the repository (the search tool's "
                         "`fetch github:encode/httpx` gives /work/.mirror/encode+httpx/repo) or pass --repo DIR.")
    else:
        commit = git("rev-parse", f"{rev}^{{commit}}", cwd=source)
    dest = dest_of(commit)
    if (dest / ".git").is_dir() and git("rev-parse", "HEAD", cwd=dest) == commit:
        git("reset", "--quiet", "--hard", cwd=dest)
        return dest, commit
    if dest.exists():
        raise SystemExit(f"{dest} exists but is not a clone at {commit}: remove it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "--quiet", "--no-checkout", str(source), str(dest))
    git("checkout", "--quiet", "--detach", commit, cwd=dest)
    return dest, commit


@dataclass(frozen=True)
class Position:
    path: str  # repository-relative
    kind: str
    cut: int  # code-point offset in the file where the held-out text starts (the cursor)
    end: int  # where it ends
    original: str = field(repr=False, compare=False)

    @property
    def target(self) -> str:
        return self.original[self.cut:self.end]

    @property
    def document(self) -> str:
        """The file as the server is given it: the target cut out, the cursor at `cut`."""
        return self.original[:self.cut] + self.original[self.end:]

    def describe(self) -> dict:
        line = self.original.count("\n", 0, self.cut)
        return {"path": self.path, "kind": self.kind, "line": line + 1,
                "col": self.cut - (self.original.rfind("\n", 0, self.cut) + 1) + 1, "target": self.target}


def _string_or_comment_lines(text: str) -> set[int] | None:
    """0-based lines that lie inside a multi-line string or hold only a comment; None if the file
    does not tokenize."""
    out: set[int] = set()
    strings = {tokenize.STRING} | {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                                   if hasattr(tokenize, n)}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type in strings:
                if tok.start[0] != tok.end[0]:
                    out.update(range(tok.start[0] - 1, tok.end[0]))
                if tok.start[1] == len(tok.line) - len(tok.line.lstrip()):  # a line that starts with a string
                    out.add(tok.start[0] - 1)
            elif tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
                out.add(tok.start[0] - 1)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    return out


def _boundaries(content: str) -> list[int]:
    """Token boundaries inside a line's content: where a word meets punctuation, or after a space."""
    return [j for j in range(1, len(content))
            if (bool(_WORD.match(content[j - 1])) != bool(_WORD.match(content[j])) and content[j] != " ")
            or (content[j - 1] == " " and content[j] != " ")]


def _candidates(text: str, kind: str, lines: int) -> list[tuple[int, int]]:
    """(cut, end) offsets for `kind` in `text`."""
    skip = _string_or_comment_lines(text)
    if skip is None:
        return []
    rows = text.split("\n")
    starts = [0]
    for row in rows:
        starts.append(starts[-1] + len(row) + 1)

    def code(i: int) -> bool:
        return 0 <= i < len(rows) and i not in skip and rows[i].strip() != ""

    out = []
    for i in range(MIN_LINE, len(rows) - lines):
        content = rows[i].lstrip(" \t")
        indent = len(rows[i]) - len(content)
        if not (code(i) and len(content.rstrip()) >= MIN_TARGET_CHARS and any(c.isalpha() for c in content)):
            continue
        if not all(code(i + k) for k in range(1, lines)):
            continue
        end = starts[i + lines - 1] + len(rows[i + lines - 1])
        if kind == "line_start":
            out.append((starts[i] + indent, end))
        elif kind == "line_end" and code(i - 1):
            out.append((starts[i] - 1, end))  # at the newline that ends the line before
        elif kind == "mid_line":
            for j in _boundaries(content):
                if len(content[:j].strip()) >= 3 and len(content[j:].strip()) >= 6:
                    out.append((starts[i] + indent + j, end))
    return out


def python_files(root: Path) -> list[str]:
    files = []
    for rel in git("ls-files", "*.py", cwd=root).splitlines():
        size = (root / rel).stat().st_size
        if FILE_BYTES[0] <= size <= FILE_BYTES[1]:
            files.append(rel)
    return sorted(files)


def plan(root: Path, seed: int, groups: dict[str, tuple[int, int]]) -> dict[str, list[Position]]:
    """Positions for each group {name: (count, lines)}, every one in a file of its own, kinds
    round-robin within a group; the same seed picks the same positions."""
    rng = random.Random(seed)
    files = python_files(root)
    rng.shuffle(files)
    texts: dict[str, str] = {}
    out: dict[str, list[Position]] = {}
    pool = iter(files)
    for name, (count, lines) in groups.items():
        out[name] = []
        while len(out[name]) < count:
            rel = next(pool, None)
            if rel is None:
                raise SystemExit(f"{root} has too few Python files of {FILE_BYTES[0]}–{FILE_BYTES[1]} bytes for "
                                 f"{sum(c for c, _ in groups.values())} positions (one per file): ask for fewer.")
            text = texts.setdefault(rel, (root / rel).read_text(encoding="utf-8", errors="replace"))
            kind = KINDS[len(out[name]) % len(KINDS)]
            cands = _candidates(text, kind, lines)
            if cands:
                cut, end = rng.choice(cands)
                out[name].append(Position(rel, kind, cut, end, text))
    return out


def keystrokes(target: str) -> list[str]:
    """The keys that type `target`: one per character, except Enter, which brings the new line's
    indentation with it (the editor indents)."""
    keys, i = [], 0
    while i < len(target):
        j = i + 1
        if target[i] == "\n":
            while j < len(target) and target[j] in " \t":
                j += 1
        keys.append(target[i:j])
        i = j
    return keys


def typed_mask(target: str) -> list[bool]:
    """Per character of `target`: would the user type it (False for indentation the editor adds)?"""
    mask, indenting = [], False
    for ch in target:
        if ch == "\n":
            indenting = True
            mask.append(True)
        elif indenting and ch in " \t":
            mask.append(False)
        else:
            indenting = False
            mask.append(True)
    return mask


def starts_word(text_before: str, key: str) -> bool:
    """Does `key` begin a new word (the typist pauses there)?"""
    return bool(_WORD.match(key[:1])) and not (text_before and _WORD.match(text_before[-1]))
