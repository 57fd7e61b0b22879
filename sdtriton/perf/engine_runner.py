"""``sdtriton perf --profile engine``: the diffusion engine's ceiling, batching, fairness, refusals, scaling.

Order matters on a small CPU. First, in this process and before any server starts: the plain loop one image
at a time, the engine over ONNX Runtime sessions at the ceiling's concurrency (the compute ceiling), and the
engine with a UNet that takes no time (the non-UNet parts the simulated section counts). Then one server at a
time, each on free loopback ports and warmed up: the batching-on repository (sweep, then mixed steps), the
batching-off one (sweep), the burst one (a small ``max_pending_requests``), the simulated-accelerator one.
Every served load is client threads over gRPC. Sections that would not fit in the time left are skipped and
named in the summary, as are failed requests and a server that died.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sdtriton.client import SdTritonError
from sdtriton.perf import baselines
from sdtriton.perf.client_load import ClientClass, run_burst, run_classes
from sdtriton.perf.engine_report import write_engine_reports
from sdtriton.perf.engine_results import (
    BATCHING_OFF,
    BATCHING_ON,
    BURST,
    BURST_WARMUP,
    LONG,
    SHORT,
    SIMULATED,
    BurstResult,
    CeilingResult,
    EngineResult,
    InProcessRun,
    LevelResult,
    MixedResult,
    Outcome,
    RequestRecord,
    SimulatedResult,
)
from sdtriton.perf.engine_scenarios import BurstSpec, EngineProfile, MixedSpec, SimulatedSpec, SweepSpec
from sdtriton.perf.in_process import ZeroTimeUNet, run_closed_loop
from sdtriton.perf.runner import (
    Deadline,
    PerfOptions,
    ensure_model,
    ensure_repository,
    machine_info,
    server_version,
    start_server,
    work_folder,
)
from sdtriton.perf.scenarios import INPUT_DATA_DIR_NAME
from sdtriton.perf.simulated import simulated_repository
from sdtriton.perf.variants import engine_limits_of, engine_variant
from sdtriton.perf.workload import RequestSpec, load_input_data
from sdtriton.server import TritonServer

logger = logging.getLogger(__name__)

# A server's start (models loaded) and warm-up, on top of the requests it serves.
_SERVER_START_S = 30.0
# Requests of a fresh server's warm-up, sent one at a time before it is measured.
_WARMUP_REQUESTS = 2
# The plain loop's runs when the profile has no ceiling section (it still sizes the time estimates).
_PLAIN_LOOP_RUNS = 3


class _CpuMeter:
    """CPU time the machine spent on other processes than this run's (this process, its servers and stubs).

    The machine's busy time comes from ``/proc/stat``; this run's from :func:`os.times`, whose children's
    share holds each stopped server's, stubs included (they are reaped by the server). Read after every server
    stopped. None where ``/proc/stat`` is missing.
    """

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()
        except OSError:
            return None
        # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait.
        ticks = [int(value) for value in fields[1:9]]
        busy_s = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return busy_s, own.user + own.system + own.children_user + own.children_system

    def other_cpu_s(self) -> float | None:
        end = self._read()
        if self._start is None or end is None:
            return None
        return max(0.0, (end[0] - self._start[0]) - (end[1] - self._start[1]))


def _failures(records: list[RequestRecord] | tuple[RequestRecord, ...]) -> str | None:
    """``N of M requests FAILED: first message``, or None when none failed."""
    failed = [record for record in records if record.outcome is Outcome.FAILED]
    if not failed:
        return None
    return f"{len(failed)} of {len(records)} requests FAILED: {failed[0].message}"


class _EngineRun:
    """One engine profile run: its options, time limit, notes of what was skipped, and one method per section."""

    def __init__(self, options: PerfOptions, profile: EngineProfile, request: RequestSpec) -> None:
        self.options = options
        self.profile = profile
        self.request = request
        self.deadline = Deadline(options.time_limit_s or profile.time_limit_s)
        self.show = options.show_progress
        self.skipped: list[str] = []
        self.server_version = "not started"
        self.image_s = 1.0  # the plain loop's seconds an image, once timed: sizes the estimates

    def fits(self, section: str, estimate_s: float) -> bool:
        """Whether ``section`` fits in the time left; if not, it is named in the summary."""
        if estimate_s <= self.deadline.left_s:
            return True
        self.skipped.append(
            f"{section}: about {estimate_s:.0f} s needed, {max(self.deadline.left_s, 0):.0f} s left of the "
            f"{self.deadline.limit_s:.0f} s limit"
        )
        return False

    @contextmanager
    def server(self, repository: Path, variant: str) -> Iterator[TritonServer]:
        """A warmed-up server over ``repository``; one that died under load is named in the summary."""
        log_path = self.options.output_dir / f"tritonserver_{variant}.log"
        server = start_server(repository, self.options, log_path=log_path)
        try:
            ready_s = server.wait_ready()
            logger.info("%s: tritonserver ready after %.1f s (log: %s)", variant, ready_s, log_path)
            self.server_version = server_version(server.address.http_url)
            triton = baselines.TritonPath(server.address.grpc_url)
            try:
                triton.time(self.request, runs=_WARMUP_REQUESTS, warmup_runs=0)
            finally:
                triton.close()
            yield server
        except SdTritonError as error:
            # The server stopped answering (it died, or its stream broke): what it measured so far is kept.
            self.skipped.append(f"{variant}: FAILED: {error}")
        finally:
            if not server.running:
                self.skipped.append(f"{variant}: tritonserver DIED during its loads (FAILED; log: {log_path})")
            server.stop()

    # ---- in this process -------------------------------------------------------------------------------

    def in_process(self, repository: Path) -> tuple[CeilingResult | None, tuple[InProcessRun, InProcessRun] | None]:
        """The plain loop, the ceiling and the non-UNet parts, on one set of ONNX Runtime sessions."""
        profile = self.profile
        served = baselines.load_served_files(repository, gpu=self.options.gpu)
        limits = engine_limits_of(repository)
        ceiling_spec = profile.ceiling
        plain_loop, _ = baselines.time_plain_loop(
            served,
            self.request,
            runs=ceiling_spec.plain_loop_runs if ceiling_spec is not None else _PLAIN_LOOP_RUNS,
            warmup_runs=ceiling_spec.plain_loop_warmup_runs if ceiling_spec is not None else 1,
        )
        self.image_s = plain_loop.median_ms / 1000.0
        ceiling = None
        if ceiling_spec is not None:
            run = run_closed_loop(
                config=served.config,
                tokenizer=served.tokenizer,
                networks=served.networks,
                limits=limits,
                request=self.request,
                concurrency=ceiling_spec.concurrency,
                requests=ceiling_spec.requests,
                warmup_requests=ceiling_spec.warmup_requests,
                description=f"ceiling: in-process engine, c={ceiling_spec.concurrency}",
                show_progress=self.show,
            )
            logger.info(
                "ceiling: %.2f images/s in-process at c=%d (%.1f UNet rows a call); plain loop %.1f ms an image",
                run.images_per_s,
                run.concurrency,
                run.rows_per_unet_call,
                plain_loop.median_ms,
            )
            ceiling = CeilingResult(in_process=run, plain_loop=plain_loop)
        non_unet = None
        if profile.simulated is not None:
            spec = profile.simulated
            low, high = (
                run_closed_loop(
                    config=served.config,
                    tokenizer=served.tokenizer,
                    networks=ZeroTimeUNet(served.networks),
                    limits=limits,
                    request=self.request,
                    concurrency=concurrency,
                    requests=max(spec.in_process_requests, concurrency),
                    warmup_requests=concurrency,
                    description=f"non-UNet parts, c={concurrency}",
                    show_progress=self.show,
                )
                for concurrency in (spec.levels[0], spec.levels[-1])
            )
            non_unet = (low, high)
        return ceiling, non_unet

    # ---- through a server ------------------------------------------------------------------------------

    def levels(
        self, server: TritonServer, variant: str, levels: tuple[int, ...], request_count: Callable[[int], int]
    ) -> list[LevelResult]:
        """One closed-loop level per concurrency: that many client threads over gRPC, the base request."""
        results = []
        for concurrency in levels:
            per_client = -(-request_count(concurrency) // concurrency)
            records, duration_s = run_classes(
                server.address.grpc_url,
                [ClientClass(variant, self.request, concurrency, per_client)],
                load=f"{variant}_c{concurrency}",
                show_progress=self.show,
            )
            level = LevelResult(variant=variant, concurrency=concurrency, records=tuple(records), duration_s=duration_s)
            failures = _failures(records)
            if failures is not None:
                self.skipped.append(f"{variant} c={concurrency}: {failures}")
            if not level.completed:
                continue
            logger.info(
                "%s c=%d: %.2f images/s, p50 %.1f ms, p99 %.1f ms",
                variant,
                concurrency,
                level.images_per_s,
                level.p50_ms,
                level.p99_ms,
            )
            results.append(level)
        return results

    def sweep_estimate_s(self, spec: SweepSpec) -> float:
        return _SERVER_START_S + sum(spec.request_count(level) for level in spec.levels) * self.image_s

    def mixed_estimate_s(self, spec: MixedSpec) -> float:
        # On this CPU a batched step costs about what its images cost one by one.
        step_s = self.image_s / self.request.num_inference_steps
        long_work = spec.long_requests_per_client * spec.long_steps * spec.concurrency
        return (long_work + spec.short_only_requests * spec.short_steps) * step_s

    def mixed(self, server: TritonServer, spec: MixedSpec) -> MixedResult:
        url = server.address.grpc_url
        short = self.request.with_steps(spec.short_steps)
        long = self.request.with_steps(spec.long_steps)
        # The reference first: the same concurrency, every client short.
        per_client = -(-spec.short_only_requests // spec.concurrency)
        short_only, short_only_s = run_classes(
            url, [ClientClass(SHORT, short, spec.concurrency, per_client)], load="short_only", show_progress=self.show
        )
        mixed, mixed_s = run_classes(
            url,
            [
                ClientClass(SHORT, short, spec.short_clients, None),
                ClientClass(LONG, long, spec.long_clients, spec.long_requests_per_client),
            ],
            load="mixed",
            show_progress=self.show,
        )
        failures = _failures([*short_only, *mixed])
        if failures is not None:
            self.skipped.append(f"mixed steps: {failures}")
        result = MixedResult(
            spec=spec,
            mixed=tuple(mixed),
            mixed_duration_s=mixed_s,
            short_only=tuple(short_only),
            short_only_duration_s=short_only_s,
        )
        ratio = result.short_p99_ratio
        logger.info("mixed steps: short p99 beside long ones / alone = %s", "-" if ratio is None else f"{ratio:.2f}x")
        return result

    def burst(self, server: TritonServer, spec: BurstSpec) -> BurstResult:
        url = server.address.grpc_url
        warmup = []
        for _ in range(spec.warmup_bursts):
            warmup += run_burst(url, self.request, count=spec.requests, load=BURST_WARMUP, show_progress=self.show)
        records = run_burst(url, self.request, count=spec.requests, show_progress=self.show)
        failures = _failures([*warmup, *records])
        if failures is not None:
            self.skipped.append(f"burst: {failures}")
        result = BurstResult(spec=spec, records=tuple(records), warmup_records=tuple(warmup))
        slowest = result.max_refusal_ms
        logger.info(
            "burst: %d sent, %d accepted (%d completed), %d refused, slowest refusal %s ms",
            spec.requests,
            result.accepted,
            result.completed,
            result.refused,
            "-" if slowest is None else f"{slowest:.1f}",
        )
        return result

    def simulated(
        self, server: TritonServer, spec: SimulatedSpec, non_unet: tuple[InProcessRun, InProcessRun]
    ) -> SimulatedResult | None:
        points = self.levels(server, SIMULATED, spec.levels, spec.request_count)
        by_level = {point.concurrency: point for point in points}
        low, high = by_level.get(spec.levels[0]), by_level.get(spec.levels[-1])
        if low is None or high is None:
            self.skipped.append(f"{SIMULATED} accelerator: c={spec.levels[0]} or c={spec.levels[-1]} not measured")
            return None
        low_run = non_unet[0]
        result = SimulatedResult(
            latency=spec.latency,
            rows_per_image=round(low_run.unet_rows / low_run.unet_calls),
            unet_calls_per_image=low_run.unet_calls / low_run.requests,
            low=low,
            high=high,
            points=tuple(points),
            non_unet_low=non_unet[0],
            non_unet_high=non_unet[1],
        )
        logger.info(
            "SIMULATED %s: c%d/c%d = %.2fx measured, %.2fx allowed with the non-UNet parts (%.2fx UNet alone): %.1f%%",
            spec.latency,
            result.high_concurrency,
            result.low_concurrency,
            result.measured_ratio,
            result.allowed_ratio,
            result.unet_only_allowed_ratio,
            100 * result.share_of_allowed,
        )
        return result


def _fresh(destination: Path) -> Path:
    if destination.exists():
        shutil.rmtree(destination)
    return destination


def run_engine_perf(options: PerfOptions, profile: EngineProfile) -> tuple[EngineResult, dict[str, Path]]:
    """Runs an engine profile end to end; returns the result and the written files (CSVs, plot, summary)."""
    load_before = os.getloadavg()
    started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    request = load_input_data(options.perf_dir / INPUT_DATA_DIR_NAME / profile.input_data)[0]
    options.output_dir.mkdir(parents=True, exist_ok=True)
    run = _EngineRun(options, profile, request)
    cpu = _CpuMeter()
    logger.info("engine profile %s: %s; time limit %.0f s", profile.name, profile.description, run.deadline.limit_s)
    sweep: list[LevelResult] = []
    mixed = burst = simulated = None
    with work_folder(options.work_dir) as work_dir:
        model_dir = ensure_model(options.model_dir, profile.model, work_dir)
        repository = ensure_repository(
            options.repository or work_dir / "repository", model_dir, show_progress=options.show_progress
        )
        variants = work_dir / "engine_variants"
        on_repository = repository
        sweep_spec = profile.sweep
        if sweep_spec is not None and sweep_spec.batching_on != engine_limits_of(repository).max_running_images:
            on_repository = engine_variant(
                repository, _fresh(variants / BATCHING_ON), max_running_images=sweep_spec.batching_on
            )

        ceiling, non_unet = run.in_process(on_repository)
        gc.collect()  # the in-process sessions go before any server loads its own

        if sweep_spec is not None or profile.mixed is not None:
            estimate_s = run.sweep_estimate_s(sweep_spec) if sweep_spec is not None else _SERVER_START_S
            if run.fits("batching-on server", estimate_s):
                with run.server(on_repository, BATCHING_ON) as server:
                    if sweep_spec is not None:
                        sweep += run.levels(server, BATCHING_ON, sweep_spec.levels, sweep_spec.request_count)
                    if profile.mixed is not None and run.fits("mixed steps", run.mixed_estimate_s(profile.mixed)):
                        mixed = run.mixed(server, profile.mixed)
        if sweep_spec is not None and run.fits("batching-off server", run.sweep_estimate_s(sweep_spec)):
            off_repository = engine_variant(
                on_repository, _fresh(variants / BATCHING_OFF), max_running_images=sweep_spec.batching_off
            )
            with run.server(off_repository, BATCHING_OFF) as server:
                sweep += run.levels(server, BATCHING_OFF, sweep_spec.levels, sweep_spec.request_count)
        burst_spec = profile.burst
        if burst_spec is not None and run.fits(BURST, _SERVER_START_S + burst_spec.max_pending_requests * run.image_s):
            burst_repository = engine_variant(
                on_repository, _fresh(variants / BURST), max_pending_requests=burst_spec.max_pending_requests
            )
            with run.server(burst_repository, BURST) as server:
                burst = run.burst(server, burst_spec)
        simulated_spec = profile.simulated
        if simulated_spec is not None and non_unet is not None:
            requests = sum(simulated_spec.request_count(level) for level in simulated_spec.levels)
            # The stand-in UNet sleeps: a simulated request costs less of this CPU than a real one.
            if run.fits(f"{SIMULATED} accelerator", _SERVER_START_S + requests * run.image_s / 2):
                simulated_repo = simulated_repository(
                    on_repository, _fresh(variants / SIMULATED), simulated_spec.latency
                )
                with run.server(simulated_repo, SIMULATED) as server:
                    simulated = run.simulated(server, simulated_spec, non_unet)
    if profile.ceiling is None:
        run.skipped.append("ceiling: not in this profile (the plain loop still timed the request)")
    result = EngineResult(
        profile=profile.name,
        machine=machine_info(
            started_utc=started_utc, triton_version=run.server_version, load_before=load_before, gpu=options.gpu
        ),
        request=request,
        input_data=profile.input_data,
        ceiling=ceiling,
        sweep=tuple(sweep),
        mixed=mixed,
        burst=burst,
        simulated=simulated,
        skipped=tuple(run.skipped),
        elapsed_s=run.deadline.elapsed_s,
        other_cpu_s=cpu.other_cpu_s(),
    )
    return result, write_engine_reports(result, options.output_dir)
