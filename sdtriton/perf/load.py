"""How requests are sent and timed, each in one place: the load generators (perf_analyzer, a process per level read
into a :class:`~sdtriton.perf.model.LoadPoint`; client threads and an asyncio burst, a record per request; every client
on its own connection, made before the load) and the paths timed in this process on the same weights and request:
diffusers, the plain loop (the serving code's own loop over ONNX Runtime sessions of the served files, no Triton: the
floor of what serving can cost) and the engine itself (:func:`run_closed_loop`, with the served repository's limits, so
that its UNet calls batch as the server's do). What each profile makes of them: perf/README.md."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import http.client
import io
import json
import logging
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sdtriton import interface
from sdtriton.batch import wait_until_ready
from sdtriton.client import AsyncStableDiffusionClient, SdTritonError, StableDiffusionClient
from sdtriton.perf.model import (
    BURST,
    DIFFUSERS,
    IN_PROCESS,
    ONNX_LOOP,
    Load,
    LoadPoint,
    NetworkTimes,
    Outcome,
    RequestRecord,
    StepSlope,
    classify_error,
)
from sdtriton.perf.profiles import BaselineSpec, LoadMode, Protocol, Scenario
from sdtriton.perf.workload import RequestSpec, raw_inputs
from sdtriton.server import ServerAddress

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from sdtriton.pipeline_config import PipelineConfig
    from sdtriton.serving.denoise import DiffusionComponents
    from sdtriton.serving.engine import EngineLimits
    from sdtriton.serving.networks import OnnxRuntimeComponents

logger = logging.getLogger(__name__)

PERF_ANALYZER_ENV = "PERF_ANALYZER"
# Where scripts/setup_perf.sh installs it: a wrapper that puts its libraries on LD_LIBRARY_PATH.
REPOSITORY_PERF_ANALYZER = Path(__file__).resolve().parents[2] / "tools" / "perf_analyzer" / "perf_analyzer"
_LOG_TAIL_LINES = 25
# perf_analyzer's CSV columns (us) whose sum is its average client latency, and the server's compute.
_SERVER_COMPUTE = ("Server Compute Input", "Server Compute Infer", "Server Compute Output")
_LATENCY_PARTS = ("Client Send", "Network+Server Send/Recv", "Server Queue", *_SERVER_COMPUTE, "Client Recv")
_US_PER_MS = 1000.0
# How long a client waits for its first connection before the load.
_CONNECT_TIMEOUT_S = 30.0


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, or a run failed (request errors, an unreachable server, a timeout)."""


def find_perf_analyzer(explicit: Path | None = None) -> Path:
    """``explicit``, else ``$PERF_ANALYZER``, else ``tools/perf_analyzer/perf_analyzer``, else one on PATH."""
    if explicit is not None and not (explicit.is_file() and os.access(explicit, os.X_OK)):
        raise PerfAnalyzerError(f"{explicit} is not an executable perf_analyzer")
    candidates = [explicit, os.environ.get(PERF_ANALYZER_ENV), REPOSITORY_PERF_ANALYZER, shutil.which("perf_analyzer")]
    for candidate in (Path(path) for path in candidates if path):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PerfAnalyzerError(
        "perf_analyzer not found: run scripts/setup_perf.sh (or scripts/setup.sh), set $PERF_ANALYZER, "
        "or use the NGC SDK container's (see perf/README.md)"
    )


def perf_analyzer_command(
    scenario: Scenario, level: float, *, binary: str | Path, address: str, input_data_path: Path, csv_path: Path
) -> list[str]:
    """perf_analyzer's arguments for one level; ``address``: ``host:port`` of the scenario's protocol."""
    command = [str(binary), "-m", interface.ENTRY_MODEL_NAME, "-i", scenario.protocol.value, "-u", address, "-b", "1"]
    command += ["--input-data", str(input_data_path), "--request-count", str(scenario.request_count(level))]
    command += ["-f", str(csv_path)]
    if scenario.mode is LoadMode.CONCURRENCY:
        return [*command, "--concurrency-range", f"{int(level)}:{int(level)}:1"]
    # Open loop: requests leave on a Poisson clock whether or not earlier ones returned.
    rates = ["--request-rate-range", f"{level:g}:{level:g}:1", "--request-distribution", "poisson"]
    return [*command, *rates, "--async", "--max-threads", "16"]


