"""The ``sdtriton`` command line: make-tiny, export, serve, generate, batch, demo, perf, plan, and the shapes tools."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sdtriton import interface, server
from sdtriton.pipeline_config import DEFAULT_MAX_INFERENCE_STEPS, DEFAULT_MAX_PROMPT_BYTES, RequestLimits

if TYPE_CHECKING:
    from sdtriton.client import RetryPolicy

logger = logging.getLogger("sdtriton")
# transformers says once, on the first import of diffusers' SD pipelines, that image processors fall back to PIL
# without torchvision. No command runs an image processor (the safety checker and its feature extractor are
# never loaded), so the notice is harmless here; any other transformers import warning still shows.
_TORCHVISION_FALLBACK_NOTICE = "requires torchvision (not installed); falling back"


def _not_torchvision_fallback(record: logging.LogRecord) -> bool:
    return _TORCHVISION_FALLBACK_NOTICE not in record.getMessage()


def _make_tiny(args: argparse.Namespace) -> int:
    from sdtriton.tiny import FAMILIES, PROFILES, make_tiny

    if args.profile not in PROFILES:
        raise SystemExit(f"--profile must be one of {', '.join(PROFILES)}")
    if args.family not in FAMILIES:
        raise SystemExit(f"--family must be one of {', '.join(FAMILIES)}")
    make_tiny(args.output, profile=args.profile, seed=args.seed, family=args.family)
    sys.stdout.write(f"{args.output}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from sdtriton.export import (
        ComponentBackend,
        RenderOptions,
        TensorRtExportOptions,
        export_repository,
        tensorrt_dry_run,
    )

    backend = ComponentBackend(args.backend)
    uses_tensorrt = backend is ComponentBackend.TENSORRT
    tensorrt_flags = {
        "--trt-static-shapes": args.trt_static_shapes,
        "--timing-cache": args.timing_cache,
        "--onnx-dir": args.onnx_dir,
        "--no-engine-build": args.no_engine_build,
        "--dry-run": args.dry_run,
    }
    misplaced = [flag for flag, value in tensorrt_flags.items() if value and not uses_tensorrt]
    if misplaced:
        raise SystemExit(f"{', '.join(misplaced)}: only with --backend tensorrt")
    if args.no_engine_build and args.onnx_dir is None:
        raise SystemExit("--no-engine-build needs --onnx-dir (where the prepared ONNX files and trtexec lines stay)")
    options = RenderOptions(
        component_backend=backend,
        # TensorRT engines run on a GPU only.
        gpu=args.gpu or uses_tensorrt,
        max_batch_size=args.max_batch_size,
        max_running_images=args.max_running_images,
        max_pending_requests=args.max_pending_requests,
        model_prefix=args.model_prefix,
        response_cache_mb=args.response_cache_mb,
        text_cache_entries=args.text_cache_entries,
    )
    tensorrt = TensorRtExportOptions(
        static_shapes=args.trt_static_shapes,
        timing_cache=args.timing_cache,
        onnx_dir=args.onnx_dir,
        build_engines=not args.no_engine_build,
    )
    if args.dry_run:
        builds = tensorrt_dry_run(
            args.source,
            args.output,
            options=options,
            tensorrt=tensorrt,
            refiner=args.refiner,
            max_size_factor=args.max_size_factor,
        )
        sys.stdout.write("\n\n".join(build.describe() for build in builds) + "\n")
        return 0
    export_repository(
        args.source,
        args.output,
        options=options,
        max_size_factor=args.max_size_factor,
        default_num_inference_steps=args.default_steps,
        refiner=args.refiner,
        tensorrt=tensorrt,
        limits=RequestLimits(
            max_inference_steps=args.max_steps, max_prompt_bytes=args.max_prompt_bytes, max_pixels=args.max_pixels
        ),
    )
    sys.stdout.write(f"{args.output}\n")
    return 0


def _admin_access(args: argparse.Namespace) -> server.AdminAccess | None:
    """Admin endpoints closed unless the operator sets a key (environment) or opts out."""
    if args.unrestricted_admin_api:
        logger.warning(
            "admin endpoints (%s) open to anyone who reaches the ports", ", ".join(server.ADMIN_API_CATEGORIES)
        )
        return None
    key = os.environ.get(server.ADMIN_KEY_ENVIRONMENT)
    if not key:
        logger.info(
            "admin endpoints (%s) closed: set %s to use them with the header %s",
            ", ".join(server.ADMIN_API_CATEGORIES),
            server.ADMIN_KEY_ENVIRONMENT,
            server.ADMIN_KEY_HEADER,
        )
        return server.AdminAccess.random()
    try:
        return server.AdminAccess(key=key)
    except ValueError as error:
        raise SystemExit(f"{server.ADMIN_KEY_ENVIRONMENT}: {error}") from None


def _serve(args: argparse.Namespace) -> int:
    from sdtriton.supervisor import RestartBackoff, ServerSupervisor

    installation = (
        server.named_triton_installation(args.tritonserver) if args.tritonserver else server.pip_triton_installation()
    )
    address = server.ServerAddress(
        host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port
    )
    extra = [*args.extra, *server.drain_args(args.drain_timeout_s, args.extra)]
    if args.trace is not None:
        extra += server.trace_args(args.trace, rate=args.trace_rate)
    triton = server.TritonServer(
        args.repository,
        address=address,
        installation=installation,
        log_path=args.log_file,
        extra_args=extra,
        admin_access=_admin_access(args),
        drain_file=Path(tempfile.mkdtemp(prefix="sdtriton-serve-")) / "draining",
    )
    supervisor = ServerSupervisor(
        triton,
        restart_on_crash=args.restart_on_crash,
        backoff=RestartBackoff(max_restarts=args.max_restarts),
        ready_timeout_s=args.ready_timeout_s,
    )
    stop = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop.set())
    try:
        ready_s = supervisor.start()
        sys.stdout.write(
            f"ready after {ready_s:.1f} s\n"
            f"  HTTP     {address.http_url}\n"
            f"  gRPC     {address.grpc_url}\n"
            f"  metrics  {address.metrics_url}\n"
        )
        sys.stdout.flush()
        while not stop.wait(1.0):
            if supervisor.gave_up.is_set():
                return 1
        if triton.running and args.drain_timeout_s > 0:
            sys.stdout.write(f"draining: new requests refused, waiting up to {args.drain_timeout_s:.0f} s\n")
            sys.stdout.flush()
            triton.drain(timeout_s=args.drain_timeout_s)
    finally:
        supervisor.stop(timeout_s=args.drain_timeout_s + server.UNLOAD_MARGIN_S)
        shutil.rmtree(triton.drain_file.parent, ignore_errors=True)
    return 0


def _generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sdtriton.client import SdTritonError, StableDiffusionClient

    retry = _retry_policy(args)
    parameters = {
        "negative_prompt": args.negative_prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "scheduler": args.scheduler,
        "refiner_fraction": args.refiner_fraction,
    }
    preview_dir = args.output.parent / f"{args.output.stem}_previews" if args.preview_every else None
    try:
        with StableDiffusionClient(args.url, model_name=args.model, timeout_s=args.timeout_s, retry=retry) as client:
            if not (args.progress or args.preview_every):
                result = client.generate(args.prompt, **parameters)
            else:
                with tqdm(desc="denoising", unit="step", disable=not args.progress) as bar:

                    def show(progress) -> None:
                        bar.total = sum(progress.total_steps)
                        bar.n = sum(progress.steps_done)
                        bar.refresh()
                        for index, preview in enumerate(progress.previews or []):
                            preview_dir.mkdir(parents=True, exist_ok=True)
                            preview.save(preview_dir / f"step{sum(progress.steps_done):04d}_{index}.png")

                    result = client.generate(
                        args.prompt, on_progress=show, preview_every=args.preview_every, **parameters
                    )
    except KeyboardInterrupt:
        sys.stderr.write("cancelled\n")
        return 130
    except SdTritonError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.output)
    sys.stdout.write(f"{args.output.resolve()}\n")
    logger.info("seed %d, %dx%d", result.seed, result.image.width, result.image.height)
    return 0


def _retry_policy(args: argparse.Namespace) -> RetryPolicy | None:
    """The client's RetryPolicy from --retry-deadline-s / --retry-attempts (None: no retries)."""
    from sdtriton.client import RetryPolicy

    deadline_s = args.retry_deadline_s if args.retry_deadline_s else None
    if deadline_s is None and args.retry_attempts is None:
        return None
    try:
        return RetryPolicy(deadline_s=deadline_s, max_attempts=args.retry_attempts)
    except ValueError as error:
        raise SystemExit(f"retry options: {error}") from None


