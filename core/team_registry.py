"""A team's shared registry: follow the model promoted in a shared directory or on a static web server,
and publish a local version into a shared directory.

The shared registry has the local registry's layout (core/registry.py), rooted at a URL:

    <url>/<repo_key>/promoted.json
    <url>/<repo_key>/versions/<version>/model.gguf + manifest.json (+ report files)

`file:///path` or a plain path (an NFS/SMB mount) is read and written as files; `http(s)://` is read
only (any static file server serving that directory: publish into the directory it serves). A
fetched GGUF is streamed into a temporary directory beside the local versions, its sha256 checked
against the remote manifest while it streams, and only then renamed into place; the local
promoted.json is rewritten last, atomically, so a running server's hot swap (server/hot_swap.py)
sees a complete, verified version or nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from core import settings
from core.errors import StropError
from core.gguf_check import CHUNK_BYTES
from core.registry import GGUF_NAME, MANIFEST_NAME, PROMOTED_NAME, VERSION_RE, Entry, RegistryReader, safe_name

HTTP_TIMEOUT_S = 30.0


class TeamRegistryError(StropError):
    """The shared registry is unreachable, incomplete, or served a file that fails its checksum."""


@dataclass(frozen=True)
class RegistrySettings:
    """[registry] of the configuration tree (env STROP_REGISTRY_<KEY>): the team's shared registry."""

    url: str | None = None  # file:///shared/strop-registry, /mnt/shared/strop-registry or https://host/registry
    poll_s: float = 60.0  # how often a server checks the shared promoted.json
    publish: bool = False  # a distillation cycle that promotes also publishes into `url` (a directory)

    @classmethod
    def configured(cls) -> "RegistrySettings":
        cfg = settings.apply(cls(), settings.read_toml().get("registry", {}), "registry")
        return settings.from_env(cfg, "registry", prefix="STROP_REGISTRY_")


@dataclass(frozen=True)
class RemoteVersion:
    version: str
    manifest: dict

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]