def parse_perf_analyzer_csv(text: str, scenario: Scenario, *, request_count: int) -> list[LoadPoint]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ValueError("perf_analyzer's CSV has no rows")
    level_column = "Concurrency" if scenario.mode is LoadMode.CONCURRENCY else "Request Rate"
    try:
        return [
            LoadPoint(
                scenario=scenario.name,
                protocol=scenario.protocol.value,
                mode=scenario.mode.value,
                level=float(row[level_column]),
                request_count=request_count,
                throughput_per_s=float(row["Inferences/Second"]),
                **{f"p{q}_ms": float(row[f"p{q} latency"]) / _US_PER_MS for q in (50, 90, 95, 99)},
                avg_ms=sum(float(row[column]) for column in _LATENCY_PARTS) / _US_PER_MS,
                server_queue_ms=float(row["Server Queue"]) / _US_PER_MS,
                server_compute_ms=sum(float(row[column]) for column in _SERVER_COMPUTE) / _US_PER_MS,
            )
            for row in rows
        ]
    except KeyError as error:
        raise ValueError(f"perf_analyzer's CSV lacks the column {error} (has {sorted(rows[0])})") from None


def level_file_stem(scenario: Scenario, level: float) -> str:
    return f"{scenario.name}_{level:g}".replace(".", "p")


