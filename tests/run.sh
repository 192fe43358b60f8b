#!/usr/bin/env bash
# Sets up everything strop's tests need on a fresh machine, then runs the whole suite.
# Idempotent: pip caches the compiled llama-cpp-python wheel; editor tooling is cached under
# ${STROP_E2E_CACHE:-~/.cache/strop-e2e}. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
start=$(date +%s)
echo "== installing strop with the distill, default-model and test extras"
python3 -m pip install -q -e '.[distill,default-model,test]'
if [ -x editors/vscode/e2e/setup.sh ]; then
  echo "== setting up the VS Code end-to-end tooling (code-server, chromium, playwright-core)"
  bash editors/vscode/e2e/setup.sh
fi
echo "== setup took $(( $(date +%s) - start ))s; running the tests"
python3 -m pytest -ra "$@"
