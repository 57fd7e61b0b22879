#!/usr/bin/env bash
# Installs redis-server for the job store's tests (tests/integration/test_job_store.py and test_jobs.py start a real
# one on a free loopback port, tests/redis_server.py): Debian's `redis-server` package. Skipped when redis-server is
# already on PATH; safe to run again. The package's own service is not needed: the tests start their own server.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" redis-server redis-server