def run_level(
    scenario: Scenario,
    level: float,
    *,
    binary: Path,
    address: ServerAddress,
    input_data_path: Path,
    output_dir: Path,
    timeout_s: float | None = None,
) -> LoadPoint:
    """Runs one level, its CSV and log kept in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = level_file_stem(scenario, level)
    csv_path, log_path = output_dir / f"{stem}.csv", output_dir / f"{stem}.log"
    csv_path.unlink(missing_ok=True)
    host_port = (address.grpc_url if scenario.protocol is Protocol.GRPC else address.http_url).split("://", 1)[1]
    command = perf_analyzer_command(
        scenario, level, binary=binary, address=host_port, input_data_path=input_data_path, csv_path=csv_path
    )
    logger.debug("running %s", " ".join(command))
    with log_path.open("wb") as log:
        try:
            completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(f"{stem}: perf_analyzer ran past {timeout_s:.0f} s; log: {log_path}") from None
    if completed.returncode != 0 or not csv_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:])
        raise PerfAnalyzerError(f"{stem}: perf_analyzer exited with {completed.returncode}; {log_path}:\n{tail}")
    return parse_perf_analyzer_csv(csv_path.read_text(), scenario, request_count=scenario.request_count(level))[0]


@dataclass(frozen=True)
class ClientClass:
    """``clients`` threads sending ``requests`` back to back as class ``name``, ``requests_per_client`` each (None:
    until the bounded classes are done); ``timeout_s``: a request's budget, so that a lost answer fails its request
    instead of holding its thread for ever. Several requests are cycled as one closed loop sends them (client ``i``'s
    ``n``-th is the ``n x clients + i``-th, ``i`` counting the load's clients), each recorded as its kind."""

    name: str
    requests: Sequence[RequestSpec]
    clients: int
    requests_per_client: int | None
    timeout_s: float | None = None

    def request(self, client: int, sent: int) -> tuple[str, RequestSpec]:
        """The ``client``-th thread's ``sent``-th request and the class it is recorded as."""
        request = self.requests[(sent * self.clients + client) % len(self.requests)]
        return (self.name if len(self.requests) == 1 else request.kind), request


def _record(load: str, request_class: str, client: int, origin: float, sent_at: float, error: Exception | None):
    """A request sent at ``sent_at`` and answered now; an exception other than the server's typed errors is a bug on
    the client side: a failed request of the load, not a hang."""
    latency_ms = (time.perf_counter() - sent_at) * 1000.0
    outcome, message = Outcome.OK, ""
    if error is not None:
        typed = isinstance(error, SdTritonError)
        outcome, message = (classify_error(str(error)), str(error)) if typed else (Outcome.FAILED, repr(error))
    error_type = "" if error is None else type(error).__name__
    return RequestRecord(load, request_class, client, sent_at - origin, latency_ms, outcome, message, error_type)


class GatewayClient:
    """:class:`StableDiffusionClient`'s ``generate`` as ``POST /v1/images/generations`` to an ``sdtriton gateway`` over
    one kept-alive connection (:mod:`http.client`, light beside the gRPC client); an error raises SdTritonError."""

    def __init__(self, url: str, *, timeout_s: float | None = None) -> None:
        parts = urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            self._connection.request(method, path, body and json.dumps(body), {"Content-Type": "application/json"})
            response = self._connection.getresponse()
            return response.status, json.loads(response.read())
        except BaseException:
            self._connection.close()  # opened again by the next request
            raise

    def is_ready(self) -> bool:
        with contextlib.suppress(OSError):
            return self._call("GET", "/readyz")[0] == 200
        return False

    def generate(self, prompt: str, *, width: int, height: int, **parameters: Any) -> Image.Image:
        body = {"prompt": prompt, "size": f"{width}x{height}", "response_format": "b64_json", **parameters}
        status, answer = self._call("POST", "/v1/images/generations", body)
        if status != 200:
            raise SdTritonError(f"{answer['error']['message']} (HTTP {status})")
        return Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"]))).convert("RGB")

    def close(self) -> None:
        self._connection.close()


def run_classes(
    url: str, classes: Sequence[ClientClass], *, load: str, show_progress: bool = True, gateway: bool = False
) -> Load:
    """Every class's threads at once, their records by start time; ``gateway``: ``url`` is an ``sdtriton gateway``'s.
    Unbounded classes keep sending until the bounded ones are done (their last request may end after that)."""
    bounded = [c for c in classes if c.requests_per_client is not None]
    if not bounded:
        raise ValueError("at least one class needs requests_per_client")
    senders = [c for c in classes for _ in range(c.clients)]
    clients: list[StableDiffusionClient] = []
    records: list[RequestRecord] = []
    lock, stop, start = threading.Lock(), threading.Event(), threading.Barrier(len(senders) + 1)
    progress = tqdm(total=sum(c.clients * c.requests_per_client for c in bounded), desc=load, disable=not show_progress)
    origin = 0.0

    def send_all(client_class: ClientClass, client: StableDiffusionClient, index: int) -> None:
        count, sent = client_class.requests_per_client, 0
        start.wait()
        while not (stop.is_set() if count is None else sent >= count):
            (name, request), sent_at, error = client_class.request(index, sent), time.perf_counter(), None
            try:
                client.generate(request.prompt, **request.client_parameters())
            except Exception as failure:
                error = failure
            with lock:
                records.append(_record(load, name, index, origin, sent_at, error))
                progress.update(count is not None)
            sent += 1

    try:
        for client_class in senders:  # every client ready before the load starts (all closed in `finally`)
            clients.append((GatewayClient if gateway else StableDiffusionClient)(url, timeout_s=client_class.timeout_s))
            if not wait_until_ready(clients[-1], timeout_s=_CONNECT_TIMEOUT_S):
                raise SdTritonError(f"{url} is not ready after {_CONNECT_TIMEOUT_S:.0f} s")
        threads = [
            threading.Thread(target=send_all, args=(c, client, index), name=f"{load}-{c.name}-{index}", daemon=True)
            for index, (c, client) in enumerate(zip(senders, clients, strict=True))
        ]
        for thread in threads:
            thread.start()
        origin = time.perf_counter()
        start.wait()
        for thread, client_class in zip(threads, senders, strict=True):
            if client_class.requests_per_client is not None:
                thread.join()
        stop.set()  # the bounded classes are done
        for thread in threads:
            thread.join()
        duration_s = time.perf_counter() - origin
    finally:
        stop.set()
        progress.close()
        for client in clients:
            client.close()
    return Load(load, len(senders), tuple(sorted(records, key=lambda record: record.started_s)), duration_s)


def run_burst(
    url: str,
    request: RequestSpec,
    *,
    count: int,
    timeout_s: float | None = None,
    load: str = BURST,
    show_progress: bool = True,
) -> list[RequestRecord]:
    """Sends ``count`` requests at once, a record each by start time: an asyncio client each (its own gRPC channel),
    on one event loop, released together. Threads of one process would queue on the GIL to build and send them
    (measured: 24 threads spread their sends over 8-25 ms), which separate users' clients never do."""

    async def burst() -> list[RequestRecord]:
        clients = [AsyncStableDiffusionClient(url, timeout_s=timeout_s) for _ in range(count)]
        progress = tqdm(total=count, desc=load, unit="request", disable=not show_progress)

        async def one(client: AsyncStableDiffusionClient, index: int) -> RequestRecord:
            sent_at, error = time.perf_counter(), None
            try:
                await client.generate(request.prompt, **request.client_parameters())
            except Exception as failure:
                error = failure
            progress.update()
            return _record(load, BURST, index, origin, sent_at, error)

        try:  # the server is up and warm: connecting is all this waits for
            if not all(await asyncio.gather(*(client.is_ready() for client in clients))):
                raise SdTritonError(f"{url} is not ready")
            origin = time.perf_counter()
            records = await asyncio.gather(*(one(client, index) for index, client in enumerate(clients)))
        finally:
            progress.close()
            for client in clients:
                await client.close()
        return sorted(records, key=lambda record: record.started_s)

    return asyncio.run(burst())


# ``sdtriton.export`` writes version 1 only.
_MODEL_VERSION = "1"

Runner = Callable[[RequestSpec], Callable[[], np.ndarray]]


def in_turns_ms(calls: Sequence[Callable[[], object]], *, runs: int) -> list[list[float]]:
    """Each call's times (ms) over ``runs`` rounds of every call in turn, so a drifting background load hits all."""
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for call, call_times in zip(calls, times, strict=True):
            started = time.perf_counter()
            call()
            call_times.append((time.perf_counter() - started) * 1000.0)
    return times


def timed_runs(run: Callable[[], np.ndarray], *, path: str, steps: int, runs: int, warmup_runs: int = 0):
    """``runs`` timed runs after ``warmup_runs``: their timing and the last image."""
    for _ in range(warmup_runs):
        run()
    images: list[np.ndarray] = []
    (latencies,) = in_turns_ms([lambda: images.append(run())], runs=runs)
    timing = Load.timed(path, steps, latencies)
    logger.info("%s, %d steps: median %.1f ms over %d runs", path, steps, timing.median_ms, runs)
    return timing, images[-1]


def time_slope(runner: Runner, request: RequestSpec, *, path: str, steps: tuple[int, int], runs: int) -> StepSlope:
    """Runs at the two step counts in turns (low, high, low, ...)."""
    latencies = in_turns_ms([runner(request.with_steps(count)) for count in steps], runs=runs)
    slope = StepSlope(*(Load.timed(path, count, ms) for count, ms in zip(steps, latencies, strict=True)))
    logger.info("%s: %.3f ms/step between %d and %d steps (medians of %d)", path, slope.ms_per_step, *steps, runs)
    return slope


def time_diffusers(model_dir: Path, request: RequestSpec, *, runs: int, warmup_runs: int, gpu: bool = False):
    """(a) ``StableDiffusionPipeline``, the request's scheduler swapped in; with ``gpu`` on ``cuda`` (fp32, as
    exported), latents still drawn on the CPU generator as the Triton pipeline draws them."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sdtriton.schedulers import build_scheduler, load_scheduler_overrides

    pipeline = StableDiffusionPipeline.from_pretrained(
        model_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    ).to("cuda" if gpu else "cpu")
    pipeline.set_progress_bar_config(disable=True)
    overrides = load_scheduler_overrides(model_dir)
    pipeline.scheduler = build_scheduler(pipeline.scheduler.config, request.scheduler, overrides)
    options = {name: getattr(request, name) for name in ("negative_prompt", "num_inference_steps", "guidance_scale")}

    def run() -> np.ndarray:
        generator = torch.Generator("cpu").manual_seed(request.seed)
        output = pipeline(request.prompt, **options, width=request.width, height=request.height, generator=generator)
        return np.asarray(output.images[0])

    return timed_runs(run, path=DIFFUSERS, steps=request.num_inference_steps, runs=runs, warmup_runs=warmup_runs)


class InstrumentedNetworks:
    """Times every network call by name (``encode_text``, ``encode_image``, ``predict_noise``, ``decode_latents``) and
    counts the UNet's batch rows; ``zero_time_unet``: the UNet answers zeros at once (an infinitely fast
    accelerator)."""

    def __init__(self, inner: Any, *, zero_time_unet: bool = False) -> None:
        self.inner = inner
        self.device = inner.device
        self.zero_time_unet = zero_time_unet
        self.calls_ms: defaultdict[str, list[float]] = defaultdict(list)
        self.unet_rows = 0

    def __getattr__(self, name: str) -> Callable[..., Any]:
        call = getattr(self.inner, name)

        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            output = call(*args)
            self.calls_ms[name].append((time.perf_counter() - started) * 1000.0)
            return output

        return timed

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # The denoiser's first input is its latents: the UNet's ``sample``, a transformer's ``hidden_states``.
        sample = next(iter(inputs.values()))
        self.unet_rows += int(sample.shape[0])
        if self.zero_time_unet:
            import torch

            self.calls_ms["predict_noise"].append(0.0)
            return torch.zeros_like(sample)
        return self.__getattr__("predict_noise")(unet, inputs)


@dataclass(frozen=True)
class ServedFiles:
    """An exported repository's tokenizers, pipeline config and ONNX Runtime sessions, as the pipeline model loads
    them (CUDA first with ``gpu``, as ``export --gpu`` configures the served models)."""

    tokenizers: dict[str, PreTrainedTokenizerBase]
    config: PipelineConfig
    networks: OnnxRuntimeComponents

    @classmethod
    def load(cls, repository: Path, *, gpu: bool = False) -> ServedFiles:
        from sdtriton.pipeline_config import PipelineConfig
        from sdtriton.serving.networks import OnnxRuntimeComponents
        from sdtriton.serving.onnx_runtime import CPU_PROVIDER, CUDA_PROVIDER
        from sdtriton.serving.text import load_tokenizers

        pipeline_dir = repository / interface.PIPELINE_MODEL_NAME / _MODEL_VERSION
        providers = (CUDA_PROVIDER, CPU_PROVIDER) if gpu else (CPU_PROVIDER,)
        config = PipelineConfig.load(pipeline_dir)
        networks = OnnxRuntimeComponents.from_model_repository(repository, config, providers=providers)
        return cls(tokenizers=load_tokenizers(pipeline_dir, config), config=config, networks=networks)

    def plain_loop(self, spec: RequestSpec, networks: DiffusionComponents | None = None) -> Callable[[], np.ndarray]:
        """``run()`` tokenizes, validates and generates ``spec``'s image as the pipeline does, alone."""
        from sdtriton.serving.denoise import generate_image
        from sdtriton.serving.requests import parse_request

        def run() -> np.ndarray:
            (image,) = parse_request(raw_inputs(spec), config=self.config, tokenizers=self.tokenizers).images
            return generate_image(image=image, config=self.config, components=networks or self.networks)

        return run


