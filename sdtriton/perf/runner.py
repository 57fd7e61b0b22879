"""``sdtriton perf``: make and export the profile's model, time the baselines, start Triton, run the load scenarios.

Order matters on a small CPU: the in-process baselines run before the server starts (nothing else loaded),
then the Triton path is timed through the client at the same concurrency 1, then perf_analyzer sweeps.
Everything runs under the profile's time limit, counted from the start: levels that would not fit are
skipped and named in the summary.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sdtriton import interface
from sdtriton.components import TEXT_ENCODER, UNET, VAE_DECODER
from sdtriton.perf import baselines, report
from sdtriton.perf.engine_report import engine_headline
from sdtriton.perf.engine_results import EngineResult
from sdtriton.perf.engine_runner import run_engine_perf
from sdtriton.perf.engine_scenarios import load_engine_profiles
from sdtriton.perf.harness import (
    Deadline,
    PerfOptions,
    machine_info,
    model_under_test,
    server_version,
    start_server,
    work_folder,
)
from sdtriton.perf.identity import identity_repository
from sdtriton.perf.perf_analyzer import PerfAnalyzerError, find_perf_analyzer, level_file_stem, run_level
from sdtriton.perf.results import BlsProbe, PerfResult, TritonBreakdown
from sdtriton.perf.run import PathTiming, StepSlope
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
from sdtriton.server import TritonServer

logger = logging.getLogger(__name__)

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
    client: PathTiming
    image: np.ndarray
    breakdown: TritonBreakdown
    slope: StepSlope
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
    engine_profiles = load_engine_profiles(options.perf_dir)
    if options.profile in engine_profiles:
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
        model_dir, repository = model_under_test(options, profile.model, work_dir)
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
    files = report.write_reports(result, output_dir)
    return result, files


def headline(result: PerfResult | EngineResult) -> str:
    """The run's paragraph for the terminal: the concurrency-1 comparison, or an engine run's headline ratios."""
    return engine_headline(result) if isinstance(result, EngineResult) else report.headline(result)
