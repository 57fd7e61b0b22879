"""The only module that touches ``triton_python_backend_utils``: thin Triton adapters over pure code.

Each ``model_repository/<model>/1/model.py`` re-exports one class from here:

- ``stable_diffusion`` and ``stable_diffusion_stream`` (:class:`EntryModel`) forward each request to the
  ``pipeline`` model through a BLS stream and answer from their own threads (``execute`` returns None), so one
  instance holds many requests; a watcher polls each request's ``is_cancelled()`` and passes a client's cancel
  on to the engine (a BLS call cannot be cancelled on this Triton, so it travels as a ``cancel_key`` request).
- ``pipeline`` (:class:`PipelineModel`, decoupled) validates, tokenizes and submits each request to the
  :class:`~sdtriton.serving.engine.DiffusionEngine`, whose loop thread makes the network calls through BLS and
  answers through each request's response sender; it reports the engine's metrics (``sdtriton_*``, named in
  :mod:`sdtriton.serving.metrics`) through Triton's custom metrics, on the server's ``/metrics``.
- ``text_encoder``, ``unet``, ``vae_decoder`` (:class:`OnnxComponentModel`): ONNX Runtime sessions.

Every request ends with exactly one final response; a bad request fails alone with ``INVALID_ARG`` and a
message naming the field, a full engine answers ``UNAVAILABLE`` at once, an unexpected failure is logged with
its traceback and answered ``INTERNAL`` without it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from sdtriton import interface
from sdtriton.components import (
    COMPONENT_FAMILY_PARAMETER,
    ENGINE_DEVICE_PARAMETER,
    MODEL_PREFIX_PARAMETER,
    ONNX_FILE_NAME,
    ComponentSpec,
    component_spec,
)
from sdtriton.interface import PublicTensor
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.batching import can_concatenate, concatenate_requests, split_outputs, to_spec_rank
from sdtriton.serving.drain import DrainSignal
from sdtriton.serving.errors import (
    ComponentDiedError,
    DeadlineExceededError,
    InvalidInputError,
    RequestCancelledError,
    ServerBusyError,
)
from sdtriton.serving.liveness import StubProcess, end_stubs, is_unhealthy_stub_error
from sdtriton.serving.metrics import (
    CACHE_HITS,
    CACHE_LOOKUPS,
    ENDED_STATES,
    ENGINE_METRICS,
    IMAGE_DURATION,
    IMAGES,
    MODEL_LABEL,
    PENDING_LIMIT,
    REJECTIONS,
    REQUESTS_ENDED,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    STEP_DURATION,
    STEPS,
    UNET_BATCH_ROWS,
    UNET_CALL_DURATION,
    MetricKind,
    MetricSpec,
)
from sdtriton.serving.networks import TORCH_DTYPES, SpecNetworks

_INTRA_OP_THREADS_PARAMETER = "intra_op_num_threads"


def _logger() -> Any:
    # pb_utils.Logger is bound by the stub after import (it is absent while configs auto-complete).
    return pb_utils.Logger


class ComponentCallError(RuntimeError):
    """A BLS call to a component model returned an error."""


def _version_dir(args: dict[str, Any]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def _error_response(message: str, code: int) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


def _respond(request: Any, handle: Callable[[Any], list[Any]], model_name: str) -> Any:
    """Runs one request's handler and turns its failure into that request's own error response."""
    try:
        return pb_utils.InferenceResponse(output_tensors=handle(request))
    except InvalidInputError as error:
        return _error_response(str(error), pb_utils.TritonError.INVALID_ARG)
    except RequestCancelledError:
        return _error_response("request cancelled", pb_utils.TritonError.CANCELLED)
    except Exception:
        _logger().log_error(f"{model_name}: request failed\n{traceback.format_exc()}")
        return _error_response(f"{model_name}: internal error (see the server log)", pb_utils.TritonError.INTERNAL)


def _optional_items(request: Any, tensor: PublicTensor) -> np.ndarray | None:
    value = pb_utils.get_input_tensor_by_name(request, tensor.name)
    return None if value is None else value.as_numpy().reshape(-1)


def _required_items(request: Any, name: str, allowed: str = "") -> np.ndarray:
    value = pb_utils.get_input_tensor_by_name(request, name)
    if value is None:
        raise InvalidInputError(name, f"is required{': ' + allowed if allowed else ''}")
    return value.as_numpy()


def _string_parameter(model_config: dict[str, Any], key: str, default: str) -> str:
    return str(model_config.get("parameters", {}).get(key, {}).get("string_value", default))


def _int_parameter(model_config: dict[str, Any], key: str, default: int) -> int:
    raw = model_config.get("parameters", {}).get(key, {}).get("string_value")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"config parameter {key!r} must be an integer, got {raw!r}") from None


class OnnxComponentModel:
    """``text_encoder``, ``unet``, ``vae_decoder`` on the pip server: one ONNX Runtime session each.

    Requests the dynamic batcher queued together run as one batch.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        from sdtriton.serving.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER, ComponentSession

        model_config = json.loads(args["model_config"])
        family = _string_parameter(model_config, COMPONENT_FAMILY_PARAMETER, "sd")
        prefix = _string_parameter(model_config, MODEL_PREFIX_PARAMETER, "")
        self.spec: ComponentSpec = component_spec(family, args["model_name"].removeprefix(prefix))
        if args["model_instance_kind"] == "GPU":
            device_id = int(args["model_instance_device_id"])
            providers: list[Any] = [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
        else:
            providers = [CPU_PROVIDER]
        self.session = ComponentSession(
            self.spec,
            _version_dir(args) / ONNX_FILE_NAME,
            providers=providers,
            intra_op_num_threads=_int_parameter(model_config, _INTRA_OP_THREADS_PARAMETER, 0),
        )

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        return {tensor.name: to_spec_rank(tensor, _required_items(request, tensor.name)) for tensor in self.spec.inputs}

    def _outputs(self, outputs: dict[str, np.ndarray]) -> list[Any]:
        return [pb_utils.Tensor(name, outputs[name]) for name in self.spec.output_names]

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            inputs = [self._read(request) for request in requests]
        except Exception:
            return [
                _respond(request, lambda r: self._outputs(self.session.run(self._read(r))), self.spec.model_name)
                for request in requests
            ]
        if len(requests) > 1 and can_concatenate(inputs, self.spec.input_names):
            try:
                joined, sizes = concatenate_requests(inputs, self.spec.input_names)
                parts = split_outputs(self.session.run(joined), sizes)
                return [pb_utils.InferenceResponse(output_tensors=self._outputs(part)) for part in parts]
            except Exception:
                _logger().log_warn(f"{self.spec.model_name}: batched run failed, running requests one by one")
        return [
            _respond(request, lambda _r, i=item: self._outputs(self.session.run(i)), self.spec.model_name)
            for request, item in zip(requests, inputs, strict=True)
        ]


class BlsComponents(SpecNetworks):
    """The pipeline's networks reached through BLS calls to their own Triton models.

    The calls carry no request trace: one call serves many requests, and a decoupled model's request (and its
    trace) is released when ``execute`` returns, so the engine's later calls cannot name it (doing so crashed
    this Triton: measured). With ``--trace-config`` the network calls are traced on their own.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        model_prefix: str = "",
        device: torch.device | str = "cpu",
        repository: Path | None = None,
    ) -> None:
        super().__init__(config, device=device)
        self.model_prefix = model_prefix
        # The model repository, to find a component's stub process when Triton reports it unhealthy.
        self.repository = repository
        # Components whose stub process died or was ended unhealthy: Triton restarts none (sdtriton.serving.liveness).
        self._dead: dict[str, ComponentDiedError] = {}
        # Ask the networks to answer where the loop's tensors live: on a GPU host, GPU memory (no host copy).
        if self.device.type == "cuda":
            self._preferred_memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, self.device.index or 0)
        else:
            self._preferred_memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def run(self, spec: ComponentSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model_name = self.model_prefix + spec.model_name
        if model_name in self._dead:
            raise self._dead[model_name]
        tensors = []
        for tensor in spec.inputs:
            value = inputs[tensor.name].to(device=self.device, dtype=TORCH_DTYPES[tensor.triton_dtype])
            if len(tensor.axes) == 1:
                value = value.reshape(-1, 1)  # a per-item scalar travels as [batch, 1]
            # DLPack hands the tensor's own memory to Triton (CUDA IPC on a GPU): no host round trip.
            tensors.append(pb_utils.Tensor.from_dlpack(tensor.name, to_dlpack(value.contiguous())))
        response = pb_utils.InferenceRequest(
            model_name=model_name,
            inputs=tensors,
            requested_output_names=spec.output_names,
            preferred_memory=self._preferred_memory,
        ).exec()
        if response.has_error():
            message = response.error().message()
            if is_unhealthy_stub_error(message):
                raise self._unhealthy(model_name, message)
            raise ComponentCallError(f"{spec.model_name}: {message}")
        # clone: the response's buffers are Triton's; the loop keeps its own copy, on its own device.
        return {
            name: from_dlpack(pb_utils.get_output_tensor_by_name(response, name).to_dlpack()).to(self.device).clone()
            for name in spec.output_names
        }

    def _unhealthy(self, model_name: str, message: str) -> ComponentDiedError:
        """A component's stub did not answer its health check: dead, or alive but stopped or starved. Alive, it is
        ended here: its next request would abort tritonserver (measured, see sdtriton.serving.liveness). From then
        on the component is refused at once, until the server restarts."""
        ended = []
        if self.repository is not None:
            ended = end_stubs(parent_pid=os.getppid(), model_directory=self.repository / model_name)
        if ended:
            _logger().log_error(
                f"{model_name}: its stub process is not healthy ({message}); ended {ended} with SIGKILL, since its "
                "next request would abort tritonserver; the server needs a restart"
            )
        else:
            _logger().log_error(f"{model_name}: its stub process is gone ({message}); the server needs a restart")
        died = ComponentDiedError(model_name, ended[0] if ended else 0, in_flight=True)
        self._dead[model_name] = died
        return died


class _TritonLogHandler(logging.Handler):
    """Sends the pure modules' ``logging`` records to Triton's log."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        log = _logger()
        if record.levelno >= logging.ERROR:
            log.log_error(message)
        elif record.levelno >= logging.WARNING:
            log.log_warn(message)
        else:
            log.log_info(message)


def _route_logging_to_triton() -> None:
    package_logger = logging.getLogger("sdtriton")
    if not any(isinstance(handler, _TritonLogHandler) for handler in package_logger.handlers):
        handler = _TritonLogHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.INFO)