@dataclass(frozen=True)
class OnnxLoopResult:
    timing: Load
    networks: NetworkTimes
    slope: StepSlope
    unet_calls_per_step: float
    image: np.ndarray


def time_onnx_loop(repository: Path, request: RequestSpec, spec: BaselineSpec, *, gpu: bool = False) -> OnnxLoopResult:
    """(b) The plain loop, each network call timed; the slope runs follow on warm sessions, no warm-up of their own."""
    served, runs, (low, high) = ServedFiles.load(repository, gpu=gpu), spec.runs, spec.slope_steps
    for _ in range(spec.warmup_runs):
        served.plain_loop(request)()
    networks = InstrumentedNetworks(served.networks)
    run = served.plain_loop(request, networks)
    timing, image = timed_runs(run, path=ONNX_LOOP, steps=request.num_inference_steps, runs=runs)
    calls = networks.calls_ms
    times = NetworkTimes(
        encode_text_ms=sum(calls["encode_text"]) / runs,
        unet_ms_per_call=statistics.mean(calls["predict_noise"]),
        unet_calls_per_request=len(calls["predict_noise"]) // runs,
        decode_ms=sum(calls["decode_latents"]) / runs,
    )
    counting = {steps: InstrumentedNetworks(served.networks) for steps in (low, high)}

    def runner(one: RequestSpec) -> Callable[[], np.ndarray]:  # on its step count's own networks: its UNet calls
        return served.plain_loop(one, counting[one.num_inference_steps])

    slope = time_slope(runner, request, path=ONNX_LOOP, steps=spec.slope_steps, runs=spec.slope_runs)
    low_calls, high_calls = (len(counting[steps].calls_ms["predict_noise"]) / spec.slope_runs for steps in (low, high))
    return OnnxLoopResult(timing, times, slope, (high_calls - low_calls) / (high - low), image)


