#!/usr/bin/env bash
# Installs promtool for the Prometheus rule tests (tests/unit/test_monitoring_rules.py runs
# `promtool test rules monitoring/prometheus_rules_test.yaml`): Debian's `prometheus` package ships it.
# Skipped when promtool is already on PATH; safe to run again.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" promtool prometheus