def _add_retry_options(command: argparse.ArgumentParser, *, default_deadline_s: float | None) -> None:
    retry = command.add_argument_group("retries (only refusals before work, UNAVAILABLE, connection errors)")
    shown = "off" if default_deadline_s is None else f"{default_deadline_s:g}"
    retry.add_argument(
        "--retry-deadline-s",
        type=float,
        default=default_deadline_s,
        help=f"retry with backoff until this many seconds have passed, in all, per image (0: off; default {shown})",
    )
    retry.add_argument("--retry-attempts", type=int, help="at most this many attempts per image (default: no limit)")


def _batch(args: argparse.Namespace) -> int:
    from sdtriton import batch as batching
    from sdtriton.client import StableDiffusionClient, parse_url

    if args.concurrency < 1:
        raise SystemExit("--concurrency must be at least 1")
    try:
        parse_url(args.url)
    except ValueError as error:
        raise SystemExit(f"--url: {error}") from None
    retry = _retry_policy(args)
    try:
        jobs = batching.read_jobs(args.prompts)
    except (OSError, batching.BatchFileError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    plan = batching.plan_batch(jobs, args.out)

    def client() -> StableDiffusionClient:
        return StableDiffusionClient(args.url, model_name=args.model, timeout_s=args.timeout_s, retry=retry)

    try:
        if plan.to_run:
            # Once, up front: a wrong URL or model name fails the run, not every line after its retries.
            wait_s = retry.deadline_s if retry is not None and retry.deadline_s is not None else 0.0
            with client() as probe:
                if not batching.wait_until_ready(probe, timeout_s=wait_s):
                    sys.stderr.write(f"error: model {args.model} at {args.url} not ready after {wait_s:g} s\n")
                    return 2
        summary = batching.run_batch(
            plan,
            args.out,
            client_factory=client,
            concurrency=args.concurrency,
            metadata={"model": args.model, "url": args.url},
            show_progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: run the same command again to finish\n")
        return 130
    sys.stdout.write(f"{summary.describe()}\n")
    return 1 if summary.failed else 0


def _demo(args: argparse.Namespace) -> int:
    from sdtriton.demo import run_demo

    result = run_demo(
        model=args.model, repository=args.repository, output=args.output, prompt=args.prompt, seed=args.seed
    )
    sys.stdout.write(f"{result.image_path}\n")
    return 0


def _train_shapes(args: argparse.Namespace) -> int:
    from sdtriton.shapes.train import TrainingPlan, train_shapes

    plan = TrainingPlan(
        seed=args.seed,
        vae_steps=args.vae_steps,
        vae_batch_size=args.vae_batch_size,
        unet_steps=args.unet_steps,
        unet_batch_size=args.unet_batch_size,
        unet_learning_rate=args.learning_rate,
        eval_every_steps=args.eval_every_steps,
        eval_prompts=args.eval_prompts,
        vae_gate_accuracy=args.vae_gate,
        vae_edge_weight=args.vae_edge_weight,
        offset_noise=args.offset_noise,
        init_from=str(args.init_from) if args.init_from else None,
        noisy_half_fraction=args.noisy_half_fraction,
    )
    sys.stdout.write(f"{train_shapes(args.output, plan)}\n")
    return 0


def _eval_shapes(args: argparse.Namespace) -> int:
    from sdtriton.shapes.evaluate import evaluate_server

    schedulers = interface.SCHEDULER_NAMES if args.scheduler == "all" else (args.scheduler,)
    lines = [
        "| scheduler | prompts | colour | background | shape | all correct | held-out all correct |",
        "|---|---|---|---|---|---|---|",
    ]
    for scheduler in schedulers:
        result = evaluate_server(
            args.url,
            count=args.count,
            prompt_seed=args.prompt_seed,
            scheduler=scheduler,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
        )
        lines.append(
            f"| {scheduler} | {result.count} | {result.colour:.1%} | {result.background:.1%} | {result.shape:.1%} "
            f"| {result.all_correct:.1%} | {result.held_out_all_correct:.1%} ({result.held_out_count}) |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _shapes_grid(args: argparse.Namespace) -> int:
    from sdtriton.shapes.grid import GRID_PROMPTS, make_grid

    make_grid(args.url, args.output, prompts=GRID_PROMPTS, seed=args.seed, num_inference_steps=args.steps)
    sys.stdout.write(f"{args.output.resolve()}\n")
    return 0


def _shapes_curve(args: argparse.Namespace) -> int:
    from sdtriton.shapes.curve import plot_curve, read_curve

    plot_curve(read_curve(args.curve), args.output)
    sys.stdout.write(f"{args.output.resolve()}\n")
    return 0


def _perf(args: argparse.Namespace) -> int:
    from sdtriton.perf.harness import DEFAULT_OUTPUT_DIR, DEFAULT_PERF_DIR, PerfOptions, default_profile
    from sdtriton.perf.runner import headline, run_perf

    profile = args.profile or default_profile()
    options = PerfOptions(
        profile=profile,
        output_dir=args.output or DEFAULT_OUTPUT_DIR / profile,
        perf_dir=args.perf_dir or DEFAULT_PERF_DIR,
        model_dir=args.model,
        repository=args.repository,
        work_dir=args.work_dir,
        perf_analyzer=args.perf_analyzer,
        tritonserver=args.tritonserver,
        skip_diffusers=args.skip_diffusers,
        gpu=args.gpu,
        time_limit_s=args.time_limit_s,
    )
    result, files = run_perf(options)
    for path in files.values():
        sys.stdout.write(f"{path.resolve()}\n")
    sys.stdout.write(f"{headline(result)}\n")
    failed = [reason for reason in result.skipped if "FAILED" in reason]
    for reason in result.skipped:
        logger.warning("not run: %s", reason)
    return 1 if failed else 0


def _plan(args: argparse.Namespace) -> int:
    from sdtriton import plan as planning

    if args.markdown:
        sys.stdout.write(planning.sizing_markdown())
        return 0
    overhead_bytes = (
        planning.CUDA_OVERHEAD_BYTES if args.overhead_gib is None else round(args.overhead_gib * planning.GIB)
    )
    try:
        measurement = planning.measure_model(
            args.model,
            width_px=args.width,
            height_px=args.height,
            steps=args.steps,
            batch=args.batch,
            guidance=args.guidance,
            dtype=args.dtype,
            fused_attention=args.attention == "fused",
        )
        if args.gpu.lower() == "all":
            text = planning.render_table(measurement, overhead_bytes=overhead_bytes)
        else:
            report = planning.plan(measurement, planning.gpu_spec(args.gpu), overhead_bytes=overhead_bytes)
            text = planning.render_plan(report)
    except planning.PlanError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(text)
    return 0


def _soak(args: argparse.Namespace) -> int:
    from sdtriton import soak
    from sdtriton.client import parse_url
    from sdtriton.pipeline_config import PipelineConfig
    from sdtriton.supervisor import RestartBackoff, ServerSupervisor

    if (args.repository is None) == (args.url is None):
        raise SystemExit("give --repository (a server started here) or --url (a running server), not both")
    if args.restart_at is not None and (args.repository is None or not 0 < args.restart_at < 1):
        raise SystemExit("--restart-at needs --repository and a fraction between 0 and 1")
    if args.trace is not None and args.repository is None:
        raise SystemExit("--trace needs --repository (a server started here)")
    if args.concurrency < 1 or args.requests < 1:
        raise SystemExit("--requests and --concurrency must be at least 1")
    if args.repository is not None:
        config = PipelineConfig.load(args.repository / interface.PIPELINE_MODEL_NAME / "1")
        sides = soak.sides_for(config, min_side_px=args.min_side_px, max_side_px=args.max_side_px)
    else:
        try:
            if parse_url(args.url).protocol != "grpc":
                raise ValueError("soak needs a grpc:// URL (cancels and streams)")
        except ValueError as error:
            raise SystemExit(f"--url: {error}") from None
        sides = tuple(range(args.min_side_px, args.max_side_px + 1, args.side_step_px))
    try:
        mix = soak.SoakMix(sides_px=sides, min_steps=args.min_steps, max_steps=args.max_steps)
        plan = soak.plan_soak(
            requests=args.requests,
            mix=mix,
            cancel_fraction=args.cancel_fraction,
            deadline_fraction=args.deadline_fraction,
            bad_fraction=args.bad_fraction,
            stream_fraction=args.stream_fraction,
            seed=args.seed,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    options = soak.SoakOptions(
        concurrency=args.concurrency,
        settle_s=args.settle_s,
        answer_timeout_s=args.answer_timeout_s,
        restart_at=args.restart_at,
        retry_deadline_s=args.retry_deadline_s,
        show_progress=not args.no_progress,
        warmup_requests=args.warmup_requests,
    )
    settings = {
        key: getattr(args, key)
        for key in ("requests", "concurrency", "cancel_fraction", "deadline_fraction", "bad_fraction")
    } | {"stream_fraction": args.stream_fraction, "seed": args.seed, "restart_at": args.restart_at, "sides_px": sides}
    settings |= {"steps": f"{args.min_steps}..{args.max_steps}"}
    if args.repository is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        address = server.ServerAddress.on_free_ports()
        try:
            extra = [] if args.trace is None else server.trace_args(args.trace, rate=args.trace_rate)
        except ValueError as error:
            raise SystemExit(f"--trace-rate: {error}") from None
        triton = server.TritonServer(
            args.repository, address=address, log_path=args.out / "tritonserver.log", extra_args=extra
        )
        # Restart mode: the supervisor restarts the killed server, as `sdtriton serve --restart-on-crash` does.
        supervisor = ServerSupervisor(
            triton, restart_on_crash=args.restart_at is not None, backoff=RestartBackoff(max_restarts=1)
        )
        supervisor.start()
        try:
            result = soak.run_soak(
                plan, mix, grpc_url=address.grpc_url, options=options, server=supervisor, settings=settings
            )
        finally:
            exit_code = supervisor.stop()
        unasked = [end for end in supervisor.ends if args.restart_at is None or end.exit_code != -signal.SIGKILL]
        for end in unasked:
            logger.error("the server ended during the soak: %s", end.describe())
        stopped_badly = exit_code not in (0, None)
        if stopped_badly:
            logger.error("tritonserver's stop ended %s", server.describe_exit(exit_code))
    else:
        result = soak.run_soak(
            plan,
            mix,
            grpc_url=args.url,
            model_name=args.model,
            options=options,
            server_pid=args.server_pid,
            settings=settings,
        )
    _, markdown_path = soak.write_report(result, args.out)
    report = result.to_json()
    memory = report["memory"]
    growth = None if memory is None else memory["growth_percent"]
    sys.stdout.write(
        f"{report['requests']} requests: answered {report['answered']}, lost {len(report['lost'])}, "
        f"unexpected {len(report['unexpected'])}; server RSS growth "
        f"{'not measured' if growth is None else f'{growth:+.2f}%'}; report {markdown_path}\n"
    )
    status = 1 if report["lost"] or report["unexpected"] else 0
    if args.repository is not None and (unasked or stopped_badly):
        sys.stdout.write(
            f"the server ended {len(unasked)} time(s) unasked during the soak"
            + (", and its stop failed" if stopped_badly else "")
            + " (see the log above)\n"
        )
        status = 1
    if growth is not None and args.max_rss_growth is not None and growth > args.max_rss_growth:
        if args.restart_at is None:
            logger.warning("server RSS grew %.2f%%, above --max-rss-growth %g%%", growth, args.max_rss_growth)
            status = 1
    return status


def _scale_sim(args: argparse.Namespace) -> int:
    from sdtriton.perf import scaling

    load_points = args.load_points or scaling.DEFAULT_LOAD_POINTS
    try:
        shown_path = str(load_points.resolve().relative_to(Path.cwd()))
    except ValueError:
        shown_path = str(load_points)
    try:
        points = scaling.read_load_points(load_points)
        c1_p99_s = scaling.c1_p99_s(points)
        if args.slo_p99_s is None:
            slo_p99_s = scaling.DEFAULT_SLO_OVER_C1_P99 * c1_p99_s
            slo_note = (
                f"p99 <= {slo_p99_s:.3f} s ({scaling.DEFAULT_SLO_OVER_C1_P99:g}x the measured p99 at concurrency "
                f"{points[0].concurrency}, {c1_p99_s:.3f} s)"
            )
        else:
            slo_p99_s = args.slo_p99_s
            slo_note = f"p99 <= {slo_p99_s:g} s (--slo-p99-s)"
        if args.target_in_flight is None:
            target = scaling.derive_target_in_flight(points, slo_p99_s=slo_p99_s)
            target_note = (
                f"{target:.3f} (`{scaling.kubernetes_quantity(target)}`), derived: the concurrency where the measured "
                "p99 crosses the SLO, linear between load points"
            )
        else:
            target = args.target_in_flight
            target_note = f"{target:g} (--target-in-flight)"
        model = scaling.ReplicaModel(points)
        settings = scaling.HpaSettings(
            target_in_flight_per_pod=target,
            min_replicas=scaling.DEFAULT_MIN_REPLICAS if args.min_replicas is None else args.min_replicas,
            max_replicas=scaling.DEFAULT_MAX_REPLICAS if args.max_replicas is None else args.max_replicas,
        )
        pending = (
            scaling.DEFAULT_MAX_PENDING_PER_POD if args.max_pending_requests is None else args.max_pending_requests
        )
        options = scaling.SimulationOptions(
            startup_s=scaling.DEFAULT_STARTUP_S if args.startup_s is None else args.startup_s,
            max_pending_per_pod=pending or None,
        )
        names = list(scaling.TRACES) if args.trace == "both" else [args.trace]
        results = [
            scaling.simulate(
                scaling.TRACES[name](model.capacity_rps), model, settings, slo_p99_s=slo_p99_s, options=options
            )
            for name in names
        ]
    except (OSError, scaling.ScalingInputError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    paths = scaling.write_outputs(
        results, args.output, load_points_path=shown_path, slo_note=slo_note, target_note=target_note
    )
    lines = [
        "SIMULATION: the Kubernetes HPA replayed over measured load points of one replica; no cluster was run",
        f"SLO: {slo_note}",
        f"SIMULATED HPA target, in-flight requests per pod: {target_note}",
    ]
    for result in results:
        summary = result.summary()
        recovered = "not by the end" if summary.slo_recovered_s is None else f"{summary.slo_recovered_s:.0f} s"
        first_up = "none" if summary.first_scale_up_s is None else f"{summary.first_scale_up_s:.0f} s"
        lines.append(
            f"SIMULATED {summary.trace}: max {summary.max_ready_replicas} ready replicas, first scale-up {first_up} "
            f"and peak replicas ready {summary.peak_ready_s:.0f} s after the rise, p99 within SLO again after "
            f"{recovered}; worst p99 {summary.worst_p99_s:.2f} s, p99 over SLO {summary.share_over_slo:.1%} of the "
            f"time in {summary.episodes_over_slo} stretch(es), refused "
            f"{summary.refused / summary.offered:.1%} of requests"
        )
    lines += [str(path.resolve()) for path in paths.values()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdtriton", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    tiny = commands.add_parser("make-tiny", help="write a seeded random-weight SD pipeline folder")
    tiny.add_argument("output", type=Path)
    tiny.add_argument("--profile", default="tiny", help="tiny (default) or sd15 (full SD 1.5 shapes, ~4 GB)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--family",
        default="sd",
        help="sd (default; StableDiffusionPipeline), sdxl (StableDiffusionXLPipeline) or sdxl-refiner "
        "(StableDiffusionXLImg2ImgPipeline sharing the sdxl base's second encoder and VAE at the same --seed)",
    )
    tiny.set_defaults(run=_make_tiny)

    export = commands.add_parser("export", help="export a diffusers SD pipeline to a Triton model repository")
    export.add_argument("source", help="a diffusers pipeline folder (or a hub id where a network exists)")
    export.add_argument("--output", type=Path, required=True, help="the model repository to write")
    export.add_argument(
        "--backend",
        choices=["python", "onnxruntime", "tensorrt"],
        default="python",
        help="python: Python-backend models over ONNX Runtime (pip tritonserver); onnxruntime: NGC's ORT backend "
        "(with --gpu: its TensorRT provider, fp16); tensorrt: fp16 TensorRT engines built on this GPU",
    )
    export.add_argument("--gpu", action="store_true", help="run the networks on GPU instances")
    export.add_argument("--max-batch-size", type=int, default=8)
    export.add_argument(
        "--max-running-images", type=int, default=8, help="images denoised together, one UNet call a step (1: off)"
    )
    export.add_argument(
        "--max-pending-requests",
        type=int,
        default=32,
        help="running plus queued requests; more are refused at once with UNAVAILABLE",
    )
    export.add_argument(
        "--response-cache-mb",
        type=int,
        default=64,
        help="MiB of images of fully seeded non-streaming requests answered again from the engine's cache (0: off)",
    )
    export.add_argument(
        "--text-cache-entries",
        type=int,
        default=256,
        help="text-encoder rows kept so that a repeated prompt skips the text encoder (0: off)",
    )
    export.add_argument("--max-size-factor", type=int, default=2, help="largest side, as a multiple of the native")
    export.add_argument("--default-steps", type=int, default=30, help="num_inference_steps when a request omits it")
    limits = export.add_argument_group("request limits (refused with INVALID_ARG naming the field)")
    limits.add_argument(
        "--max-steps", type=int, default=DEFAULT_MAX_INFERENCE_STEPS, help="most num_inference_steps a request may ask"
    )
    limits.add_argument(
        "--max-prompt-bytes", type=int, default=DEFAULT_MAX_PROMPT_BYTES, help="most UTF-8 bytes of each prompt"
    )
    limits.add_argument(
        "--max-pixels", type=int, help="most width x height of an image (default: the largest sides allow)"
    )
    export.add_argument(
        "--refiner", help="an SDXL refiner folder (StableDiffusionXLImg2ImgPipeline): served as a second stage"
    )
    export.add_argument(
        "--model-prefix",
        default="",
        help="put before every model name (e.g. sdxl_ -> sdxl_stable_diffusion), to serve several repositories "
        "from one tritonserver",
    )
    trt = export.add_argument_group("TensorRT (--backend tensorrt)")
    trt.add_argument(
        "--trt-static-shapes",
        action="store_true",
        help="engines for the default image size only (fastest; the batch stays dynamic); other sizes are refused",
    )
    trt.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (read, then updated)")
    trt.add_argument("--onnx-dir", type=Path, help="keep the prepared fp16 ONNX files here (default: a temp folder)")
    trt.add_argument(
        "--no-engine-build",
        action="store_true",
        help="prepare and check the ONNX files and write ONNX_DIR/build_engines.sh (trtexec lines) for the GPU host",
    )
    trt.add_argument(
        "--dry-run",
        action="store_true",
        help="print each engine's profile (min/opt/max shapes), precision and trtexec line; read configs only",
    )
    export.set_defaults(run=_export)

    serve = commands.add_parser("serve", help="start tritonserver on a model repository until Ctrl-C/SIGTERM")
    serve.add_argument("repository", type=Path)
    serve.add_argument("--host", default=server.DEFAULT_HOST)
    serve.add_argument("--http-port", type=int, default=server.DEFAULT_HTTP_PORT)
    serve.add_argument("--grpc-port", type=int, default=server.DEFAULT_GRPC_PORT)
    serve.add_argument("--metrics-port", type=int, default=server.DEFAULT_METRICS_PORT)
    serve.add_argument("--tritonserver", type=Path, help="a tritonserver binary (default: the pip wheel's)")
    serve.add_argument("--ready-timeout-s", type=float, default=server.DEFAULT_READY_TIMEOUT_S)
    serve.add_argument(
        "--unrestricted-admin-api",
        action="store_true",
        help="leave model control, repository, shared-memory, trace and log endpoints open (default: they answer "
        f"only requests with the header {server.ADMIN_KEY_HEADER}: ${server.ADMIN_KEY_ENVIRONMENT}, gRPC metadata "
        f"triton-grpc-protocol-{server.ADMIN_KEY_HEADER}; closed to everyone if unset)",
    )
    serve.add_argument(
        "--drain-timeout-s",
        type=float,
        default=server.DEFAULT_DRAIN_TIMEOUT_S,
        help="on SIGTERM/Ctrl-C, refuse new requests (UNAVAILABLE) and let those in flight finish for up to this "
        "long, then stop tritonserver; set it above the slowest request (default: %(default)s; 0: no drain)",
    )
    serve.add_argument(
        "--restart-on-crash",
        action="store_true",
        help="start tritonserver again when it dies (backoff 1 s doubling to 30 s), logging its exit code or signal "
        "and its log's last lines; the old log is kept as LOG.1, LOG.2, ...",
    )
    serve.add_argument(
        "--max-restarts",
        type=int,
        default=10,
        help="with --restart-on-crash: give up after this many ends in a row, each within 60 s of its start "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--log-file",
        type=Path,
        help="tritonserver's output goes here (default: this terminal); a restart keeps the previous one as LOG.1",
    )
    serve.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="Triton request tracing (TIMESTAMPS) into FILE (JSON, complete once the server stops): each traced "
        "entry request with its pipeline request as child",
    )
    serve.add_argument(
        "--trace-rate",
        type=int,
        default=100,
        help="with --trace: trace one request in this many (default: %(default)s)",
    )
    serve.add_argument("extra", nargs="*", help="more tritonserver arguments, after --")
    serve.set_defaults(run=_serve)

    generate = commands.add_parser("generate", help="generate an image through a running server")
    generate.add_argument("prompt")
    generate.add_argument("--url", default="http://127.0.0.1:8000", help="http://host:port or grpc://host:port")
    generate.add_argument("-o", "--output", type=Path, default=Path("out.png"))
    generate.add_argument(
        "--model", default=interface.ENTRY_MODEL_NAME, help="the entry model (<prefix>stable_diffusion)"
    )
    generate.add_argument("--negative-prompt")
    generate.add_argument(
        "--steps",
        type=int,
        help=f"num_inference_steps, {interface.MIN_INFERENCE_STEPS}..{interface.MAX_INFERENCE_STEPS}",
    )
    generate.add_argument("--guidance-scale", type=float, help="0..30; <= 1 turns guidance off")
    generate.add_argument("--seed", type=int, help="0..2^63-1; default: random (the seed used is logged)")
    generate.add_argument("--width", type=int)
    generate.add_argument("--height", type=int)
    generate.add_argument("--scheduler", choices=interface.SCHEDULER_NAMES)
    generate.add_argument(
        "--refiner-fraction",
        type=float,
        help="SDXL exported with a refiner: the share of the denoising the refiner does, e.g. 0.2 (default: off)",
    )
    generate.add_argument(
        "--timeout-s", type=float, help="time budget: the server ends the request, queued or running, when it runs out"
    )
    generate.add_argument("--progress", action="store_true", help="show a progress bar (gRPC streaming)")
    generate.add_argument(
        "--preview-every", type=int, help="save a cheap preview every K steps beside the output (gRPC streaming)"
    )
    _add_retry_options(generate, default_deadline_s=None)
    generate.set_defaults(run=_generate)

    batch = commands.add_parser(
        "batch", help="one image per line of a JSON Lines file, with its parameters; resumable (skips what is done)"
    )
    batch.add_argument(
        "prompts",
        type=Path,
        help="JSON Lines: each line an object with prompt, any other public input, and an optional id",
    )
    batch.add_argument("--out", type=Path, required=True, help="folder for ID.png, ID.json and ID.error.json")
    batch.add_argument("--url", default="http://127.0.0.1:8000", help="http://host:port or grpc://host:port")
    batch.add_argument("--model", default=interface.ENTRY_MODEL_NAME, help="the entry model (<prefix>stable_diffusion)")
    batch.add_argument("--concurrency", type=int, default=1, help="requests in flight (threads, one client each)")
    batch.add_argument("--timeout-s", type=float, help="time budget of each request on the server")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_retry_options(batch, default_deadline_s=300.0)
    batch.set_defaults(run=_batch)

    train = commands.add_parser("train-shapes", help="train the embedded 'shapes' model (resumable)")
    train.add_argument("output", type=Path, help="run folder: checkpoints, curve.csv, model/")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vae-steps", type=int, default=1200)
    train.add_argument("--vae-batch-size", type=int, default=16)
    train.add_argument("--unet-steps", type=int, default=5000)
    train.add_argument("--unet-batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=8e-4)
    train.add_argument("--eval-every-steps", type=int, default=500)
    train.add_argument("--eval-prompts", type=int, default=64)
    train.add_argument("--vae-edge-weight", type=float, default=1.0, help="weight of the VAE's edge (gradient) loss")
    train.add_argument("--offset-noise", type=float, default=0.0, help="per-channel constant noise in UNet training")
    train.add_argument(
        "--noisy-half-fraction", type=float, default=0.0, help="share of each batch with timesteps t >= T/2"
    )
    train.add_argument(
        "--init-from", type=Path, help="an earlier run's checkpoints/unet.pt: fine-tune its EMA UNet and text encoder"
    )
    train.add_argument("--vae-gate", type=float, default=0.95, help="least judged accuracy of VAE reconstructions")
    train.set_defaults(run=_train_shapes)

    evaluate = commands.add_parser("eval-shapes", help="judge prompt adherence of a served 'shapes' model")
    evaluate.add_argument("--url", default="http://127.0.0.1:8000")
    evaluate.add_argument("--count", type=int, default=200)
    evaluate.add_argument("--prompt-seed", type=int, default=0)
    evaluate.add_argument("--scheduler", default="dpmpp_2m", choices=[*interface.SCHEDULER_NAMES, "all"])
    evaluate.add_argument("--steps", type=int, default=20)
    evaluate.add_argument("--guidance-scale", type=float, default=7.5)
    evaluate.set_defaults(run=_eval_shapes)

    grid = commands.add_parser("shapes-grid", help="a picture grid of 8 prompts (2 held-out pairs) through a server")
    grid.add_argument("--url", default="http://127.0.0.1:8000")
    grid.add_argument("-o", "--output", type=Path, default=Path("docs/shapes_grid.png"))
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--steps", type=int, default=20)
    grid.set_defaults(run=_shapes_grid)

    curve = commands.add_parser("shapes-curve", help="plot the training curve CSV (accuracy against training time)")
    curve.add_argument("curve", type=Path, nargs="?", default=Path("docs/shapes_training_curve.csv"))
    curve.add_argument("-o", "--output", type=Path, default=Path("docs/shapes_training_curve.png"))
    curve.set_defaults(run=_shapes_curve)

    demo = commands.add_parser("demo", help="make, export, serve and generate one picture (the README's main job)")
    demo.add_argument(
        "--model", default="shapes", help="shapes (the trained built-in), tiny (random weights), or a diffusers folder"
    )
    demo.add_argument("--repository", type=Path, default=Path("model_repository"))
    demo.add_argument("-o", "--output", type=Path, default=Path("outputs/demo.png"))
    demo.add_argument("--prompt", default="a yellow star on a purple background")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    perf = commands.add_parser(
        "perf", help="load-test the served model with perf_analyzer against in-process baselines (perf/README.md)"
    )
    perf.add_argument(
        "--profile",
        help="a profile of perf/scenarios.json: shapes (the default model; default once its weights exist), "
        "tiny (default until then), sd15 (heavy: SD 1.5 shapes, ~4 GB, bounded to 10 minutes)",
    )
    perf.add_argument("-o", "--output", type=Path, help="results folder (default: outputs/perf/PROFILE)")
    perf.add_argument("--model", type=Path, help="diffusers pipeline folder (default: made with make-tiny)")
    perf.add_argument("--repository", type=Path, help="model repository of --model (default: exported from it)")
    perf.add_argument("--work-dir", type=Path, help="keep made models here (default: a temporary folder, removed)")
    perf.add_argument("--perf-dir", type=Path, help="scenarios.json and input_data/ (default: the repository's perf/)")
    perf.add_argument("--perf-analyzer", type=Path, help="the binary (default: tools/perf_analyzer or PATH)")
    perf.add_argument("--tritonserver", type=Path, help="a tritonserver binary (default: the pip wheel's)")
    perf.add_argument("--skip-diffusers", action="store_true", help="leave out the in-process diffusers baseline")
    perf.add_argument("--gpu", action="store_true", help="baselines on the GPU, for a repository exported with --gpu")
    perf.add_argument("--time-limit-s", type=float, help="overrides the profile's time limit")
    perf.set_defaults(run=_perf)

    planner = commands.add_parser(
        "plan", help="size a GPU for a model from its configs: memory, FLOPs, latency floor (docs/gpu_sizing.md)"
    )
    planner.add_argument("--model", default="sd15", help="sd15 (default), sdxl, or a diffusers pipeline folder")
    planner.add_argument(
        "--width", type=int, help="pixels (default: the model's native size, UNet sample_size x VAE scale factor)"
    )
    planner.add_argument("--height", type=int, help="pixels (default: the model's native size)")
    planner.add_argument("--steps", type=int, default=50, help="denoising steps (default 50, as diffusers)")
    planner.add_argument("--batch", type=int, default=1, help="images per request")
    planner.add_argument(
        "--guidance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="classifier-free guidance: UNet and text encoders at twice the batch (default: on)",
    )
    planner.add_argument("--gpu", default="all", help="a GPU of the planner's table, or all (default: a row each)")
    planner.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16", help="weights and activations")
    planner.add_argument(
        "--attention",
        choices=["fused", "math"],
        default="fused",
        help="fused (flash/memory-efficient SDPA, as GPUs run it) or math (attention matrices held)",
    )
    planner.add_argument(
        "--overhead-gib", type=float, help="CUDA context, workspaces and allocator slack (default: 1 GiB)"
    )
    planner.add_argument(
        "--markdown", action="store_true", help="print docs/gpu_sizing.md (sd15 and sdxl on every GPU) instead"
    )
    planner.set_defaults(run=_plan)

    soak_command = commands.add_parser(
        "soak", help="many mixed requests (streams, cancels, deadlines, bad inputs): every one accounted for, RSS"
    )
    target = soak_command.add_argument_group("server (one of)")
    target.add_argument("--repository", type=Path, help="start tritonserver here on free ports over this repository")
    target.add_argument("--url", help="a running server's grpc://host:port")
    target.add_argument("--server-pid", type=int, help="with --url: the server's pid, to read its processes' RSS")
    target.add_argument("--model", default=interface.ENTRY_MODEL_NAME, help="with --url: the entry model")
    soak_command.add_argument("--out", type=Path, required=True, help="folder for report.json and report.md")
    soak_command.add_argument("--requests", type=int, default=500)
    soak_command.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    soak_command.add_argument(
        "--warmup-requests",
        type=int,
        help="ok requests sent before the first memory reading, at full concurrency (default: one per thread); "
        "enough of them let every UNet batch size occur once",
    )
    soak_command.add_argument("--cancel-fraction", type=float, default=0.1)
    soak_command.add_argument("--deadline-fraction", type=float, default=0.1, help="requests whose budget expires")
    soak_command.add_argument("--bad-fraction", type=float, default=0.1, help="requests with one invalid input")
    soak_command.add_argument("--stream-fraction", type=float, default=0.2, help="progress streams read to the end")
    soak_command.add_argument("--seed", type=int, default=0, help="seeds the plan (kinds, sizes, schedulers, steps)")
    soak_command.add_argument("--min-steps", type=int, default=10)
    soak_command.add_argument("--max-steps", type=int, default=20)
    soak_command.add_argument("--min-side-px", type=int, default=64)
    soak_command.add_argument("--max-side-px", type=int, default=128)
    soak_command.add_argument("--side-step-px", type=int, default=16, help="with --url: the model's size step")
    soak_command.add_argument(
        "--restart-at", type=float, help="kill -9 the server after this share of requests is sent, then restart it"
    )
    soak_command.add_argument(
        "--retry-deadline-s", type=float, default=120.0, help="clients retry refusals and outages this long"
    )
    soak_command.add_argument("--answer-timeout-s", type=float, default=300.0, help="no answer after this: lost")
    soak_command.add_argument("--settle-s", type=float, default=3.0, help="pause before each RSS sample")
    soak_command.add_argument(
        "--max-rss-growth", type=float, help="exit 1 if the servers' total RSS grew more than this many percent"
    )
    soak_command.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="with --repository: Triton request tracing (TIMESTAMPS) into FILE, one request in --trace-rate",
    )
    soak_command.add_argument("--trace-rate", type=int, default=1, help="with --trace (default: every request)")
    soak_command.add_argument("--no-progress", action="store_true", help="no progress bar")
    soak_command.set_defaults(run=_soak)

    scale_sim = commands.add_parser(
        "scale-sim",
        help="SIMULATION of the Kubernetes HPA scaling replicas, from one replica's measured load points "
        "(perf/README.md)",
    )
    scale_sim.add_argument(
        "--load-points",
        type=Path,
        help="an engine profile's engine_load_points.csv; its measured sweep rows with step batching on are used "
        "(default: perf/results/engine/engine_load_points.csv)",
    )
    scale_sim.add_argument(
        "--slo-p99-s", type=float, help="p99 latency objective, seconds (default: 2x the measured concurrency-1 p99)"
    )
    scale_sim.add_argument(
        "--target-in-flight",
        type=float,
        help="the HPA's target in-flight requests per pod (default: where the measured p99 crosses the SLO)",
    )
    scale_sim.add_argument("--min-replicas", type=int, help="minReplicas (default 1)")
    scale_sim.add_argument("--max-replicas", type=int, help="maxReplicas (default 10)")
    scale_sim.add_argument(
        "--startup-s", type=float, help="seconds from the HPA adding a pod to its serving (default 60, assumed)"
    )
    scale_sim.add_argument(
        "--max-pending-requests",
        type=int,
        help="requests a pod holds before refusing, as exported (default 32; 0: no limit)",
    )
    scale_sim.add_argument("--trace", choices=["ramp", "burst", "both"], default="both", help="request-rate trace")
    scale_sim.add_argument(
        "-o", "--output", type=Path, default=Path("outputs/scaling"), help="folder for the CSVs, plot and summary.md"
    )
    scale_sim.set_defaults(run=_scale_sim)
    return parser


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line's arguments; everything after the first ``--`` goes to tritonserver (``serve``'s ``extra``)
    whatever comes before it: argparse alone leaves ``serve REPO --host H -- ...``'s positional list empty and
    refuses the rest."""
    parser = build_parser()
    arguments = list(argv)
    passed_on: list[str] = []
    if "--" in arguments:
        cut = arguments.index("--")
        arguments, passed_on = arguments[:cut], arguments[cut + 1 :]
    args = parser.parse_args(arguments)
    if passed_on:
        if not hasattr(args, "extra"):
            parser.error("arguments after -- are tritonserver's: only `serve` takes them")
        args.extra = [*args.extra, *passed_on]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("transformers.utils.import_utils").addFilter(_not_torchvision_fallback)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
