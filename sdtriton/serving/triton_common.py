"""What the Triton adapters share (:mod:`~sdtriton.serving.triton_models`, :mod:`~sdtriton.serving.triton_pipeline`,
:mod:`~sdtriton.serving.triton_simulated`): per-request error responses and codes, tensor and config-parameter
reading, Triton's log and custom metrics. No torch: every stub imports it.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import sys
import threading
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from sdtriton.interface import PublicTensor
from sdtriton.serving.errors import (
    ComponentDiedError,
    DeadlineExceededError,
    InvalidInputError,
    RequestCancelledError,
    ServerBusyError,
)
from sdtriton.serving.metrics import MODEL_LABEL, MetricKind, MetricSpec


def triton_logger() -> Any:
    # pb_utils.Logger is bound by the stub after import (it is absent while configs auto-complete).
    return pb_utils.Logger


def report_crashes() -> None:
    """Has a fatal signal in this stub (SIGSEGV, SIGABRT from a heap check, SIGBUS, SIGFPE, SIGILL) print every
    thread's Python stack to the stub's stderr, the server log, before the process dies: tritonserver 2.51 logs
    nothing when a stub dies, so without this a crash leaves no trace but a core file, if core dumps are on."""
    faulthandler.enable(file=sys.stderr, all_threads=True)


def version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def error_response(message: str, code: int) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def respond(request: Any, handle: Callable[[Any], list[Any]], model_name: str) -> Any:
    """Runs one request's handler and turns its failure into that request's own error response."""
    try:
        return pb_utils.InferenceResponse(output_tensors=handle(request))
    except InvalidInputError as error:
        return error_response(str(error), pb_utils.TritonError.INVALID_ARG)
    except RequestCancelledError:
        return error_response("request cancelled", pb_utils.TritonError.CANCELLED)
    except Exception:
        triton_logger().log_error(f"{model_name}: request failed\n{traceback.format_exc()}")
        return error_response(f"{model_name}: internal error (see the server log)", pb_utils.TritonError.INTERNAL)


def optional_items(request: Any, tensor: PublicTensor) -> np.ndarray | None:
    """A public input's items, [N] for a per-item scalar, [N, *dims] for an array per item (an input image)."""
    value = pb_utils.get_input_tensor_by_name(request, tensor.name)
    if value is None:
        return None
    items = value.as_numpy()
    return items if len(tensor.dims) > 1 else items.reshape(-1)


def required_items(request: Any, name: str, allowed: str = "") -> np.ndarray:
    value = pb_utils.get_input_tensor_by_name(request, name)
    if value is None:
        raise InvalidInputError(name, f"is required{': ' + allowed if allowed else ''}")
    return value.as_numpy()


def string_parameter(model_config: dict[str, Any], key: str, default: str) -> str:
    return str(model_config.get("parameters", {}).get(key, {}).get("string_value", default))


def int_parameter(model_config: dict[str, Any], key: str, default: int) -> int:
    raw = model_config.get("parameters", {}).get(key, {}).get("string_value")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"config parameter {key!r} must be an integer, got {raw!r}") from None


