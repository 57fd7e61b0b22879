"""Renders every model of the repository (``config.pbtxt`` and the thin ``model.py``) from the specs.

Configs are built as Triton's own ``ModelConfig`` protobuf messages, so a rendered config always parses;
the committed ``model_repository/`` is this module's output for the default model, and a test keeps it so.
Variants (Python backend over ONNX Runtime here; the NGC container's ``onnxruntime`` backend; TensorRT
plans) come from the same specs, never from copies.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from sdtriton import interface
from sdtriton.components import COMPONENTS, ONNX_FILE_NAME, TENSORRT_PLAN_FILE_NAME, ComponentSpec
from sdtriton.interface import PublicTensor
from sdtriton.pipeline_config import PipelineConfig

TOKENIZER_MODEL_NAME = "tokenizer"
PIPELINE_MODEL_NAME = "pipeline"
MODEL_VERSION = "1"
CONFIG_FILE_NAME = "config.pbtxt"
MODEL_FILE_NAME = "model.py"
# The class each Python-backend model's model.py re-exports from sdtriton.serving.triton_models.
_PYTHON_MODEL_CLASSES = {
    TOKENIZER_MODEL_NAME: "TokenizerModel",
    PIPELINE_MODEL_NAME: "PipelineModel",
    **{name: "OnnxComponentModel" for name in COMPONENTS},
}
_DATA_TYPES = {
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
    pipeline_instances: int = 2
    max_queue_delay_us: int = 0


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


def _text_ids_dims(pipeline_config: PipelineConfig) -> tuple[int, ...]:
    return (pipeline_config.text_max_length,)


def _python_model(name: str, options: RenderOptions, *, instances: int) -> mc.ModelConfig:
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch_size)
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    return config


def render_tokenizer_config(pipeline_config: PipelineConfig, options: RenderOptions) -> mc.ModelConfig:
    config = _python_model(TOKENIZER_MODEL_NAME, options, instances=1)
    # The tokenizer sees every public input, all optional: a 2.51 ensemble neither checks required
    # inputs nor runs a step none of whose inputs arrived, so this first step is where a request
    # without a prompt is told so by name.
    for tensor in interface.PUBLIC_INPUTS:
        _add_public_input(config, tensor)
    for tensor in (interface.INPUT_IDS, interface.NEGATIVE_INPUT_IDS):
        _io(config.output.add(), tensor.name, tensor.triton_dtype, _text_ids_dims(pipeline_config))
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    return config


def render_pipeline_config(pipeline_config: PipelineConfig, options: RenderOptions) -> mc.ModelConfig:
    config = _python_model(PIPELINE_MODEL_NAME, options, instances=options.pipeline_instances)
    for tensor in (interface.INPUT_IDS, interface.NEGATIVE_INPUT_IDS):
        _io(config.input.add(), tensor.name, tensor.triton_dtype, _text_ids_dims(pipeline_config))
    for tensor in interface.GENERATION_INPUTS:
        _add_public_input(config, tensor)
    for tensor in interface.PUBLIC_OUTPUTS:
        _add_public_output(config, tensor)
    return config


def render_component_config(
    spec: ComponentSpec, pipeline_config: PipelineConfig, options: RenderOptions
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=spec.model_name, max_batch_size=options.max_batch_size)
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
    return config


def render_ensemble_config(options: RenderOptions) -> mc.ModelConfig:
    config = mc.ModelConfig(name=interface.ENTRY_MODEL_NAME, platform="ensemble", max_batch_size=options.max_batch_size)
    for tensor in interface.PUBLIC_INPUTS:
        _add_public_input(config, tensor)
    for tensor in interface.PUBLIC_OUTPUTS:
        _add_public_output(config, tensor)
    ids = (interface.INPUT_IDS.name, interface.NEGATIVE_INPUT_IDS.name)
    tokenize = config.ensemble_scheduling.step.add(model_name=TOKENIZER_MODEL_NAME, model_version=-1)
    for tensor in interface.PUBLIC_INPUTS:
        tokenize.input_map[tensor.name] = tensor.name
    for name in ids:
        tokenize.output_map[name] = name
    generate = config.ensemble_scheduling.step.add(model_name=PIPELINE_MODEL_NAME, model_version=-1)
    for name in ids:
        generate.input_map[name] = name
    for tensor in interface.GENERATION_INPUTS:
        generate.input_map[tensor.name] = tensor.name
    for tensor in interface.PUBLIC_OUTPUTS:
        generate.output_map[tensor.name] = tensor.name
    return config


def render_all_configs(pipeline_config: PipelineConfig, options: RenderOptions) -> dict[str, mc.ModelConfig]:
    """Every model of the repository, by model name."""
    configs = {
        TOKENIZER_MODEL_NAME: render_tokenizer_config(pipeline_config, options),
        PIPELINE_MODEL_NAME: render_pipeline_config(pipeline_config, options),
        interface.ENTRY_MODEL_NAME: render_ensemble_config(options),
    }
    for spec in COMPONENTS.values():
        configs[spec.model_name] = render_component_config(spec, pipeline_config, options)
    return configs


def config_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_config_text(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def model_file_text(model_name: str) -> str:
    class_name = _PYTHON_MODEL_CLASSES[model_name]
    return (
        f'"""Triton Python-backend entry point of `{model_name}`; the logic lives in sdtriton.serving."""\n\n'
        f"from sdtriton.serving.triton_models import {class_name} as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )


def write_model_files(repository: Path, pipeline_config: PipelineConfig, options: RenderOptions) -> dict[str, Path]:
    """Writes config.pbtxt of every model and model.py of every Python-backend model; returns model dirs."""
    model_dirs = {}
    for name, config in render_all_configs(pipeline_config, options).items():
        model_dir = repository / name
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
