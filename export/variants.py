"""Variants of an exported repository, each a copy with its large files (the ONNX weights) linked: an engine variant
(what ``sdtriton export`` renders for other engine limits, or with the engine's caches off) and the simulated
repository (its UNet the stand-in of :mod:`sdtriton.serving.simulated`, which sleeps as an accelerator would compute)
and the identity-UNet repository (its UNet returns its sample: what a BLS call costs with no network behind it).
``sdtriton perf`` compares them; tests serve them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sdtriton import interface
from sdtriton.components import ONNX_FILE_NAME, TENSORRT_PLAN_FILE_NAME, UNET
from sdtriton.export.configs import (
    CONFIG_FILE_NAME,
    ENGINE_PARAMETERS,
    MODEL_FILE_NAME,
    config_text,
    parse_config_text,
)
from sdtriton.serving.engine import EngineLimits
from sdtriton.serving.simulated import SimulatedLatency

_LINK_MIN_BYTES = 1 << 20
# Old enough for every ONNX Runtime this project pins.
_IDENTITY_OPSET = 17
_SIMULATED_ADAPTER = "from sdtriton.serving.triton_simulated import SimulatedUNetModel as TritonPythonModel"


def _copy_or_link(source: str, destination: str) -> None:
    if Path(source).stat().st_size >= _LINK_MIN_BYTES:
        Path(destination).symlink_to(Path(source).resolve())
    else:
        shutil.copy2(source, destination)


def linked_copy(source: Path, destination: Path, *, ignore: Sequence[str] = ()) -> Path:
    """A copy of ``source`` into ``destination`` (absent or empty), large files linked; ``ignore``: name patterns."""
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} is not empty")
    patterns = shutil.ignore_patterns("__pycache__", *ignore)
    shutil.copytree(source.resolve(), destination, copy_function=_copy_or_link, ignore=patterns, dirs_exist_ok=True)
    return destination


def _pipeline_config_path(repository: Path) -> Path:
    return repository / interface.PIPELINE_MODEL_NAME / CONFIG_FILE_NAME


def engine_limits_of(repository: Path) -> EngineLimits:
    parameters = parse_config_text(_pipeline_config_path(repository).read_text()).parameters
    return EngineLimits(
        **{name: int(parameters[name].string_value) for name in ENGINE_PARAMETERS if name in parameters}
    )


def _set_parameters(config_path: Path, values: dict[str, object]) -> None:
    config = parse_config_text(config_path.read_text())
    for name, value in values.items():
        config.parameters[name].string_value = str(value)
    config_path.write_text(config_text(config))


def engine_variant(
    source: Path,
    destination: Path,
    *,
    max_running_images: int | None = None,
    max_pending_requests: int | None = None,
    caches_off: bool = False,
) -> Path:
    """A copy of ``source`` whose engine holds ``max_running_images`` / ``max_pending_requests`` (None: as is),
    caches off if ``caches_off``: what ``sdtriton export`` renders for those options, as long as the components' batch
    limits (rendered for the export's ``max_running_images``) hold the new value, which is checked."""
    limits = engine_limits_of(source)
    changes = {"max_running_images": max_running_images, "max_pending_requests": max_pending_requests}
    changes = {name: value for name, value in changes.items() if value is not None}
    for name, value in changes.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if caches_off:
        changes |= {"response_cache_bytes": 0, "text_cache_entries": 0}
    if changes.get("max_running_images", 0) > limits.max_running_images:
        raise ValueError(
            f"max_running_images {changes['max_running_images']} exceeds the export's "
            f"{limits.max_running_images}: the components' batch limits were rendered for that; export again"
        )
    linked_copy(source, destination)
    _set_parameters(_pipeline_config_path(destination), changes)
    if max_pending_requests is not None:
        # The entries refuse past the same limit themselves, before the hop to the engine (as an export sets them).
        for entry_name in (interface.ENTRY_MODEL_NAME, interface.STREAM_ENTRY_MODEL_NAME):
            _set_parameters(destination / entry_name / CONFIG_FILE_NAME, {"max_pending_requests": max_pending_requests})
    return destination


def simulated_unet_config_text(source_config_text: str, latency: SimulatedLatency) -> str:
    """The source's UNet config with the stand-in's latency, on the ``python`` backend (a source's ``onnxruntime`` or
    ``tensorrt`` names a model file the stand-in lacks) and the CPU (it only sleeps)."""
    config = parse_config_text(source_config_text)
    config.backend = "python"
    config.ClearField("platform")
    config.ClearField("default_model_filename")
    for group in config.instance_group:
        group.kind = group.KIND_CPU
        del group.gpus[:]
    for key, value in latency.parameters().items():
        config.parameters[key].string_value = value
    return config_text(config)


def simulated_model_file_text() -> str:
    doc = f'"""Triton Python-backend entry point of a simulated `{UNET.model_name}`; see sdtriton.serving.simulated."""'
    return f'{doc}\n\n{_SIMULATED_ADAPTER}\n\n__all__ = ["TritonPythonModel"]\n'


def simulated_repository(
    source: Path, destination: Path, latency: SimulatedLatency, *, models: Sequence[str] | None = None
) -> Path:
    """A copy of an exported repository (``models`` of it, ``unet`` among them; default: all) whose ``unet`` is the
    stand-in of ``latency``: its config plus the latency parameters, the stand-in's ``model.py``, no ONNX files."""
    if not (source / UNET.model_name / CONFIG_FILE_NAME).is_file():
        raise FileNotFoundError(f"{source} has no {UNET.model_name}/{CONFIG_FILE_NAME}")
    names = sorted(path.name for path in source.iterdir() if path.is_dir()) if models is None else list(models)
    if UNET.model_name not in names:
        raise ValueError(f"models must include {UNET.model_name!r}, got {names}")
    if missing := [name for name in names if not (source / name).is_dir()]:
        raise FileNotFoundError(f"{source} has no model {missing[0]!r}")
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} is not empty")
    for name in names:
        ignore = [f"{ONNX_FILE_NAME}*", TENSORRT_PLAN_FILE_NAME] if name == UNET.model_name else []
        linked_copy(source / name, destination / name, ignore=ignore)
    unet = destination / UNET.model_name
    for version_dir in unet.iterdir():
        if version_dir.is_dir() and version_dir.name.isdigit():
            (version_dir / MODEL_FILE_NAME).unlink(missing_ok=True)
            (version_dir / MODEL_FILE_NAME).write_text(simulated_model_file_text())
    (unet / CONFIG_FILE_NAME).write_text(simulated_unet_config_text((unet / CONFIG_FILE_NAME).read_text(), latency))
    return destination


