"""strop's VS Code extension, end to end: the .vsix built from editors/vscode, installed into a real
headless VS Code (code-server 4.100.3 driven by Chromium through playwright-core), talking to the
real `strop serve` with SmolLM2-135M; `strop log --json` is the witness.

The driver is editors/vscode/e2e/drive.mjs (its header lists the steps); editors/vscode/e2e/setup.sh
installs what it needs, idempotently, under ${STROP_E2E_CACHE:-~/.cache/strop-e2e}.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server import protocol

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "editors" / "vscode"
SETUP = EXTENSION / "e2e" / "setup.sh"
DRIVE = EXTENSION / "e2e" / "drive.mjs"
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"

SETUP_TIMEOUT_S = 1800  # cold: apt chromium + code-server's native builds, about 5 minutes
DRIVE_TIMEOUT_S = 600  # the driver bounds each of its own waits; this is a safety net


def ts_constants(path: Path) -> dict[str, str]:
    """`export const NAME = 'value';` lines of a TypeScript file."""
    pattern = re.compile(r"^export const (\w+) = '([^']*)';$", re.MULTILINE)
    return dict(pattern.findall(path.read_text(encoding="utf-8")))


def test_extension_protocol_matches_server():
    """The method and command names in editors/vscode/src/protocol.ts are the server's."""
    client = ts_constants(EXTENSION / "src" / "protocol.ts")
    server = {name: value for name, value in vars(protocol).items() if name.isupper() and isinstance(value, str)}
    assert set(server) <= set(client), f"protocol.ts lacks {sorted(set(server) - set(client))}"
    assert {name: client[name] for name in server} == server


def test_extension_commands_are_contributed():
    """Every server command a user can run from the palette is declared in package.json."""
    manifest = json.loads((EXTENSION / "package.json").read_text(encoding="utf-8"))
    contributed = {c["command"] for c in manifest["contributes"]["commands"]}
    assert protocol.CMD_TOGGLE in contributed
    assert protocol.CMD_ACCEPT not in contributed  # run by VS Code on accept, never by hand
    assert {"strop.showStats", "strop.distillNow", "strop.openLog"} <= contributed


@pytest.fixture(scope="module")
def vsix() -> Path:
    """e2e/setup.sh (idempotent; seconds once cached), then the .vsix, built once for all scenarios."""
    setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=SETUP_TIMEOUT_S)
    print(setup.stdout)
    assert setup.returncode == 0, f"e2e/setup.sh failed:\n{setup.stdout}\n{setup.stderr}"
    build = subprocess.run(["npm", "run", "package"], cwd=EXTENSION, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"npm run package failed:\n{build.stdout}\n{build.stderr}"
    return EXTENSION / "strop.vsix"


def run_driver(scenario: str, vsix: Path, **extra_env: str) -> str:
    """Runs one drive.mjs scenario and returns its output; fails the test when it fails.

    On timeout the driver gets SIGTERM, on which it kills code-server's process group itself.
    """
    env = {**os.environ, "STROP_E2E_PYTHON": sys.executable, "STROP_E2E_VSIX": str(vsix),
           "STROP_E2E_ARTIFACTS": str(ARTIFACTS), **extra_env}
    proc = subprocess.Popen(["node", str(DRIVE), scenario], cwd=EXTENSION, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=DRIVE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"drive.mjs {scenario} did not finish in {DRIVE_TIMEOUT_S} s:\n{out}")
    print(out)
    assert proc.returncode == 0, f"drive.mjs {scenario} failed:\n{out}"
    assert out.rstrip().endswith("PASS")
    return out


@pytest.mark.e2e
@pytest.mark.slow
def test_ghost_text_is_shown_accepted_saved_and_logged(vsix, smollm_gguf):
    run_driver("ghost", vsix, STROP_E2E_MODEL=str(smollm_gguf))
    assert (ARTIFACTS / "vscode-ghost.png").stat().st_size > 10_000


@pytest.mark.e2e
@pytest.mark.slow
def test_missing_server_explains_and_opens_the_setting(vsix):
    run_driver("missing-server", vsix)


@pytest.mark.e2e
@pytest.mark.slow
def test_server_exiting_at_start_is_explained(vsix):
    run_driver("server-exits", vsix)
