"""Renders every model of the repository (``config.pbtxt`` and the thin ``model.py``) from the specs.

Configs are built as Triton's own ``ModelConfig`` protobuf messages, so a rendered config always parses;
the committed ``model_repository/`` is this module's output for the default model, and a test keeps it so.
Variants (Python backend over ONNX Runtime here; the NGC container's ``onnxruntime`` backend; TensorRT
plans) come from the same specs, never from copies.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sdtriton import interface
from sdtriton.components import (
    COMPONENT_FAMILY_PARAMETER,
    COMPONENT_LORA_PARAMETER,
    ENGINE_DEVICE_PARAMETER,
    FAMILY_COMPONENTS,
    LORA_SCALES_INPUT,
    MODEL_PREFIX_PARAMETER,
    ONNX_FILE_NAME,
    TENSORRT_PLAN_FILE_NAME,
    ComponentSpec,
    component_table,
    components_of,
)
from sdtriton.export.errors import ExportOptionError
from sdtriton.interface import PublicTensor
from sdtriton.pipeline_config import PipelineConfig

_MIB = 2**20

PIPELINE_MODEL_NAME = interface.PIPELINE_MODEL_NAME
MODEL_VERSION = "1"
CONFIG_FILE_NAME = "config.pbtxt"
MODEL_FILE_NAME = "model.py"
# The module and class each Python-backend model's model.py re-exports (only the pipeline's module imports torch).
_PYTHON_MODEL_CLASSES = {
    PIPELINE_MODEL_NAME: ("sdtriton.serving.triton_pipeline", "PipelineModel"),
    interface.ENTRY_MODEL_NAME: ("sdtriton.serving.triton_models", "EntryModel"),
    interface.STREAM_ENTRY_MODEL_NAME: ("sdtriton.serving.triton_models", "EntryModel"),
    **{
        name: ("sdtriton.serving.triton_models", "OnnxComponentModel")
        for specs in FAMILY_COMPONENTS.values()
        for name in specs
    },
}
_DATA_TYPES = {
    "BOOL": mc.TYPE_BOOL,
    "BYTES": mc.TYPE_STRING,
    "FP32": mc.TYPE_FP32,
    "FP16": mc.TYPE_FP16,
    "INT32": mc.TYPE_INT32,
    "INT64": mc.TYPE_INT64,
    "UINT8": mc.TYPE_UINT8,
}


class ComponentBackend(enum.Enum):
    """How the three networks are served."""

    # tritonserver from PyPI (no onnxruntime backend): Python-backend models over ONNX Runtime.
    PYTHON_ONNXRUNTIME = "python"
    # The NGC container's ONNX Runtime backend.
    ONNXRUNTIME = "onnxruntime"
    # TensorRT engines built on the serving GPU.
    TENSORRT = "tensorrt"


@dataclass(frozen=True)
class RenderOptions:
    """Deployment knobs of a rendered repository."""

    component_backend: ComponentBackend = ComponentBackend.PYTHON_ONNXRUNTIME
    gpu: bool = False
    max_batch_size: int = 8
    max_running_images: int = 8
    max_pending_requests: int = 32
    max_queue_delay_us: int = 0
    # The engine's caches (sdtriton.serving.caches; 0: off). Responses of seeded requests: 64 MiB of images is
    # 5,461 of 64x64 or 21 of 1024x1024. Text-encoder rows: SD 1.5 in fp32 is 77 x 768 x 4 B = 231 KiB a row,
    # 58 MiB for 256 rows (SDXL's second encoder: 394 KiB a row, 99 MiB), on the engine's device.
    response_cache_mb: int = 64
    text_cache_entries: int = 256
    # Put before every model name (e.g. "sdxl_" -> sdxl_stable_diffusion, sdxl_pipeline, sdxl_unet, ...), so that
    # repositories of several models load into one tritonserver side by side (model names must be unique).
    model_prefix: str = ""
    # Where ONNX Runtime's TensorRT provider keeps its engines in the server container (--backend onnxruntime --gpu).
    ort_tensorrt_cache_dir: str = "/tmp/sdtriton_ort_tensorrt"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]*", self.model_prefix):
            raise ExportOptionError(
                "model_prefix", f"may hold letters, digits, '_' and '-' only, got {self.model_prefix!r}"
            )
        for name in ("response_cache_mb", "text_cache_entries"):
            if getattr(self, name) < 0:
                raise ExportOptionError(name, f"must be at least 0 (0: off), got {getattr(self, name)}")

    @property
    def component_max_batch_size(self) -> int:
        """Rows of one network call: every running image, two rows each with guidance."""
        return 2 * max(self.max_running_images, self.max_batch_size)


# GPU scratch memory ONNX Runtime's TensorRT provider may use while building and running an engine.
ORT_TENSORRT_WORKSPACE_BYTES = 4 * 2**30
# The engine's device on a GPU host (export --gpu); the pipeline model's instance itself is a CPU instance.
GPU_ENGINE_DEVICE = "cuda:0"
# Rows of the warm-up call: one image with classifier-free guidance.
WARMUP_BATCH_SIZE = 2
# Engine settings the pipeline model reads from its config's parameters (sdtriton.serving.engine.EngineLimits).
ENGINE_PARAMETERS = (
    "max_running_images",
    "max_pending_requests",
    "max_unet_rows",
    "max_text_rows",
    "max_vae_rows",
    "response_cache_bytes",
    "text_cache_entries",
)


def _io(message: mc.ModelInput | mc.ModelOutput, name: str, triton_dtype: str, dims: tuple[int, ...]) -> None:
    message.name = name
    message.data_type = _DATA_TYPES[triton_dtype]
    if dims:
        message.dims.extend(dims)
    else:
        # A per-item scalar: [1] in the config, reshaped to [] so the backend sees a [batch] tensor.
        message.dims.append(1)
        message.reshape.SetInParent()


def _add_public_input(config: mc.ModelConfig, tensor: PublicTensor, *, optional: bool | None = None) -> None:
    model_input = config.input.add()
    _io(model_input, tensor.name, tensor.triton_dtype, tensor.dims)
    model_input.optional = tensor.optional if optional is None else optional


def _add_public_output(config: mc.ModelConfig, tensor: PublicTensor) -> None:
    _io(config.output.add(), tensor.name, tensor.triton_dtype, tensor.dims)


def _python_model(name: str, options: RenderOptions, *, decoupled: bool = False) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch_size)
    # One instance: the entries only forward (their execute returns at once), the pipeline holds the engine.
    config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    if decoupled:
        config.model_transaction_policy.decoupled = True
    return config


def _set_parameter(config: mc.ModelConfig, key: str, value: int) -> None:
    config.parameters[key].string_value = str(value)


def render_pipeline_config(pipeline_config: PipelineConfig, options: RenderOptions) -> mc.ModelConfig:
    """The engine: every request of both entries, answered as a stream (progress, then the image)."""
    config = _python_model(PIPELINE_MODEL_NAME, options, decoupled=True)
    for tensor in (*interface.STREAM_INPUTS, *interface.INTERNAL_INPUTS):
        _add_public_input(config, tensor, optional=True)
    for tensor in (*interface.STREAM_OUTPUTS, *interface.INTERNAL_OUTPUTS):
        _add_public_output(config, tensor)
    rows = options.component_max_batch_size
    values = (
        options.max_running_images,
        options.max_pending_requests,
        rows,
        rows,
        rows,
        options.response_cache_mb * _MIB,
        options.text_cache_entries,
    )
    for key, value in zip(ENGINE_PARAMETERS, values, strict=True):
        _set_parameter(config, key, value)
    if options.gpu:
        # The networks answer into GPU memory and the loop's tensors stay there (absent: the CPU).
        config.parameters[ENGINE_DEVICE_PARAMETER].string_value = GPU_ENGINE_DEVICE
    return config


def render_entry_config(pipeline_config: PipelineConfig, options: RenderOptions, *, stream: bool) -> mc.ModelConfig:
    """``stable_diffusion`` (one response: HTTP and gRPC) or ``stable_diffusion_stream`` (decoupled, gRPC), with
    the model's :class:`~sdtriton.interface.ModelDescription` in its parameters for callers to read."""
    name = interface.STREAM_ENTRY_MODEL_NAME if stream else interface.ENTRY_MODEL_NAME
    config = _python_model(name, options, decoupled=stream)
    # Every input optional: the engine names a missing prompt in its error.
    for tensor in interface.STREAM_INPUTS if stream else interface.ENTRY_INPUTS:
        _add_public_input(config, tensor)
    for tensor in interface.STREAM_OUTPUTS if stream else interface.PUBLIC_OUTPUTS:
        _add_public_output(config, tensor)
    # Load shedding at the edge: an entry already holding this many requests refuses the next one itself,
    # without a BLS hop to the engine (which still enforces the limit over both entries together).
    _set_parameter(config, "max_pending_requests", options.max_pending_requests)
    for key, value in pipeline_config.description.parameters().items():
        config.parameters[key].string_value = value
    if not stream:
        # Requests queued while the entry is busy reach it together, and a batch it refuses whole goes back in
        # one answer (a burst past the limit; a decoupled model answers only through response senders).
        config.dynamic_batching.SetInParent()
    return config


