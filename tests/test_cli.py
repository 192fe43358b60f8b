"""The `strop` command line through real subprocesses, a real model and a real log."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def strop(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, STROP_HOME=str(home), STROP_TIME_CAP_MS="30000")
    return subprocess.run([sys.executable, "-m", "strop", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_complete_then_log_and_stats(tmp_path, smollm_gguf):
    src = tmp_path / "add.py"
    src.write_text('def add(a, b):\n    """Return the sum of a and b."""\n    return\n')
    out = strop(tmp_path / "home", "complete", str(src), "--line", "3", "--col", "11", "--json",
                "--model", str(smollm_gguf))
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["completion"].strip() and res["latency_ms"] > 0
    log = json.loads(strop(tmp_path / "home", "log", "--json").stdout)
    assert log[0]["id"] == res["id"] and log[0]["completion"] == res["completion"]
    stats = json.loads(strop(tmp_path / "home", "stats", "--json").stdout)
    assert stats["total"]["completions"] == 1 and stats["total"]["latency_ms_p50"] > 0
    assert "p50 ms" in strop(tmp_path / "home", "stats").stdout


def test_clear_errors(tmp_path):
    src = tmp_path / "a.py"
    src.write_text("x = 1\n")
    bad = strop(tmp_path / "home", "complete", str(src), "--line", "9", "--col", "1")
    assert bad.returncode == 1 and "outside" in bad.stderr and "Traceback" not in bad.stderr
    missing = strop(tmp_path / "home", "complete", str(src), "--line", "1", "--col", "1", "--model",
                    str(tmp_path / "nope.gguf"))
    assert missing.returncode == 1 and "no such file" in missing.stderr
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + os.urandom(4096))
    broken = strop(tmp_path / "home", "complete", str(src), "--line", "1", "--col", "1", "--model", str(corrupt))
    assert broken.returncode == 1 and "could not load" in broken.stderr and "Traceback" not in broken.stderr
