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
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sdtriton.client import SdTritonError
from sdtriton.perf import baselines, harness
from sdtriton.perf.client_load import ClientClass, run_burst, run_classes
from sdtriton.perf.engine_report import write_engine_reports
from sdtriton.perf.engine_results import (
    BATCHING_OFF,
    BATCHING_ON,
    BURST,
    BURST_WARMUP,
    CEILING_SERVED,
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
from sdtriton.perf.engine_scenarios import BurstSpec, CeilingSpec, EngineProfile, MixedSpec, SimulatedSpec, SweepSpec
from sdtriton.perf.in_process import ZeroTimeUNet, run_closed_loop
from sdtriton.perf.run import PathTiming
from sdtriton.perf.scenarios import INPUT_DATA_DIR_NAME
from sdtriton.perf.simulated import simulated_repository
from sdtriton.perf.variants import engine_limits_of, engine_variant
from sdtriton.perf.workload import RequestSpec, load_input_data
from sdtriton.server import TritonServer
from sdtriton.serving.engine import EngineLimits

logger = logging.getLogger(__name__)

# A server's start (models loaded) and warm-up, on top of the requests it serves.
_SERVER_START_S = 30.0
# Requests of a fresh server's warm-up, sent one at a time before it is measured.
_WARMUP_REQUESTS = 2
# Each client request's time budget: this many times what it should take here (its steps at the plain loop's
# speed, times the images it shares the CPU with), and at least the minimum. Only a lost answer comes near it.
_TIMEOUT_FACTOR = 10.0
_MIN_TIMEOUT_S = 60.0


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

    def __init__(self, options: harness.PerfOptions, profile: EngineProfile, request: RequestSpec) -> None:
        self.options = options
        self.profile = profile
        self.request = request
        self.deadline = harness.Deadline(options.time_limit_s or profile.time_limit_s)
        self.show = options.show_progress
        self.skipped: list[str] = []
        self.server_version = "not started"
        self.image_s = 1.0  # the plain loop's seconds an image, once timed: sizes the estimates
        self.served: baselines.ServedFiles | None = None
        self.limits = EngineLimits()

    def timeout_s(self, steps: int, concurrency: int) -> float:
        """A request's time budget at ``concurrency``: generous, so that only a lost answer reaches it."""
        expected_s = self.image_s * steps / self.request.num_inference_steps * concurrency
        return max(_MIN_TIMEOUT_S, _TIMEOUT_FACTOR * expected_s)

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
        server = harness.start_server(repository, self.options, log_path=log_path)
        try:
            ready_s = server.wait_ready()
            logger.info("%s: tritonserver ready after %.1f s (log: %s)", variant, ready_s, log_path)
            self.server_version = harness.server_version(server.address.http_url)
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

    def load_in_process(self, repository: Path) -> None:
        """Loads the sessions the in-process runs share and warms them (and sizes the estimates)."""
        self.served = baselines.load_served_files(repository, gpu=self.options.gpu)
        self.limits = engine_limits_of(repository)
        ceiling = self.profile.ceiling
        warmup_runs = ceiling.plain_loop_warmup_runs if ceiling is not None else 1
        sizing, _ = baselines.time_plain_loop(self.served, self.request, runs=1, warmup_runs=warmup_runs)
        self.image_s = sizing.median_ms / 1000.0
        if ceiling is not None and ceiling.warmup_requests:
            self.in_process_run(ceiling.concurrency, ceiling.warmup_requests, description="in-process warm-up")

    def in_process_run(
        self, concurrency: int, requests: int, *, zero_time_unet: bool = False, description: str = "in-process"
    ) -> InProcessRun:
        served = self.served
        return run_closed_loop(
            config=served.config,
            tokenizers=served.tokenizers,
            networks=ZeroTimeUNet(served.networks) if zero_time_unet else served.networks,
            limits=self.limits,
            request=self.request,
            concurrency=concurrency,
            requests=requests,
            description=description,
            show_progress=self.show,
        )

    # ---- through a server ------------------------------------------------------------------------------

    def load(self, server: TritonServer, variant: str, concurrency: int, requests: int) -> LevelResult:
        """``concurrency`` client threads over gRPC sending the base request, ``requests`` in all (rounded up)."""
        per_client = -(-requests // concurrency)
        records, duration_s = run_classes(
            server.address.grpc_url,
            [
                ClientClass(
                    variant,
                    self.request,
                    concurrency,
                    per_client,
                    timeout_s=self.timeout_s(self.request.num_inference_steps, concurrency),
                )
            ],
            load=f"{variant}_c{concurrency}",
            show_progress=self.show,
        )
        failures = _failures(records)
        if failures is not None:
            self.skipped.append(f"{variant} c={concurrency}: {failures}")
        return LevelResult(variant=variant, concurrency=concurrency, records=tuple(records), duration_s=duration_s)

    def ceiling(self, server: TritonServer, spec: CeilingSpec) -> CeilingResult | None:
        """In turns: in-process and served at the ceiling's concurrency, the plain loop and served at 1."""
        in_process, served, served_one, plain, turn_ratios = [], [], [], [], []
        per_turn = -(-spec.requests // spec.turns)
        plain_per_turn = -(-spec.plain_loop_runs // spec.turns)
        for turn in range(spec.turns):
            run = self.in_process_run(spec.concurrency, per_turn, description=f"ceiling turn {turn + 1}: in-process")
            level = self.load(server, CEILING_SERVED, spec.concurrency, per_turn)
            timing, _ = baselines.time_plain_loop(self.served, self.request, runs=plain_per_turn, warmup_runs=0)
            one = self.load(server, CEILING_SERVED, 1, plain_per_turn)
            in_process.append(run)
            served.append(level)
            plain += timing.latencies_ms
            served_one.append(one)
            if level.completed:
                turn_ratios.append(level.images_per_s / run.images_per_s)
        served_level = LevelResult.merged(served)
        served_one_level = LevelResult.merged(served_one)
        if not served_level.completed or not served_one_level.completed:
            self.skipped.append("ceiling: the server completed no request at one of its concurrencies")
            return None
        result = CeilingResult(
            in_process=InProcessRun.merged(in_process),
            served=served_level,
            plain_loop=PathTiming(
                path=baselines.ONNX_LOOP,
                num_inference_steps=self.request.num_inference_steps,
                latencies_ms=tuple(plain),
            ),
            served_one=served_one_level,
            turn_ratios=tuple(turn_ratios),
        )
        logger.info(
            "ceiling: %.2f images/s in-process at c=%d, %.2f served: %.3fx (turns %s); c1 %.1f ms served, plain loop "
            "%.1f ms: %.3fx",
            result.in_process.images_per_s,
            spec.concurrency,
            result.served.images_per_s,
            result.served_over_ceiling,
            ", ".join(f"{ratio:.3f}" for ratio in turn_ratios),
            result.served_one.p50_ms,
            result.plain_loop.median_ms,
            result.one_over_plain_loop,
        )
        return result

    def sweep(self, servers: dict[str, TritonServer], spec: SweepSpec) -> list[LevelResult]:
        """Every level on every server, in turns: a drift of the machine's speed hits both variants alike."""
        parts: dict[tuple[str, int], list[LevelResult]] = {}
        for _ in range(spec.turns):
            for concurrency in spec.levels:
                requests = -(-spec.request_count(concurrency) // spec.turns)
                for variant, server in servers.items():
                    parts.setdefault((variant, concurrency), []).append(
                        self.load(server, variant, concurrency, requests)
                    )
        levels = []
        for (variant, concurrency), turns in parts.items():
            level = LevelResult.merged(turns)
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
            levels.append(level)
        return levels

    def sweep_estimate_s(self, spec: SweepSpec) -> float:
        return 2 * (_SERVER_START_S + sum(spec.request_count(level) for level in spec.levels) * self.image_s)

    def ceiling_estimate_s(self, spec: CeilingSpec) -> float:
        return 2 * (spec.requests + spec.plain_loop_runs) * self.image_s

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
        short_timeout_s = self.timeout_s(spec.short_steps, spec.concurrency)
        long_timeout_s = self.timeout_s(spec.long_steps, spec.concurrency)
        short_only, short_only_s = run_classes(
            url,
            [ClientClass(SHORT, short, spec.concurrency, per_client, timeout_s=short_timeout_s)],
            load="short_only",
            show_progress=self.show,
        )
        mixed, mixed_s = run_classes(
            url,
            [
                ClientClass(SHORT, short, spec.short_clients, None, timeout_s=short_timeout_s),
                ClientClass(LONG, long, spec.long_clients, spec.long_requests_per_client, timeout_s=long_timeout_s),
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
        timeout_s = self.timeout_s(self.request.num_inference_steps, spec.max_pending_requests)
        warmup = []
        for _ in range(spec.warmup_bursts):
            warmup += run_burst(
                url, self.request, count=spec.requests, timeout_s=timeout_s, load=BURST_WARMUP, show_progress=self.show
            )
        records = run_burst(url, self.request, count=spec.requests, timeout_s=timeout_s, show_progress=self.show)
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

    def simulated(self, server: TritonServer, spec: SimulatedSpec) -> SimulatedResult | None:
        """In turns: the non-UNet parts in-process, then the simulated server, at the lowest and highest level."""
        low_c, high_c = spec.levels[0], spec.levels[-1]
        in_process: dict[int, list[InProcessRun]] = {low_c: [], high_c: []}
        parts: dict[int, list[LevelResult]] = {level: [] for level in spec.levels}
        for _ in range(spec.turns):
            for concurrency in spec.levels:
                if concurrency in in_process:
                    requests = max(-(-spec.in_process_requests // spec.turns), concurrency)
                    in_process[concurrency].append(
                        self.in_process_run(
                            concurrency, requests, zero_time_unet=True, description=f"non-UNet parts, c={concurrency}"
                        )
                    )
                requests = -(-spec.request_count(concurrency) // spec.turns)
                parts[concurrency].append(self.load(server, SIMULATED, concurrency, requests))
        points = [LevelResult.merged(turns) for turns in parts.values()]
        by_level = {point.concurrency: point for point in points if point.completed}
        low, high = by_level.get(low_c), by_level.get(high_c)
        if low is None or high is None:
            self.skipped.append(f"{SIMULATED} accelerator: c={low_c} or c={high_c} completed no request")
            return None
        low_run = InProcessRun.merged(in_process[low_c])
        result = SimulatedResult(
            latency=spec.latency,
            rows_per_image=round(low_run.unet_rows / low_run.unet_calls),
            unet_calls_per_image=low_run.unet_calls / low_run.requests,
            low=low,
            high=high,
            points=tuple(point for point in points if point.completed),
            non_unet_low=low_run,
            non_unet_high=InProcessRun.merged(in_process[high_c]),
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


def run_engine_perf(options: harness.PerfOptions, profile: EngineProfile) -> tuple[EngineResult, dict[str, Path]]:
    """Runs an engine profile end to end; returns the result and the written files (CSVs, plot, summary)."""
    load_before = os.getloadavg()
    started_utc = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    request = load_input_data(options.perf_dir / INPUT_DATA_DIR_NAME / profile.input_data)[0]
    options.output_dir.mkdir(parents=True, exist_ok=True)
    run = _EngineRun(options, profile, request)
    cpu = _CpuMeter()
    logger.info("engine profile %s: %s; time limit %.0f s", profile.name, profile.description, run.deadline.limit_s)
    ceiling = mixed = burst = simulated = None
    sweep: list[LevelResult] = []
    with harness.work_folder(options.work_dir) as work_dir:
        _, repository = harness.model_under_test(options, profile.model, work_dir)
        variants = work_dir / "engine_variants"
        on_repository = repository
        sweep_spec = profile.sweep
        if sweep_spec is not None and sweep_spec.batching_on != engine_limits_of(repository).max_running_images:
            on_repository = engine_variant(
                repository, _fresh(variants / BATCHING_ON), max_running_images=sweep_spec.batching_on
            )
        # The in-process sessions stay loaded, idle while a server is measured: the two sides of (a) and the
        # non-UNet parts of (e) are measured in turns with the server loads they are compared with.
        run.load_in_process(on_repository)

        if profile.ceiling is not None or sweep_spec is not None or profile.mixed is not None:
            with ExitStack() as stack:
                servers = {BATCHING_ON: stack.enter_context(run.server(on_repository, BATCHING_ON))}
                if sweep_spec is not None and run.fits("batching-off server", run.sweep_estimate_s(sweep_spec)):
                    off_repository = engine_variant(
                        on_repository, _fresh(variants / BATCHING_OFF), max_running_images=sweep_spec.batching_off
                    )
                    servers[BATCHING_OFF] = stack.enter_context(run.server(off_repository, BATCHING_OFF))
                on_server = servers[BATCHING_ON]
                if profile.ceiling is not None and run.fits("ceiling", run.ceiling_estimate_s(profile.ceiling)):
                    ceiling = run.ceiling(on_server, profile.ceiling)
                if BATCHING_OFF in servers:
                    sweep = run.sweep(servers, sweep_spec)
                if profile.mixed is not None and run.fits("mixed steps", run.mixed_estimate_s(profile.mixed)):
                    mixed = run.mixed(on_server, profile.mixed)
        burst_spec = profile.burst
        if burst_spec is not None and run.fits(
            BURST, _SERVER_START_S + (1 + burst_spec.warmup_bursts) * burst_spec.max_pending_requests * run.image_s
        ):
            burst_repository = engine_variant(
                on_repository, _fresh(variants / BURST), max_pending_requests=burst_spec.max_pending_requests
            )
            with run.server(burst_repository, BURST) as server:
                burst = run.burst(server, burst_spec)
        simulated_spec = profile.simulated
        if simulated_spec is not None:
            requests = sum(simulated_spec.request_count(level) for level in simulated_spec.levels)
            # The stand-in UNet sleeps: a simulated request costs less of this CPU than a real one.
            if run.fits(f"{SIMULATED} accelerator", _SERVER_START_S + requests * run.image_s / 2):
                simulated_repo = simulated_repository(
                    on_repository, _fresh(variants / SIMULATED), simulated_spec.latency
                )
                with run.server(simulated_repo, SIMULATED) as server:
                    simulated = run.simulated(server, simulated_spec)
        run.served = None  # the in-process sessions go
        gc.collect()
    if profile.ceiling is None:
        run.skipped.append("ceiling: not in this profile")
    result = EngineResult(
        profile=profile.name,
        machine=harness.machine_info(
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
