"""``sdtriton perf``: make and export the profile's model, time the baselines, start Triton, run the load scenarios.

Order matters on a small CPU: the in-process baselines run before the server starts (nothing else loaded),
then the Triton path is timed through the client at the same concurrency 1, then perf_analyzer sweeps.
Everything runs under the profile's time limit, counted from the start: levels that would not fit are
skipped and named in the summary.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import shutil
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdtriton import interface
from sdtriton.components import TEXT_ENCODER, TOKENIZER_DIR_NAME, UNET, VAE_DECODER
from sdtriton.perf import baselines
from sdtriton.perf.engine_results import EngineResult
from sdtriton.perf.identity import identity_repository
from sdtriton.perf.perf_analyzer import PerfAnalyzerError, find_perf_analyzer, level_file_stem, run_level
from sdtriton.perf.report import write_reports
from sdtriton.perf.results import BlsProbe, MachineInfo, PerfResult, TritonBreakdown
from sdtriton.perf.scenarios import (
    INPUT_DATA_DIR_NAME,
    LoadMode,
    LoadPoint,
    Profile,
    Scenario,
    load_profiles,
    peak_throughput,
    request_rates,
)
from sdtriton.perf.stats import ModelStats, fetch_model_stats
from sdtriton.perf.workload import RequestSpec, load_input_data
from sdtriton.server import ServerAddress, TritonServer, named_triton_installation

logger = logging.getLogger(__name__)

# The repository's perf/ folder: scenarios.json and input_data/ (read by path; the package is installed editable).
DEFAULT_PERF_DIR = Path(__file__).resolve().parents[2] / "perf"
DEFAULT_OUTPUT_DIR = Path("outputs/perf")
BUILTIN_PROFILE = "shapes"
FALLBACK_PROFILE = "tiny"
_STATS_MODELS = (
    interface.ENTRY_MODEL_NAME,
    interface.PIPELINE_MODEL_NAME,
    TEXT_ENCODER.model_name,
    UNET.model_name,
    VAE_DECODER.model_name,
)
# perf_analyzer's own start-up and connection, on top of the requests of a level.
_PERF_ANALYZER_START_S = 5.0
_SERVER_LOG_NAME = "tritonserver.log"
_PROBE_SERVER_LOG_NAME = "tritonserver_identity_unet.log"
# The identity-UNet probe's server start and session loads, on top of its requests.
_PROBE_FIXED_S = 60.0


@dataclass(frozen=True)
class PerfOptions:
    """Options of ``sdtriton perf``.

    Attributes:
        profile: a profile of ``perf/scenarios.json``: ``shapes`` (the default model), ``tiny`` (its stand-in
            until the trained weights land), ``sd15`` (the heavy one), ``engine`` (the diffusion engine's
            ceiling, batching, fairness, refusals and scaling on the default model; ``perf_analyzer`` unused).
        output_dir: where the CSV files, plot, summary and logs go.
        perf_dir: the folder holding ``scenarios.json`` and ``input_data/``.
        model_dir: a diffusers pipeline folder of the profile's model; made with ``make-tiny`` there if it
            has none (make-tiny profiles). Default: made in the work folder, or the built-in model's.
        repository: a model repository of that model; exported from ``model_dir`` if it has no models.
            Default: exported into the work folder.
        work_dir: where a made model and an exported repository go; default: a temporary folder deleted at
            the end (the heavy profile's are about 4 GB each).
        perf_analyzer: the binary; default: ``$PERF_ANALYZER``, ``tools/perf_analyzer``, or PATH.
        tritonserver: a tritonserver binary (e.g. the NGC container's); default: the pip wheel's.
        skip_diffusers: leave out baseline (a), e.g. when ``model_dir`` is unavailable on a serving host.
        gpu: run baselines (a) and (b) on the GPU, for a repository exported with ``--gpu`` (not run on
            this project's CPU machine).
        time_limit_s: overrides the profile's.
        show_progress: a progress bar over the load levels.
    """

    profile: str = FALLBACK_PROFILE
    output_dir: Path = DEFAULT_OUTPUT_DIR
    perf_dir: Path = DEFAULT_PERF_DIR
    model_dir: Path | None = None
    repository: Path | None = None
    work_dir: Path | None = None
    perf_analyzer: Path | None = None
    tritonserver: Path | None = None
    skip_diffusers: bool = False
    gpu: bool = False
    time_limit_s: float | None = None
    show_progress: bool = True


class Deadline:
    """A run's time limit, counted from its start."""

    def __init__(self, limit_s: float) -> None:
        self.started = time.monotonic()
        self.limit_s = limit_s

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    @property
    def left_s(self) -> float:
        return self.limit_s - self.elapsed_s


def machine_info(
    *, started_utc: str, triton_version: str, load_before: tuple[float, float, float], gpu: bool
) -> MachineInfo:
    """This machine, the server's version and the load averages before and now."""
    cpu_model = platform.processor() or platform.machine()
    memory_gib = 0.0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = int(line.split()[1]) / 2**20
                break
    except OSError:
        pass
    return MachineInfo(
        started_utc=started_utc,
        hostname=platform.node(),
        cpu_model=cpu_model,
        cpu_count=os.cpu_count() or 1,
        memory_gib=memory_gib,
        triton_version=triton_version,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        gpu=gpu,
    )


@contextmanager
def work_folder(explicit: Path | None) -> Iterator[Path]:
    """``explicit`` (kept), or a temporary folder removed at the end."""
    if explicit is not None:
        explicit.mkdir(parents=True, exist_ok=True)
        yield explicit
        return
    directory = Path(tempfile.mkdtemp(prefix="sdtriton-perf-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        logger.info("removed the work folder %s", directory)


def default_profile() -> str:
    """``shapes``, the default model, once its trained weights are in the package; ``tiny`` until then."""
    from sdtriton.shapes.builtin import WEIGHTS_DIR

    return BUILTIN_PROFILE if (WEIGHTS_DIR / "model_index.json").is_file() else FALLBACK_PROFILE


def ensure_model(model_dir: Path | None, model: str, work_dir: Path) -> Path:
    """A diffusers folder of ``model``: ``model_dir`` if it holds one, else made (make-tiny) or the built-in one."""
    from sdtriton.tiny import PROFILES, make_tiny

    if model_dir is not None and (model_dir / "model_index.json").is_file():
        return model_dir
    if model not in PROFILES:
        if model_dir is not None:
            raise FileNotFoundError(f"{model_dir} holds no diffusers pipeline (model_index.json)")
        from sdtriton.shapes.builtin import resolve_source

        return Path(resolve_source(model))
    target = model_dir or work_dir / "model"
    started = time.monotonic()
    make_tiny(target, profile=model)
    logger.info("made the %s model in %.0f s", model, time.monotonic() - started)
    return target


# Load tests measure the engine's work: the same seeded request sent again and again would otherwise be answered
# from the response cache, and repeated prompts would skip the text encoder the baselines run.
PERF_RENDER_OPTIONS_CACHES_OFF = {"response_cache_mb": 0, "text_cache_entries": 0}


def _caches_off(repository: Path) -> bool:
    from sdtriton.perf.variants import engine_limits_of

    limits = engine_limits_of(repository)
    return limits.response_cache_bytes == 0 and limits.text_cache_entries == 0


def ensure_repository(repository: Path, model_dir: Path, *, show_progress: bool, work_dir: Path) -> Path:
    """The export to load-test: ``repository`` if it holds one with the engine's caches off; a variant of it in
    ``work_dir`` with them off if they are on; else ``model_dir`` exported into ``repository`` with them off."""
    exported = (
        (repository / interface.ENTRY_MODEL_NAME / "config.pbtxt").is_file()
        and (repository / interface.PIPELINE_MODEL_NAME / "1" / TOKENIZER_DIR_NAME).is_dir()
        and (repository / UNET.model_name / "1").is_dir()
    )
    if exported:
        if _caches_off(repository):
            return repository
        from sdtriton.perf.variants import engine_variant

        variant = work_dir / "caches_off_repository"
        shutil.rmtree(variant, ignore_errors=True)
        logger.info("load-testing %s with the engine's caches off (a variant in %s)", repository, variant)
        return engine_variant(repository, variant, caches_off=True)
    from sdtriton.export import RenderOptions, export_repository

    started = time.monotonic()
    options = RenderOptions(**PERF_RENDER_OPTIONS_CACHES_OFF)
    export_repository(model_dir, repository, options=options, show_progress=show_progress)
    logger.info("exported %s to %s in %.0f s", model_dir, repository, time.monotonic() - started)
    return repository


def server_version(http_url: str) -> str:
    """The running server's version (``GET /v2``)."""
    with urllib.request.urlopen(f"{http_url}/v2", timeout=10) as response:
        return str(json.load(response).get("version", "unknown"))


def _stats_snapshot(http_url: str) -> dict[str, ModelStats]:
    return {name: fetch_model_stats(http_url, name) for name in _STATS_MODELS}


def _stats_delta(after: dict[str, ModelStats], before: dict[str, ModelStats]) -> dict[str, ModelStats]:
    return {name: after[name].minus(before[name]) for name in after}


def _max_difference(first: np.ndarray, second: np.ndarray) -> int | None:
    if first.shape != second.shape:
        return None
    return int(np.max(np.abs(first.astype(np.int16) - second.astype(np.int16))))


@dataclass(frozen=True)
class _TritonTimings:
    client: baselines.PathTiming
    image: np.ndarray
    breakdown: TritonBreakdown
    slope: baselines.StepSlope
    slope_unet_stats: ModelStats


def _time_triton(server: TritonServer, request: RequestSpec, profile: Profile) -> _TritonTimings:
    spec = profile.baseline
    http_url = server.address.http_url
    triton = baselines.TritonPath(server.address.grpc_url)
    try:
        triton.time(request, runs=spec.warmup_runs, warmup_runs=0)
        before = _stats_snapshot(http_url)
        client, image = triton.time(request, runs=spec.runs, warmup_runs=0)
        delta = _stats_delta(_stats_snapshot(http_url), before)
        before_slope = fetch_model_stats(http_url, UNET.model_name)
        slope = triton.slope(request, steps=spec.slope_steps, runs=spec.slope_runs)
        slope_unet = fetch_model_stats(http_url, UNET.model_name).minus(before_slope)
    finally:
        triton.close()
    return _TritonTimings(
        client=client,
        image=image,
        breakdown=TritonBreakdown(
            entry=delta[interface.ENTRY_MODEL_NAME],
            pipeline=delta[interface.PIPELINE_MODEL_NAME],
            text_encoder=delta[TEXT_ENCODER.model_name],
            unet=delta[UNET.model_name],
            vae_decoder=delta[VAE_DECODER.model_name],
        ),
        slope=slope,
        slope_unet_stats=slope_unet,
    )


def start_server(repository: Path, options: PerfOptions, *, log_path: Path) -> TritonServer:
    """Starts ``options.tritonserver`` (or the pip wheel's) over ``repository`` on free loopback ports."""
    server = TritonServer(
        repository,
        address=ServerAddress.on_free_ports(),
        installation=named_triton_installation(options.tritonserver) if options.tritonserver else None,
        log_path=log_path,
    )
    server.start()
    return server


def _bls_probe(
    repository: Path,
    work_dir: Path,
    request: RequestSpec,
    profile: Profile,
    *,
    options: PerfOptions,
    output_dir: Path,
) -> BlsProbe:
    """Times both paths over the repository with an identity UNet: what the BLS call itself costs."""
    spec = profile.baseline
    probe_repository = identity_repository(repository, work_dir / "identity_unet_repository")
    logger.info("BLS probe: the repository with an identity UNet in %s", probe_repository)
    loop = baselines.time_onnx_loop(
        probe_repository,
        request,
        runs=1,
        warmup_runs=1,
        slope_steps=spec.slope_steps,
        slope_runs=spec.slope_runs,
        gpu=options.gpu,
    )
    gc.collect()
    server = start_server(probe_repository, options, log_path=output_dir / _PROBE_SERVER_LOG_NAME)
    try:
        server.wait_ready()
        triton = baselines.TritonPath(server.address.grpc_url)
        try:
            triton.time(request, runs=1, warmup_runs=1)
            slope = triton.slope(request, steps=spec.slope_steps, runs=spec.slope_runs)
        finally:
            triton.close()
    finally:
        server.stop()
    probe = BlsProbe(
        onnx_loop_slope=loop.slope,
        triton_slope=slope,
        unet_calls_per_step=loop.unet_calls_per_step,
    )
    logger.info("BLS probe: one BLS UNet call costs %.3f ms", probe.round_trip_ms)
    return probe


def _estimated_level_s(scenario: Scenario, level: float, *, throughput_per_s: float) -> float:
    requests = scenario.request_count(level)
    rate = level if scenario.mode is LoadMode.REQUEST_RATE else throughput_per_s
    return _PERF_ANALYZER_START_S + requests / max(rate, 1e-6)


def _run_scenarios(
    profile: Profile,
    *,
    server: TritonServer,
    binary: Path,
    input_dir: Path,
    output_dir: Path,
    deadline: Deadline,
    single_request_s: float,
    show_progress: bool,
) -> tuple[list[LoadPoint], list[str]]:
    points: list[LoadPoint] = []
    skipped: list[str] = []
    warmed = {profile.baseline.input_data}
    logs = output_dir / "perf_analyzer"
    total = sum(len(scenario.levels) for scenario in profile.scenarios)
    with tqdm(total=total, desc=f"perf {profile.name}", unit="level", disable=not show_progress) as progress:
        for scenario in profile.scenarios:
            levels = scenario.levels
            if scenario.mode is LoadMode.REQUEST_RATE:
                peak = peak_throughput(points, scenario.rate_reference or "")
                if peak is None:
                    skipped.append(f"{scenario.name}: its rate reference {scenario.rate_reference} was not measured")
                    progress.update(len(levels))
                    continue
                levels = request_rates(levels, peak_throughput_per_s=peak)
            input_data_path = input_dir / scenario.input_data
            if scenario.input_data not in warmed:
                # One pass over the file first: each new size's first run allocates, and is not load.
                warm_up = Scenario(
                    name=f"warmup_{scenario.name}",
                    protocol=scenario.protocol,
                    mode=LoadMode.CONCURRENCY,
                    input_data=scenario.input_data,
                    levels=(1.0,),
                    min_requests=len(load_input_data(input_data_path)),
                )
                try:
                    run_level(
                        warm_up,
                        1.0,
                        binary=binary,
                        address=server.address,
                        input_data_path=input_data_path,
                        output_dir=logs,
                        timeout_s=max(deadline.left_s, 1.0),
                    )
                    warmed.add(scenario.input_data)
                except PerfAnalyzerError as error:
                    skipped.append(f"{scenario.name}: the warm-up failed: {error}")
                    progress.update(len(levels))
                    continue
            throughput = 1.0 / single_request_s
            for level in levels:
                name = level_file_stem(scenario, level)
                estimate_s = _estimated_level_s(scenario, level, throughput_per_s=throughput)
                if estimate_s > deadline.left_s:
                    skipped.append(
                        f"{name}: about {estimate_s:.0f} s needed, {max(deadline.left_s, 0):.0f} s left of the "
                        f"{deadline.limit_s:.0f} s limit"
                    )
                    progress.update()
                    continue
                progress.set_postfix_str(f"{scenario.name} {scenario.mode.value} {level:g}")
                try:
                    point = run_level(
                        scenario,
                        level,
                        binary=binary,
                        address=server.address,
                        input_data_path=input_data_path,
                        output_dir=logs,
                        timeout_s=max(deadline.left_s, 1.0),
                    )
                except PerfAnalyzerError as error:
                    logger.error("%s", error)
                    skipped.append(f"{name}: FAILED: {str(error).splitlines()[0]}")
                    progress.update()
                    continue
                points.append(point)
                throughput = max(point.throughput_per_s, 1e-6)
                logger.info(
                    "%s: %.2f images/s, p50 %.1f ms, p99 %.1f ms",
                    name,
                    point.throughput_per_s,
                    point.p50_ms,
                    point.p99_ms,
                )
                progress.update()
    return points, skipped


def run_perf(options: PerfOptions) -> tuple[PerfResult | EngineResult, dict[str, Path]]:
    """Runs a profile end to end; returns the result and the written files (CSV, plot, summary).

    An engine profile (``scenarios.json`` entry with an ``engine`` section) runs
    :func:`sdtriton.perf.engine_runner.run_engine_perf` and returns its :class:`EngineResult`.
    """
    from sdtriton.perf.engine_scenarios import load_engine_profiles

    engine_profiles = load_engine_profiles(options.perf_dir)
    if options.profile in engine_profiles:
        from sdtriton.perf.engine_runner import run_engine_perf

        return run_engine_perf(options, engine_profiles[options.profile])
    load_before = os.getloadavg()
    started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    profiles = load_profiles(options.perf_dir)
    if options.profile not in profiles:
        known = ", ".join([*profiles, *engine_profiles])
        raise ValueError(f"no profile {options.profile!r} in {options.perf_dir}; have {known}")
    profile = profiles[options.profile]
    deadline = Deadline(options.time_limit_s or profile.time_limit_s)
    binary = find_perf_analyzer(options.perf_analyzer)
    input_dir = options.perf_dir / INPUT_DATA_DIR_NAME
    for name in profile.input_data_files():
        if not (input_dir / name).is_file():
            raise FileNotFoundError(f"input-data file {input_dir / name} is missing")
    request = load_input_data(input_dir / profile.baseline.input_data)[0]
    output_dir = options.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    spec = profile.baseline
    logger.info("profile %s: %s; time limit %.0f s", profile.name, profile.description, deadline.limit_s)

    with work_folder(options.work_dir) as work_dir:
        model_dir = ensure_model(options.model_dir, profile.model, work_dir)
        repository = ensure_repository(
            options.repository or work_dir / "repository",
            model_dir,
            show_progress=options.show_progress,
            work_dir=work_dir,
        )
        diffusers_timing, diffusers_image = (None, None)
        if not options.skip_diffusers:
            diffusers_timing, diffusers_image = baselines.time_diffusers(
                model_dir, request, runs=spec.runs, warmup_runs=spec.warmup_runs, gpu=options.gpu
            )
            gc.collect()  # the heavy profile's pipeline holds gigabytes: let it go before the next path loads
        loop = baselines.time_onnx_loop(
            repository,
            request,
            runs=spec.runs,
            warmup_runs=spec.warmup_runs,
            slope_steps=spec.slope_steps,
            slope_runs=spec.slope_runs,
            gpu=options.gpu,
        )
        gc.collect()
        server = start_server(repository, options, log_path=output_dir / _SERVER_LOG_NAME)
        try:
            ready_s = server.wait_ready()
            logger.info("tritonserver ready after %.1f s (log: %s)", ready_s, server.log_path)
            triton_version = server_version(server.address.http_url)
            triton = _time_triton(server, request, profile)
            points, skipped = _run_scenarios(
                profile,
                server=server,
                binary=binary,
                input_dir=input_dir,
                output_dir=output_dir,
                deadline=deadline,
                single_request_s=triton.client.median_ms / 1000.0,
                show_progress=options.show_progress,
            )
        finally:
            server.stop()
        probe = None
        probe_estimate_s = _PROBE_FIXED_S + 6 * spec.slope_runs * triton.client.median_ms / 1000.0
        if not spec.bls_probe:
            skipped.append("identity-UNet BLS probe: off in this profile (its goal is judged on the default model)")
        elif probe_estimate_s < deadline.left_s:
            probe = _bls_probe(repository, work_dir, request, profile, options=options, output_dir=output_dir)
        else:
            skipped.append(
                f"identity-UNet BLS probe: about {probe_estimate_s:.0f} s needed, {max(deadline.left_s, 0):.0f} s "
                f"left of the {deadline.limit_s:.0f} s limit"
            )

    differences = {"onnx_loop vs triton": _max_difference(loop.image, triton.image)}
    if diffusers_image is not None:
        differences["diffusers vs onnx_loop"] = _max_difference(diffusers_image, loop.image)
    result = PerfResult(
        profile=profile.name,
        machine=machine_info(
            started_utc=started_utc, triton_version=triton_version, load_before=load_before, gpu=options.gpu
        ),
        request=request,
        diffusers=diffusers_timing,
        onnx_loop=loop.timing,
        onnx_loop_networks=loop.networks,
        onnx_loop_slope=loop.slope,
        unet_calls_per_step=loop.unet_calls_per_step,
        triton_client=triton.client,
        triton_slope=triton.slope,
        triton_breakdown=triton.breakdown,
        slope_unet_stats=triton.slope_unet_stats,
        points=tuple(points),
        scenarios=profile.scenarios,
        baseline_input_data=profile.baseline.input_data,
        skipped=tuple(skipped),
        max_pixel_difference={name: value for name, value in differences.items() if value is not None},
        elapsed_s=deadline.elapsed_s,
        bls_probe=probe,
    )
    files = write_reports(result, output_dir)
    return result, files