def client_runner(client: StableDiffusionClient) -> Runner:
    """(c) Triton through ``client``: ``runner(spec)()`` sends one request and waits for its image."""
    return lambda spec: lambda: np.asarray(client.generate(spec.prompt, **spec.client_parameters()).image)


class InProcessEngineError(RuntimeError):
    """A request of the in-process engine failed."""


class _Sink:
    """Notes when and how its request ended: ``(key, finished at, error or None)``."""

    def __init__(self, key: int, ended: list[tuple[int, float, Exception | None]]) -> None:
        self.key, self.ended = key, ended

    def progress(self, progress: object) -> None:
        pass

    def finish(self, result: object) -> None:
        self.fail(None)

    def fail(self, error: Exception | None) -> None:
        self.ended.append((self.key, time.perf_counter(), error))


def run_closed_loop(
    served: ServedFiles,
    limits: EngineLimits,
    mix: Sequence[RequestSpec],
    *,
    concurrency: int,
    requests: int,
    zero_time_unet: bool = False,
    description: str = "in-process engine",
    show_progress: bool = True,
) -> Load:
    """Times ``requests`` of ``mix`` (cycled; several: each recorded as its kind), ``concurrency`` in the engine at once
    over ``served``'s networks, each parsed and tokenized from its raw inputs as the pipeline model does: from the
    first ``concurrency`` submitted together to the last one finished.

    Raises:
        InProcessEngineError: a request failed, or the engine went idle before the last one.
    """
    from sdtriton.serving.engine import DiffusionEngine, EngineRequest
    from sdtriton.serving.requests import parse_request

    config, tokenizers, raws = served.config, served.tokenizers, [raw_inputs(request) for request in mix]
    kinds = [IN_PROCESS] if len(mix) == 1 else [request.kind for request in mix]
    counting = InstrumentedNetworks(served.networks, zero_time_unet=zero_time_unet)
    engine = DiffusionEngine(config=config, networks=counting, limits=limits)
    ended: list[tuple[int, float, Exception | None]] = []
    sent_at: list[float] = []
    records: list[RequestRecord] = []
    with tqdm(total=requests, desc=description, unit="image", disable=not show_progress) as progress:
        started = time.perf_counter()
        while len(records) < requests:
            while len(sent_at) < min(requests, len(records) + concurrency):
                images = parse_request(raws[len(sent_at) % len(mix)], config=config, tokenizers=tokenizers).images
                engine.submit(EngineRequest(key=len(sent_at), images=images, sink=_Sink(len(sent_at), ended)))
                sent_at.append(time.perf_counter())
            if engine.counts() == (0, 0) and not ended:
                raise InProcessEngineError(f"the engine went idle after {len(records)} of {requests} requests")
            engine.step()
            for key, finished, error in ended:
                if error is not None:
                    raise InProcessEngineError(f"an in-process engine request failed: {error!r}") from error
                latency_ms = (finished - sent_at[key]) * 1000.0
                kind = kinds[key % len(mix)]
                records.append(RequestRecord(IN_PROCESS, kind, key, sent_at[key] - sent_at[0], latency_ms, Outcome.OK))
            progress.update(len(ended))
            ended.clear()
        elapsed_s = time.perf_counter() - started
    unet_calls = len(counting.calls_ms["predict_noise"])
    steps = mix[0].num_inference_steps
    return Load(IN_PROCESS, concurrency, tuple(records), elapsed_s, steps, unet_calls, counting.unet_rows)
