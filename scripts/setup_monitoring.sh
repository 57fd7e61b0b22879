#!/usr/bin/env bash
# Installs promtool for the Prometheus rule tests (tests/unit/test_monitoring_rules.py runs
# `promtool test rules monitoring/prometheus_rules_test.yaml`): Debian's `prometheus` package ships it
# (apt-get, non-interactive; sudo -n when not root). Skipped when promtool is already on PATH; safe to run again.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi
echo "installing promtool (apt-get install prometheus) ..." >&2
sudo_cmd=()
if [[ "$(id -u)" != 0 ]]; then
  sudo_cmd=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
# An update only when the package is unknown to the local lists (fresh images have none).
if ! apt-cache show prometheus >/dev/null 2>&1; then
  "${sudo_cmd[@]}" apt-get update -q >&2
fi
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends prometheus >&2
promtool --version >&2
