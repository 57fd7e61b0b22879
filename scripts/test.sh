#!/usr/bin/env bash
# Sets up, lints, and runs the tests: unit tests and integration tests against a real tritonserver.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
# Two pytest-xdist workers by default (SDTRITON_TEST_WORKERS=0: one process); tests/worker_groups.py decides what runs
# where. With workers each server's stubs run one OpenMP thread, so that two workers' torch threads do not spin
# against each other on a machine of two cores.
workers="${SDTRITON_TEST_WORKERS:-2}"
if [[ "$workers" != 0 ]]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
exec "$root/.venv/bin/python" -m pytest -p no:cacheprovider -n "$workers" "$@"
