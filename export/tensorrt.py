"""TensorRT engines for the GPU host: fp16 ONNX prepared for TensorRT, optimization profiles, engine builds.

Everything here reads the one component spec (:mod:`sdtriton.components`): the profile of every input is its
``TensorSpec.shape_range`` (batch 1 / 2 / the component's max rows; the smallest / default / largest image the
pipeline config allows), so the engines, the rendered ``tensorrt_plan`` configs and the pipeline's request
validation agree by construction. Written against TensorRT 10.5, the TensorRT of NGC's
``nvcr.io/nvidia/tritonserver:24.10-py3`` (Triton 2.51, the server the tests run here): a plan only loads in
the TensorRT version and on the GPU model that built it.

What runs where: :func:`prepare_onnx_for_tensorrt` (constant folding and cleanup with Polygraphy and ONNX
GraphSurgeon, then fp16 weights with fp32 inputs/outputs) and :func:`check_prepared_onnx` run on any CPU and are
tested here; :func:`build_engine` needs the ``tensorrt`` package and an NVIDIA GPU and never runs in CI.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from sdtriton.components import VAE_DECODER, VAE_ENCODER, ComponentSpec
from sdtriton.pipeline_config import PipelineConfig

logger = logging.getLogger(__name__)

# The TensorRT of the NGC container that matches tritonserver 2.51 (release 24.10).
NGC_RELEASE = "24.10"
TENSORRT_VERSION = "10.5"
# Written beside each model.plan: which TensorRT and GPU built it (a plan loads on no other).
ENGINE_INFO_FILE_NAME = "model.plan.json"
# fp16 weights and activations against torch fp32 on the same inputs: |fp16 - fp32| <= RTOL * max|fp32| + ATOL.
# Measured on the tiny SDXL: 1.2e-3 (text_encoder), 1.7e-3 (text_encoder_2), 1.9e-3 (UNet) at max|fp32| 1.5-3;
# its VAE stays fp32 (force_upcast): 4.5e-6.
FP16_CHECK_RTOL = 1e-2
FP16_CHECK_ATOL = 1e-3
_PROTOBUF_LIMIT_BYTES = 2**31 - 1
EXTERNAL_DATA_SUFFIX = ".data"


@dataclass(frozen=True)
class InputProfile:
    """The (min, opt, max) shapes of one engine input."""

    name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


def shape_text(shape: Sequence[int]) -> str:
    """``2x4x64x64``, as trtexec and ONNX Runtime's TensorRT options spell a shape."""
    return "x".join(str(size) for size in shape)


def profile_shapes_text(profile: Sequence[InputProfile], which: str) -> str:
    """``sample:1x4x8x8,timestep:1,...`` for ``which`` in min/opt/max."""
    return ",".join(f"{entry.name}:{shape_text(getattr(entry, f'{which}_shape'))}" for entry in profile)


def optimization_profile(
    spec: ComponentSpec, config: PipelineConfig, *, max_batch_size: int
) -> tuple[InputProfile, ...]:
    """One profile over every input of a component, from its spec and the pipeline config."""
    return tuple(
        InputProfile(tensor.name, *tensor.shape_range(config, max_batch_size=max_batch_size)) for tensor in spec.inputs
    )


def runs_in_fp16(spec: ComponentSpec, config: PipelineConfig) -> bool:
    """Every network in fp16 but one whose spec says it overflows there (SD 3's T5) and a VAE whose config says
    ``force_upcast`` (diffusers decodes and encodes with those in fp32: SDXL's VAE overflows in fp16)."""
    vae = (VAE_DECODER.model_name, VAE_ENCODER.model_name)
    return spec.fp16_safe and not (spec.model_name in vae and config.vae_force_upcast)


@dataclass(frozen=True)
class EngineBuild:
    """One engine to build: which ONNX, where its plan goes, its profile and precision."""

    model_name: str
    onnx_path: Path
    plan_path: Path
    profile: tuple[InputProfile, ...]
    fp16: bool
    timing_cache: Path | None = None

    def trtexec_command(self) -> list[str]:
        """The equivalent ``trtexec`` command line (TensorRT 10's flags)."""
        command = [
            "trtexec",
            f"--onnx={self.onnx_path}",
            f"--saveEngine={self.plan_path}",
            *(f"--{which}Shapes={profile_shapes_text(self.profile, which)}" for which in ("min", "opt", "max")),
        ]
        if self.fp16:
            command.append("--fp16")
        if self.timing_cache is not None:
            command.append(f"--timingCacheFile={self.timing_cache}")
        return command

    def describe(self) -> str:
        """A readable summary: precision, files, and each input's min/opt/max shapes."""
        width = max(len(entry.name) for entry in self.profile)
        lines = [f"{self.model_name}: {'fp16' if self.fp16 else 'fp32'}  {self.onnx_path} -> {self.plan_path}"]
        for entry in self.profile:
            lines.append(
                f"  {entry.name:<{width}}  min {shape_text(entry.min_shape):<14} opt {shape_text(entry.opt_shape):<14}"
                f" max {shape_text(entry.max_shape)}"
            )
        lines.append("  " + shlex.join(self.trtexec_command()))
        return "\n".join(lines)


def engine_builds(
    specs: Sequence[ComponentSpec],
    config: PipelineConfig,
    *,
    max_batch_size: int,
    onnx_path_for: Mapping[str, Path],
    plan_path_for: Mapping[str, Path],
    timing_cache: Path | None = None,
) -> list[EngineBuild]:
    """The engine of every component, in call order."""
    return [
        EngineBuild(
            model_name=spec.model_name,
            onnx_path=onnx_path_for[spec.model_name],
            plan_path=plan_path_for[spec.model_name],
            profile=optimization_profile(spec, config, max_batch_size=max_batch_size),
            fp16=runs_in_fp16(spec, config),
            timing_cache=timing_cache,
        )
        for spec in specs
    ]