class _TritonLogHandler(logging.Handler):
    """Sends the pure modules' ``logging`` records to Triton's log."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        log = triton_logger()
        if record.levelno >= logging.ERROR:
            log.log_error(message)
        elif record.levelno >= logging.WARNING:
            log.log_warn(message)
        else:
            log.log_info(message)


def route_logging_to_triton() -> None:
    package_logger = logging.getLogger("sdtriton")
    if not any(isinstance(handler, _TritonLogHandler) for handler in package_logger.handlers):
        handler = _TritonLogHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)


def error_code(error: Exception) -> int:
    if isinstance(error, InvalidInputError):
        return pb_utils.TritonError.INVALID_ARG
    if isinstance(error, RequestCancelledError):
        return pb_utils.TritonError.CANCELLED
    if isinstance(error, DeadlineExceededError | ServerBusyError | ComponentDiedError):
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INTERNAL


def triton_error_code(value: int) -> Any:
    """The TritonError code whose number is ``value`` (as an error_code tensor carries it); else INTERNAL."""
    codes = (
        pb_utils.TritonError.INVALID_ARG,
        pb_utils.TritonError.CANCELLED,
        pb_utils.TritonError.UNAVAILABLE,
        pb_utils.TritonError.INTERNAL,
    )
    return next((code for code in codes if int(code) == value), pb_utils.TritonError.INTERNAL)


def error_message(error: Exception, model_name: str) -> str:
    if isinstance(error, RequestCancelledError):
        return "request cancelled"
    if error_code(error) == pb_utils.TritonError.INTERNAL:
        return f"{model_name}: internal error (see the server log)"
    return str(error)


def column(values: np.ndarray | list[Any], dtype: str) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


def metric_families(specs: tuple[MetricSpec, ...]) -> dict[str, Any]:
    """Triton's custom metric families of ``specs``, by name; a family must outlive its metrics, so the model keeps
    these as long as it keeps the metrics. Models creating one name share its family (the Python backend's own)."""
    kinds = {
        MetricKind.COUNTER: pb_utils.MetricFamily.COUNTER,
        MetricKind.GAUGE: pb_utils.MetricFamily.GAUGE,
        MetricKind.HISTOGRAM: pb_utils.MetricFamily.HISTOGRAM,
    }
    return {
        spec.name: pb_utils.MetricFamily(name=spec.name, description=spec.description, kind=kinds[spec.kind])
        for spec in specs
    }


# One lock for every custom-metric call of this stub process. The Python backend of Triton 2.51 is not safe for
# two threads updating one metric: increment() and observe() let go of the GIL, then write the operation into
# shared memory that the metric object owns and replace it on each call, so a second thread's call frees the
# region the first one's message names, and tritonserver reads the freed region and dies with SIGSEGV
# (PbString::LoadFromSharedMemory under ModelInstanceState::ProcessMetricRequest; measured: four threads
# incrementing one counter crash it at the first request). The engine updates metrics from its own thread and from
# execute's, so every call goes through this lock.
_METRIC_CALLS = threading.Lock()


class SerializedMetric:
    """A Triton custom metric whose updates are serialized across the stub's threads (see above); after
    :meth:`close`, updates do nothing."""

    def __init__(self, metric: Any) -> None:
        self._metric: Any | None = metric

    def increment(self, value: float) -> None:
        with _METRIC_CALLS:
            if self._metric is not None:
                self._metric.increment(value)

    def set(self, value: float) -> None:
        with _METRIC_CALLS:
            if self._metric is not None:
                self._metric.set(value)

    def observe(self, value: float) -> None:
        with _METRIC_CALLS:
            if self._metric is not None:
                self._metric.observe(value)

    def close(self) -> None:
        """Lets go of the metric (deleted with its family, see :func:`release_triton_objects`)."""
        with _METRIC_CALLS:
            self._metric = None


def new_metric(families: dict[str, Any], spec: MetricSpec, model_name: str, **labels: str) -> SerializedMetric:
    if set(labels) != set(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, got {tuple(labels)}")
    family = families[spec.name]
    all_labels = {MODEL_LABEL: model_name, **labels}
    with _METRIC_CALLS:
        if spec.kind is MetricKind.HISTOGRAM:
            return SerializedMetric(family.Metric(labels=all_labels, buckets=list(spec.buckets)))
        return SerializedMetric(family.Metric(labels=all_labels))


def release_triton_objects(families: dict[str, Any], metrics: Iterable[SerializedMetric] = ()) -> None:
    """What a model's ``finalize`` does last, once the threads that use them have stopped: deletes its custom metrics
    and their families, and collects the garbage cycles that may still hold Python-backend objects.

    Triton 2.51's stub ends in an order that crashes on any such object left for later: ``main`` resets the stub's
    singleton, then ``Stub::~Stub`` drops the model, then ``Py_Finalize`` collects what cycles hold. A MetricFamily
    deleted then clears its metrics through a fresh, empty stub (SIGSEGV in ``Metric::SaveToSharedMemory`` under
    ``MetricFamily::~MetricFamily`` under ``Stub::~Stub``), and an InferRequest frees its strings into shared memory
    already gone (SIGSEGV in ``InferRequest::~InferRequest`` under ``Py_FinalizeEx``'s collection: an exception's
    traceback held the frame of ``execute``). Measured from core files: the entries' and the pipeline's stubs died so
    at every server stop; tritonserver logs nothing when a stub ends, and the tests passed. Deleted and collected
    here, they go while the stub still talks to tritonserver.
    """
    for metric in metrics:
        metric.close()
    with _METRIC_CALLS:
        families.clear()
    gc.collect()


# How often an entry asks Triton whether its requests were cancelled (and checks deadlines and the pipeline).
