#!/usr/bin/env bash
# The main job: set up, make the default model, export it, start Triton, generate a picture, print its path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
cd "$root"
exec "$root/.venv/bin/sdtriton" demo "$@"
