"""Team signals: a laptop's accepted-and-retained completions as a bundle a nightly distillation ingests.

A bundle is gzip-compressed JSON lines: a header line, then one row per completion.

    {"format": "strop-log-bundle", "version": 1, "created_at": ..., "repo_key": ..., "count": N,
     "bundle_id": sha256 of the row lines}
    {"id": sha256(path, prefix, suffix, completion), "path", "language", "prefix", "suffix",
     "completion" (as far as accepted), "accepted_chars", "retained_chars", "snippets": [[path, text]]}

Every text is scrubbed with core.secrets.redact before it is written, and rows of secret files are
left out, so a bundle can leave the laptop. The row id is a content hash: the same completion in two
bundles (or in the local log) is one training example. `strop log export` writes bundles;
`strop distill --log BUNDLE` reads them (distill/cycle.py).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import StropError
from core.fim import snippet_pairs
from core.secrets import is_secret_file, redact

FORMAT = "strop-log-bundle"
VERSION = 1


@dataclass(frozen=True)
class Bundle:
    path: Path
    header: dict
    rows: list[dict]

    @property
    def id(self) -> str:
        return self.header["bundle_id"]


def row_id(path: str, prefix: str, suffix: str, completion: str) -> str:
    """The content hash that de-duplicates completions across bundles and the local log."""
    return hashlib.sha256(json.dumps([path, prefix, suffix, completion]).encode()).hexdigest()


def scrubbed_row(row: dict) -> dict | None:
    """A completion-log row (core.completion_log accepted_contexts) as a bundle row; None when it
    must not leave the laptop (a secret file) or was not retained."""
    if is_secret_file(row["path"]) or not (row["retained_chars"] or 0) > 0:
        return None
    accepted = row["accepted_chars"] or len(row["completion"])
    prefix, suffix = redact(row["prefix"])[0], redact(row["suffix"])[0]
    completion = redact(row["completion"][:accepted])[0]
    snippets = [[p, redact(text)[0]] for p, text in snippet_pairs(json.loads(row["snippets"] or "[]"))
                if not is_secret_file(p)]
    return {"id": row_id(row["path"], prefix, suffix, completion), "path": row["path"],
            "language": row["language"], "prefix": prefix, "suffix": suffix, "completion": completion,
            "accepted_chars": accepted, "retained_chars": min(int(row["retained_chars"]), accepted),
            "snippets": snippets}


def write_bundle(out: Path, repo_key: str, log_rows: list[dict]) -> dict:
    """Write the bundle of `log_rows` to `out` (atomically) and return its header."""
    rows = {}
    for row in log_rows:
        if (r := scrubbed_row(row)) is not None:
            rows.setdefault(r["id"], r)
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) for r in rows.values()]
    body = "".join(line + "\n" for line in lines).encode()
    header = {"format": FORMAT, "version": VERSION, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "repo_key": repo_key, "count": len(lines), "bundle_id": hashlib.sha256(body).hexdigest()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write((json.dumps(header, sort_keys=True) + "\n").encode() + body)
        os.replace(tmp, out)
    except OSError as err:
        raise StropError(f"cannot write the bundle {out}: {err}; check the directory and the free space.") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    return header


def read_bundle(path: Path, repo_key: str | None = None) -> Bundle:
    """A bundle, checked: its format, its content hash, and (given `repo_key`) its repository."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            header_line, _, body = f.read().partition(b"\n")
        header = json.loads(header_line)
    except FileNotFoundError:
        raise StropError(f"--log {path}: no such bundle; `strop log export OUT.bundle` writes one.") from None
    except (OSError, EOFError, ValueError) as err:
        raise StropError(f"--log {path} is not a strop log bundle ({err}); export it again with "
                         "`strop log export`.") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
        raise StropError(f"--log {path} is not a version-{VERSION} strop log bundle; export it again with this "
                         "strop's `strop log export`.")
    if hashlib.sha256(body).hexdigest() != header.get("bundle_id"):
        raise StropError(f"--log {path} is damaged: its rows do not match its bundle id; copy or export it again.")
    if repo_key is not None and header.get("repo_key") != repo_key:
        raise StropError(f"--log {path} holds completions of repository {header.get('repo_key')}, not {repo_key}; "
                         "pass the bundles exported for this repository (`strop log export --repo DIR`).")
    rows = [json.loads(line) for line in body.splitlines() if line.strip()]
    return Bundle(path, header, rows)
