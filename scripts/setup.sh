#!/usr/bin/env bash
# Installs everything the agent, the fleet and the test suite need on a fresh Debian machine:
# database and Redis servers (apt), the package with its dev tools (pip), CryptoJS for the
# known-answer tests (npm). Idempotent: what is already there is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
{ command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; } || need_apt+=(mariadb-server)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (apt)"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # The packages start their services; the tests start their own servers on free ports.
  $SUDO service redis-server stop >/dev/null 2>&1 || true
fi

python3 -m pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v -e "^WARNING: Running pip as" -e "is ignored: it is neither" || true

if [ ! -d .ci/node/node_modules/crypto-js ]; then
  echo "setup: installing crypto-js (npm) for the encryption known-answer tests"
  npm install --silent --no-audit --no-fund --prefix .ci/node crypto-js@4 >/dev/null
fi
echo "setup: done"
