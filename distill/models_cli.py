"""`strop models ...`: list, promote, roll back, import (air-gapped) and pull (Hugging Face hub).

`register(subparsers)` adds the commands; each sets `func(args) -> int`, which the caller runs.
Errors are StropError subclasses; `server.cli.main` prints them. Standard library only at import
time; huggingface_hub and tqdm are imported when a command needs them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from core.gguf_check import Progress, validate_gguf
from core.registry import Entry, repo_key
from distill.registry import ModelStore, Registry
from core.errors import ModelLoadError, ModelNotFound, OfflineError, StropError
from core.git import toplevel as git_root

# Picked, in this order, when a hub repository holds several GGUFs and --file is not given:
# strop serves small code models, where 8-bit costs little and keeps quality.
PREFERRED_QUANTS = ("q8_0", "q4_k_m", "q5_k_m", "q6_k", "f16")
_SHARD_RE = re.compile(r"-\d{5}-of-\d{5}\.gguf$")
_REGISTRY_FILLED = ("version", "created_at", "sha256", "size_bytes")
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models",
        help="list, promote, roll back, import and pull models",
        description="Manage the models strop serves: each repository has versions, one of them promoted.",
    )
    sub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)

    def repo_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--repo", type=Path, metavar="DIR",
                       help="the repository (default: the git root of the current directory)")

    p = sub.add_parser("list", help="versions of the repository's model, and imported models")
    repo_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("promote", help="serve VERSION (after checking that llama.cpp loads it)")
    p.add_argument("version", metavar="VERSION")
    repo_option(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", help="serve again the version promoted before the current one")
    repo_option(p)
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("import", help="add a local GGUF file (works without a network)")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--name", help="name in the model store (default: the file name without .gguf)")
    repo_option(p)
    p.add_argument("--promote", action="store_true", help="also register it for the repository and serve it")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("publish", help="copy a version into the team's shared registry and promote it there")
    p.add_argument("version", nargs="?", metavar="VERSION", help="default: the locally promoted version")
    p.add_argument("--to", metavar="URL", help="shared directory (file:///path or a path; default: [registry] url)")
    p.add_argument("--no-promote", action="store_true", help="publish without promoting it for the team")
    repo_option(p)
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("pull", help="download a GGUF from the Hugging Face hub")
    p.add_argument("name", metavar="NAME", help="hub repository id, e.g. Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF")
    p.add_argument("--file", metavar="GGUF_NAME",
                   help="which .gguf of that repository (default: picked by quantisation)")
    p.add_argument("--revision", metavar="R", help="branch, tag or commit (default: main)")
    p.add_argument("--name", dest="store_name", metavar="STORE_NAME",
                   help="name in the model store (default: the file name without .gguf)")
    repo_option(p)
    p.add_argument("--promote", action="store_true", help="also register it for the repository and serve it")
    p.set_defaults(func=cmd_pull)


# --- commands ------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    root = _repo_root(args.repo, required=False)
    registry, store = Registry(), ModelStore()
    repo = None
    if root is not None:
        key = repo_key(root)
        promoted = registry.promoted_version(key)
        repo = {
            "path": str(root),
            "key": key,
            "promoted": promoted,
            "versions": [_entry_json(e, promoted=e.version == promoted) for e in registry.versions(key)],
        }
    imported = [_entry_json(e) for e in store.list()]
    if args.json:
        print(json.dumps({"repo": repo, "imported": imported}, indent=2))
        return 0
    if repo is not None:
        _print_repo(repo)
    else:
        print("not inside a git repository (pass --repo DIR to see a repository's versions)")
    print()
    _print_imported(imported, store.root)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    root, key = _repo(args.repo)
    registry = Registry()
    before = registry.promoted_version(key)
    entry = registry.promote(key, args.version)
    was = f" (was {before})" if before and before != entry.version else ""
    print(f"promoted {entry.version} for {root}{was}; a running `strop serve` switches to it within seconds")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    root, key = _repo(args.repo)
    registry = Registry()
    before = registry.promoted_version(key)
    entry = registry.rollback(key)
    print(f"rolled back {root} from {before} to {entry.version}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from core.team_registry import RegistrySettings, TeamRegistry

    root, key = _repo(args.repo)
    registry = Registry()
    url = args.to or RegistrySettings.configured().url
    if not url:
        raise StropError("nowhere to publish: pass --to DIR (the shared registry directory) or set [registry] url "
                         "in config.toml (or STROP_REGISTRY_URL).")
    version = args.version or registry.promoted_version(key)
    if version is None:
        raise StropError(f"no version given and none promoted for {root}; `strop models list` shows the versions.")
    final = TeamRegistry(url, key, registry).publish(registry.get(key, version), promote=not args.no_promote)
    what = "published" if args.no_promote else "published and promoted"
    print(f"{what} {version} for {root} in {final}; servers following {url} fetch it at their next poll")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    src = args.file.expanduser()
    if not src.is_file():
        raise ModelNotFound(f"{src}: no such file; pass the path of a .gguf file.")
    print(f"checking that llama.cpp loads {src} ...", file=sys.stderr)
    validate_gguf(src)
    name = args.name or src.name.removesuffix(".gguf")
    manifest = {"source": "import", "name": name, "base": name, "original_path": str(src.resolve())}
    with _progress_bar(src.stat().st_size, "copying") as progress:
        entry = ModelStore().add(name, src, manifest, progress=progress)
    print(f"imported {src} as {entry.version}")
    print(f"  sha256 {entry.sha256}")
    print(f"  stored {entry.gguf} ({_size(entry.size_bytes)})")
    _register_for_repo(entry, args)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("huggingface_hub") is None:
        raise StropError(
            "`strop models pull` needs huggingface_hub, which is not installed: pip install 'strop[distill]'. "
            "On a machine without internet, copy the .gguf file over and run `strop models import FILE`."
        )
    filename = args.file or _pick_gguf(args.name, args.revision)
    path = _download(args.name, filename, args.revision)
    print(f"checking that llama.cpp loads {filename} ...", file=sys.stderr)
    validate_gguf(path)
    name = args.store_name or Path(filename).name.removesuffix(".gguf")
    manifest = {
        "source": "pull",
        "name": name,
        "base": args.name,
        "hub": {"repo_id": args.name, "filename": filename, "revision": args.revision or "main"},
    }
    with _progress_bar(path.stat().st_size, "storing") as progress:
        entry = ModelStore().add(name, path, manifest, hardlink=True, progress=progress)
    print(f"pulled {args.name}/{filename} as {entry.version}")
    print(f"  sha256 {entry.sha256}")
    print(f"  stored {entry.gguf} ({_size(entry.size_bytes)})")
    _register_for_repo(entry, args)
    return 0


# --- helpers -------------------------------------------------------------------------------------


def _repo_root(explicit: Path | None, *, required: bool) -> Path | None:
    if explicit is not None:
        root = explicit.expanduser().resolve()
        if not root.is_dir():
            raise StropError(f"--repo {explicit}: not a directory; pass the repository's directory.")
        return root
    root = git_root(Path.cwd())
    if root is None and required:
        raise StropError(
            f"{Path.cwd()} is not inside a git repository, so strop cannot tell which repository you mean; "
            "run the command inside the repository or pass --repo DIR."
        )
    return root


def _repo(explicit: Path | None) -> tuple[Path, str]:
    root = _repo_root(explicit, required=True)
    return root, repo_key(root)


def _register_for_repo(stored: Entry, args: argparse.Namespace) -> None:
    """With --repo or --promote: add the stored model as the repository's next version (and serve it)."""
    if args.repo is None and not args.promote:
        return
    root, key = _repo(args.repo)
    registry = Registry()
    manifest = {k: v for k, v in stored.manifest.items() if k not in _REGISTRY_FILLED and k != "parent"}
    manifest["store_name"] = stored.version
    entry = registry.add_version(key, stored.gguf, manifest, hardlink=True)
    if entry.sha256 != stored.sha256:
        raise ModelLoadError(
            f"{stored.gguf} changed while it was registered (sha256 {entry.sha256}, expected {stored.sha256}); "
            "import it again."
        )
    print(f"registered as {entry.version} for {root}")
    if args.promote:
        # Same bytes as the file validate_gguf just loaded (equal sha256): no second load test.
        registry.promote(key, entry.version, validate=False)
        print(f"promoted {entry.version}; a running `strop serve` switches to it within seconds")


