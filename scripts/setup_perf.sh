#!/usr/bin/env bash
# Installs perf_analyzer under tools/perf_analyzer/ for `sdtriton perf` and the perf smoke test:
#   - the binary from the tritonclient==2.51.0 wheel (tritonclient-2.51.0.data/data/bin/perf_analyzer), unpacked
#     alone: that client version pins protobuf<5, which cannot share .venv with onnx;
#   - libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel (perf_analyzer links it even without a GPU);
#   - Debian's libb64-0d (apt-get, non-interactive; skipped when already installed).
# tools/perf_analyzer/perf_analyzer is a wrapper that puts lib/ on LD_LIBRARY_PATH. Safe to run again: it does
# nothing when nothing changed. On a GPU host, the NGC SDK container's perf_analyzer is the one to use instead
# (see perf/README.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tritonclient_version="2.51.0"
cudart_version="12.9.79"
target="$root/tools/perf_analyzer"
stamp="$target/.sdtriton-setup"
wanted="$(sha256sum scripts/setup_perf.sh | cut -d' ' -f1)"
python="$root/.venv/bin/python"

have_libb64() {
  # ldconfig knows the library once the package is installed (or it came from elsewhere).
  dpkg -s libb64-0d >/dev/null 2>&1 || /sbin/ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'
}

if ! have_libb64; then
  echo "installing libb64-0d (apt-get) ..." >&2
  sudo_cmd=()
  if [[ "$(id -u)" != 0 ]]; then
    sudo_cmd=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
  # An update only when the package is unknown to the local lists (fresh images have none).
  if ! apt-cache show libb64-0d >/dev/null 2>&1; then
    "${sudo_cmd[@]}" apt-get update -q >&2
  fi
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends libb64-0d >&2
fi

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" && -x "$target/bin/perf_analyzer" ]]; then
  exit 0
fi
echo "installing perf_analyzer into $target ..." >&2
download="$(mktemp -d)"
trap 'rm -rf "$download"' EXIT
"$python" -m pip download --disable-pip-version-check --progress-bar off -q --no-deps -d "$download" \
  "tritonclient==$tritonclient_version" "nvidia-cuda-runtime-cu12==$cudart_version" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
rm -rf "$target"
mkdir -p "$target/bin" "$target/lib"
"$python" - "$download" "$target" "$tritonclient_version" <<'EOF'
import shutil
import sys
import zipfile
from pathlib import Path

download, target, version = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
members = {
    f"tritonclient-{version}.data/data/bin/perf_analyzer": target / "bin" / "perf_analyzer",
    "nvidia/cuda_runtime/lib/libcudart.so.12": target / "lib" / "libcudart.so.12",
}
for wheel in download.glob("*.whl"):
    with zipfile.ZipFile(wheel) as archive:
        for name in set(archive.namelist()) & set(members):
            with archive.open(name) as source, members[name].open("wb") as destination:
                shutil.copyfileobj(source, destination)
missing = [name for name, path in members.items() if not path.is_file()]
if missing:
    sys.exit(f"not found in the downloaded wheels: {missing}")
(target / "bin" / "perf_analyzer").chmod(0o755)
EOF
cat > "$target/perf_analyzer" <<'EOF'
#!/usr/bin/env bash
# perf_analyzer of the tritonclient 2.51.0 wheel with the libraries it needs; written by scripts/setup_perf.sh.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/bin/perf_analyzer" "$@"
EOF
chmod 755 "$target/perf_analyzer"
"$target/perf_analyzer" --version >/dev/null 2>&1 || {
  echo "perf_analyzer does not run; ldd says:" >&2
  LD_LIBRARY_PATH="$target/lib" ldd "$target/bin/perf_analyzer" | grep "not found" >&2 || true
  exit 1
}
echo "$wanted" > "$stamp"
echo "installed $target/perf_analyzer" >&2
