"""``sdtriton soak``: checks its options, starts a server under a supervisor (or uses a running one), runs the
soak and writes its report; exit 1 on a lost or unexpected request, an unasked server end, or too much RSS growth."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from sdtriton import interface, server
from sdtriton.ops.soak.plan import DEFAULT_MAX_SIDE_PX, DEFAULT_MIN_SIDE_PX, SoakMix, plan_soak, sides_for

logger = logging.getLogger(__name__)


def add_soak_command(commands: argparse._SubParsersAction) -> None:
    """Adds ``soak`` to ``commands``."""
    soak = commands.add_parser(
        "soak", help="many mixed requests (streams, cancels, deadlines, bad inputs): every one accounted for, RSS"
    )
    target = soak.add_argument_group("server (one of)")
    target.add_argument("--repository", type=Path, help="start tritonserver here on free ports over this repository")
    target.add_argument("--url", help="a running server's grpc://host:port")
    target.add_argument("--server-pid", type=int, help="with --url: the server's pid, to read its processes' RSS")
    target.add_argument("--model", default=interface.ENTRY_MODEL_NAME, help="with --url: the entry model")
    soak.add_argument("--out", type=Path, required=True, help="folder for report.json and report.md")
    soak.add_argument("--requests", type=int, default=500)
    soak.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    soak.add_argument(
        "--warmup-requests",
        type=int,
        help="ok requests sent before the first memory reading, at full concurrency (default: one per thread); "
        "enough of them let every UNet batch size occur once",
    )
    soak.add_argument("--cancel-fraction", type=float, default=0.1)
    soak.add_argument("--deadline-fraction", type=float, default=0.1, help="requests whose budget expires")
    soak.add_argument("--bad-fraction", type=float, default=0.1, help="requests with one invalid input")
    soak.add_argument("--stream-fraction", type=float, default=0.2, help="progress streams read to the end")
    soak.add_argument("--seed", type=int, default=0, help="seeds the plan (kinds, sizes, schedulers, steps)")
    soak.add_argument("--min-steps", type=int, default=10)
    soak.add_argument("--max-steps", type=int, default=20)
    soak.add_argument("--min-side-px", type=int, default=DEFAULT_MIN_SIDE_PX)
    soak.add_argument("--max-side-px", type=int, default=DEFAULT_MAX_SIDE_PX)
    soak.add_argument("--side-step-px", type=int, default=16, help="with --url: the model's size step")
    soak.add_argument(
        "--restart-at", type=float, help="kill -9 the server after this share of requests is sent, then restart it"
    )
    soak.add_argument(
        "--retry-deadline-s", type=float, default=120.0, help="clients retry refusals and outages this long"
    )
    soak.add_argument("--answer-timeout-s", type=float, default=300.0, help="no answer after this: lost")
    soak.add_argument("--settle-s", type=float, default=3.0, help="pause before each RSS sample")
    soak.add_argument(
        "--max-rss-growth", type=float, help="exit 1 if the servers' total RSS grew more than this many percent"
    )
    soak.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="with --repository: Triton request tracing (TIMESTAMPS) into FILE, one request in --trace-rate",
    )
    soak.add_argument("--trace-rate", type=int, default=1, help="with --trace (default: every request)")
    soak.add_argument("--no-progress", action="store_true", help="no progress bar")
    soak.set_defaults(run=_soak)


def _soak(args: argparse.Namespace) -> int:
    from sdtriton.client import parse_url
    from sdtriton.ops.soak.report import write_report
    from sdtriton.ops.soak.run import SoakOptions, run_soak
    from sdtriton.ops.supervisor import RestartBackoff, ServerSupervisor
    from sdtriton.pipeline_config import PipelineConfig

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
        sides = sides_for(config, min_side_px=args.min_side_px, max_side_px=args.max_side_px)
    else:
        try:
            if parse_url(args.url).protocol != "grpc":
                raise ValueError("soak needs a grpc:// URL (cancels and streams)")
        except ValueError as error:
            raise SystemExit(f"--url: {error}") from None
        sides = tuple(range(args.min_side_px, args.max_side_px + 1, args.side_step_px))
    try:
        mix = SoakMix(sides_px=sides, min_steps=args.min_steps, max_steps=args.max_steps)
        plan = plan_soak(
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
    options = SoakOptions(
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
            result = run_soak(
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
        result = run_soak(
            plan,
            mix,
            grpc_url=args.url,
            model_name=args.model,
            options=options,
            server_pid=args.server_pid,
            settings=settings,
        )
    _, markdown_path = write_report(result, args.out)
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
