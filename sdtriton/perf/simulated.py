"""A simulated accelerator: a stand-in UNet whose call time follows a stated latency model and burns no CPU.

On a CPU-only host the real UNet's cost says nothing about a GPU, where one call costs a fixed launch and
weight-streaming time plus a small time per batch row. The stand-in sleeps ``fixed_ms + per_item_ms * rows``
per call (``rows`` summed over the requests the dynamic batcher joined) and answers zeros, so that step-level
batching and fairness of the serving engine can be measured as they would behave on a GPU.

This module is pure: the latency model, its config parameters, the request checks and the repository copy.
The Triton adapter is :class:`sdtriton.serving.triton_simulated.SimulatedUNetModel`. The repository functions
import :mod:`sdtriton.export.configs` where they run: the ``sdtriton.export`` package loads torch and
diffusers, which the stand-in's own process has no use for.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from sdtriton.components import ONNX_FILE_NAME, TENSORRT_PLAN_FILE_NAME, UNET
from sdtriton.serving.errors import InvalidInputError

FIXED_MS_PARAMETER = "simulated_fixed_ms"
PER_ITEM_MS_PARAMETER = "simulated_per_item_ms"
_MS_PER_S = 1000.0
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_LATENCY_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*ms\s*\+\s*{_NUMBER}\s*ms\s*$")
# Files this large (ONNX weights and their external data) are linked into the copy, smaller ones copied.
_LINK_MIN_BYTES = 1 << 20
_ADAPTER_MODULE = "sdtriton.serving.triton_simulated"
_ADAPTER_CLASS = "SimulatedUNetModel"
_SAMPLE = UNET.inputs[0]
(_NOISE_PRED,) = UNET.outputs


def _format_ms(value: float) -> str:
    """``10.0`` -> ``10``, ``0.25`` -> ``0.25``, ``1e-05`` -> ``0.00001``: positional, no trailing zeros."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class SimulatedLatency:
    """The time of one UNet call: ``fixed_ms + per_item_ms * rows``.

    Attributes:
        fixed_ms: the cost of a call whatever its size (launches, reading the weights once).
        per_item_ms: the added cost of each batch row (with classifier-free guidance an image is two rows).
    """

    fixed_ms: float
    per_item_ms: float

    def __post_init__(self) -> None:
        for name in ("fixed_ms", "per_item_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number of milliseconds >= 0, got {value!r}")

    def call_s(self, rows: int) -> float:
        """Seconds one call over ``rows`` batch rows takes."""
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be an integer >= 1, got {rows!r}")
        return (self.fixed_ms + self.per_item_ms * rows) / _MS_PER_S

    @classmethod
    def parse(cls, text: str) -> SimulatedLatency:
        """Reads ``"FIXEDms+PER_ITEMms"``, e.g. ``"10ms+2ms"`` (spaces and decimals allowed).

        Raises:
            ValueError: ``text`` is not of that form.
        """
        match = _LATENCY_PATTERN.match(text)
        if match is None:
            raise ValueError(
                f"simulated latency must read FIXEDms+PER_ITEMms (e.g. '10ms+2ms': 10 ms per call plus 2 ms "
                f"per batch row), got {text!r}"
            )
        return cls(fixed_ms=float(match.group(1)), per_item_ms=float(match.group(2)))

    def __str__(self) -> str:
        return f"{_format_ms(self.fixed_ms)}ms+{_format_ms(self.per_item_ms)}ms"

    def throughput_ratio(self, concurrency: int, rows_per_item: int) -> float:
        """How many times the images/s of one item a call over ``concurrency`` items reaches, UNet alone.

        E.g. 10 ms + 2 ms per row, CFG (``rows_per_item=2``), ``concurrency=8``: ``8 * (10 + 4) / (10 + 32)``.
        Assumes the whole batch fits one call (``concurrency * rows_per_item <= max_batch_size``).

        Raises:
            ValueError: a count below 1, or a latency of zero, for which the ratio is undefined.
        """
        for name, value in (("concurrency", concurrency), ("rows_per_item", rows_per_item)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.fixed_ms == 0 and self.per_item_ms == 0:
            raise ValueError("throughput_ratio is undefined for a latency of 0ms+0ms")
        return concurrency * self.call_s(rows_per_item) / self.call_s(concurrency * rows_per_item)

    def parameters(self) -> dict[str, str]:
        """The model config ``parameters`` that carry this latency (string values, as Triton keeps them)."""
        return {FIXED_MS_PARAMETER: _format_ms(self.fixed_ms), PER_ITEM_MS_PARAMETER: _format_ms(self.per_item_ms)}


def latency_from_parameters(parameters: Mapping[str, Any]) -> SimulatedLatency:
    """The latency of a model config's ``parameters``, as Triton hands them over in JSON.

    Args:
        parameters: ``{"simulated_fixed_ms": {"string_value": "10"}, ...}``.

    Raises:
        ValueError: a parameter missing, not a number, negative or not finite; the message names it.
    """
    values = {}
    for key in (FIXED_MS_PARAMETER, PER_ITEM_MS_PARAMETER):
        entry = parameters.get(key)
        raw = entry.get("string_value") if isinstance(entry, Mapping) else None
        if raw is None:
            raise ValueError(f"config parameter {key!r} is required (milliseconds, a number >= 0)")
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"config parameter {key!r} must be a number of milliseconds >= 0, got {raw!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"config parameter {key!r} must be a number of milliseconds >= 0, got {raw!r}")
        values[key] = value
    return SimulatedLatency(fixed_ms=values[FIXED_MS_PARAMETER], per_item_ms=values[PER_ITEM_MS_PARAMETER])


def checked_sample(inputs: Mapping[str, np.ndarray | None]) -> np.ndarray:
    """Checks one request's UNet inputs; returns its sample, whose first axis is the request's batch rows.

    Raises:
        InvalidInputError: an input missing, a sample of the wrong rank or no rows, or batch sizes that disagree.
    """
    present = {}
    for tensor in UNET.inputs:
        value = inputs.get(tensor.name)
        if value is None:
            raise InvalidInputError(tensor.name, "is required")
        present[tensor.name] = value
    sample = present[_SAMPLE.name]
    if sample.ndim != len(_SAMPLE.axes):
        raise InvalidInputError(_SAMPLE.name, f"must have {len(_SAMPLE.axes)} axes {_SAMPLE.axes}, got {sample.shape}")
    rows = int(sample.shape[0])
    if rows < 1:
        raise InvalidInputError(_SAMPLE.name, "must hold at least one batch row")
    for tensor in UNET.inputs[1:]:
        batch = int(present[tensor.name].shape[0])
        if batch != rows:
            raise InvalidInputError(tensor.name, f"batch size {batch} must equal the sample's, {rows}")
    return sample


def zero_noise_pred(sample: np.ndarray) -> np.ndarray:
    """The stand-in's answer: zeros of the sample's shape, in the UNet output's dtype."""
    return np.zeros(sample.shape, dtype=_NOISE_PRED.numpy_dtype)


def simulated_model_file_text() -> str:
    """The ``unet/1/model.py`` of a simulated repository."""
    return (
        f'"""Triton Python-backend entry point of a simulated `{UNET.model_name}`; see sdtriton.perf.simulated."""\n\n'
        f"from {_ADAPTER_MODULE} import {_ADAPTER_CLASS} as TritonPythonModel\n\n"
        '__all__ = ["TritonPythonModel"]\n'
    )


def simulated_unet_config_text(source_config_text: str, latency: SimulatedLatency) -> str:
    """The source's rendered UNet config served by the stand-in: same tensors and batching, plus the latency.

    The backend becomes ``python`` (a source rendered for ``onnxruntime`` or ``tensorrt`` names a model file
    the stand-in does not have), and instances run on the CPU: the stand-in only sleeps.
    """
    from sdtriton.export.configs import config_text, parse_config_text

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


def _copy_or_link(source: str, destination: str) -> None:
    path = Path(source)
    if path.stat().st_size >= _LINK_MIN_BYTES:
        Path(destination).symlink_to(path.resolve())
    else:
        shutil.copy2(source, destination)


def simulated_repository(
    source: Path,
    destination: Path,
    latency: SimulatedLatency,
    *,
    models: Sequence[str] | None = None,
) -> Path:
    """A copy of an exported model repository whose ``unet`` is the stand-in of ``latency``.

    Files of 1 MiB or more (the ONNX weights) are linked into the copy, smaller ones copied. The UNet keeps
    its config (inputs, outputs, ``max_batch_size``, dynamic batching) plus the two latency parameters; its
    ``1/`` holds the stand-in's ``model.py`` and none of the ONNX files.

    Args:
        source: an exported repository (``sdtriton export``).
        destination: a folder that does not exist yet or is empty.
        latency: the stand-in's latency model.
        models: the models to copy (``unet`` among them); default: every model of ``source``.

    Returns:
        ``destination``.

    Raises:
        FileNotFoundError: ``source`` has no ``unet`` or lacks a named model.
        FileExistsError: ``destination`` is not empty.
        ValueError: ``models`` leaves out ``unet``.
    """
    from sdtriton.export.configs import CONFIG_FILE_NAME, MODEL_FILE_NAME

    source = Path(source)
    destination = Path(destination)
    unet_source = source / UNET.model_name
    if not (unet_source / CONFIG_FILE_NAME).is_file():
        raise FileNotFoundError(f"{source} has no {UNET.model_name}/{CONFIG_FILE_NAME}")
    names = sorted(path.name for path in source.iterdir() if path.is_dir()) if models is None else list(models)
    if UNET.model_name not in names:
        raise ValueError(f"models must include {UNET.model_name!r}, got {names}")
    for name in names:
        if not (source / name).is_dir():
            raise FileNotFoundError(f"{source} has no model {name!r}")
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{destination} is not empty")
    destination.mkdir(parents=True, exist_ok=True)

    ignore = shutil.ignore_patterns("__pycache__")
    for name in names:
        if name != UNET.model_name:
            shutil.copytree(source / name, destination / name, copy_function=_copy_or_link, ignore=ignore)
    unet_destination = destination / UNET.model_name
    # Every version folder keeps its small files (none but model.py today); the ONNX files stay behind.
    shutil.copytree(
        unet_source,
        unet_destination,
        ignore=shutil.ignore_patterns("__pycache__", f"{ONNX_FILE_NAME}*", TENSORRT_PLAN_FILE_NAME),
    )
    for version_dir in unet_destination.iterdir():
        if version_dir.is_dir() and version_dir.name.isdigit():
            (version_dir / MODEL_FILE_NAME).write_text(simulated_model_file_text())
    config_path = unet_destination / CONFIG_FILE_NAME
    config_path.write_text(simulated_unet_config_text(config_path.read_text(), latency))
    return destination
