#!/usr/bin/env bash
# The whole v4post test suite on a fresh Debian/Ubuntu machine (also what .ci/run calls).
# Installs and starts what the tests need when it is missing:
#   - a Redis server on 127.0.0.1:6379 (apt-get install redis-server),
#   - python3 with pyarrow and tensorboard (independent readers used as cross-checks),
#   - Debian's chromium (the dashboard's real-browser tests),
# then runs `cargo test --workspace` (dev profile, dependencies at opt-level 3).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# --- Redis ---------------------------------------------------------------------------------
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-tools
  echo "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir /tmp >/dev/null
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null
# the distributed test starts (and restarts) a private server of its own
command -v redis-server >/dev/null 2>&1 || apt_install redis-server

# --- Python cross-check readers -------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
pip_install() {
  python3 -m pip install -q "$@" 2>/dev/null || python3 -m pip install -q --break-system-packages "$@" \
    || { command -v pip3 >/dev/null 2>&1 || apt_install python3-pip; python3 -m pip install -q --break-system-packages "$@"; }
}
python3 -c "import pyarrow" 2>/dev/null || pip_install pyarrow
python3 -c "import tensorboard" 2>/dev/null || pip_install tensorboard

# --- Chromium for the dashboard browser tests ------------------------------------------------
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  apt_install chromium || true
fi

# --- Rust toolchain ---------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

export RUST_BACKTRACE=1
cargo test --workspace "$@"
