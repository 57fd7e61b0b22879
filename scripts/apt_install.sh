#!/usr/bin/env bash
# Usage: scripts/apt_install.sh COMMAND PACKAGE
# Installs Debian's PACKAGE unless COMMAND is already on PATH (apt-get, non-interactive; sudo -n when not root), then
# prints COMMAND's version. The setup_*.sh scripts call it for the tools the tests run; safe to run again.
set -euo pipefail
command_name="$1"
package="$2"

if command -v "$command_name" >/dev/null 2>&1; then
  exit 0
fi
echo "installing $command_name (apt-get install $package) ..." >&2
sudo_cmd=()
if [[ "$(id -u)" != 0 ]]; then
  sudo_cmd=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
# An update only when the package is unknown to the local lists (fresh images have none).
if ! apt-cache show "$package" >/dev/null 2>&1; then
  "${sudo_cmd[@]}" apt-get update -q >&2
fi
"${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "$package" >&2
"$command_name" --version >&2