def identity_repository(repository: Path, target: Path) -> Path:
    """A copy of ``repository`` whose UNet is ``noise_pred = sample``, with the UNet spec's tensors (other inputs
    ignored): the same model class serves it and the same loop drives it (``sdtriton perf``'s BLS probe)."""
    import onnx
    from onnx import helper

    shutil.rmtree(target, ignore_errors=True)
    linked_copy(repository, target)
    unet_version_dir = target / UNET.model_name / "1"
    for path in unet_version_dir.glob(f"{ONNX_FILE_NAME}*"):  # model.onnx and its external data
        path.unlink()
    value_info: dict[str, onnx.ValueInfoProto] = {}
    for tensor in (*UNET.inputs, *UNET.outputs):  # the element types the spec gives, as ONNX numbers them
        onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(tensor.numpy_dtype))
        value_info[tensor.name] = helper.make_tensor_value_info(tensor.name, onnx_type, list(tensor.axes))
    (sample, *_), (noise_pred,) = UNET.input_names, UNET.output_names
    inputs = [value_info[name] for name in UNET.input_names]
    nodes = [helper.make_node("Identity", [sample], [noise_pred])]
    graph = helper.make_graph(nodes, "identity_unet", inputs, [value_info[noise_pred]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _IDENTITY_OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, unet_version_dir / ONNX_FILE_NAME)
    return target