def _entry_json(entry: Entry, *, promoted: bool = False) -> dict:
    return {
        "version": entry.version,
        "promoted": promoted,
        "created_at": entry.created_at,
        "source": entry.source,
        "base": entry.base,
        "parent": entry.parent,
        "size_bytes": entry.size_bytes,
        "sha256": entry.sha256,
        "metrics": entry.metrics,
        "decoding": entry.decoding,
        "gguf": str(entry.gguf),
    }


def _print_repo(repo: dict) -> None:
    versions = repo["versions"]
    promoted = repo["promoted"] or "none"
    if repo["promoted"] and not any(v["promoted"] for v in versions):
        promoted += " (its directory is missing: promote another version)"
    print(f"{repo['path']} (registry key {repo['key']}): {len(versions)} version(s), promoted: {promoted}")
    if not versions:
        print("  no versions yet: `strop models import FILE --promote` adds one; a distillation cycle trains one")
        return
    rows = [("", "VERSION", "CREATED (UTC)", "SOURCE", "SIZE", "METRICS")]
    for v in reversed(versions):
        rows.append(("*" if v["promoted"] else "", v["version"], _when(v["created_at"]), v["source"],
                     _size(v["size_bytes"]), _metrics_summary(v["metrics"])))
    _print_table(rows)


