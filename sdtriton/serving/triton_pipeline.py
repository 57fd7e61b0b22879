"""The ``pipeline`` model's Triton adapter: the diffusion engine behind BLS calls to the component models.

Its own module, apart from :mod:`sdtriton.serving.triton_models` (the entries' and components' adapters and the
helpers all share), because it alone needs torch: the five other stubs of a server start without importing it
(faster start and restart, less memory per stub).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack

from sdtriton import interface
from sdtriton.components import ENGINE_DEVICE_PARAMETER, MODEL_PREFIX_PARAMETER, ComponentSpec
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.errors import ComponentDiedError
from sdtriton.serving.liveness import end_stubs, is_unhealthy_stub_error
from sdtriton.serving.metrics import (
    CACHE_HITS,
    CACHE_LOOKUPS,
    ENDED_STATES,
    ENGINE_METRICS,
    IMAGE_DURATION,
    IMAGES,
    PENDING_LIMIT,
    REJECTIONS,
    REQUESTS_ENDED,
    REQUESTS_RUNNING,
    REQUESTS_WAITING,
    STEP_DURATION,
    STEPS,
    UNET_BATCH_ROWS,
    UNET_CALL_DURATION,
    MetricSpec,
)
from sdtriton.serving.networks import TORCH_DTYPES, SpecNetworks
from sdtriton.serving.triton_common import (
    column,
    error_code,
    error_message,
    int_parameter,
    metric_families,
    new_metric,
    optional_items,
    release_triton_objects,
    report_crashes,
    route_logging_to_triton,
    string_parameter,
    triton_logger,
    version_dir,
)


class ComponentCallError(RuntimeError):
    """A BLS call to a component model returned an error."""


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
        # The pid of each component whose stub process died or was ended unhealthy: Triton restarts none
        # (sdtriton.serving.liveness).
        self._dead: dict[str, int] = {}
        # Ask the networks to answer where the loop's tensors live: on a GPU host, GPU memory (no host copy).
        if self.device.type == "cuda":
            self._preferred_memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_GPU, self.device.index or 0)
        else:
            self._preferred_memory = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)

    def run(self, spec: ComponentSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model_name = self.model_prefix + spec.model_name
        if model_name in self._dead:
            # A new error each time: one instance raised again and again would chain every raise's traceback, and
            # with it each failed call's frames and tensors, for as long as the stub runs.
            raise ComponentDiedError(model_name, self._dead[model_name], in_flight=True)
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
            triton_logger().log_error(
                f"{model_name}: its stub process is not healthy ({message}); ended {ended} with SIGKILL, since its "
                "next request would abort tritonserver; the server needs a restart"
            )
        else:
            triton_logger().log_error(f"{model_name}: its stub process is gone ({message}); the server needs a restart")
        self._dead[model_name] = ended[0] if ended else 0
        return ComponentDiedError(model_name, self._dead[model_name], in_flight=True)


class _StreamSink:
    """Answers one ``pipeline`` request through its response sender (an engine :class:`ResponseSink`)."""

    def __init__(self, sender: Any, model_name: str) -> None:
        self._sender = sender
        self._model_name = model_name

    @staticmethod
    def _progress_tensors(steps_done: Any, total_steps: Any, elapsed_s: float) -> list[Any]:
        return [
            pb_utils.Tensor(interface.STEP.name, column(steps_done, "int32")),
            pb_utils.Tensor(interface.TOTAL_STEPS.name, column(total_steps, "int32")),
            pb_utils.Tensor(interface.ELAPSED_MS.name, column([elapsed_s * 1000.0] * len(steps_done), "float32")),
        ]

    def progress(self, progress: Any) -> None:
        tensors = self._progress_tensors(progress.steps_done, progress.total_steps, progress.elapsed_s)
        if progress.previews is not None:
            tensors.append(pb_utils.Tensor(interface.PREVIEW.name, np.stack(progress.previews)))
        self._sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

    def finish(self, result: Any) -> None:
        tensors = [
            pb_utils.Tensor(interface.IMAGE.name, np.stack(result.images)),
            pb_utils.Tensor(interface.USED_SEED.name, column(result.seeds, "int64")),
        ]
        self._sender.send(
            pb_utils.InferenceResponse(output_tensors=tensors), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        )

    def fail(self, error: Exception) -> None:
        if error_code(error) == pb_utils.TritonError.INTERNAL:
            triton_logger().log_error(f"{self._model_name}: request failed: {error!r}")
        tensors = [
            pb_utils.Tensor(interface.ERROR_CODE.name, column([int(error_code(error))], "int32")),
            pb_utils.Tensor(
                interface.ERROR_MESSAGE.name, column([error_message(error, self._model_name).encode()], "object")
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
            field.name: int_parameter(model_config, field.name, getattr(defaults, field.name))
            for field in dataclasses.fields(EngineLimits)
        }
    )


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
                metric = self._labelled[key] = new_metric(self._families, spec, self._model_name, **labels)
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

    def made(self) -> list[Any]:
        """Every metric made so far (for :func:`~sdtriton.serving.triton_common.release_triton_objects`)."""
        with self._lock:
            return list(self._labelled.values())


class PipelineModel:
    """``pipeline`` (decoupled): validation and tokenization, then the diffusion engine owns the request."""

    def initialize(self, args: dict[str, Any]) -> None:
        # Imported here so that the component models' processes never load torch and diffusers.
        from sdtriton.serving.engine import DiffusionEngine, warm_up_engine_code
        from sdtriton.serving.text import load_tokenizers

        report_crashes()
        self.model_name = args["model_name"]
        model_config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(model_config):
            raise ValueError(f"{self.model_name} must be decoupled (model_transaction_policy {{ decoupled: true }})")
        route_logging_to_triton()
        self.config = PipelineConfig.load(version_dir(args))
        self.tokenizers = load_tokenizers(version_dir(args), self.config)
        limits = _engine_limits(model_config)
        networks = BlsComponents(
            self.config,
            repository=Path(args["model_repository"]).parent,
            model_prefix=string_parameter(model_config, MODEL_PREFIX_PARAMETER, ""),
            device=_engine_device(string_parameter(model_config, ENGINE_DEVICE_PARAMETER, "cpu")),
        )
        # Kept here for the model's life: a family must outlive its metrics.
        self.metric_families: dict[str, Any] = {}
        self.metrics: _TritonEngineMetrics | None = None
        try:
            self.metric_families = metric_families(ENGINE_METRICS)
            self.metrics = _TritonEngineMetrics(
                self.metric_families, self.model_name, max_pending_requests=limits.max_pending_requests
            )
        except Exception:
            triton_logger().log_error(
                f"{self.model_name}: no custom metrics, serving without\n{traceback.format_exc()}"
            )
        warm_up_s = warm_up_engine_code(config=self.config, tokenizers=self.tokenizers, device=networks.device)
        self.engine = DiffusionEngine(config=self.config, networks=networks, limits=limits, observer=self.metrics)
        self.engine.start()
        triton_logger().log_info(
            f"{self.model_name}: diffusion engine started with {limits} (its code warmed up in {warm_up_s:.2f} s)"
        )

    def _engine_request(self, request: Any, sender: Any) -> Any:
        from sdtriton.serving.engine import EngineRequest
        from sdtriton.serving.requests import parse_request

        parsed = parse_request(
            {tensor.name: optional_items(request, tensor) for tensor in interface.STREAM_INPUTS},
            config=self.config,
            tokenizers=self.tokenizers,
        )
        key_items = optional_items(request, interface.REQUEST_KEY)
        progress_items = optional_items(request, interface.SEND_PROGRESS)
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
        progress_items = optional_items(request, interface.SEND_PROGRESS)
        return self.engine.may_answer_from_cache(
            seeded=optional_items(request, interface.SEED) is not None,
            send_progress=bool(progress_items[0]) if progress_items is not None else False,
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                cancel_items = optional_items(request, interface.CANCEL_KEY)
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
                if error_code(error) == pb_utils.TritonError.INTERNAL:
                    triton_logger().log_error(f"{self.model_name}: request failed\n{traceback.format_exc()}")
                _StreamSink(sender, self.model_name).fail(error)
        return None

    def finalize(self) -> None:
        self.engine.stop()
        release_triton_objects(self.metric_families, self.metrics.made() if self.metrics is not None else [])