def render_component_config(
    spec: ComponentSpec, pipeline_config: PipelineConfig, options: RenderOptions
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=spec.model_name, max_batch_size=options.component_max_batch_size)
    backend = options.component_backend
    if backend is ComponentBackend.PYTHON_ONNXRUNTIME:
        config.backend = "python"
    elif backend is ComponentBackend.ONNXRUNTIME:
        config.backend = "onnxruntime"
        config.default_model_filename = ONNX_FILE_NAME
    else:
        config.backend = "tensorrt"
        config.default_model_filename = TENSORRT_PLAN_FILE_NAME
    for tensor in spec.inputs:
        _io(config.input.add(), tensor.name, tensor.triton_dtype, tensor.item_dims(pipeline_config))
    for tensor in spec.outputs:
        _io(config.output.add(), tensor.name, tensor.triton_dtype, tensor.item_dims(pipeline_config))
    kind = mc.ModelInstanceGroup.KIND_GPU if options.gpu else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=1, kind=kind)
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    if backend is ComponentBackend.TENSORRT:
        config.platform = "tensorrt_plan"
    if backend is ComponentBackend.ONNXRUNTIME and options.gpu:
        _add_onnxruntime_tensorrt_accelerator(config, spec, pipeline_config, options)
    # Every backend: "ready" means each network has run once (ONNX Runtime's first run plans its memory; a GPU's
    # context, kernels and TensorRT engines are made), so the first request is as fast as the next.
    _add_warmup(config, spec, pipeline_config)
    # The family says which spec of this name the model serves (an SDXL text_encoder is not SD's).
    config.parameters[COMPONENT_FAMILY_PARAMETER].string_value = component_table(pipeline_config)
    if LORA_SCALES_INPUT in spec.input_names:
        config.parameters[COMPONENT_LORA_PARAMETER].string_value = str(len(pipeline_config.loras))
    return config