def _error_code(error: Exception) -> int:
    if isinstance(error, InvalidInputError):
        return pb_utils.TritonError.INVALID_ARG
    if isinstance(error, RequestCancelledError):
        return pb_utils.TritonError.CANCELLED
    if isinstance(error, DeadlineExceededError | ServerBusyError | ComponentDiedError):
        return pb_utils.TritonError.UNAVAILABLE
    return pb_utils.TritonError.INTERNAL


def _triton_error_code(value: int) -> Any:
    """The TritonError code whose number is ``value`` (as an error_code tensor carries it); else INTERNAL."""
    codes = (
        pb_utils.TritonError.INVALID_ARG,
        pb_utils.TritonError.CANCELLED,
        pb_utils.TritonError.UNAVAILABLE,
        pb_utils.TritonError.INTERNAL,
    )
    return next((code for code in codes if int(code) == value), pb_utils.TritonError.INTERNAL)


def _error_message(error: Exception, model_name: str) -> str:
    if isinstance(error, RequestCancelledError):
        return "request cancelled"
    if _error_code(error) == pb_utils.TritonError.INTERNAL:
        return f"{model_name}: internal error (see the server log)"
    return str(error)


def _column(values: np.ndarray | list[Any], dtype: str) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(-1, 1)


class _StreamSink:
    """Answers one ``pipeline`` request through its response sender (an engine :class:`ResponseSink`)."""

    def __init__(self, sender: Any, model_name: str) -> None:
        self._sender = sender
        self._model_name = model_name

    @staticmethod
    def _progress_tensors(steps_done: Any, total_steps: Any, elapsed_s: float) -> list[Any]:
        return [
            pb_utils.Tensor(interface.STEP.name, _column(steps_done, "int32")),
            pb_utils.Tensor(interface.TOTAL_STEPS.name, _column(total_steps, "int32")),
            pb_utils.Tensor(interface.ELAPSED_MS.name, _column([elapsed_s * 1000.0] * len(steps_done), "float32")),
        ]

    def progress(self, progress: Any) -> None:
        tensors = self._progress_tensors(progress.steps_done, progress.total_steps, progress.elapsed_s)
        if progress.previews is not None:
            tensors.append(pb_utils.Tensor(interface.PREVIEW.name, np.stack(progress.previews)))
        self._sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

    def finish(self, result: Any) -> None:
        tensors = [
            pb_utils.Tensor(interface.IMAGE.name, np.stack(result.images)),
            pb_utils.Tensor(interface.USED_SEED.name, _column(result.seeds, "int64")),
        ]
        self._sender.send(
            pb_utils.InferenceResponse(output_tensors=tensors), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )

    def fail(self, error: Exception) -> None:
        if _error_code(error) == pb_utils.TritonError.INTERNAL:
            _logger().log_error(f"{self._model_name}: request failed: {error!r}")
        tensors = [
            pb_utils.Tensor(interface.ERROR_CODE.name, _column([int(_error_code(error))], "int32")),
            pb_utils.Tensor(
                interface.ERROR_MESSAGE.name, _column([_error_message(error, self._model_name).encode()], "object")
            ),
        ]
        self._sender.send(
            pb_utils.InferenceResponse(output_tensors=tensors), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )


def _engine_device(value: str) -> torch.device:
    """The device of the engine's tensors: ``cpu`` or ``cuda[:N]`` (export --gpu), checked at load."""
    try:
        device = torch.device(value)
    except RuntimeError as error:
        raise ValueError(f"{ENGINE_DEVICE_PARAMETER} must be cpu or cuda[:N], got {value!r}") from error
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{ENGINE_DEVICE_PARAMETER} must be cpu or cuda[:N], got {value!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{ENGINE_DEVICE_PARAMETER} is {value!r} but torch sees no CUDA device in this container")
    return device


def _engine_limits(model_config: dict[str, Any]) -> Any:
    """EngineLimits from the config's parameters, each named as its field; an absent one keeps its default."""
    import dataclasses

    from sdtriton.serving.engine import EngineLimits

    defaults = EngineLimits()
    return EngineLimits(
        **{
            field.name: _int_parameter(model_config, field.name, getattr(defaults, field.name))
            for field in dataclasses.fields(EngineLimits)
        }
    )


def _metric_families(specs: tuple[MetricSpec, ...]) -> dict[str, Any]:
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


def _new_metric(families: dict[str, Any], spec: MetricSpec, model_name: str, **labels: str) -> Any:
    if set(labels) != set(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, got {tuple(labels)}")
    family = families[spec.name]
    all_labels = {MODEL_LABEL: model_name, **labels}
    if spec.kind is MetricKind.HISTOGRAM:
        return family.Metric(labels=all_labels, buckets=list(spec.buckets))
    return family.Metric(labels=all_labels)


class _TritonEngineMetrics:
    """The engine's :class:`~sdtriton.serving.metrics.EngineObserver` over Triton's custom metrics (``/metrics``).

    The engine guards every call (a failed update is logged and the request goes on). Metrics of a label value
    known only in use (a UNet, a cache) are made on first use.
    """

    def __init__(self, families: dict[str, Any], model_name: str, *, max_pending_requests: int) -> None:
        self._families = families
        self._model_name = model_name
        self._lock = threading.Lock()
        self._labelled: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        self._running = self._metric(REQUESTS_RUNNING)
        self._waiting = self._metric(REQUESTS_WAITING)
        self._metric(PENDING_LIMIT).set(max_pending_requests)
        self._step_duration = self._metric(STEP_DURATION)
        self._steps = self._metric(STEPS)
        self._image_duration = self._metric(IMAGE_DURATION)
        self._images = self._metric(IMAGES)
        self._rejections = self._metric(REJECTIONS)
        for state in ENDED_STATES:  # every state from zero, so that rates and alerts see the first one
            self._metric(REQUESTS_ENDED, state=state)

    def _metric(self, spec: MetricSpec, **labels: str) -> Any:
        key = (spec.name, tuple(sorted(labels.items())))
        with self._lock:
            metric = self._labelled.get(key)
            if metric is None:
                metric = self._labelled[key] = _new_metric(self._families, spec, self._model_name, **labels)
            return metric

    def requests_changed(self, *, running: int, waiting: int) -> None:
        self._running.set(running)
        self._waiting.set(waiting)

    def request_refused(self) -> None:
        self._rejections.increment(1)

    def unet_called(self, *, unet: str, rows: int, duration_s: float) -> None:
        self._metric(UNET_BATCH_ROWS, unet=unet).observe(rows)
        self._metric(UNET_CALL_DURATION, unet=unet).observe(duration_s)

    def iteration_done(self, *, steps: int, duration_s: float) -> None:
        self._step_duration.observe(duration_s)
        self._steps.increment(steps)

    def image_finished(self, *, duration_s: float) -> None:
        self._image_duration.observe(duration_s)
        self._images.increment(1)

    def request_ended(self, *, state: str) -> None:
        self._metric(REQUESTS_ENDED, state=state).increment(1)

    def cache_lookup(self, *, cache: str, hit: bool) -> None:
        self._metric(CACHE_LOOKUPS, cache=cache).increment(1)
        if hit:
            self._metric(CACHE_HITS, cache=cache).increment(1)


class PipelineModel:
    """``pipeline`` (decoupled): validation and tokenization, then the diffusion engine owns the request."""

    def initialize(self, args: dict[str, Any]) -> None:
        # Imported here so that the component models' processes never load torch and diffusers.
        from sdtriton.serving.engine import DiffusionEngine, warm_up_engine_code
        from sdtriton.serving.text import load_tokenizers

        self.model_name = args["model_name"]
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise ValueError(f"{self.model_name} must be decoupled (model_transaction_policy {{ decoupled: true }})")
        _route_logging_to_triton()
        self.config = PipelineConfig.load(_version_dir(args))
        self.tokenizers = load_tokenizers(_version_dir(args), self.config)
        limits = _engine_limits(model_config)
        networks = BlsComponents(
            self.config,
            repository=Path(args["model_repository"]).parent,
            model_prefix=_string_parameter(model_config, MODEL_PREFIX_PARAMETER, ""),
            device=_engine_device(_string_parameter(model_config, ENGINE_DEVICE_PARAMETER, "cpu")),
        )
        # Kept here for the model's life: a family must outlive its metrics.
        self.metric_families: dict[str, Any] = {}
        self.metrics: _TritonEngineMetrics | None = None
        try:
            self.metric_families = _metric_families(ENGINE_METRICS)
            self.metrics = _TritonEngineMetrics(
                self.metric_families, self.model_name, max_pending_requests=limits.max_pending_requests
            )
        except Exception:
            _logger().log_error(f"{self.model_name}: no custom metrics, serving without\n{traceback.format_exc()}")
        warm_up_s = warm_up_engine_code(config=self.config, tokenizers=self.tokenizers, device=networks.device)
        self.engine = DiffusionEngine(config=self.config, networks=networks, limits=limits, observer=self.metrics)
        self.engine.start()
        _logger().log_info(
            f"{self.model_name}: diffusion engine started with {limits} (its code warmed up in {warm_up_s:.2f} s)"
        )

    def _engine_request(self, request: Any, sender: Any) -> Any:
        from sdtriton.serving.engine import EngineRequest
        from sdtriton.serving.requests import parse_request

        parsed = parse_request(
            {tensor.name: _optional_items(request, tensor) for tensor in interface.STREAM_INPUTS},
            config=self.config,
            tokenizers=self.tokenizers,
        )
        key_items = _optional_items(request, interface.REQUEST_KEY)
        progress_items = _optional_items(request, interface.SEND_PROGRESS)
        timeout_us = int(request.timeout())
        return EngineRequest(
            key=int(key_items[0]) if key_items is not None else secrets.randbits(63),
            images=parsed.images,
            sink=_StreamSink(sender, self.model_name),
            timeout_s=timeout_us / 1e6 if timeout_us > 0 else None,
            send_progress=bool(progress_items[0]) if progress_items is not None else False,
            preview_every=parsed.preview_every,
            seeded=parsed.seeded,
            request_id=request.request_id(),
        )

    def _may_answer_from_cache(self, request: Any) -> bool:
        """Whether the engine may answer this request from its response cache (then no room check before parsing)."""
        progress_items = _optional_items(request, interface.SEND_PROGRESS)
        return self.engine.may_answer_from_cache(
            seeded=_optional_items(request, interface.SEED) is not None,
            send_progress=bool(progress_items[0]) if progress_items is not None else False,
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                cancel_items = _optional_items(request, interface.CANCEL_KEY)
                if cancel_items is not None:
                    for key in cancel_items:
                        self.engine.cancel(int(key))
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                # Accepted: the entry's BLS call returns at this first response (it waits in its execute, so
                # that Triton's trace of the entry request is alive while this request's trace is spawned).
                sender.send(pb_utils.InferenceResponse(output_tensors=[]))
                if not self._may_answer_from_cache(request):
                    self.engine.check_room()  # a full engine refuses before any parsing
                self.engine.submit(self._engine_request(request, sender))
            except Exception as error:
                if _error_code(error) == pb_utils.TritonError.INTERNAL:
                    _logger().log_error(f"{self.model_name}: request failed\n{traceback.format_exc()}")
                _StreamSink(sender, self.model_name).fail(error)
        return None

    def finalize(self) -> None:
        self.engine.stop()


# How often an entry asks Triton whether its requests were cancelled (and checks deadlines and the pipeline).
_CANCEL_POLL_S = 0.02
# The engine ends an expired request at its next step; past its budget by this much, the entry answers for it (an
# engine that cannot step: a stopped or hung process).
_ENTRY_DEADLINE_GRACE_S = 2.0


@dataclass
class _Flight:
    """A request an entry forwarded and has not answered yet."""

    request: Any
    sender: Any
    started_s: float  # time.monotonic()
    budget_s: float | None  # the client's timeout

    def overdue(self, now_s: float) -> bool:
        return self.budget_s is not None and now_s - self.started_s > self.budget_s + _ENTRY_DEADLINE_GRACE_S


class EntryModel:
    """``stable_diffusion`` and ``stable_diffusion_stream``: forward to the engine, pass cancels on.

    The same adapter serves both: decoupled (the stream) it forwards every progress response, otherwise it
    answers once with the image. ``execute`` returns None and a thread per request waits on its BLS stream,
    so one instance holds every request in flight.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        self.model_name = args["model_name"]
        model_config = json.loads(args["model_config"])
        self.stream = pb_utils.using_decoupled_model_transaction_policy(model_config)
        self.output_names = [output["name"] for output in model_config["output"]]
        self._requested_names = [*self.output_names, *(tensor.name for tensor in interface.INTERNAL_OUTPUTS)]
        self._max_batch_size = max(1, int(model_config.get("max_batch_size", 1)))
        # 0: no check here; the engine refuses past its own limit in any case.
        self._max_pending = _int_parameter(model_config, "max_pending_requests", 0)
        self._pipeline_name = (
            _string_parameter(model_config, MODEL_PREFIX_PARAMETER, "") + interface.PIPELINE_MODEL_NAME
        )
        # This entry's own refusals, in the family the engine's go to (the model label tells them apart; a request
        # is refused by one model only, so the family's sum counts every refusal once).
        self.metric_families: dict[str, Any] = {}
        self._rejections: Any = None
        try:
            self.metric_families = _metric_families((REJECTIONS,))
            self._rejections = _new_metric(self.metric_families, REJECTIONS, self.model_name)
        except Exception:
            _logger().log_error(f"{self.model_name}: no custom metrics, serving without\n{traceback.format_exc()}")
        # Set by `sdtriton serve` while it drains before a stop: refuse everything new (sdtriton.serving.drain).
        self._drain = DrainSignal.from_environment()
        # A thread per request in flight: the engine refuses requests past its own limit at once.
        self._executor = ThreadPoolExecutor(max_workers=256, thread_name_prefix=f"{self.model_name}-forward")
        self._lock = threading.Lock()
        self._in_flight: dict[int, _Flight] = {}
        self._cancel_sent: set[int] = set()
        # The pipeline's stub, found on first need: Triton restarts no decoupled model's stub, so once it is gone
        # the entry answers what it forwarded there and refuses what comes (sdtriton.serving.liveness).
        self._pipeline_directory = Path(args["model_repository"]).parent / self._pipeline_name
        self._pipeline_stub: StubProcess | None = None
        self._pipeline_died: ComponentDiedError | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch_cancels, name=f"{self.model_name}-cancels", daemon=True)
        self._watcher.start()

    def execute(self, requests: list[Any]) -> list[Any] | None:
        # An error response for each request answered at once (refused or failed), None for each forwarded.
        answers: list[Any | None] = []
        for request in requests:
            refusal = self._refusal()
            if refusal is not None:
                self._count_rejection()
                answers.append(_error_response(str(refusal), pb_utils.TritonError.UNAVAILABLE))
                continue
            key = secrets.randbits(63)
            # Everything read from the request is read here, before execute returns: its tensors are copied,
            # so the forwarding thread touches only its response sender (and the watcher is_cancelled()).
            # The BLS stream starts here too, not in the forwarding thread: Triton releases this request, and
            # its trace, when execute returns, and a BLS call spawns its child trace from the parent's; started
            # after that, it read a freed trace and tritonserver died with SIGSEGV under --trace-config
            # (measured). exec() returns at the pipeline's first response, the acceptance it sends at once.
            try:
                responses = self._pipeline_request(request, key).exec(decoupled=True)
            except Exception:
                _logger().log_error(f"{self.model_name}: request failed\n{traceback.format_exc()}")
                message = f"{self.model_name}: internal error (see the server log)"
                answers.append(_error_response(message, pb_utils.TritonError.INTERNAL))
                continue
            answers.append(None)
            timeout_us = int(request.timeout())
            flight = _Flight(
                request=request,
                sender=request.get_response_sender(),
                started_s=time.monotonic(),
                budget_s=timeout_us / 1e6 if timeout_us > 0 else None,
            )
            with self._lock:
                self._in_flight[key] = flight
            self._executor.submit(self._forward, responses, key)
        if not self.stream and all(answer is not None for answer in answers):
            # Every request of this batch answered now: one list back to Triton instead of a response sender's
            # round trip each (a burst past the limit reaches the entry in batches: dynamic batching).
            return answers
        for request, answer in zip(requests, answers, strict=True):
            if answer is not None:
                request.get_response_sender().send(answer, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _refusal(self) -> ServerBusyError | ComponentDiedError | None:
        """Why a request arriving now is refused at once, if it is: the pipeline's process died, the server drains,
        or this entry alone holds as many requests as the engine may (refused here without the hop to the engine,
        which still enforces its limit over both entries together)."""
        if self._pipeline_died is not None:
            return self._pipeline_died
        if self._drain.draining():
            return ServerBusyError.draining()
        # No lock: the cancel watcher holds it through one is_cancelled() round trip to Triton per request in
        # flight, and a refusal must not wait on those. len() of a dict is atomic under the GIL, and only this
        # thread adds to it; a request that left a moment ago is counted once more at worst.
        pending = len(self._in_flight)
        if self._max_pending and pending >= self._max_pending:
            return ServerBusyError.full(pending, self._max_pending)
        return None

    def _count_rejection(self) -> None:
        if self._rejections is None:
            return
        try:
            self._rejections.increment(1)
        except Exception:
            # A metric must not fail the request; the refusal goes out in any case.
            _logger().log_warn(f"{self.model_name}: counting a rejection failed\n{traceback.format_exc()}")

    def _pipeline_request(self, request: Any, key: int) -> Any:
        inputs = [pb_utils.Tensor(tensor.name(), np.array(tensor.as_numpy(), copy=True)) for tensor in request.inputs()]
        items = inputs[0].as_numpy().shape[0] if inputs else 1
        inputs.append(pb_utils.Tensor(interface.REQUEST_KEY.name, np.full((items, 1), key, dtype=np.int64)))
        inputs.append(pb_utils.Tensor(interface.SEND_PROGRESS.name, np.full((items, 1), self.stream, dtype=bool)))
        return pb_utils.InferenceRequest(
            # The client's request id travels with it, so the engine's log lines about it carry it.
            request_id=request.request_id(),
            model_name=self._pipeline_name,
            inputs=inputs,
            requested_output_names=self._requested_names,
            timeout=int(request.timeout()),
            trace=request.trace(),
        )

    def _forward(self, responses: Any, key: int) -> None:
        try:
            final = self._relay(responses, key)
        except Exception:
            _logger().log_error(f"{self.model_name}: request failed\n{traceback.format_exc()}")
            final = _error_response(
                f"{self.model_name}: internal error (see the server log)", pb_utils.TritonError.INTERNAL
            )
        self._answer(key, final)

    def _answer(self, key: int, final: Any) -> bool:
        """Sends ``final`` unless the request was answered already (by the watcher: overdue, pipeline died)."""
        # Out of the watcher's sight before the final response frees the request: is_cancelled() on an
        # answered request crashes this Triton.
        with self._lock:
            flight = self._in_flight.pop(key, None)
            self._cancel_sent.discard(key)
        if flight is None:
            return False
        flight.sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return True

    def _relay(self, responses: Any, key: int) -> Any:
        """Forwards the pipeline's progress (the stream) and returns the final response: image or error."""
        for response in responses:
            if response.has_error():
                error = response.error()
                if is_unhealthy_stub_error(error.message()):
                    return self._pipeline_unhealthy(error.message())
                return _error_response(error.message(), error.code())
            tensors = response.output_tensors()
            if not tensors:
                continue  # the pipeline's acceptance, or its closing flag
            code = pb_utils.get_output_tensor_by_name(response, interface.ERROR_CODE.name)
            if code is not None:
                message = pb_utils.get_output_tensor_by_name(response, interface.ERROR_MESSAGE.name)
                text = message.as_numpy().reshape(-1)[0].decode("utf-8", errors="replace")
                return _error_response(text, _triton_error_code(int(code.as_numpy().reshape(-1)[0])))
            if pb_utils.get_output_tensor_by_name(response, interface.IMAGE.name) is not None:
                return pb_utils.InferenceResponse(output_tensors=[t for t in tensors if t.name() in self.output_names])
            if self.stream:
                flight = self._in_flight.get(key)
                if flight is None:
                    continue  # answered by the watcher; the engine's late progress goes nowhere
                flight.sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
        raise RuntimeError("the pipeline's stream ended without an image")

    def _watch_cancels(self) -> None:
        while not self._stopping.wait(_CANCEL_POLL_S):
            with self._lock:
                cancelled = [
                    key
                    for key, flight in self._in_flight.items()
                    if key not in self._cancel_sent and flight.request.is_cancelled()
                ]
                self._cancel_sent.update(cancelled)
                now_s = time.monotonic()
                overdue = {key: flight for key, flight in self._in_flight.items() if flight.overdue(now_s)}
                holding = bool(self._in_flight)
            for start in range(0, len(cancelled), self._max_batch_size):
                self._send_cancel(cancelled[start : start + self._max_batch_size])
            for key, flight in overdue.items():
                self._answer_overdue(key, flight, now_s)
            if holding and self._pipeline_died is None:
                self._check_pipeline()

    def _answer_overdue(self, key: int, flight: _Flight, now_s: float) -> None:
        """The engine did not end a request past its budget (it cannot step): the entry answers and cancels it."""
        error = DeadlineExceededError(
            budget_s=flight.budget_s or 0.0,
            elapsed_s=now_s - flight.started_s,
            where="answered by the entry: the engine did not end it in time",
        )
        if self._answer(key, _error_response(str(error), pb_utils.TritonError.UNAVAILABLE)):
            _logger().log_warn(f"{self.model_name}: {error}")
            self._send_cancel([key])

    def _pipeline_unhealthy(self, message: str) -> Any:
        """The pipeline's stub failed its health check (stopped or starved): ended here, since its next request
        would abort tritonserver; the watcher then answers everything in flight and refuses what comes."""
        ended = end_stubs(parent_pid=os.getppid(), model_directory=self._pipeline_directory)
        if ended:
            _logger().log_error(
                f"{self.model_name}: the pipeline's stub process is not healthy ({message}); ended {ended} with "
                "SIGKILL, since its next request would abort tritonserver"
            )
        died = ComponentDiedError(self._pipeline_name, ended[0] if ended else 0, in_flight=True)
        return _error_response(str(died), pb_utils.TritonError.UNAVAILABLE)

    def _check_pipeline(self) -> None:
        """Answers every request in flight UNAVAILABLE once the pipeline's stub process has died."""
        try:
            if self._pipeline_stub is None:
                self._pipeline_stub = StubProcess.find(
                    parent_pid=os.getppid(), model_directory=self._pipeline_directory
                )
            if self._pipeline_stub is None or self._pipeline_stub.alive():
                return
        except (OSError, ValueError):
            _logger().log_warn(f"{self.model_name}: cannot check the pipeline's process\n{traceback.format_exc()}")
            return
        self._pipeline_died = ComponentDiedError(self._pipeline_name, self._pipeline_stub.pid, in_flight=False)
        lost = ComponentDiedError(self._pipeline_name, self._pipeline_stub.pid, in_flight=True)
        with self._lock:
            keys = list(self._in_flight)
        _logger().log_error(f"{self.model_name}: {lost}; answering {len(keys)} request(s) in flight")
        for key in keys:
            self._answer(key, _error_response(str(lost), pb_utils.TritonError.UNAVAILABLE))

    def _send_cancel(self, keys: list[int]) -> None:
        try:
            cancel = pb_utils.InferenceRequest(
                model_name=self._pipeline_name,
                inputs=[pb_utils.Tensor(interface.CANCEL_KEY.name, _column(keys, "int64"))],
                requested_output_names=[],
            )
            for response in cancel.exec(decoupled=True):
                if response.has_error():
                    _logger().log_error(f"{self.model_name}: cancel failed: {response.error().message()}")
        except Exception:
            _logger().log_error(f"{self.model_name}: cancel failed\n{traceback.format_exc()}")

    def finalize(self) -> None:
        self._stopping.set()
        self._watcher.join(timeout=5)
        # The pipeline ends what it holds when it unloads; nothing here waits on it.
        self._executor.shutdown(wait=False, cancel_futures=True)