def prepare_onnx_for_tensorrt(source: Path, destination: Path, *, fp16: bool) -> None:
    """Folds constants, drops dead nodes, sorts, and (``fp16``) stores weights and activations in fp16.

    Inputs and outputs stay fp32 (``keep_io_types``), so the Triton configs, the BLS calls and the specs are the
    same for every backend; the casts at the boundary cost nothing next to a UNet step.
    """
    import onnx_graphsurgeon as gs
    from onnxruntime.transformers import float16
    from polygraphy.backend.onnx import fold_constants

    model = onnx.load(str(source), load_external_data=True)
    model = fold_constants(model, allow_onnxruntime_shape_inference=True, error_ok=True)
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    if fp16:
        # Polygraphy leaves shapes inferred; the converter re-runs inference itself on models under 2 GB.
        big = model.ByteSize() > _PROTOBUF_LIMIT_BYTES
        model = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=big)
    _save(model, destination)


def _save(model: onnx.ModelProto, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > _PROTOBUF_LIMIT_BYTES
    data_path = destination.with_name(destination.name + EXTERNAL_DATA_SUFFIX)
    data_path.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(destination),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=data_path.name,
        size_threshold=1024,
    )


@dataclass(frozen=True)
class PreparedCheck:
    model_name: str
    max_abs_error: float
    max_abs_reference: float
    allowed: float


def check_prepared_onnx(
    path: Path,
    *,
    model_name: str,
    inputs: Mapping[str, np.ndarray],
    reference_outputs: Mapping[str, np.ndarray],
    rtol: float = FP16_CHECK_RTOL,
    atol: float = FP16_CHECK_ATOL,
) -> PreparedCheck:
    """Runs a prepared graph with ONNX Runtime on the CPU and compares it with torch fp32's outputs.

    ONNX Runtime's CPU provider runs the fp16 graph (casting around the few kernels it has only in fp32), so the
    fp16 rounding of weights and activations is what is measured. Raises when the error exceeds
    ``rtol * max|reference| + atol``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = list(reference_outputs)
    actual = session.run(names, dict(inputs))
    error = max(float(np.max(np.abs(a - reference_outputs[n]))) for a, n in zip(actual, names, strict=True))
    scale = max(float(np.max(np.abs(reference_outputs[n]))) for n in names)
    allowed = rtol * scale + atol
    if not error <= allowed:
        raise RuntimeError(
            f"{model_name}: the prepared graph differs from torch fp32 by {error:.3g} (allowed {allowed:.3g} = "
            f"{rtol:g} x {scale:.3g} + {atol:g})"
        )
    logger.info("%s: prepared graph vs torch fp32: %.3g (allowed %.3g)", model_name, error, allowed)
    return PreparedCheck(model_name=model_name, max_abs_error=error, max_abs_reference=scale, allowed=allowed)


def build_engine(build: EngineBuild, *, workspace_bytes: int | None = None) -> Path:
    """Builds one TensorRT plan on this machine's GPU (TensorRT 10 Python API); GPU only, never run in CI.

    The timing cache (if named) is read before and written after, so rebuilds on the same GPU are fast.
    """
    try:
        import tensorrt as trt
    except ImportError as error:
        raise RuntimeError(
            "building TensorRT engines needs the tensorrt package and an NVIDIA GPU (NGC image "
            f"nvcr.io/nvidia/tensorrt:{NGC_RELEASE}-py3, TensorRT {TENSORRT_VERSION}); on other machines use "
            "--no-engine-build and run the printed trtexec lines on the GPU host"
        ) from error
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(build.onnx_path)):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise RuntimeError(f"{build.model_name}: TensorRT cannot parse {build.onnx_path}: {errors}")
    builder_config = builder.create_builder_config()
    if build.fp16:
        builder_config.set_flag(trt.BuilderFlag.FP16)
    if workspace_bytes is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    for entry in build.profile:
        profile.set_shape(entry.name, entry.min_shape, entry.opt_shape, entry.max_shape)
    builder_config.add_optimization_profile(profile)
    if build.timing_cache is not None:
        cached = build.timing_cache.read_bytes() if build.timing_cache.exists() else b""
        builder_config.set_timing_cache(builder_config.create_timing_cache(cached), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise RuntimeError(f"{build.model_name}: TensorRT failed to build an engine (see its log above)")
    build.plan_path.parent.mkdir(parents=True, exist_ok=True)
    build.plan_path.write_bytes(memoryview(serialized))
    if build.timing_cache is not None:
        build.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        build.timing_cache.write_bytes(memoryview(builder_config.get_timing_cache().serialize()))
    _write_engine_info(build, tensorrt_version=trt.__version__)
    logger.info("%s: engine written to %s", build.model_name, build.plan_path)
    return build.plan_path


def _gpu_name() -> str | None:
    """The GPU's name as ``nvidia-smi`` gives it (what docker/entrypoint.sh compares at server start)."""
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _write_engine_info(build: EngineBuild, *, tensorrt_version: str) -> None:
    info = {
        "tensorrt": tensorrt_version,
        "gpu": _gpu_name(),
        "fp16": build.fp16,
        "profile": {
            entry.name: {"min": entry.min_shape, "opt": entry.opt_shape, "max": entry.max_shape}
            for entry in build.profile
        },
    }
    build.plan_path.with_name(ENGINE_INFO_FILE_NAME).write_text(json.dumps(info, indent=2) + "\n")
