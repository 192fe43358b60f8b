"""STROP_HOME and everything under it is owner-only: what strop creates (real CLI processes) and
what was there before, with the wide modes of an older strop or of a home made by hand."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def strop(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, STROP_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "strop", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def wide_entries(home: Path) -> list[str]:
    """Entries readable, writable or listable by group or others."""
    out = []
    for path in [home, *home.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077 or (path.is_dir() and mode != 0o700):
            out.append(f"{path.relative_to(home)}: {oct(mode)}")
    return out


def test_an_existing_world_readable_home_is_made_owner_only(tmp_path):
    home = tmp_path / "home"
    manifest = home / "registry" / "repo-1234" / "versions" / "v0001" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    model = manifest.parent / "model.gguf"
    model.write_bytes(b"GGUF")
    (home / "models" / "m").mkdir(parents=True)
    (home / "completions.sqlite3").write_bytes(b"")
    for path in [home, *home.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(model, 0o444)
    assert wide_entries(home)

    out = strop(home, "log", "--json")
    assert out.returncode == 0, out.stderr
    assert wide_entries(home) == []
    assert stat.S_IMODE(model.stat().st_mode) == 0o400, "a read-only model stays read-only"


@pytest.mark.slow
def test_what_strop_writes_under_its_home_is_owner_only(tmp_path, smollm_gguf):
    home = tmp_path / "home"
    out = strop(home, "models", "import", str(smollm_gguf), "--name", "smol")
    assert out.returncode == 0, out.stderr
    src = tmp_path / "a.py"
    src.write_text("def add(a, b):\n    return\n")
    out = strop(home, "complete", str(src), "--line", "2", "--col", "11", "--model", str(smollm_gguf))
    assert out.returncode == 0, out.stderr
    assert (home / "models").is_dir() and (home / "completions.sqlite3").is_file()
    assert wide_entries(home) == []