def _add_onnxruntime_tensorrt_accelerator(
    config: mc.ModelConfig, spec: ComponentSpec, pipeline_config: PipelineConfig, options: RenderOptions
) -> None:
    """ONNX Runtime's TensorRT execution provider in the NGC ORT backend: fp16 (fp32 for a VAE diffusers upcasts),
    one engine over the spec's profile, cached on disk so a restart does not rebuild it."""
    from sdtriton.export.tensorrt import optimization_profile, profile_shapes_text, runs_in_fp16

    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    profile = optimization_profile(spec, pipeline_config, max_batch_size=options.component_max_batch_size)
    parameters = {
        "precision_mode": "FP16" if runs_in_fp16(spec, pipeline_config) else "FP32",
        "max_workspace_size_bytes": str(ORT_TENSORRT_WORKSPACE_BYTES),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{options.ort_tensorrt_cache_dir}/{options.model_prefix}{spec.model_name}",
        "trt_timing_cache_enable": "1",
        **{f"trt_profile_{which}_shapes": profile_shapes_text(profile, which) for which in ("min", "opt", "max")},
    }
    for key, value in parameters.items():
        accelerator.parameters[key] = value


def _add_warmup(config: mc.ModelConfig, spec: ComponentSpec, pipeline_config: PipelineConfig) -> None:
    """One zero-filled call at the profile's opt shape (one guided image at the default size) before "ready":
    the GPU context, and for ONNX Runtime's TensorRT provider the engine itself, are made at load, never by the
    first request. Zeros are valid for every input (token id 0 included)."""
    warmup = config.model_warmup.add(name=f"{spec.model_name}_opt", batch_size=WARMUP_BATCH_SIZE)
    for tensor in spec.inputs:
        opt_shape = tensor.shape_range(pipeline_config, max_batch_size=WARMUP_BATCH_SIZE)[1]
        item = warmup.inputs[tensor.name]
        item.data_type = _DATA_TYPES[tensor.triton_dtype]
        # The config's dims (a per-item scalar is [1] there, see _io), at the opt size.
        item.dims.extend(opt_shape[1:] or (1,))
        item.zero_data = True


def render_all_configs(pipeline_config: PipelineConfig, options: RenderOptions) -> dict[str, mc.ModelConfig]:
    """Every model of the repository, by its name without ``options.model_prefix`` (the configs carry it)."""
    configs = {
        PIPELINE_MODEL_NAME: render_pipeline_config(pipeline_config, options),
        interface.ENTRY_MODEL_NAME: render_entry_config(pipeline_config, options, stream=False),
        interface.STREAM_ENTRY_MODEL_NAME: render_entry_config(pipeline_config, options, stream=True),
    }
    for spec in components_of(pipeline_config):
        configs[spec.model_name] = render_component_config(spec, pipeline_config, options)
    if options.model_prefix:
        for config in configs.values():
            config.name = options.model_prefix + config.name
            config.parameters[MODEL_PREFIX_PARAMETER].string_value = options.model_prefix
    return configs


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config_text(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def model_file_text(model_name: str) -> str:
    module, class_name = _PYTHON_MODEL_CLASSES[model_name]
    return (
        f'"""Triton Python-backend entry point of `{model_name}`; the logic lives in sdtriton.serving."""\n\n'
        f"from {module} import {class_name} as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )


def write_model_files(repository: Path, pipeline_config: PipelineConfig, options: RenderOptions) -> dict[str, Path]:
    """Writes config.pbtxt of every model and model.py of every Python-backend model; returns model dirs by the
    model names without the prefix."""
    model_dirs = {}
    for name, config in render_all_configs(pipeline_config, options).items():
        model_dir = repository / config.name
        version_dir = model_dir / MODEL_VERSION
        version_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / CONFIG_FILE_NAME).write_text(config_text(config))
        model_file = version_dir / MODEL_FILE_NAME
        if config.backend == "python":
            model_file.write_text(model_file_text(name))
        else:
            model_file.unlink(missing_ok=True)
        model_dirs[name] = model_dir
    return model_dirs