def _print_imported(imported: list[dict], store_root: Path) -> None:
    if not imported:
        print(f"no imported models in {store_root}")
        return
    print(f"imported models in {store_root}:")
    rows = [("", "NAME", "CREATED (UTC)", "SOURCE", "SIZE", "SHA256")]
    rows += [("", e["version"], _when(e["created_at"]), e["source"], _size(e["size_bytes"]), e["sha256"][:16])
             for e in imported]
    _print_table(rows)


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _when(iso: str) -> str:
    return iso.replace("T", " ")[:16]


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def _metrics_summary(metrics: dict, limit: int = 4) -> str:
    parts = []
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        parts.append(f"{name}={value:.3g}")
        if len(parts) == limit:
            break
    return " ".join(parts) or "-"


@contextmanager
def _progress_bar(total_bytes: int, what: str) -> Iterator[Progress | None]:
    """A tqdm bar on stderr when tqdm is installed and stderr is a terminal; otherwise no progress."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield None
        return
    if not sys.stderr.isatty():
        yield None
        return
    with tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=what) as bar:
        def update(done: int, _total: int) -> None:
            bar.update(done - bar.n)
        yield update


# --- Hugging Face hub ----------------------------------------------------------------------------


def _offline(why: object) -> OfflineError:
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    return OfflineError(
        f"the Hugging Face hub ({endpoint}) is unreachable ({str(why).strip().rstrip('.')}). Check the network "
        "(or HF_HUB_OFFLINE, HF_ENDPOINT, HTTPS_PROXY); on an air-gapped machine, copy the .gguf file over "
        "and run `strop models import FILE --promote`."
    )


def _is_network_error(err: BaseException) -> bool:
    # huggingface_hub has moved between HTTP libraries (requests, httpx, httpx2); their transport
    # errors share these class names, so match on the names rather than import each library.
    names = {cls.__name__ for cls in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError, socket.gaierror)) or bool(
        names & {"TransportError", "ConnectError", "ConnectionError", "Timeout", "TimeoutException", "NetworkError"}
    )


def _hub_call(fn: Callable, *args, **kwargs):
    """Run a hub function, turning its failures into strop errors that say what to do."""
    from huggingface_hub import errors
    try:
        return fn(*args, **kwargs)
    except (errors.OfflineModeIsEnabled, errors.LocalEntryNotFoundError) as err:
        raise _offline(err) from err
    except errors.GatedRepoError as err:
        raise StropError(
            f"{args[0]} is gated on the hub: accept its terms on the model page and log in "
            f"(`hf auth login`), then pull again. ({err})"
        ) from err
    except errors.RepositoryNotFoundError as err:
        raise ModelNotFound(f"no repository {args[0]!r} on the Hugging Face hub; check the name (owner/name).") from err
    except errors.RevisionNotFoundError as err:
        raise ModelNotFound(f"{args[0]} has no revision {kwargs.get('revision')!r}; check --revision.") from err
    except errors.EntryNotFoundError as err:
        raise ModelNotFound(
            f"{args[0]} has no file {kwargs.get('filename') or args[1]!r}; leave out --file to see its GGUF files."
        ) from err
    except Exception as err:
        if _is_network_error(err):
            raise _offline(err) from err
        raise


def _unreachable() -> OSError | None:
    """A quick TCP connect to the hub, so that an offline machine fails in seconds rather than after
    huggingface_hub's ~25 s of retries. Skipped behind a proxy (the direct route is not the real one)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=float(constants.HF_HUB_ETAG_TIMEOUT)).close()
    except OSError as err:
        return err
    return None


def _pick_gguf(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import list_repo_files

    down = _unreachable()
    if down is not None:
        raise _offline(down)
    files = _hub_call(list_repo_files, repo_id, revision=revision)
    ggufs = [f for f in files if f.endswith(".gguf") and not _SHARD_RE.search(f)]
    if not ggufs:
        raise ModelNotFound(
            f"{repo_id} holds no single-file .gguf model; strop serves GGUF files. Pick a repository that "
            "has them (their names often end in -GGUF)."
        )
    if len(ggufs) == 1:
        return ggufs[0]
    for quant in PREFERRED_QUANTS:
        matches = [f for f in ggufs if quant in f.lower()]
        if len(matches) == 1:
            print(f"{repo_id} has {len(ggufs)} GGUF files; taking {matches[0]} (choose another with --file: "
                  f"{', '.join(sorted(ggufs))})", file=sys.stderr)
            return matches[0]
    raise StropError(f"{repo_id} has {len(ggufs)} GGUF files; choose one with --file: {', '.join(sorted(ggufs))}")


def _download(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    down = _unreachable()
    if down is not None:
        # Offline, a copy in the local hub cache still serves.
        try:
            path = hf_hub_download(repo_id, filename, revision=revision, local_files_only=True)
        except LocalEntryNotFoundError as err:
            raise _offline(down) from err
        print(f"the hub is unreachable ({down}); using the copy in the local cache", file=sys.stderr)
        return Path(path).resolve()
    path = _hub_call(hf_hub_download, repo_id, filename, revision=revision)
    return Path(path).resolve()  # the cache's snapshot entry is a symlink to the blob
