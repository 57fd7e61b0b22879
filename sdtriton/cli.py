"""The ``sdtriton`` command line: models (make-tiny, export, plan), serving (serve, soak), the client (generate,
batch), the demo, the shapes model (train-shapes, eval-shapes, shapes-grid, shapes-curve) and perf (perf, scale-sim).

Each group's options and handler live beside its domain, and this module only builds the top parser, calls each
group's ``add_*_command(s)``, sets up logging and dispatches: ``sdtriton/model_commands.py`` (models),
``sdtriton/ops/serve.py`` and ``sdtriton/ops/soak/command.py`` (serving), ``client/commands.py`` (the client),
``sdtriton/demo.py``, ``sdtriton/shapes/commands.py``; perf's two are still defined here.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sdtriton.client.commands import add_client_commands
from sdtriton.demo import add_demo_command
from sdtriton.model_commands import add_model_commands
from sdtriton.ops.serve import add_serve_command
from sdtriton.ops.soak.command import add_soak_command
from sdtriton.shapes.commands import add_shapes_commands

logger = logging.getLogger("sdtriton")
# transformers says once, on the first import of diffusers' SD pipelines, that image processors fall back to PIL
# without torchvision. No command runs an image processor (the safety checker and its feature extractor are
# never loaded), so the notice is harmless here; any other transformers import warning still shows.
_TORCHVISION_FALLBACK_NOTICE = "requires torchvision (not installed); falling back"


def _not_torchvision_fallback(record: logging.LogRecord) -> bool:
    return _TORCHVISION_FALLBACK_NOTICE not in record.getMessage()


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
    parser = argparse.ArgumentParser(prog="sdtriton", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    add_model_commands(commands)
    add_serve_command(commands)
    add_soak_command(commands)
    add_client_commands(commands)
    add_demo_command(commands)
    add_shapes_commands(commands)

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
