#!/usr/bin/env bash
# Sets up everything sdtriton needs from nothing: a virtualenv in .venv with pinned packages and the
# tritonserver of the nvidia-pytriton wheel, then perf_analyzer (scripts/setup_perf.sh). Safe to run
# again: it does nothing when nothing changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
"$root/scripts/setup_monitoring.sh"  # promtool for the Prometheus rule tests (skipped when already on PATH)
"$root/scripts/setup_redis.sh"  # redis-server for the job store tests (skipped when already on PATH)
"$root/scripts/setup_browser.sh"  # chromium for the playground's browser test (skipped when already on PATH)
python="${PYTHON:-python3}"
venv="$root/.venv"
stamp="$venv/.sdtriton-setup"
wanted="$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
  exec "$root/scripts/setup_perf.sh"
fi
echo "setting up $venv ..." >&2
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q)
# torch first and alone: the pinned version is a CPU build on this machine's disk; an unpinned one
# would pull gigabytes of CUDA.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -r requirements.txt
# Only the server binary and the CLIP BPE vocabulary file are wanted from these two (their own
# dependencies would drag in torchvision and a second tritonclient); `pip check` will name them.
"${pip[@]}" --no-deps nvidia-pytriton==0.7.0 open_clip_torch==3.3.0
"${pip[@]}" --no-deps -e .
echo "$wanted" > "$stamp"
echo "set up $venv" >&2
# perf_analyzer for `sdtriton perf` and the perf smoke test (stamped on its own).
exec "$root/scripts/setup_perf.sh"
