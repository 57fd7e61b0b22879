"""Thin Triton adapters over pure code. The ``triton_*`` modules of :mod:`sdtriton.serving` are the only ones that
touch ``triton_python_backend_utils``: this one (entries, components), ``triton_pipeline`` (the ``pipeline`` model's,
kept apart because it alone imports torch), ``triton_simulated`` (the perf profile's UNet) and ``triton_common``
(what they share).

Each ``model_repository/<model>/1/model.py`` re-exports one class from here or from ``triton_pipeline``:

- ``stable_diffusion`` and ``stable_diffusion_stream`` (:class:`EntryModel`) forward each request to the
  ``pipeline`` model through a BLS stream and answer from their own threads (``execute`` returns None), so one
  instance holds many requests; a watcher polls each request's ``is_cancelled()`` and passes a client's cancel
  on to the engine (a BLS call cannot be cancelled on this Triton, so it travels as a ``cancel_key`` request).
- ``pipeline`` (:class:`PipelineModel`, decoupled) validates, tokenizes and submits each request to the
  :class:`~sdtriton.serving.engine.DiffusionEngine`, whose loop thread makes the network calls through BLS and
  answers through each request's response sender; it reports the engine's metrics (``sdtriton_*``, named in
  :mod:`sdtriton.serving.metrics`) through Triton's custom metrics, on the server's ``/metrics``.
- ``text_encoder``, ``unet``, ``vae_decoder`` (:class:`OnnxComponentModel`): ONNX Runtime sessions.

Only the ``pipeline`` stub imports torch: a component's or an entry's stub starts on numpy (and ONNX Runtime).

Every request ends with exactly one final response; a bad request fails alone with ``INVALID_ARG`` and a
message naming the field, a full engine answers ``UNAVAILABLE`` at once, an unexpected failure is logged with
its traceback and answered ``INTERNAL`` without it.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from sdtriton import interface
from sdtriton.components import (
    COMPONENT_FAMILY_PARAMETER,
    COMPONENT_LORA_PARAMETER,
    MODEL_PREFIX_PARAMETER,
    ONNX_FILE_NAME,
    ComponentSpec,
    component_spec,
)
from sdtriton.serving.batching import can_concatenate, concatenate_requests, split_outputs, to_spec_rank
from sdtriton.serving.drain import DrainSignal
from sdtriton.serving.errors import (
    ComponentDiedError,
    DeadlineExceededError,
    ServerBusyError,
)
from sdtriton.serving.flights import Flight
from sdtriton.serving.liveness import StubProcess, end_stubs, is_unhealthy_stub_error
from sdtriton.serving.metrics import (
    REJECTIONS,
)
from sdtriton.serving.triton_common import (
    column,
    error_response,
    int_parameter,
    metric_families,
    new_metric,
    release_triton_objects,
    report_crashes,
    required_items,
    respond,
    string_parameter,
    triton_error_code,
    triton_logger,
    version_dir,
)

_INTRA_OP_THREADS_PARAMETER = "intra_op_num_threads"


class OnnxComponentModel:
    """``text_encoder``, ``unet``, ``vae_decoder`` on the pip server: one ONNX Runtime session each.

    Requests the dynamic batcher queued together run as one batch.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        from sdtriton.serving.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER, ComponentSession

        report_crashes()
        model_config = json.loads(args["model_config"])
        family = string_parameter(model_config, COMPONENT_FAMILY_PARAMETER, "sd")
        prefix = string_parameter(model_config, MODEL_PREFIX_PARAMETER, "")
        self.spec: ComponentSpec = component_spec(
            family,
            args["model_name"].removeprefix(prefix),
            lora=int_parameter(model_config, COMPONENT_LORA_PARAMETER, 0) > 0,
        )
        if args["model_instance_kind"] == "GPU":
            device_id = int(args["model_instance_device_id"])
            providers: list[Any] = [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
        else:
            providers = [CPU_PROVIDER]
        self.session = ComponentSession(
            self.spec,
            version_dir(args) / ONNX_FILE_NAME,
            providers=providers,
            intra_op_num_threads=int_parameter(model_config, _INTRA_OP_THREADS_PARAMETER, 0),
        )

    def _read(self, request: Any) -> dict[str, np.ndarray]:
        return {tensor.name: to_spec_rank(tensor, required_items(request, tensor.name)) for tensor in self.spec.inputs}

    def _outputs(self, outputs: dict[str, np.ndarray]) -> list[Any]:
        return [pb_utils.Tensor(name, outputs[name]) for name in self.spec.output_names]

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            inputs = [self._read(request) for request in requests]
        except Exception:
            return [
                respond(request, lambda r: self._outputs(self.session.run(self._read(r))), self.spec.model_name)
                for request in requests
            ]
        if len(requests) > 1 and can_concatenate(inputs, self.spec.input_names):
            try:
                joined, sizes = concatenate_requests(inputs, self.spec.input_names)
                parts = split_outputs(self.session.run(joined), sizes)
                return [pb_utils.InferenceResponse(output_tensors=self._outputs(part)) for part in parts]
            except Exception:
                triton_logger().log_warn(f"{self.spec.model_name}: batched run failed, running requests one by one")
        return [
            respond(request, lambda _r, i=item: self._outputs(self.session.run(i)), self.spec.model_name)
            for request, item in zip(requests, inputs, strict=True)
        ]

    def finalize(self) -> None:
        release_triton_objects({})


_CANCEL_POLL_S = 0.02


class EntryModel:
    """``stable_diffusion`` and ``stable_diffusion_stream``: forward to the engine, pass cancels on.

    The same adapter serves both: decoupled (the stream) it forwards every progress response, otherwise it
    answers once with the image. ``execute`` returns None and a thread per request waits on its BLS stream,
    so one instance holds every request in flight.
    """

    def initialize(self, args: dict[str, Any]) -> None:
        report_crashes()
        self.model_name = args["model_name"]
        model_config = json.loads(args["model_config"])
        self.stream = pb_utils.using_decoupled_model_transaction_policy(model_config)
        self.output_names = [output["name"] for output in model_config["output"]]
        self._requested_names = [*self.output_names, *(tensor.name for tensor in interface.INTERNAL_OUTPUTS)]
        self._max_batch_size = max(1, int(model_config.get("max_batch_size", 1)))
        # 0: no check here; the engine refuses past its own limit in any case.
        self._max_pending = int_parameter(model_config, "max_pending_requests", 0)
        self._pipeline_name = string_parameter(model_config, MODEL_PREFIX_PARAMETER, "") + interface.PIPELINE_MODEL_NAME
        # This entry's own refusals, in the family the engine's go to (the model label tells them apart; a request
        # is refused by one model only, so the family's sum counts every refusal once).
        self.metric_families: dict[str, Any] = {}
        self._rejections: Any = None
        try:
            self.metric_families = metric_families((REJECTIONS,))
            self._rejections = new_metric(self.metric_families, REJECTIONS, self.model_name)
        except Exception:
            triton_logger().log_error(
                f"{self.model_name}: no custom metrics, serving without\n{traceback.format_exc()}"
            )
        # Set by `sdtriton serve` while it drains before a stop: refuse everything new (sdtriton.serving.drain).
        self._drain = DrainSignal.from_environment()
        # A thread per request in flight: the engine refuses requests past its own limit at once.
        self._executor = ThreadPoolExecutor(max_workers=256, thread_name_prefix=f"{self.model_name}-forward")
        self._lock = threading.Lock()
        self._in_flight: dict[int, Flight] = {}
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
        # A refusal for each request refused, None for each admitted; decided for the whole batch first.
        answers: list[Any | None] = []
        for _ in requests:
            refusal = self._refusal(admitted=answers.count(None))
            if refusal is None:
                answers.append(None)
                continue
            self._count_rejection()
            answers.append(error_response(str(refusal), pb_utils.TritonError.UNAVAILABLE))
        if not self.stream and None not in answers:
            # Every request of this batch refused: one list back to Triton instead of a response sender's round
            # trip each (a burst past the limit reaches the entry in batches: dynamic batching).
            return answers
        # The refusals go out before the admitted requests' BLS streams start: each start waits for the pipeline's
        # acceptance, a round trip to a stub busy with the engine (measured in a burst: 5 refusals of a batch of 8
        # waited 22.6 ms behind 3 starts).
        for request, answer in zip(requests, answers, strict=True):
            if answer is not None:
                request.get_response_sender().send(answer, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        for request in (request for request, answer in zip(requests, answers, strict=True) if answer is None):
            self._admit(request)
        return None

    def _admit(self, request: Any) -> None:
        """Starts ``request``'s BLS stream to the pipeline and a thread that forwards its answers."""
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
            triton_logger().log_error(f"{self.model_name}: request failed\n{traceback.format_exc()}")
            message = f"{self.model_name}: internal error (see the server log)"
            failure = error_response(message, pb_utils.TritonError.INTERNAL)
            request.get_response_sender().send(failure, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        timeout_us = int(request.timeout())
        flight = Flight(
            request=request,
            sender=request.get_response_sender(),
            started_s=time.monotonic(),
            budget_s=timeout_us / 1e6 if timeout_us > 0 else None,
        )
        with self._lock:
            self._in_flight[key] = flight
        self._executor.submit(self._forward, responses, key)

    def _refusal(self, *, admitted: int) -> ServerBusyError | ComponentDiedError | None:
        """Why a request arriving now is refused at once, if it is: the pipeline's process died, the server drains,
        or this entry alone holds as many requests as the engine may, counting ``admitted`` ones of its batch not yet
        in flight (refused here without the hop to the engine, which still enforces its limit over both entries)."""
        if self._pipeline_died is not None:
            return self._pipeline_died
        if self._drain.draining():
            return ServerBusyError.draining()
        # No lock: the cancel watcher holds it through one is_cancelled() round trip to Triton per request in
        # flight, and a refusal must not wait on those. len() of a dict is atomic under the GIL, and only this
        # thread adds to it; a request that left a moment ago is counted once more at worst.
        pending = len(self._in_flight) + admitted
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
            triton_logger().log_warn(f"{self.model_name}: counting a rejection failed\n{traceback.format_exc()}")

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
            triton_logger().log_error(f"{self.model_name}: request failed\n{traceback.format_exc()}")
            final = error_response(
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
        return flight is not None and flight.send_final(final, pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _relay(self, responses: Any, key: int) -> Any:
        """Forwards the pipeline's progress (the stream) and returns the final response: image or error."""
        for response in responses:
            if response.has_error():
                error = response.error()
                if is_unhealthy_stub_error(error.message()):
                    return self._pipeline_unhealthy(error.message())
                return error_response(error.message(), error.code())
            tensors = response.output_tensors()
            if not tensors:
                continue  # the pipeline's acceptance, or its closing flag
            code = pb_utils.get_output_tensor_by_name(response, interface.ERROR_CODE.name)
            if code is not None:
                message = pb_utils.get_output_tensor_by_name(response, interface.ERROR_MESSAGE.name)
                text = message.as_numpy().reshape(-1)[0].decode("utf-8", errors="replace")
                return error_response(text, triton_error_code(int(code.as_numpy().reshape(-1)[0])))
            if pb_utils.get_output_tensor_by_name(response, interface.IMAGE.name) is not None:
                return pb_utils.InferenceResponse(output_tensors=[t for t in tensors if t.name() in self.output_names])
            if self.stream:
                flight = self._in_flight.get(key)
                if flight is not None:  # else answered by the watcher: the engine's late progress goes nowhere
                    flight.send_progress(pb_utils.InferenceResponse(output_tensors=tensors))
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

    def _answer_overdue(self, key: int, flight: Flight, now_s: float) -> None:
        """The engine did not end a request past its budget (it cannot step): the entry answers and cancels it."""
        error = DeadlineExceededError(
            budget_s=flight.budget_s or 0.0,
            elapsed_s=now_s - flight.started_s,
            where="answered by the entry: the engine did not end it in time",
        )
        if self._answer(key, error_response(str(error), pb_utils.TritonError.UNAVAILABLE)):
            triton_logger().log_warn(f"{self.model_name}: {error}")
            self._send_cancel([key])

    def _pipeline_unhealthy(self, message: str) -> Any:
        """The pipeline's stub failed its health check (stopped or starved): ended here, since its next request
        would abort tritonserver; the watcher then answers everything in flight and refuses what comes."""
        ended = end_stubs(parent_pid=os.getppid(), model_directory=self._pipeline_directory)
        if ended:
            triton_logger().log_error(
                f"{self.model_name}: the pipeline's stub process is not healthy ({message}); ended {ended} with "
                "SIGKILL, since its next request would abort tritonserver"
            )
        died = ComponentDiedError(self._pipeline_name, ended[0] if ended else 0, in_flight=True)
        return error_response(str(died), pb_utils.TritonError.UNAVAILABLE)

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
            triton_logger().log_warn(
                f"{self.model_name}: cannot check the pipeline's process\n{traceback.format_exc()}"
            )
            return
        self._pipeline_died = ComponentDiedError(self._pipeline_name, self._pipeline_stub.pid, in_flight=False)
        lost = ComponentDiedError(self._pipeline_name, self._pipeline_stub.pid, in_flight=True)
        with self._lock:
            keys = list(self._in_flight)
        triton_logger().log_error(f"{self.model_name}: {lost}; answering {len(keys)} request(s) in flight")
        for key in keys:
            self._answer(key, error_response(str(lost), pb_utils.TritonError.UNAVAILABLE))

    def _send_cancel(self, keys: list[int]) -> None:
        try:
            cancel = pb_utils.InferenceRequest(
                model_name=self._pipeline_name,
                inputs=[pb_utils.Tensor(interface.CANCEL_KEY.name, column(keys, "int64"))],
                requested_output_names=[],
            )
            for response in cancel.exec(decoupled=True):
                if response.has_error():
                    triton_logger().log_error(f"{self.model_name}: cancel failed: {response.error().message()}")
        except Exception:
            triton_logger().log_error(f"{self.model_name}: cancel failed\n{traceback.format_exc()}")

    def finalize(self) -> None:
        self._stopping.set()
        self._watcher.join(timeout=5)
        # The pipeline ends what it holds when it unloads; nothing here waits on it.
        self._executor.shutdown(wait=False, cancel_futures=True)
        release_triton_objects(self.metric_families, [self._rejections] if self._rejections is not None else [])


def __getattr__(name: str) -> Any:
    # Repositories exported before the pipeline's adapter moved name it here; they keep loading (and only the
    # pipeline's stub, which asks for it, imports torch).
    if name == "PipelineModel":
        from sdtriton.serving.triton_pipeline import PipelineModel

        return PipelineModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
