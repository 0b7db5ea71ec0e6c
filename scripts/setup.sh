#!/usr/bin/env bash
# Installs everything the agent, the fleet and the test suite need on a fresh Debian machine:
# database and Redis servers (apt), a virtual environment .venv with the package, every optional
# driver the tests import and the dev tools (pip), CryptoJS for the known-answer tests (npm).
# Idempotent: what is already there is not installed again.
#
#   bash scripts/setup.sh          everything (what `.venv/bin/python -m pytest` needs)
#   bash scripts/setup.sh --app    only .venv with the package (what the demo needs)
#
# The package goes into .venv, never into the system Python: Debian's python3 refuses
# `pip install` outside a virtual environment (PEP 668), and a venv works the same everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

app_only=false
[ "${1:-}" = "--app" ] && app_only=true

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=false
apt_install() {
  echo "setup: installing $* (apt)"
  if ! $apt_updated; then $SUDO apt-get update -qq; apt_updated=true; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# A virtual environment from whatever python3 comes first on PATH (3.11 or newer).
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv >/dev/null 2>&1; then
    rm -rf .venv
    # Debian ships venv/ensurepip in a separate package.
    py_minor=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${py_minor}-venv" || apt_install python3-venv
    python3 -m venv .venv
  fi
fi

extras="mssql"
$app_only || extras="mssql,dev"
# (the filter drops this machine's notes about local package mirrors; pip's own status still counts)
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]" 2>&1 \
  | { grep -v -e "is ignored: it is neither a file nor a directory" || true; }

if ! $app_only; then
  need_apt=()
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  { command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } \
    || need_apt+=(mariadb-server)
  command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
  command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # checks the units `install` writes
  # headless Chromium and its driver: the sandbox console's browser test
  { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || need_apt+=(chromium chromium-driver)
  if [ ${#need_apt[@]} -gt 0 ]; then
    apt_install "${need_apt[@]}"
    # The packages start their services; the tests start their own servers on free ports.
    $SUDO service redis-server stop >/dev/null 2>&1 || true
    $SUDO service mariadb stop >/dev/null 2>&1 || true
    $SUDO service postgresql stop >/dev/null 2>&1 || true
  fi
  if [ ! -d .ci/node/node_modules/crypto-js ]; then
    echo "setup: installing crypto-js (npm) for the encryption known-answer tests"
    npm install --silent --no-audit --no-fund --prefix .ci/node crypto-js@4 >/dev/null
  fi
fi
echo "setup: done (.venv/bin/python has the package)"
