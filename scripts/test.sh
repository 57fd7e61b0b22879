#!/usr/bin/env bash
# Sets up, lints, and runs the tests: unit tests and integration tests against a real tritonserver.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
"$root/.venv/bin/ruff" check .
"$root/.venv/bin/ruff" format --check .
exec "$root/.venv/bin/python" -m pytest -p no:cacheprovider "$@"
