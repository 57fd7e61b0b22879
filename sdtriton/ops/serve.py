"""``sdtriton serve``: tritonserver on a model repository until Ctrl-C or SIGTERM, then drained and stopped.

The admin endpoints stay closed unless the operator sets a key or opts out; ``--restart-on-crash`` puts the
server under a :class:`~sdtriton.ops.supervisor.ServerSupervisor`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from sdtriton import server
from sdtriton.ops.supervisor import RestartBackoff, ServerSupervisor

logger = logging.getLogger(__name__)


def add_serve_command(commands: argparse._SubParsersAction) -> None:
    """Adds ``serve`` to ``commands``; its ``extra`` list takes tritonserver's own arguments (after ``--``)."""
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


def admin_access(args: argparse.Namespace) -> server.AdminAccess | None:
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
        admin_access=admin_access(args),
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
