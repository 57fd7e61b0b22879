"""``sdtriton gateway``: the HTTP gateway (FastAPI on uvicorn) in front of a running Triton server."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from sdtriton.gateway.errors import SettingsError
from sdtriton.gateway.settings import (
    API_KEYS_ENVIRONMENT,
    DEFAULT_HOST,
    DEFAULT_JOB_WORKERS,
    DEFAULT_LEASE_S,
    DEFAULT_PORT,
    JOBS_FILE,
    WEBHOOK_SECRET_ENVIRONMENT,
    JobSettings,
    check_exposure,
    default_data_dir,
    load_settings,
)

logger = logging.getLogger(__name__)

# After SIGTERM, how long open requests (long generations, event streams that would otherwise wait for their job)
# may go on before they are cut; then running jobs go back to the queue. Under Kubernetes' default grace of 30 s.
SHUTDOWN_GRACE_S = 25.0


def add_gateway_command(commands: argparse._SubParsersAction) -> None:
    """Adds ``gateway`` to ``commands``."""
    gateway = commands.add_parser(
        "gateway", help="an OpenAI-compatible HTTP API (images, health, metrics) in front of a running Triton server"
    )
    gateway.add_argument("--triton", help="grpc://host:port of the Triton server (required to serve)")
    gateway.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: %(default)s)")
    gateway.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: %(default)s)")
    gateway.add_argument(
        "--config", type=Path, help="TOML: served models and aliases, limits, CORS origins (see the README)"
    )
    gateway.add_argument(
        "--data-dir",
        type=Path,
        help=f"where images answered as URLs (and the default job store) are kept (default: {default_data_dir()})",
    )
    gateway.add_argument(
        "--api-keys-file",
        type=Path,
        help=f"accepted API keys, one a line (default: ${API_KEYS_ENVIRONMENT}, comma-separated); without keys the "
        "gateway listens only on a loopback host",
    )
    gateway.add_argument(
        "--timeout-s", type=float, help="each generation's time budget on the server (overrides the config's)"
    )
    jobs = gateway.add_argument_group("durable jobs (/v1/jobs)")
    jobs.add_argument(
        "--jobs-store",
        metavar="URL",
        help="sqlite:///path or redis://host:port/db (gateways sharing one Redis share the queue; default: the "
        f"SQLite file {JOBS_FILE} in --data-dir)",
    )
    jobs.add_argument(
        "--job-workers",
        type=int,
        default=DEFAULT_JOB_WORKERS,
        metavar="N",
        help="jobs this gateway runs at once; 0: it queues and serves jobs that other replicas run "
        "(default: %(default)s)",
    )
    jobs.add_argument(
        "--job-lease-s",
        type=float,
        default=DEFAULT_LEASE_S,
        metavar="SECONDS",
        help="how long a claim on a running job lasts without renewal (at least 1): the jobs of a gateway that died "
        "are run again (same seed) by another one this long after its last renewal (default: %(default)s)",
    )
    jobs.add_argument(
        "--job-result-ttl-s",
        "--job-result-ttl",
        type=float,
        metavar="SECONDS",
        help="how long a finished job and its images are kept (default: Redis 3600, SQLite for ever)",
    )
    jobs.add_argument(
        "--webhook-secret",
        help=f"the HMAC key that signs webhooks (default: ${WEBHOOK_SECRET_ENVIRONMENT}); without one, jobs with "
        "a webhook are refused",
    )
    jobs.add_argument(
        "--webhook-allow-private",
        action="store_true",
        help="accept webhook URLs on loopback, private and link-local addresses (refused by default)",
    )
    gateway.add_argument(
        "--write-openapi", type=Path, metavar="FILE", help="write the OpenAPI document to FILE and exit"
    )
    gateway.set_defaults(run=_gateway)


def _gateway(args: argparse.Namespace) -> int:
    import dataclasses

    import uvicorn

    from sdtriton.gateway.app import create_app

    if args.triton is None and args.write_openapi is None:
        logger.error("give --triton grpc://host:port")
        return 2
    try:
        settings = load_settings(
            triton_url=args.triton or "grpc://127.0.0.1:8001",
            data_dir=args.data_dir or default_data_dir(),
            config_file=args.config,
            api_keys_file=args.api_keys_file,
        )
        if args.timeout_s is not None:
            settings = dataclasses.replace(
                settings, limits=dataclasses.replace(settings.limits, timeout_s=args.timeout_s)
            )
        jobs = JobSettings(
            store_url=args.jobs_store,
            workers=args.job_workers,
            webhook_secret=args.webhook_secret or os.environ.get(WEBHOOK_SECRET_ENVIRONMENT) or None,
            result_ttl_s=args.job_result_ttl_s,
            webhook_allow_private=args.webhook_allow_private,
            lease_s=args.job_lease_s,
        )
        settings = dataclasses.replace(settings, jobs=jobs)
        check_exposure(args.host, settings.api_keys)
    except SettingsError as error:
        logger.error("%s", error)
        return 2
    app = create_app(settings)
    if args.write_openapi is not None:
        args.write_openapi.write_text(json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n")
        logger.info("wrote %s", args.write_openapi)
        return 0
    keys = f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no API keys (loopback only)"
    logger.info("gateway on http://%s:%d for %s, %s", args.host, args.port, settings.triton_url, keys)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    return 0
