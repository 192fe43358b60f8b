#!/usr/bin/env bash
# One-time, idempotent setup for the VS Code end-to-end test (see /work/shared/vscode-e2e.md).
# Installs, only when missing:
#   - apt: chromium (driven by playwright-core), libkrb5-dev (code-server's kerberos build), ripgrep
#   - code-server 4.100.3 (real VS Code 1.100.3; the newest that runs on Node 20) under $CACHE
#   - the extension's npm dev dependencies (tsc, @vscode/vsce 3.9.2, playwright-core) via `npm ci`
# Everything downloaded comes from Debian or npm; native modules build from local headers.
# Prints how long each step took. Re-running it is cheap (a few stamp checks).
set -euo pipefail

CS_VERSION=4.100.3
CACHE="${STROP_E2E_CACHE:-$HOME/.cache/strop-e2e}"
EXT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CS_DIR="$CACHE/code-server-$CS_VERSION"

step_start() { STEP_T0=$(date +%s.%N); echo "setup: $1 ..."; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step_end() { echo "setup: $1 done in $(elapsed "$STEP_T0") s"; }
TOTAL_T0=$(date +%s.%N)

# --- apt -------------------------------------------------------------------------------------
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v rg >/dev/null || missing+=(ripgrep)
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
if ((${#missing[@]})); then
  step_start "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  step_end "apt"
else
  echo "setup: apt packages present"
fi

# --- code-server -----------------------------------------------------------------------------
# Stamp written last, so an interrupted install is redone from scratch.
if [ ! -f "$CS_DIR/.complete" ]; then
  step_start "code-server $CS_VERSION"
  rm -rf "$CS_DIR"
  mkdir -p "$CS_DIR"
  (
    cd "$CS_DIR"
    npm init -y >/dev/null
    # --ignore-scripts: the postinstall would fetch ripgrep from GitHub; we build the rest by hand.
    npm install --no-audit --no-fund --ignore-scripts "code-server@$CS_VERSION" >/dev/null
    # argon2's prebuilt download fails offline; node-gyp builds it from source.
    npm rebuild argon2 >/dev/null
    cd node_modules/code-server/lib/vscode
    npm install --no-audit --no-fund --omit=dev --ignore-scripts >/dev/null
    # @vscode/ripgrep's postinstall skips its GitHub download when bin/ already exists.
    mkdir -p node_modules/@vscode/ripgrep/bin
    ln -sf "$(command -v rg)" node_modules/@vscode/ripgrep/bin/rg
    # node-pty runs `npx node-gyp`; the user npm config says yes=false, which cancels it.
    npm_config_yes=true npm rebuild >/dev/null
    ln -sfn node_modules node_modules.asar
    (cd bin/remote-cli && ln -sf code-linux.sh code-server)
    (cd bin/helpers && ln -sf browser-linux.sh browser.sh)
    (cd extensions && npm install --no-audit --no-fund --omit=dev >/dev/null)
  )
  touch "$CS_DIR/.complete"
  step_end "code-server"
else
  echo "setup: code-server $CS_VERSION present at $CS_DIR"
fi

# --- extension dev dependencies (typescript, vsce, playwright-core) ----------------------------
lock_sum="$(sha256sum "$EXT_DIR/package-lock.json" | cut -d' ' -f1)"
if [ "$(cat "$EXT_DIR/node_modules/.strop-lock-sha256" 2>/dev/null)" != "$lock_sum" ]; then
  step_start "npm ci in $EXT_DIR"
  (cd "$EXT_DIR" && npm ci --no-audit --no-fund >/dev/null)
  echo "$lock_sum" >"$EXT_DIR/node_modules/.strop-lock-sha256"
  step_end "npm ci"
else
  echo "setup: extension node_modules up to date"
fi

echo "setup: total $(elapsed "$TOTAL_T0") s (cache: $CACHE)"
