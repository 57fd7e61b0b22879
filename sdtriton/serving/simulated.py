"""A simulated accelerator: a stand-in UNet whose call time follows a stated latency model and burns no CPU.

On a CPU-only host the real UNet's cost says nothing about a GPU, where one call costs a fixed launch and
weight-streaming time plus a small time per batch row. The stand-in sleeps ``fixed_ms + per_item_ms * rows``
per call (``rows`` summed over the requests the dynamic batcher joined) and answers zeros, so that step-level
batching and fairness of the serving engine can be measured as they would behave on a GPU.

This module is pure: the latency model, its config parameters and the request checks. The Triton adapter is
:class:`sdtriton.serving.triton_simulated.SimulatedUNetModel`; :func:`sdtriton.export.variants.simulated_repository`
makes a repository that serves it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from sdtriton.components import UNET
from sdtriton.serving.errors import InvalidInputError

FIXED_MS_PARAMETER = "simulated_fixed_ms"
PER_ITEM_MS_PARAMETER = "simulated_per_item_ms"
_MS_PER_S = 1000.0
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_LATENCY_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*ms\s*\+\s*{_NUMBER}\s*ms\s*$")
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
