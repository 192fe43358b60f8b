"""strop's model registry, the read side: the layout, repository identity, versions and the promoted one.

Layout under $STROP_HOME:

    registry/<repo_key>/versions/<version>/model.gguf      read-only once registered
                                          manifest.json
                                          report.{json,txt,png}   written by the evaluator
    registry/<repo_key>/versions/.tmp-<pid>-<host>-*/      a version being written; never listed
    registry/<repo_key>/promoted.json    {"version", "history": [earlier promoted, newest last], "promoted_at"}
    models/<name>/model.gguf + manifest.json               imported/pulled GGUFs not tied to a repository

manifest.json holds what the writer passed (`name` shown by the server, `base`, `parent`, `source`,
`data` counts, `hyperparameters`, `metrics`, `decoding` = serving parameters such as
{"temperature": T_eval, "top_k": .., "top_p": ..}, `notes`, anything else) plus what the registry
fills in: `version`, `created_at` (UTC, ISO 8601), `sha256` and `size_bytes` of model.gguf, and
`parent` (the promoted version at the time) when the writer gave none.

Serving reads it (the promoted model, polled by its stamp); `distill/registry.py` writes it.
Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core import git
from core.errors import ModelLoadError, ModelNotFound, StropError
from core.gguf_check import Progress, sha256_file
from core.paths import registry_dir

GGUF_NAME = "model.gguf"
MANIFEST_NAME = "manifest.json"
PROMOTED_NAME = "promoted.json"
VERSION_RE = re.compile(r"^v(\d{4,})-(\d{8}T\d{4})$")


@dataclass(frozen=True)
class Entry:
    """One registered model: a version of a repository's model, or a named model of the global store."""

    version: str
    path: Path  # the version's directory
    gguf: Path
    manifest: dict = field(compare=False)

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def size_bytes(self) -> int:
        return int(self.manifest["size_bytes"])

    @property
    def created_at(self) -> str:
        return self.manifest.get("created_at", "")

    @property
    def source(self) -> str:
        return self.manifest.get("source", "")

    @property
    def parent(self) -> str | None:
        return self.manifest.get("parent")

    @property
    def base(self) -> str | None:
        return self.manifest.get("base")

    @property
    def metrics(self) -> dict:
        return self.manifest.get("metrics") or {}

    @property
    def decoding(self) -> dict:
        return self.manifest.get("decoding") or {}

    def report(self, name: str) -> Path:
        """Where the evaluator's report file `name` (report.json, report.txt, report.png) lives."""
        return self.path / plain_file_name(name)


def repo_key(repo_root: Path) -> str:
    """`<dirname>-<8 hex>`: the hash is of `remote.origin.url` when set, else of the absolute path."""
    root = Path(repo_root).resolve()
    url = git.output(root, "config", "--get", "remote.origin.url")
    digest = hashlib.sha256((url or str(root)).encode()).hexdigest()[:8]
    return f"{safe_name(root.name) or 'repo'}-{digest}"


def safe_name(name: str) -> str:
    """`name` reduced to characters safe in a file name ([A-Za-z0-9._-]), no leading dot."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lstrip(".")


def plain_file_name(name: str) -> str:
    if not name or name != Path(name).name or name.startswith(".") or name in (GGUF_NAME, MANIFEST_NAME):
        raise ValueError(f"{name!r} cannot be a report file name in a version directory")
    return name


def load_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise StropError(
            f"{path} is not valid JSON ({err}); the registry writes it atomically, so something else "
            f"changed it. Restore it or delete the directory {directory}."
        ) from err
    if not isinstance(manifest, dict) or "sha256" not in manifest:
        raise StropError(f"{path} is not a strop manifest (no sha256); restore it or delete {directory}.")
    return manifest


class RegistryReader:
    """The read side of the per-repository registry: versions, the promoted pointer, its stamp.

    What `strop serve` needs; `distill.registry.Registry` adds the writes (register, promote, rollback)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else registry_dir()

    def repo_dir(self, repo_key: str) -> Path:
        return self.root / repo_key

    def versions_dir(self, repo_key: str) -> Path:
        return self.repo_dir(repo_key) / "versions"

    def promoted_path(self, repo_key: str) -> Path:
        return self.repo_dir(repo_key) / PROMOTED_NAME

    def version_names(self, repo_key: str) -> list[str]:
        try:
            return [p.name for p in self.versions_dir(repo_key).iterdir() if VERSION_RE.match(p.name)]
        except FileNotFoundError:
            return []

    def versions(self, repo_key: str) -> list[Entry]:
        """All versions, oldest first."""
        names = sorted(self.version_names(repo_key), key=lambda n: (int(VERSION_RE.match(n).group(1)), n))
        entries = []
        for name in names:
            directory = self.versions_dir(repo_key) / name
            if (directory / MANIFEST_NAME).is_file():
                entries.append(Entry(name, directory, directory / GGUF_NAME, load_manifest(directory)))
        return entries

    def get(self, repo_key: str, version: str) -> Entry:
        directory = self.versions_dir(repo_key) / version
        if not VERSION_RE.match(version) or not (directory / MANIFEST_NAME).is_file():
            known = ", ".join(e.version for e in self.versions(repo_key)) or "none"
            raise ModelNotFound(
                f"repository {repo_key} has no model version {version!r} (versions: {known}); "
                "`strop models list` shows them."
            )
        return Entry(version, directory, directory / GGUF_NAME, load_manifest(directory))

    def read_promoted(self, repo_key: str) -> dict | None:
        path = self.promoted_path(repo_key)
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as err:
            raise StropError(
                f"{path} is not valid JSON ({err}); strop writes it atomically, so something else changed it. "
                "Fix it by promoting a version again: `strop models promote VERSION`."
            ) from err
        state.setdefault("history", [])
        return state

    def promoted_version(self, repo_key: str) -> str | None:
        """The promoted version's id, read from promoted.json alone (its directory may be gone)."""
        state = self.read_promoted(repo_key)
        return state["version"] if state else None

    def promoted(self, repo_key: str) -> Entry | None:
        state = self.read_promoted(repo_key)
        return self.get(repo_key, state["version"]) if state else None

    def promoted_stamp(self, repo_key: str) -> tuple[int, int, int] | None:
        """Changes whenever the promotion changes; one stat() call, cheap enough to poll."""
        try:
            st = os.stat(self.promoted_path(repo_key))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)  # os.replace gives a new inode every time

    def verify(self, entry: Entry, progress: Progress | None = None) -> None:
        """Raise ModelLoadError unless model.gguf still has the sha256 its manifest records."""
        actual = sha256_file(entry.gguf, progress)
        if actual != entry.sha256:
            raise ModelLoadError(
                f"{entry.gguf} is corrupt: its sha256 is {actual} but the manifest records {entry.sha256}. "
                "Register the model again or promote another version."
            )
