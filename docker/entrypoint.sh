#!/usr/bin/env bash
# Starts tritonserver on the deployed repository, after checking that its TensorRT plans were built for the GPU
# and the TensorRT this container has: a plan built elsewhere fails here, loudly, instead of inside Triton.
# Arguments go to `sdtriton serve` (e.g. --ready-timeout-s 900, or tritonserver options after --).
set -euo pipefail

deploy="${SDTRITON_DEPLOY_DIR:-/opt/sdtriton/deploy}"
repository="$deploy/repository"

die() {
  echo "sdtriton: $*" >&2
  exit 1
}

[[ -d "$repository" && -f "$deploy/backend" ]] || die "no model repository in $deploy: build the image with \
BUILD_REPOSITORY=true, or run the builder once (docker compose --profile build run --rm builder) and mount its \
volume (docker/README.md)"
backend="$(< "$deploy/backend")"
if [[ "$backend" == tensorrt ]]; then
  expected="$(< "$deploy/gpu_name")"
  built_with="$(< "$deploy/tensorrt_version")"
  if [[ -n "${SDTRITON_TENSORRT_VERSION:-}" && "$built_with" != "$SDTRITON_TENSORRT_VERSION"* ]]; then
    die "the plans in $repository were built with TensorRT $built_with; this server has $SDTRITON_TENSORRT_VERSION"
  fi
  command -v nvidia-smi > /dev/null || die "no GPU visible (no nvidia-smi): run with --gpus (compose reserves one)"
  visible="$(nvidia-smi --query-gpu=name --format=csv,noheader)" || die "nvidia-smi failed: no usable GPU"
  [[ -n "$visible" ]] || die "nvidia-smi lists no GPU"
  while IFS= read -r name; do
    [[ "$name" == "$expected" ]] || die "the TensorRT plans in $repository were built for a \"$expected\"; this \
container sees a \"$name\". Rebuild for this GPU: --build-arg GPU_NAME=\"$name\" (or GPU_NAME for the builder)"
  done <<< "$visible"
  echo "sdtriton: TensorRT $built_with plans for $expected" >&2
fi

exec sdtriton serve "$repository" --host 0.0.0.0 --tritonserver /opt/tritonserver/bin/tritonserver "$@"
