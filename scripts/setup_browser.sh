#!/usr/bin/env bash
# Installs chromium for the playground's browser test (tests/integration/test_playground.py drives it with Playwright
# through executable_path; Playwright's own browser downloads are not used): Debian's `chromium` package. Skipped
# when chromium is already on PATH; safe to run again.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" chromium chromium