def shared_dir(url: str) -> Path | None:
    """The directory a `file://` URL or plain path names; None for http(s)."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise TeamRegistryError(f"registry URL {url!r}: unsupported scheme {parsed.scheme!r}; use file:///path, "
                                "a directory path, or http(s)://host/path.")
    return Path(url).expanduser()


# Hand-written (a dozen lines) rather than importing distill/atomic.py: core must not import distill.
def _write_json_atomic(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _tmp_dir(parent: Path) -> Path:
    """A `.tmp-<pid>-<host>-*` directory: the registry's name for a version being written (never listed,
    swept by distill/registry.py when its process is gone)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{safe_name(socket.gethostname())}-", dir=parent))


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class TeamRegistry:
    """The shared registry of one repository (`repo_key`) at `url`, and the local registry it fills."""

    def __init__(self, url: str, repo_key: str, local: RegistryReader | None = None):
        self.url = url.rstrip("/")
        self.key = repo_key
        self.dir = shared_dir(url)
        self.local = local or RegistryReader()

    # --- reading the shared registry -------------------------------------------------------------
    def _where(self, rel: str) -> str:
        return f"{self.dir / self.key / rel}" if self.dir is not None else f"{self.url}/{self.key}/{rel}"

    @contextlib.contextmanager
    def _open(self, rel: str) -> Iterator[Iterator[bytes]]:
        """The chunks of `<url>/<repo_key>/<rel>`; TeamRegistryError when it cannot be read."""
        where = self._where(rel)
        if self.dir is not None:
            try:
                f = open(where, "rb")
            except FileNotFoundError:
                raise FileNotFoundError(where) from None
            except OSError as err:
                raise TeamRegistryError(f"cannot read {where} of the team registry: {err}; check that the "
                                        "shared directory is mounted and readable.") from err
            with f:
                yield iter(lambda: f.read(CHUNK_BYTES), b"")
            return
        import httpx

        try:
            with httpx.stream("GET", where, timeout=HTTP_TIMEOUT_S, follow_redirects=True) as resp:
                if resp.status_code == 404:
                    raise FileNotFoundError(where)
                if resp.status_code != 200:
                    raise TeamRegistryError(f"the team registry answered HTTP {resp.status_code} for {where}; "
                                            "check [registry] url and the web server's log.")
                yield resp.iter_bytes(CHUNK_BYTES)
        except httpx.HTTPError as err:
            raise TeamRegistryError(f"cannot download {where} from the team registry: {err}; check that the "
                                    "server is up and [registry] url (STROP_REGISTRY_URL) is right.") from err

    def _json(self, rel: str) -> dict | None:
        try:
            with self._open(rel) as chunks:
                body = b"".join(chunks)
        except FileNotFoundError:
            return None
        try:
            value = json.loads(body)
        except ValueError as err:
            raise TeamRegistryError(f"{self._where(rel)} is not valid JSON ({err}); publish the version again "
                                    "(`strop models publish`).") from err
        if not isinstance(value, dict):
            raise TeamRegistryError(f"{self._where(rel)} is not a JSON object; publish the version again.")
        return value

    def promoted(self) -> RemoteVersion | None:
        """The version promoted in the shared registry with its manifest; None when none is."""
        state = self._json(PROMOTED_NAME)
        if state is None:
            return None
        version = state.get("version", "")
        if not VERSION_RE.match(str(version)):
            raise TeamRegistryError(f"{self._where(PROMOTED_NAME)} names no valid version ({version!r}); "
                                    "promote one again with `strop models publish VERSION`.")
        manifest = self._json(f"versions/{version}/{MANIFEST_NAME}")
        if manifest is None or "sha256" not in manifest:
            raise TeamRegistryError(f"the team registry promotes {version} but {self._where(f'versions/{version}/{MANIFEST_NAME}')}"
                                    " is missing or has no sha256; publish that version again.")
        return RemoteVersion(version, manifest)

    # --- fetching into the local registry ---------------------------------------------------------
    def fetch(self, version: str | None = None) -> Path:
        """Download `version` (default: the promoted one) into the local registry, verified, and make
        it the locally promoted version. Returns the local model.gguf. A failed, partial or corrupt
        download leaves the local registry as it was."""
        remote = self.promoted() if version is None else self._remote(version)
        if remote is None:
            raise TeamRegistryError(f"the team registry {self.url} promotes no model for {self.key} yet; "
                                    "publish one with `strop models publish`.")
        final = self.local.versions_dir(self.key) / remote.version
        have = final / MANIFEST_NAME
        if not (have.is_file() and json.loads(have.read_text(encoding="utf-8")).get("sha256") == remote.sha256):
            if final.exists():
                raise TeamRegistryError(f"the local version {final} differs from the team registry's {remote.version} "
                                        f"(another sha256); remove {final} to fetch the team's.")
            self._download(remote, final)
        self._promote_locally(remote.version)
        return final / GGUF_NAME

    def _remote(self, version: str) -> RemoteVersion:
        manifest = self._json(f"versions/{version}/{MANIFEST_NAME}") if VERSION_RE.match(version) else None
        if manifest is None or "sha256" not in manifest:
            raise TeamRegistryError(f"the team registry {self.url} has no version {version!r} of {self.key}.")
        return RemoteVersion(version, manifest)

    def _download(self, remote: RemoteVersion, final: Path) -> None:
        rel = f"versions/{remote.version}/{GGUF_NAME}"
        tmp = _tmp_dir(final.parent)
        try:
            digest, size = hashlib.sha256(), 0
            with self._open(rel) as chunks, open(tmp / GGUF_NAME, "xb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != remote.sha256:
                raise TeamRegistryError(
                    f"{self._where(rel)} is corrupt or incomplete: its sha256 is {digest.hexdigest()} ({size} bytes) "
                    f"but its manifest records {remote.sha256}; the local model was not changed. Publish "
                    f"{remote.version} again (`strop models publish`) or promote another version.")
            os.chmod(tmp / GGUF_NAME, 0o400)
            _write_json_atomic(tmp / MANIFEST_NAME, {**remote.manifest, "fetched_from": self.url})
            os.chmod(tmp, 0o700)
            os.rename(tmp, final)
        except FileNotFoundError as err:
            raise TeamRegistryError(f"the team registry has no {self._where(rel)}; publish {remote.version} again.") from err
        except OSError as err:
            raise TeamRegistryError(f"cannot store {remote.version} in {final.parent}: {err}; free disk space "
                                    "or fix the permissions of STROP_HOME.") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _promote_locally(self, version: str) -> None:
        state = self.local.read_promoted(self.key)
        if state and state["version"] == version:
            return
        history = [*state["history"], state["version"]] if state else []
        _write_json_atomic(self.local.promoted_path(self.key),
                           {"version": version, "history": history, "promoted_at": _utc_now(), "from": self.url})

    # --- publishing into a shared directory ------------------------------------------------------
    def publish(self, entry: Entry, *, promote: bool = True) -> Path:
        """Copy a local version (its directory: GGUF, manifest, reports) into the shared directory,
        then (`promote`) point the shared promoted.json at it. Only file:// or a path: an HTTP
        registry is published by writing into the directory its web server serves."""
        if self.dir is None:
            raise TeamRegistryError(f"cannot publish to {self.url}: HTTP registries are read-only for strop; "
                                    "publish into the directory the web server serves (--to /srv/that/dir).")
        versions = self.dir / self.key / "versions"
        final = versions / entry.version
        if not final.exists():
            tmp = _tmp_dir(versions)
            try:
                for src in sorted(entry.path.iterdir()):
                    if src.is_file():
                        shutil.copyfile(src, tmp / src.name)
                        with open(tmp / src.name, "rb") as f:
                            os.fsync(f.fileno())
                os.chmod(tmp, 0o755)
                os.rename(tmp, final)
            except OSError as err:
                raise TeamRegistryError(f"cannot publish {entry.version} into {versions}: {err}; check that the "
                                        "shared directory is mounted and writable.") from err
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if promote:
            self.promote_shared(entry.version)
        return final

    def promote_shared(self, version: str) -> None:
        """Point the shared promoted.json at an already published version."""
        if self.dir is None:
            raise TeamRegistryError(f"cannot promote in {self.url}: HTTP registries are read-only for strop.")
        if not (self.dir / self.key / "versions" / version / MANIFEST_NAME).is_file():
            raise TeamRegistryError(f"{version} is not published in {self.dir / self.key}; publish it first.")
        path = self.dir / self.key / PROMOTED_NAME
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            state = None
        history = [*state.get("history", []), state["version"]] if state and state.get("version") else []
        _write_json_atomic(path, {"version": version, "history": history, "promoted_at": _utc_now()})
