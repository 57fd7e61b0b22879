"""``sdtriton perf``: one runner, which takes a profile (:mod:`sdtriton.perf.profiles`) and fills one model of the
run (:mod:`sdtriton.perf.model`).

Order matters on a small CPU: what runs in this process (the baselines, the in-process engine) is loaded before any
server starts, then one server at a time (the sweep's two together), each on free loopback ports and warmed up; the
in-process sides the engine profile compares with a server run in turns with it. Everything runs under the profile's
time limit: what would not fit is skipped and named in the summary, as are failed requests and a server that died.

The model and repositories a run needs are made here too (the other variants are :mod:`sdtriton.export.variants`');
``sdtriton.export`` is imported where it runs: it loads torch and diffusers.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdtriton import interface
from sdtriton import server as server_module
from sdtriton.client import SdTritonError, StableDiffusionClient
from sdtriton.components import (
    TEXT_ENCODER,
    TOKENIZER_DIR_NAME,
    TRANSFORMER_MODEL_NAME,
    UNET,
    VAE_DECODER,
)
from sdtriton.gateway.process import GatewayProcess
from sdtriton.perf import load, model, profiles, report
from sdtriton.perf.model import BATCHING_OFF, BATCHING_ON, BURST, CEILING_SERVED, SIMULATED, Load, Run
from sdtriton.perf.profiles import INPUT_DATA_DIR_NAME, LoadMode, Loras, PerfOptions, Profile, Scenario, load_profiles
from sdtriton.perf.workload import RequestSpec, load_input_data
from sdtriton.server import ModelStats, ServerAddress, TritonServer, named_triton_installation

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = Path("outputs/perf")
BUILTIN_PROFILE = "shapes"
_STATS_MODELS = (
    interface.ENTRY_MODEL_NAME,
    interface.PIPELINE_MODEL_NAME,
    *(c.model_name for c in (TEXT_ENCODER, UNET, VAE_DECODER)),
)
# perf_analyzer's own start-up and connection, on top of the requests of a level.
_PERF_ANALYZER_START_S = 5.0
# The identity-UNet probe's server start and session loads, on top of its requests.
_PROBE_FIXED_S = 60.0
# A server's start (models loaded) and warm-up, on top of the requests it serves.
_SERVER_START_S = 30.0
# Requests of a fresh engine-profile server's warm-up, sent one at a time before it is measured.
_WARMUP_REQUESTS = 2
# Each client request's time budget: this many times what it should take here (its steps at the plain loop's
# speed, times the images it shares the CPU with), and at least the minimum. Only a lost answer comes near it.
_TIMEOUT_FACTOR = 10.0
_MIN_TIMEOUT_S = 60.0
# The served loads of each ceiling section, as the CSVs name them.
_SERVED_VARIANTS = {"ceiling": CEILING_SERVED, "mixed_inputs": model.MIXED_INPUTS_SERVED}
# Requests sent in turn; empty: the base request.
Mix = Sequence[RequestSpec]


# Load tests measure the engine's work: the same seeded request sent again and again would otherwise be answered
# from the response cache, and repeated prompts would skip the text encoder the baselines run.
PERF_RENDER_OPTIONS_CACHES_OFF = {"response_cache_mb": 0, "text_cache_entries": 0}


def ensure_model(model_dir: Path | None, model: str, work_dir: Path) -> Path:
    """A diffusers folder of ``model``: ``model_dir`` if it holds one, else made by make-tiny (``model`` a profile of
    the SD family or another family, such as ``sd35``), else the built-in one."""
    from sdtriton.tiny import FAMILIES, PROFILES, make_tiny

    if model_dir is not None and (model_dir / "model_index.json").is_file():
        return model_dir
    families = set(FAMILIES) - {"sd"}
    if model not in PROFILES and model not in families:
        if model_dir is not None:
            raise FileNotFoundError(f"{model_dir} holds no diffusers pipeline (model_index.json)")
        from sdtriton.shapes.builtin import resolve_source

        return Path(resolve_source(model))
    target = model_dir or work_dir / "model"
    started = time.monotonic()
    make_tiny(target, **({"family": model} if model in families else {"profile": model}))
    logger.info("made the %s model in %.0f s", model, time.monotonic() - started)
    return target


def ensure_repository(repository: Path, model_dir: Path, *, show_progress: bool, work_dir: Path, loras: Loras) -> Path:
    """The export to load-test: ``repository`` if it holds one with the engine's caches off; a variant of it in
    ``work_dir`` with them off if they are on; else ``model_dir`` exported into ``repository`` with them off, and with
    ``loras`` (random adapters made in ``work_dir`` by ``make_tiny_lora`` with these options, by name)."""
    exported = (
        (repository / interface.ENTRY_MODEL_NAME / "config.pbtxt").is_file()
        and (repository / interface.PIPELINE_MODEL_NAME / "1" / TOKENIZER_DIR_NAME).is_dir()
        and any((repository / name / "1").is_dir() for name in (UNET.model_name, TRANSFORMER_MODEL_NAME))
    )
    from sdtriton.export.variants import engine_limits_of, engine_variant

    if exported:
        limits = engine_limits_of(repository)
        if limits.response_cache_bytes == 0 and limits.text_cache_entries == 0:
            return repository
        variant = work_dir / "caches_off_repository"
        shutil.rmtree(variant, ignore_errors=True)
        logger.info("load-testing %s with the engine's caches off (a variant in %s)", repository, variant)
        return engine_variant(repository, variant, caches_off=True)
    from sdtriton.export import LoraSource, RenderOptions, export_repository
    from sdtriton.tiny import make_tiny_lora

    started = time.monotonic()
    options = RenderOptions(**PERF_RENDER_OPTIONS_CACHES_OFF)
    made = [LoraSource(n, make_tiny_lora(model_dir, work_dir / "loras" / n, **o)) for n, o in loras.items()]
    export_repository(model_dir, repository, options=options, show_progress=show_progress, loras=made)
    logger.info("exported %s to %s in %.0f s", model_dir, repository, time.monotonic() - started)
    return repository


def _cpu_times() -> tuple[float, float] | None:
    """The machine's busy CPU seconds (``/proc/stat``: all but idle and iowait) and this run's, its stopped children's
    (servers, stubs, perf_analyzer) included; None without /proc/stat."""
    try:
        ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return None
    own = os.times()
    busy_s = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return busy_s, own.user + own.system + own.children_user + own.children_system


def _estimated_level_s(scenario: Scenario, level: float, *, throughput_per_s: float) -> float:
    rate = level if scenario.mode is LoadMode.REQUEST_RATE else throughput_per_s
    return _PERF_ANALYZER_START_S + scenario.request_count(level) / max(rate, 1e-6)


def _failures(load: str, records: list | tuple) -> list[str]:
    failed = [record for record in records if record.outcome is model.Outcome.FAILED]
    return [f"{load}: {len(failed)} of {len(records)} requests FAILED: {failed[0].message}"] if failed else []


def _in_turns(total: int, turns: int) -> int:
    return -(-total // turns)


def _turn_levels(spec) -> list[tuple[int, int, int]]:
    """(turn, concurrency, its requests in the turn) for every level of every turn, in order."""
    return [(turn, c, _in_turns(spec.request_count(c), spec.turns)) for turn in range(spec.turns) for c in spec.levels]


def _merged_turns(turns: Iterable[Load]) -> list[Load]:
    """Loads of several turns merged by variant and concurrency, in the order first measured."""
    merged: dict[tuple[str, int], list[Load]] = {}
    for turn in turns:
        merged.setdefault((turn.variant, turn.concurrency), []).append(turn)
    return [Load.merged(parts) for parts in merged.values()]


def run_perf(options: PerfOptions) -> tuple[Run, dict[str, Path]]:
    """Runs a profile end to end; returns its result and the written files (CSVs, plot, summary) by kind."""
    from sdtriton.shapes.builtin import WEIGHTS_DIR

    # The built-in model's profile once its trained weights are in the package; ``tiny`` until then.
    profile_name = options.profile or (BUILTIN_PROFILE if (WEIGHTS_DIR / "model_index.json").is_file() else "tiny")
    options = dataclasses.replace(
        options, profile=profile_name, output_dir=options.output_dir or DEFAULT_OUTPUT_DIR / profile_name
    )
    available = load_profiles(options.perf_dir)
    if options.profile not in available:
        raise ValueError(f"no profile {options.profile!r} in {options.perf_dir}; have {', '.join(available)}")
    profile = available[options.profile]
    for name in profile.input_data_files():
        if not (options.perf_dir / INPUT_DATA_DIR_NAME / name).is_file():
            raise FileNotFoundError(f"input-data file {options.perf_dir / INPUT_DATA_DIR_NAME / name} is missing")
    run = PerfRun(options, profile)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    logger.info("profile %s: %s; time limit %.0f s", profile.name, profile.description, run.limit_s)
    with ExitStack() as stack:
        work_dir = options.work_dir
        if work_dir is None:  # a temporary folder, removed: the heavy profile's model and export are gigabytes
            temporary = tempfile.TemporaryDirectory(prefix="sdtriton-perf-", ignore_cleanup_errors=True)
            work_dir = Path(stack.enter_context(temporary))
        work_dir.mkdir(parents=True, exist_ok=True)
        model_dir = ensure_model(options.model_dir, profile.model, work_dir)
        repository = options.repository or work_dir / "repository"
        repository = ensure_repository(
            repository, model_dir, show_progress=options.show_progress, work_dir=work_dir, loras=profile.loras
        )
        if profile.engine:
            result: Run = run.engine(repository, work_dir)
        else:
            result = run.perf_analyzer(model_dir, repository, work_dir)
    return result, report.write_reports(result, options.output_dir)


def _max_difference(first: np.ndarray, second: np.ndarray) -> int | None:
    if first.shape != second.shape:
        return None
    return int(np.max(np.abs(first.astype(np.int16) - second.astype(np.int16))))


class PerfRun:
    """One run of a profile (:meth:`perf_analyzer` or :meth:`engine`): its time limit, servers, and what was skipped;
    a section that could not measure returns None with the reason in ``skipped``."""

    def __init__(self, options: PerfOptions, profile: Profile) -> None:
        self.options, self.profile, self.show = options, profile, options.show_progress
        self.load_before = os.getloadavg()
        self.started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.started = time.monotonic()
        self.cpu_before = _cpu_times()
        self.limit_s = options.time_limit_s or profile.time_limit_s
        self.input_dir = options.perf_dir / INPUT_DATA_DIR_NAME
        self.request = load_input_data(self.input_dir / profile.input_data)[0]
        self.skipped: list[str] = []
        self.server_version = "not started"
        self.image_s = 1.0  # the plain loop's seconds an image, once timed: sizes the engine's estimates

    @property
    def left_s(self) -> float:
        return self.limit_s - (time.monotonic() - self.started)

    def fits(self, what: str, estimate_s: float) -> bool:
        if estimate_s > (left_s := self.left_s):
            needed = f"about {estimate_s:.0f} s needed, {max(left_s, 0):.0f} s left of the {self.limit_s:.0f} s limit"
            self.skipped.append(f"{what}: {needed}")
        return estimate_s <= left_s

    @contextmanager
    def server(self, repository: Path, log_name: str, *, warmup_requests: int) -> Iterator[TritonServer]:
        """A server warmed up with the base request; one that failed or died is named in the summary."""
        log_path = self.options.output_dir / f"{log_name}.log"
        installation = named_triton_installation(self.options.tritonserver) if self.options.tritonserver else None
        address = ServerAddress.on_free_ports()
        server = TritonServer(repository, address=address, installation=installation, log_path=log_path)
        server.start()
        try:
            logger.info("%s: tritonserver ready after %.1f s (log: %s)", log_name, server.wait_ready(), log_path)
            with urllib.request.urlopen(f"{address.http_url}/v2", timeout=10) as response:
                self.server_version = str(json.load(response).get("version", "unknown"))
            with StableDiffusionClient(address.grpc_url) as client:
                for _ in range(warmup_requests):
                    client.generate(self.request.prompt, **self.request.client_parameters())
            yield server
        except SdTritonError as error:
            self.skipped.append(f"{log_name}: FAILED: {error}")
        finally:
            if not server.running:
                self.skipped.append(f"{log_name}: tritonserver DIED during its loads (FAILED; log: {log_path})")
            server.stop()

    def common(self) -> dict[str, object]:
        """The fields of :class:`~sdtriton.perf.model.Run`, read once every server stopped."""
        cpu_after, elapsed_s = _cpu_times(), time.monotonic() - self.started
        other_cpu_s = None
        if self.cpu_before is not None and cpu_after is not None:
            busy_s, own_s = (after - before for after, before in zip(cpu_after, self.cpu_before, strict=True))
            other_cpu_s = max(0.0, busy_s - own_s)
        here = {"started_utc": self.started_utc, "triton_version": self.server_version, "gpu": self.options.gpu}
        machine = model.MachineInfo.here(**here, load_before=self.load_before)
        run = {"profile": self.profile.name, "input_data": self.profile.input_data, "skipped": tuple(self.skipped)}
        return run | {"machine": machine, "request": self.request, "elapsed_s": elapsed_s, "other_cpu_s": other_cpu_s}

    def perf_analyzer(self, model_dir: Path, repository: Path, work_dir: Path) -> model.PerfResult:
        """The three paths at concurrency 1, perf_analyzer's scenarios, and the identity-UNet probe."""
        spec, request, options = self.profile.baseline, self.request, self.options
        binary = load.find_perf_analyzer(options.perf_analyzer)
        timed = {"runs": spec.runs, "warmup_runs": spec.warmup_runs, "gpu": options.gpu}
        slope = {"path": model.TRITON, "steps": spec.slope_steps, "runs": spec.slope_runs}
        diffusers, diffusers_image = None, None
        if not options.skip_diffusers:
            diffusers, diffusers_image = load.time_diffusers(model_dir, request, **timed)
            gc.collect()  # the heavy profile's pipeline holds gigabytes: let it go before the next path loads
        loop = load.time_onnx_loop(repository, request, spec, gpu=options.gpu)
        gc.collect()
        with self.server(repository, "tritonserver", warmup_requests=spec.warmup_runs) as server:
            http_url = server.address.http_url
            with StableDiffusionClient(server.address.grpc_url) as triton:
                send, steps = load.client_runner(triton), request.num_inference_steps
                before = {name: ModelStats.fetch(http_url, name) for name in _STATS_MODELS}
                client, triton_image = load.timed_runs(send(request), path=model.TRITON, steps=steps, runs=spec.runs)
                breakdown = {name: ModelStats.fetch(http_url, name).minus(before[name]) for name in _STATS_MODELS}
                before_slope = ModelStats.fetch(http_url, UNET.model_name)
                triton_slope = load.time_slope(send, request, **slope)
                slope_unet_stats = ModelStats.fetch(http_url, UNET.model_name).minus(before_slope)
            points = self.scenarios(server, binary, single_request_s=client.median_ms / 1000.0)
        probe = (None, None)
        if not spec.bls_probe:
            self.skipped.append("identity-UNet BLS probe: off in this profile (judged on the default model)")
        elif self.fits("identity-UNet BLS probe", _PROBE_FIXED_S + 6 * spec.slope_runs * client.median_ms / 1000.0):
            from sdtriton.export.variants import identity_repository

            probe_repository = identity_repository(repository, work_dir / "identity_unet_repository")
            logger.info("BLS probe: the repository with an identity UNet in %s", probe_repository)
            probe_spec = dataclasses.replace(spec, runs=1, warmup_runs=1)
            probe_loop = load.time_onnx_loop(probe_repository, request, probe_spec, gpu=options.gpu)
            gc.collect()
            with self.server(probe_repository, "tritonserver_identity_unet", warmup_requests=1) as server:
                with StableDiffusionClient(server.address.grpc_url) as triton:
                    probe = probe_loop.slope, load.time_slope(load.client_runner(triton), request, **slope)
        differences = {"onnx_loop vs triton": _max_difference(loop.image, triton_image)}
        if diffusers_image is not None:
            differences["diffusers vs onnx_loop"] = _max_difference(diffusers_image, loop.image)
        return model.PerfResult(
            **self.common(),
            diffusers=diffusers,
            onnx_loop=loop.timing,
            onnx_loop_networks=loop.networks,
            onnx_loop_slope=loop.slope,
            unet_calls_per_step=loop.unet_calls_per_step,
            triton_client=client,
            triton_slope=triton_slope,
            triton_breakdown=breakdown,
            slope_unet_stats=slope_unet_stats,
            points=tuple(points),
            scenarios=self.profile.scenarios,
            max_pixel_difference={name: value for name, value in differences.items() if value is not None},
            probe_loop_slope=probe[0],
            probe_triton_slope=probe[1],
        )

    def scenarios(self, server: TritonServer, binary: Path, *, single_request_s: float) -> list[model.LoadPoint]:
        """Every level of every scenario that fits the time left; a failed level is named in the summary."""
        points: list[model.LoadPoint] = []
        warmed, scenarios = {self.profile.input_data}, self.profile.scenarios
        total = sum(len(scenario.levels) for scenario in scenarios)
        progress = tqdm(total=total, desc=f"perf {self.profile.name}", unit="level", disable=not self.show)
        files = {"binary": binary, "address": server.address, "output_dir": self.options.output_dir / "perf_analyzer"}

        def level(scenario: Scenario, value: float) -> model.LoadPoint:
            input_data_path, timeout_s = self.input_dir / scenario.input_data, max(self.left_s, 1.0)
            return load.run_level(scenario, value, input_data_path=input_data_path, timeout_s=timeout_s, **files)

        with progress:
            for scenario in scenarios:
                levels, reason = scenario.levels, None
                if scenario.mode is LoadMode.REQUEST_RATE:
                    references = [p.throughput_per_s for p in points if p.scenario == scenario.rate_reference]
                    if references:
                        levels = profiles.request_rates(levels, peak_throughput_per_s=max(references))
                    else:
                        reason = f"its rate reference {scenario.rate_reference} was not measured"
                if reason is None and scenario.input_data not in warmed:
                    # One pass over the file first: each new size's first run allocates, and is not load.
                    count = len(load_input_data(self.input_dir / scenario.input_data))
                    warm_up = dataclasses.replace(
                        scenario, name=f"warmup_{scenario.name}", mode=LoadMode.CONCURRENCY, min_requests=count
                    )
                    try:
                        level(warm_up, 1.0)
                        warmed.add(scenario.input_data)
                    except load.PerfAnalyzerError as error:
                        reason = f"the warm-up failed: {error}"
                if reason is not None:
                    self.skipped.append(f"{scenario.name}: {reason}")
                    progress.update(len(levels))
                    continue
                throughput = 1.0 / single_request_s
                for value in levels:
                    name = load.level_file_stem(scenario, value)
                    progress.update()
                    if not self.fits(name, _estimated_level_s(scenario, value, throughput_per_s=throughput)):
                        continue
                    progress.set_postfix_str(f"{scenario.name} {scenario.mode.value} {value:g}")
                    try:
                        point = level(scenario, value)
                    except load.PerfAnalyzerError as error:
                        logger.error("%s", error)
                        self.skipped.append(f"{name}: FAILED: {str(error).splitlines()[0]}")
                        continue
                    points.append(point)
                    throughput = max(point.throughput_per_s, 1e-6)
                    logger.info("%s: %.2f images/s, p50 %.1f ms", name, point.throughput_per_s, point.p50_ms)
        return points

    def variant(self, name: str, source: Path, **changes: object) -> Path:
        shutil.rmtree(self.variants / name, ignore_errors=True)
        from sdtriton.export.variants import engine_variant

        return engine_variant(source, self.variants / name, **changes)

    @contextmanager
    def engine_server(self, repository: Path, name: str) -> Iterator[str]:
        """A server of ``repository`` warmed up for the engine profile's loads: its gRPC URL."""
        with self.server(repository, f"tritonserver_{name}", warmup_requests=_WARMUP_REQUESTS) as server:
            yield server.address.grpc_url

    def timeout_s(self, steps: int, concurrency: int) -> float:
        """A request's time budget at ``concurrency``: generous, so that only a lost answer reaches it."""
        expected_s = self.image_s * steps / self.request.num_inference_steps * concurrency
        return max(_MIN_TIMEOUT_S, _TIMEOUT_FACTOR * expected_s)

    def in_process(
        self, concurrency: int, requests: int, description: str, *, zero_time_unet: bool = False, mix: Mix = ()
    ) -> Load:
        """The engine in this process over the batching-on repository's sessions, ``concurrency`` at once, sending
        ``mix`` in turn (by default the base request)."""
        options = {"description": description, "show_progress": self.show, "zero_time_unet": zero_time_unet}
        return load.run_closed_loop(
            self.served, self.limits, mix or (self.request,), concurrency=concurrency, requests=requests, **options
        )

    def plain_loop(self, *, runs: int, warmup_runs: int = 0, mix: Mix = ()) -> Load:
        """The plain loop, one image at a time, over ``mix`` in turn (by default the base request)."""
        runs_of = itertools.cycle([self.served.plain_loop(request) for request in mix or (self.request,)])
        run, steps = lambda: next(runs_of)(), self.request.num_inference_steps
        return load.timed_runs(run, path=model.ONNX_LOOP, steps=steps, runs=runs, warmup_runs=warmup_runs)[0]

    def load(
        self, url: str, variant: str, concurrency: int, requests: int, *, gateway: bool = False, mix: Mix = ()
    ) -> Load:
        """``concurrency`` client threads sending ``mix`` in turn (by default the base request), ``requests`` in all
        (rounded up), to a server's gRPC ``url``; with ``gateway``, as HTTP POSTs to the gateway at ``url``."""
        timeout_s, mix = self.timeout_s(self.request.num_inference_steps, concurrency), mix or (self.request,)
        client_class = load.ClientClass(variant, mix, concurrency, _in_turns(requests, concurrency), timeout_s)
        name = f"{variant}_c{concurrency}"
        sent = load.run_classes(url, [client_class], load=name, show_progress=self.show, gateway=gateway)
        self.skipped += _failures(f"{variant} c={concurrency}", sent.records)
        return Load(variant, concurrency, sent.records, sent.duration_s)

    def engine(self, repository: Path, work_dir: Path) -> model.EngineResult:
        """The engine profile's sections: the in-process sides first, then one server (or the two of the sweep) at a
        time."""
        from sdtriton.export.variants import engine_limits_of, simulated_repository

        p, self.variants, on_repository = self.profile, work_dir / "engine_variants", repository
        ceiling, sweep, mixed, burst, simulated, gateway = p.ceiling, p.sweep, p.mixed, p.burst, p.simulated, p.gateway
        if sweep and sweep.batching_on != engine_limits_of(on_repository).max_running_images:
            on_repository = self.variant(BATCHING_ON, on_repository, max_running_images=sweep.batching_on)
        # The in-process sessions stay loaded, idle while a server is measured: the two sides of (a) and the
        # non-UNet parts of (e) are measured in turns with the server loads they are compared with.
        self.served = load.ServedFiles.load(on_repository, gpu=self.options.gpu)
        self.limits = engine_limits_of(on_repository)
        sizing = self.plain_loop(runs=1, warmup_runs=ceiling.plain_loop_warmup_runs if ceiling else 1)
        self.image_s = image_s = sizing.median_ms / 1000.0
        sections: dict[str, object] = {}
        if ceiling or sweep or mixed or p.mixed_inputs:
            with ExitStack() as stack:
                on = stack.enter_context(self.engine_server(on_repository, BATCHING_ON))
                urls = {BATCHING_ON: on}
                if sweep and self.fits("batching-off server", 2 * (_SERVER_START_S + sweep.requests * image_s)):
                    off = self.variant(BATCHING_OFF, on_repository, max_running_images=sweep.batching_off)
                    urls[BATCHING_OFF] = stack.enter_context(self.engine_server(off, BATCHING_OFF))
                specs = {name: spec for name, spec in (("ceiling", ceiling), ("mixed_inputs", p.mixed_inputs)) if spec}
                ceilings_s = sum(2 * (s.requests + s.plain_loop_runs) for s in specs.values()) * image_s
                if specs and self.fits(" and ".join(specs), ceilings_s):
                    sections.update(self.ceilings(on, specs))
                if BATCHING_OFF in urls:
                    sections["sweep"] = self.sweep(urls, sweep)
                if mixed:
                    # On this CPU a batched step costs about what its images cost one by one.
                    steps = mixed.long_requests_per_client * mixed.long_steps * mixed.concurrency
                    steps += mixed.short_only_requests * mixed.short_steps
                    if self.fits("mixed steps", steps * image_s / self.request.num_inference_steps):
                        sections["mixed"] = self.mixed(on, mixed)
        burst_s = _SERVER_START_S + (1 + burst.warmup_bursts) * burst.max_pending_requests * image_s if burst else 0
        if burst and self.fits(BURST, burst_s):
            repository = self.variant(BURST, on_repository, max_pending_requests=burst.max_pending_requests)
            with self.engine_server(repository, BURST) as url:
                sections["burst"] = self.burst(url, burst)
        # The stand-in UNet sleeps: a simulated request costs less of this CPU than a real one.
        if simulated and self.fits(f"{SIMULATED} accelerator", _SERVER_START_S + simulated.requests * image_s / 2):
            shutil.rmtree(self.variants / SIMULATED, ignore_errors=True)
            repository = simulated_repository(on_repository, self.variants / SIMULATED, simulated.latency)
            with self.engine_server(repository, SIMULATED) as url:
                sections["simulated"] = self.simulated(url, simulated)
        if gateway and self.fits("gateway", _SERVER_START_S + 2 * gateway.requests * image_s):
            options, log_path = ["--data-dir", str(self.variants / "gateway")], self.options.output_dir / "gateway.log"
            with self.engine_server(on_repository, "gateway") as url:
                with GatewayProcess(url, options, log_path).running() as process:
                    sections["gateway"] = self.gateway(url, process.url, process.pid, gateway)
        del self.served  # the in-process sessions go
        gc.collect()
        return model.EngineResult(**self.common(), **sections, planned=p.engine_sections)

    def ceilings(self, url: str, specs: dict[str, profiles.CeilingSpec]) -> dict[str, model.CeilingResult | None]:
        """After warm-ups of both sides of each: in turns, in-process and served at each section's concurrency, the
        plain loop and served at 1, over its requests (by default the base request), one section's turn after the
        other's, so that a drift of the machine's speed hits the sections' ratios alike too."""
        mixes = {
            name: load_input_data(self.input_dir / s.input_data) if s.input_data else () for name, s in specs.items()
        }
        turns: dict[str, list[tuple[Load, Load, Load, Load]]] = {name: [] for name in specs}
        for name, spec in specs.items():
            if spec.warmup_requests:
                what, variant = f"{name} warm-up: in-process", f"{_SERVED_VARIANTS[name]}_warmup"
                self.in_process(spec.concurrency, spec.warmup_requests, what, mix=mixes[name])
                self.load(url, variant, spec.concurrency, spec.warmup_requests, mix=mixes[name])
        for turn in range(max(spec.turns for spec in specs.values())):
            for name, spec in ((n, s) for n, s in specs.items() if turn < s.turns):
                variant, mix, what = _SERVED_VARIANTS[name], mixes[name], f"{name} turn {turn + 1}: in-process"
                per_turn, plain_per_turn = (
                    _in_turns(count, spec.turns) for count in (spec.requests, spec.plain_loop_runs)
                )
                in_process = self.in_process(spec.concurrency, per_turn, what, mix=mix)
                served = self.load(url, variant, spec.concurrency, per_turn, mix=mix)
                plain = self.plain_loop(runs=plain_per_turn, mix=mix)
                turns[name].append((in_process, served, plain, self.load(url, variant, 1, plain_per_turn, mix=mix)))
        return {name: self._ceiling(name, section_turns) for name, section_turns in turns.items()}

    def _ceiling(self, name: str, turns: list[tuple[Load, Load, Load, Load]]) -> model.CeilingResult | None:
        """A ceiling section's turns (in-process, served, plain loop, served at 1) merged; None, and why in the
        summary, if the server completed no request at one of its concurrencies."""
        sides = tuple(zip(*turns, strict=True))
        turn_ratios = tuple(s.images_per_s / i.images_per_s for i, s in zip(*sides[:2], strict=True) if s.completed)
        result = model.CeilingResult(*(Load.merged(side) for side in sides), turn_ratios)
        if not result.served.completed or not result.served_one.completed:
            self.skipped.append(f"{name}: the server completed no request at one of its concurrencies")
            return None
        ratios = (result.served_over_ceiling, result.one_over_plain_loop)
        logger.info("%s: served/in-process %.3fx, c1 served/plain loop %.3fx", name, *ratios)
        return result

    def sweep(self, urls: dict[str, str], spec) -> tuple[Load, ...]:
        """Every level on every server, in turns: a drift of the machine's speed hits both variants alike."""
        turns = _turn_levels(spec)
        levels = _merged_turns(
            self.load(url, variant, c, requests) for _, c, requests in turns for variant, url in urls.items()
        )
        for level in levels:
            logger.info("%s c=%d: %.2f images/s", level.variant, level.concurrency, level.images_per_s)
        return tuple(level for level in levels if level.completed)

    def mixed(self, url: str, spec) -> model.MixedResult:
        concurrency = spec.concurrency
        short, long = self.request.with_steps(spec.short_steps), self.request.with_steps(spec.long_steps)
        short_timeout_s, long_timeout_s = (
            self.timeout_s(steps, concurrency) for steps in (spec.short_steps, spec.long_steps)
        )
        # The reference first: the same concurrency, every client short.
        per_client = _in_turns(spec.short_only_requests, concurrency)
        short_only_class = load.ClientClass(model.SHORT, (short,), concurrency, per_client, short_timeout_s)
        short_only = load.run_classes(url, [short_only_class], load="short_only", show_progress=self.show)
        classes = [
            load.ClientClass(model.SHORT, (short,), spec.short_clients, None, short_timeout_s),
            load.ClientClass(model.LONG, (long,), spec.long_clients, spec.long_requests_per_client, long_timeout_s),
        ]
        mixed = load.run_classes(url, classes, load="mixed", show_progress=self.show)
        self.skipped += _failures("mixed steps", [*short_only.records, *mixed.records])
        result = model.MixedResult(spec, mixed, short_only)
        logger.info("mixed steps: short p99 beside long ones / alone = %s", result.short_p99_ratio)
        return result

    def burst(self, url: str, spec) -> model.BurstResult:
        timeout_s = self.timeout_s(self.request.num_inference_steps, spec.max_pending_requests)
        send = {"count": spec.requests, "timeout_s": timeout_s, "show_progress": self.show}
        bursts = [load.run_burst(url, self.request, load=model.BURST_WARMUP, **send) for _ in range(spec.warmup_bursts)]
        warmup = [record for burst in bursts for record in burst]
        records = load.run_burst(url, self.request, **send)
        self.skipped += _failures("burst", [*warmup, *records])
        result = model.BurstResult(spec, tuple(records), tuple(warmup))
        slowest = result.max_refusal_ms
        refused = result.count(model.Outcome.REFUSED)
        logger.info("burst: %d accepted, %d refused, slowest refusal %s ms", result.accepted, refused, slowest)
        return result

    def simulated(self, url: str, spec) -> model.SimulatedResult | None:
        """In turns: the non-UNet parts in-process, then the simulated server, at the lowest and highest level."""
        low_c, high_c = spec.levels[0], spec.levels[-1]
        in_process, served, in_process_requests = [], [], _in_turns(spec.in_process_requests, spec.turns)
        for _, concurrency, requests in _turn_levels(spec):
            if concurrency in (low_c, high_c):
                what, count = f"non-UNet parts, c={concurrency}", max(in_process_requests, concurrency)
                in_process.append(self.in_process(concurrency, count, what, zero_time_unet=True))
            served.append(self.load(url, SIMULATED, concurrency, requests))
        points = tuple(level for level in _merged_turns(served) if level.completed)
        if {low_c, high_c} - {point.concurrency for point in points}:
            self.skipped.append(f"{SIMULATED} accelerator: c={low_c} or c={high_c} completed no request")
            return None
        low, high = _merged_turns(in_process)  # the levels increase
        rows_per_image, calls_per_image = round(low.unet_rows / low.unet_calls), low.unet_calls / low.completed
        result = model.SimulatedResult(spec.latency, rows_per_image, calls_per_image, points, low, high)
        measured, share = result.measured_ratio, 100 * result.share_of_allowed
        logger.info("SIMULATED %s: measured %.2fx, %.1f%% of the allowed", spec.latency, measured, share)
        return result

    def gateway(self, url: str, gateway_url: str, group: int, spec) -> model.GatewayResult:
        """Each level straight to Triton (at ``url``) and through the gateway, in turns whose first side alternates,
        after one untimed load through the gateway at the highest level (its connections, the server's largest
        batch); and the CPU seconds the gateway's process ``group`` used during each side's loads."""
        high, turns, urls = spec.levels[-1], [], {model.DIRECT_GRPC: url, model.GATEWAY_HTTP: gateway_url}
        cpu_s = dict.fromkeys(urls, 0.0)
        self.load(gateway_url, f"{model.GATEWAY_HTTP}_warmup", high, high, gateway=True)
        for turn, concurrency, requests in _turn_levels(spec):
            for variant in list(urls)[:: -1 if turn % 2 else 1]:
                before_s = server_module.process_group_cpu_s(group)
                gateway = variant == model.GATEWAY_HTTP
                turns.append(self.load(urls[variant], variant, concurrency, requests, gateway=gateway))
                cpu_s[variant] += server_module.process_group_cpu_s(group) - before_s
        pairs = zip(*([t for t in turns if (t.variant, t.concurrency) == (v, high)] for v in urls), strict=True)
        ratios = tuple(g.images_per_s / d.images_per_s for d, g in pairs if d.completed and g.completed)
        sides = {v: tuple(level for level in _merged_turns(turns) if level.variant == v) for v in urls}
        cpu_ms = tuple(1000 * cpu_s[v] / max(1, sum(level.completed for level in s)) for v, s in sides.items())
        return model.GatewayResult(*sides.values(), ratios, cpu_ms)
