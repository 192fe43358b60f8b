"""Does this llama.cpp build work on this CPU with this model? Found out once, remembered.

Some llama.cpp CPU kernels crash on some machines (seen: the AMX matrix kernel, reached through
"extra buffer types" / weight repacking, segfaults on the first decode on recent Xeons). The worker
runs a short canary decode at load; when it dies, the engine retries with the next settings in
CANDIDATES and records which worked under a key of the llama.cpp build, the CPU and the model, so
the next start goes straight to settings that work. `strop doctor` shows the verdicts.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from core.paths import strop_home

# Tried in order: llama.cpp's defaults, then without extra buffer types (no repacked/AMX kernels).
CANDIDATES: tuple[dict, ...] = ({"use_extra_bufts": True}, {"use_extra_bufts": False})


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_info() -> dict:
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__,
            "system_info": llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()}


def verdict_key(model_path: Path, n_gpu_layers: int) -> str:
    st = Path(model_path).stat()
    parts = [build_info(), cpu_flags(), str(Path(model_path).resolve()), st.st_size, st.st_mtime_ns, n_gpu_layers]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def verdicts_path() -> Path:
    return strop_home() / "canary.json"


def load_verdicts() -> dict:
    try:
        data = json.loads(verdicts_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record(key: str, model_path: Path, settings: dict, failures: list[str], speeds: dict) -> None:
    """Remember the settings that worked (and what crashed before them). Written atomically
    (temp file + rename; a few lines, so serving needs no helper from the distillation side)."""
    data = load_verdicts()
    data[key] = {"model": str(model_path), "settings": settings, "failed": failures, "speeds": speeds,
                 "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **build_info()}
    path = verdicts_path()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-canary-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def candidates_for(key: str) -> list[dict]:
    """The settings to try, the remembered working ones first."""
    known = load_verdicts().get(key)
    first = [known["settings"]] if known and isinstance(known.get("settings"), dict) else []
    return first + [c for c in CANDIDATES if c not in first]
