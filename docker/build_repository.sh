#!/usr/bin/env bash
# Exports MODEL_SOURCE into $SDTRITON_DEPLOY_DIR/repository for BACKEND and records what it was built for.
# Run by the image build (docker/Dockerfile, BUILD_REPOSITORY=true) and by the compose `builder` service:
# engines are compiled here, on the GPU model that will serve them, never at request time.
#
# Environment: BACKEND (tensorrt | onnxruntime), GPU_NAME (tensorrt: the name nvidia-smi gives the serving GPU),
# MODEL_SOURCE (a diffusers folder, a hub id where a network exists, or `shapes`), SDTRITON_DEPLOY_DIR,
# TIMING_CACHE, TRT_STATIC_SHAPES=1, DRY_RUN=1 (print the TensorRT profiles and trtexec lines, build nothing),
# EXPORT_ARGS (more `sdtriton export` options, e.g. "--max-batch-size 4").
set -euo pipefail

backend="${BACKEND:-tensorrt}"
model_source="${MODEL_SOURCE:-shapes}"
deploy="${SDTRITON_DEPLOY_DIR:-/opt/sdtriton/deploy}"
timing_cache="${TIMING_CACHE:-/opt/sdtriton/cache/timing.cache}"
partial="$deploy/repository.partial"
read -r -a extra <<< "${EXPORT_ARGS:-}"

die() {
  echo "build_repository: $*" >&2
  exit 1
}

check_gpu() {
  [[ -n "${GPU_NAME:-}" ]] || die "BACKEND=tensorrt needs GPU_NAME: the serving GPU as nvidia-smi names it \
(nvidia-smi --query-gpu=name --format=csv,noheader), e.g. \"NVIDIA H100 80GB HBM3\""
  command -v nvidia-smi > /dev/null || die "no GPU visible here (no nvidia-smi). An image build sees a GPU only \
with the classic builder (DOCKER_BUILDKIT=0) and \"default-runtime\": \"nvidia\" in /etc/docker/daemon.json; \
otherwise build with BUILD_REPOSITORY=false and run the compose builder service (docker/README.md)"
  local visible name
  visible="$(nvidia-smi --query-gpu=name --format=csv,noheader)" || die "nvidia-smi failed: no usable GPU"
  [[ -n "$visible" ]] || die "nvidia-smi lists no GPU"
  while IFS= read -r name; do
    [[ "$name" == "$GPU_NAME" ]] || die "GPU_NAME is \"$GPU_NAME\" but this machine has a \"$name\": \
TensorRT plans run only on the GPU model they were built on"
  done <<< "$visible"
}

trt_options=()
if [[ "${TRT_STATIC_SHAPES:-0}" == 1 ]]; then
  trt_options+=(--trt-static-shapes)
fi

mkdir -p "$deploy"
rm -rf "$partial"
case "$backend" in
  tensorrt)
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
      sdtriton export "$model_source" --output "$partial" --backend tensorrt --gpu --dry-run \
        "${trt_options[@]}" "${extra[@]}"
      exit 0
    fi
    check_gpu
    mkdir -p "$(dirname "$timing_cache")"
    sdtriton export "$model_source" --output "$partial" --backend tensorrt --gpu --timing-cache "$timing_cache" \
      "${trt_options[@]}" "${extra[@]}"
    gpu_name="$GPU_NAME"
    tensorrt_version="$(python3 -c 'import tensorrt; print(tensorrt.__version__)')"
    ;;
  onnxruntime)
    # ONNX files run on any GPU: nothing here is tied to one model.
    sdtriton export "$model_source" --output "$partial" --backend onnxruntime --gpu "${extra[@]}"
    gpu_name=""
    tensorrt_version=""
    ;;
  *)
    die "BACKEND must be tensorrt or onnxruntime, not \"$backend\""
    ;;
esac

# Swap in the new repository only once it is complete: a failed build never leaves half of one to serve.
rm -rf "$deploy/repository"
mv "$partial" "$deploy/repository"
printf '%s\n' "$backend" > "$deploy/backend"
printf '%s\n' "$gpu_name" > "$deploy/gpu_name"
printf '%s\n' "$tensorrt_version" > "$deploy/tensorrt_version"
printf '%s\n' "$model_source" > "$deploy/model_source"
echo "build_repository: $backend repository of $model_source in $deploy/repository${gpu_name:+ for $gpu_name}" >&2
