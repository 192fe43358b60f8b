"""Split a repository into what strop trains on and what it is evaluated on.

Temporal split (the honest one, used when git history has ≥ 2 commits): walk the first-parent
history, pick a cutoff commit so that roughly `holdout_frac` of the source lines ever added come
after it. Training files are the tree at the cutoff; evaluation items are cut at the lines added
between the cutoff and HEAD (`git diff cutoff HEAD`), with HEAD's text as context. An item whose
target text occurs anywhere in the training files is dropped (it would measure memory, not
prediction), and so is one whose target holds a secret.

File split (no git, one commit, or nothing added after the cutoff): whole files are held out,
chosen by a stable hash of the path; test files stay whole on the training side, because their
repetitive asserts inflate exact match.

Secret files are judged on the path and never read (git is never asked for their blobs); every
text that leaves this module went through scrub. Items split into a validation slice (tune T_eval
there) and a test slice deterministically, by a hash of the item id.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from distill.atomic import write_json_atomic
from core import git
from core.errors import StropError
from core.languages import language_of
from distill.harvest import (
    DEFAULT_MAX_PREFIX_CHARS,
    DEFAULT_MAX_SUFFIX_CHARS,
    Lines,
    record_id,
    stable_hash,
    trim_prefix,
    trim_suffix,
)
from distill.records import EvalItem, read_jsonl, write_jsonl
from distill.scrub import REDACTED, Redaction, apply_redactions, find_secrets, redact
from distill.source_files import (
    FileFilter,
    decode_source,
    load_source_files,
    skip_reason_for_path,
    skip_reason_for_text,
)

# --- test files -----------------------------------------------------------------------------------

TEST_DIRS = frozenset({"test", "tests", "__tests__", "testing", "spec", "specs", "e2e"})
_TEST_NAME = re.compile(
    r"^(test_.*\.py|.*_test\.py|conftest\.py|.*_test\.go|.*\.(test|spec)\.[cm]?[jt]sx?"
    r"|.*Tests?\.(java|kt|cs|swift)|.*_spec\.rb|.*_test\.(rb|rs|exs|dart|cc|cpp|c))$"
)


def is_test_path(path: str) -> bool:
    """Test code by the usual conventions: tests/ dirs, test_*.py, *_test.go, *.spec.ts, ..."""
    parts = PurePosixPath(path).parts
    return any(p.lower() in TEST_DIRS for p in parts[:-1]) or bool(_TEST_NAME.match(parts[-1]))


# --- config and result ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 0
    method: str = "auto"  # "auto" (temporal when history allows, else file), "temporal", "file"
    holdout_frac: float = 0.15  # temporal: share of added source lines held out
    file_holdout_frac: float = 0.15  # file split: share of non-test files held out
    min_commits: int = 2
    files: FileFilter = field(default_factory=FileFilter)
    eval_kind_mix: tuple[tuple[str, float], ...] = (("next_line", 0.5), ("fim_line", 0.3), ("fim_block", 0.2))
    eval_test_files: bool = False  # temporal: also cut items in test files
    max_items: int = 1000
    max_items_per_file: int = 25
    max_block_lines: int = 6
    max_prefix_chars: int = DEFAULT_MAX_PREFIX_CHARS
    max_suffix_chars: int = DEFAULT_MAX_SUFFIX_CHARS
    validation_frac: float = 0.5  # of eval items, for tuning T_eval; the rest is the test slice

    def __post_init__(self) -> None:
        if self.method not in ("auto", "temporal", "file"):
            raise ValueError(f"split method must be auto, temporal or file; got {self.method!r}")
        for name in ("holdout_frac", "file_holdout_frac", "validation_frac"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")


def _in_validation(item_id: str, frac: float) -> bool:
    return stable_hash("validation", item_id) < frac * 2**64


@dataclass(frozen=True)
class TrainFile:
    path: str
    text: str


@dataclass(frozen=True)
class Split:
    train_files: dict[str, str]  # relative path → redacted text
    eval_items: list[EvalItem]
    method: str  # "temporal" | "file"
    cutoff_commit: str | None
    stats: dict
    validation_frac: float = 0.5

    def validation(self, frac: float | None = None) -> list[EvalItem]:
        """The slice to tune decoding (T_eval) on; deterministic by item id."""
        frac = self.validation_frac if frac is None else frac
        return [item for item in self.eval_items if _in_validation(item.id, frac)]

    def test(self, frac: float | None = None) -> list[EvalItem]:
        """The complement of validation(frac): report results on this slice only."""
        frac = self.validation_frac if frac is None else frac
        return [item for item in self.eval_items if not _in_validation(item.id, frac)]

    def save(self, out_dir: str | os.PathLike) -> None:
        """split.json + train_files.jsonl + eval_items.jsonl in out_dir (each written atomically;
        split.json last, so its presence means the split is complete)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "train_files.jsonl", (TrainFile(p, t) for p, t in sorted(self.train_files.items())))
        write_jsonl(out / "eval_items.jsonl", self.eval_items)
        meta = {"method": self.method, "cutoff_commit": self.cutoff_commit, "stats": self.stats,
                "validation_frac": self.validation_frac}
        write_json_atomic(out / "split.json", meta)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "Split":
        out = Path(out_dir)
        try:
            meta = json.loads((out / "split.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StropError(
                f"no split in {out} (split.json is missing): the split stage has not finished there. "
                "Run it again."
            ) from None
        train = {f.path: f.text for f in read_jsonl(out / "train_files.jsonl", TrainFile)}
        return cls(train, read_jsonl(out / "eval_items.jsonl", EvalItem), meta["method"],
                   meta["cutoff_commit"], meta["stats"], meta["validation_frac"])


# --- git ------------------------------------------------------------------------------------------

_WHY = "a temporal split reads the history with it (or use the file split, method='file')"


def _git(root: Path, *args: str, input: bytes | None = None) -> bytes:
    return git.run(root, *args, input=input, why=_WHY)


def _decode_path(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def first_parent_history(root: Path, files: FileFilter) -> list[tuple[str, int]]:
    """(commit, source lines it added) along HEAD's first-parent chain, oldest first.

    Lines count only in files the file filter keeps by path; renames count only their edits.
    """
    out = _git(root, "log", "--first-parent", "--diff-merges=first-parent", "-M", "--numstat", "-z",
               "--relative", "--format=%x01%H", "HEAD")
    history: list[tuple[str, int]] = []
    for chunk in out.split(b"\x01")[1:]:
        sha, _, rest = chunk.partition(b"\0")
        fields = rest.lstrip(b"\n").split(b"\0")
        added = 0
        k = 0
        while k < len(fields):
            entry = fields[k]
            k += 1
            if not entry:
                continue
            plus, _, tail = entry.partition(b"\t")
            _, _, path = tail.partition(b"\t")
            if not path:  # a rename: the old and new paths follow as their own fields
                path = fields[k + 1] if k + 1 < len(fields) else b""
                k += 2
            if plus.isdigit() and skip_reason_for_path(_decode_path(path), files) is None:
                added += int(plus)
        history.append((sha.decode(), added))
    history.reverse()
    return history


def choose_cutoff(history: list[tuple[str, int]], holdout_frac: float) -> int:
    """Index of the cutoff commit: the newest commits after it add ≥ holdout_frac of all lines.

    Clamped so at least one commit comes after the cutoff and the cutoff exists (≥ the root).
    """
    total = sum(added for _, added in history)
    target = holdout_frac * total
    held = 0
    k = len(history) - 1
    while k > 1:
        held += history[k][1]
        if held >= target:
            break
        k -= 1
    return max(0, k - 1)


def _cat_files(root: Path, names: list[str]) -> dict[str, bytes]:
    """Contents of git objects named `<rev>:./<path>`, fetched in one `git cat-file --batch`."""
    if not names:
        return {}
    out = _git(root, "cat-file", "--batch", input="".join(n + "\n" for n in names).encode("utf-8", "surrogateescape"))
    contents: dict[str, bytes] = {}
    pos = 0
    for name in names:
        eol = out.index(b"\n", pos)
        header = out[pos:eol].split()
        pos = eol + 1
        if header[-1] == b"missing" or len(header) != 3:
            continue
        size = int(header[2])
        contents[name] = out[pos: pos + size]
        pos += size + 1
    return contents


def tree_files(root: Path, rev: str, files: FileFilter, skipped: Counter) -> dict[str, str]:
    """The redacted texts of the files the filter keeps in the tree of `rev`.

    Paths are judged (secret files, vendored, lock files, globs, size) before any blob is read.
    """
    listing = _git(root, "ls-tree", "-r", "-l", "-z", rev)
    wanted: list[str] = []
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        meta, _, raw_path = entry.partition(b"\t")
        mode, kind, _, size = meta.split()
        path = _decode_path(raw_path)
        reason = skip_reason_for_path(path, files)
        if reason is None and (kind != b"blob" or mode == b"120000"):
            reason = "not_a_regular_file"
        if reason is None and "\n" in path:
            reason = "unreadable_path"
        if reason is None and int(size) > files.max_file_bytes:
            reason = "too_large"
        if reason is not None:
            skipped[reason] += 1
            continue
        wanted.append(path)
    blobs = _cat_files(root, [f"{rev}:./{p}" for p in wanted])
    texts: dict[str, str] = {}
    for path in wanted:
        text, reason = decode_source(blobs.get(f"{rev}:./{path}", b"\0"), files)
        if reason is None:
            reason = skip_reason_for_text(path, text, files)
        if reason is not None:
            skipped[reason] += 1
            continue
        texts[path], count = redact(text)
        skipped["_redactions"] += count
    return texts


_HUNK = re.compile(rb"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


def _unquote(raw: bytes) -> bytes:
    """A path as git prints it in diff headers, C-quoted when it holds special characters."""
    if not raw.startswith(b'"'):
        return raw
    body = raw[1:-1]
    out = bytearray()
    i = 0
    escapes = {b"n": b"\n", b"t": b"\t", b'"': b'"', b"\\": b"\\", b"a": b"\a", b"b": b"\b",
               b"f": b"\f", b"r": b"\r", b"v": b"\v"}
    while i < len(body):
        c = body[i: i + 1]
        if c == b"\\" and i + 1 < len(body):
            nxt = body[i + 1: i + 2]
            if nxt.isdigit():
                out.append(int(body[i + 1: i + 4], 8))
                i += 4
                continue
            out += escapes.get(nxt, nxt)
            i += 2
            continue
        out += c
        i += 1
    return bytes(out)


def added_lines(root: Path, cutoff: str) -> dict[str, list[int]]:
    """path at HEAD → 1-based numbers of the lines added between cutoff and HEAD."""
    out = _git(root, "diff", "-U0", "--no-color", "--no-ext-diff", "--no-textconv", "-M", "--relative",
               "--src-prefix=a/", "--dst-prefix=b/", cutoff, "HEAD")
    added: dict[str, list[int]] = {}
    path: str | None = None
    lineno = 0
    for line in out.split(b"\n"):
        if line.startswith(b"+++ "):
            target = _unquote(line[4:])
            path = _decode_path(target[2:]) if target.startswith(b"b/") else None
        elif line.startswith(b"@@"):
            m = _HUNK.match(line)
            lineno = int(m.group(1)) if m else 0
        elif line.startswith(b"+") and path is not None and lineno:
            added.setdefault(path, []).append(lineno)
            lineno += 1
        elif line.startswith(b" ") and lineno:
            lineno += 1
    return added


# --- eval items -----------------------------------------------------------------------------------


class TrainText:
    """Answers "does this text occur in the training files?" exactly."""

    def __init__(self, texts: Iterable[str]) -> None:
        texts = list(texts)
        self._lines = {line.strip() for text in texts for line in text.split("\n")}
        self._blob = "\0".join(texts)

    def __contains__(self, snippet: str) -> bool:
        if "\n" not in snippet and snippet.strip() == snippet and snippet in self._lines:
            return True  # fast path for whole lines seen verbatim
        return snippet in self._blob


def cut_eval_items(
    path: str,
    text: str,
    redactions: list[Redaction],
    candidates: Iterable[int],
    cfg: SplitConfig,
    train: TrainText,
    stats: Counter,
) -> list[EvalItem]:
    """Eval items at the given 0-based lines of `text` (unredacted; `redactions` apply to it)."""
    lines = Lines(text)
    allowed = set(candidates)
    pool = sorted(i for i in allowed if i < len(lines) and lines.meaningful(i))
    stats["candidate_lines"] += len(pool)
    rng = random.Random(cfg.seed * (1 << 64) + stable_hash("eval", path))
    rng.shuffle(pool)
    kinds = [k for k, _ in cfg.eval_kind_mix]
    weights = [w for _, w in cfg.eval_kind_mix]
    language = language_of(path, text) or "plaintext"
    items: list[EvalItem] = []
    for i in pool:
        if len(items) >= cfg.max_items_per_file:
            break
        kind = rng.choices(kinds, weights)[0]
        last = i
        if kind == "fim_block":
            end = lines.block_end(i, rng.randint(2, max(2, cfg.max_block_lines)))
            while last < end and last + 1 in allowed:
                last += 1
            while last > i and lines.blank(last):
                last -= 1
            if last == i:
                kind = "fim_line"
        start, stop = lines.indent_end[i], lines.content_end[last]
        target = text[start:stop]
        if REDACTED in target or any(r.start < stop and start < r.end for r in redactions):
            stats["dropped_secret"] += 1
            continue
        if target in train:
            stats["dropped_seen_in_train"] += 1
            continue
        suffix = ""
        if kind != "next_line":
            suffix = trim_suffix(apply_redactions(text[stop:], redactions, stop), cfg.max_suffix_chars)
        items.append(EvalItem(
            id=record_id("eval", path, kind, start, stop, target),
            kind=kind,
            path=path,
            language=language,
            prefix=trim_prefix(apply_redactions(text[:start], redactions, 0), cfg.max_prefix_chars),
            suffix=suffix,
            target=target,
        ))
    return items


def _cap(items: list[EvalItem], cfg: SplitConfig, stats: Counter) -> list[EvalItem]:
    if len(items) <= cfg.max_items:
        return items
    keep = set(sorted((stable_hash(cfg.seed, it.id), it.id) for it in items)[: cfg.max_items])
    stats["dropped_over_cap"] += len(items) - cfg.max_items
    kept_ids = {item_id for _, item_id in keep}
    return [it for it in items if it.id in kept_ids]


def _temporal(root: Path, history: list[tuple[str, int]], cfg: SplitConfig) -> Split:
    k = choose_cutoff(history, cfg.holdout_frac)
    cutoff = history[k][0]
    stats: Counter = Counter()
    skipped: Counter = Counter()
    train_files = tree_files(root, cutoff, cfg.files, skipped)
    train = TrainText(train_files.values())
    added = added_lines(root, cutoff)
    paths: list[str] = []
    for path in sorted(added):
        reason = skip_reason_for_path(path, cfg.files)
        if reason is None and is_test_path(path) and not cfg.eval_test_files:
            reason = "test_file"
        if reason is None and "\n" in path:
            reason = "unreadable_path"
        if reason is not None:
            stats[f"eval_files_skipped_{reason}"] += 1
            continue
        paths.append(path)
    blobs = _cat_files(root, [f"HEAD:./{p}" for p in paths])
    items: list[EvalItem] = []
    for path in paths:
        text, reason = decode_source(blobs.get(f"HEAD:./{path}", b"\0"), cfg.files)
        if reason is None:
            reason = skip_reason_for_text(path, text, cfg.files)
        if reason is not None:
            stats[f"eval_files_skipped_{reason}"] += 1
            continue
        found = find_secrets(text)
        stats["eval_redactions"] += len(found)
        items += cut_eval_items(path, text, found, (n - 1 for n in added[path]), cfg, train, stats)
    items = _cap(items, cfg, stats)
    stats.update({
        "commits": len(history),
        "cutoff_index": k,
        "held_out_commits": len(history) - 1 - k,
        "added_lines_total": sum(a for _, a in history),
        "added_lines_held_out": sum(a for _, a in history[k + 1:]),
        "train_files": len(train_files),
        "train_redactions": skipped.pop("_redactions", 0),
        "eval_items": len(items),
        "eval_files": len({it.path for it in items}),
    })
    stats.update({f"train_files_skipped_{r}": n for r, n in skipped.items()})
    return Split(train_files, items, "temporal", cutoff, dict(stats), cfg.validation_frac)


def _by_file(root: Path, cfg: SplitConfig, reason: str) -> Split:
    source = load_source_files(root, cfg.files)
    stats: Counter = Counter()
    candidates = sorted(p for p in source.texts if not is_test_path(p))
    scores = {p: stable_hash(cfg.seed, "file-split", p) for p in candidates}
    held = [p for p in candidates if scores[p] < cfg.file_holdout_frac * 2**64]
    if not held and len(candidates) >= 2:
        held = [min(candidates, key=scores.__getitem__)]
    if len(held) == len(candidates) and len(candidates) >= 2:
        held.remove(max(held, key=scores.__getitem__))  # keep something to train on
    train_files = {p: t for p, t in source.texts.items() if p not in held}
    train = TrainText(train_files.values())
    items: list[EvalItem] = []
    for path in sorted(held):
        text = source.texts[path]  # already redacted: targets holding REDACTED are dropped
        items += cut_eval_items(path, text, [], range(text.count("\n") + 1), cfg, train, stats)
    items = _cap(items, cfg, stats)
    stats.update({
        "train_files": len(train_files),
        "held_out_files": len(held),
        "test_files_in_train": sum(1 for p in train_files if is_test_path(p)),
        "train_redactions": source.redactions,
        "eval_items": len(items),
        "eval_files": len({it.path for it in items}),
    })
    stats.update({f"files_skipped_{r}": n for r, n in Counter(source.skipped.values()).items()})
    out = dict(stats)
    out["fallback_reason"] = reason
    return Split(train_files, items, "file", None, out, cfg.validation_frac)


def split_repo(repo_root: str | os.PathLike, cfg: SplitConfig = SplitConfig()) -> Split:
    """Training files and held-out evaluation items for the repository at repo_root."""
    root = Path(repo_root)
    if not root.is_dir():
        raise StropError(f"repository {root} is not a directory; pass the root of the project to learn from.")
    history = first_parent_history(root, cfg.files) if git.has_history(root) else []
    if cfg.method == "file":
        return _by_file(root, cfg, "requested")
    if len(history) < max(2, cfg.min_commits) or not any(added for _, added in history):
        if cfg.method == "temporal":
            raise StropError(
                f"a temporal split needs git history with at least {max(2, cfg.min_commits)} commits that "
                f"add source files; {root} has {len(history)} commit(s). Commit more history, or use the "
                "file split (method='file')."
            )
        if len(history) < max(2, cfg.min_commits):
            return _by_file(root, cfg, f"history has {len(history)} commit(s)")
        return _by_file(root, cfg, "no commit adds source lines here")
    split = _temporal(root, history, cfg)
    if not split.eval_items and cfg.method == "auto":
        return _by_file(root, cfg, "no evaluable source lines were added after the cutoff")
    return split
