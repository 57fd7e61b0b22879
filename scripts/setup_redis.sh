#!/usr/bin/env bash
# Installs redis-server for the job store's tests (tests/integration/test_job_store.py and test_jobs.py start a real
# one on a free loopback port, tests/redis_server.py): Debian's `redis-server` package (apt-get, non-interactive;
# sudo -n when not root). Skipped when redis-server is already on PATH; safe to run again. The package's own
# service is not needed: the tests start their own server.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "installing redis-server (apt-get install redis-server) ..." >&2
sudo_cmd=()
if [[ "$(id -u)" != 0 ]]; then
  sudo_cmd=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
# An update only when the package is unknown to the local lists (fresh images have none).
if ! apt-cache show redis-server >/dev/null 2>&1; then
  "${sudo_cmd[@]}" apt-get update -q >&2
fi
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends redis-server >&2
redis-server --version >&2
