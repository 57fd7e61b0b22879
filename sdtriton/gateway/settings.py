"""The gateway's settings: the command's options and the optional TOML config file, parsed once and checked.

A config file (``sdtriton gateway --config gateway.toml``), every table optional::

    [[models]]                      # the models served, in order; the first is the default.
    name = "stable_diffusion"       # a Triton entry model (<prefix>stable_diffusion); streams go to its _stream twin
    aliases = ["sd", "dall-e-2"]    # other names a request's `model` may use

    [limits]
    max_body_bytes = 1048576        # larger request bodies: 413
    rate_limit_per_s = 10.0         # each API key's (or, without keys, each client address's) token bucket
    rate_limit_burst = 20
    timeout_s = 300.0               # each generation's time budget on the server (504 when it runs out)
    retry_after_s = 1               # the Retry-After of a 429 is computed; of a 503 this

    [cors]
    allow_origins = ["https://app.example.com"]

Without ``[[models]]`` the gateway serves every entry model that Triton holds with its streaming twin.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from sdtriton.client import parse_url
from sdtriton.gateway.access import ApiKey, parse_api_keys
from sdtriton.gateway.errors import SettingsError
from sdtriton.gateway.store import DEFAULT_LEASE_S

# Environment variable with API keys, comma- or newline-separated (each as a line of an API keys file).
API_KEYS_ENVIRONMENT = "SDTRITON_API_KEYS"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_RATE_LIMIT_PER_S = 10.0
DEFAULT_RATE_LIMIT_BURST = 20
DEFAULT_RETRY_AFTER_S = 1
# Environment variable with the webhooks' HMAC secret (--webhook-secret).
WEBHOOK_SECRET_ENVIRONMENT = "SDTRITON_WEBHOOK_SECRET"
DEFAULT_JOB_WORKERS = 2
# The default job store: a SQLite file of this name in the data folder.
JOBS_FILE = "jobs.sqlite3"
# The shortest job lease: a running job's lease is renewed every min(lease / 3, 0.5 s), but its progress writes are
# spaced at least 0.2 s apart; a shorter lease would run out under a busy store and have live jobs taken over.
MIN_JOB_LEASE_S = 1.0


@dataclass(frozen=True)
class ModelSettings:
    """A served model: its Triton entry name and the other names a request may use for it."""

    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    """Request limits. ``rate_limit_per_s`` None: no rate limit; ``timeout_s`` None: no time budget."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    rate_limit_per_s: float | None = DEFAULT_RATE_LIMIT_PER_S
    rate_limit_burst: int = DEFAULT_RATE_LIMIT_BURST
    timeout_s: float | None = None
    retry_after_s: int = DEFAULT_RETRY_AFTER_S

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1:
            raise SettingsError(f"limits.max_body_bytes must be at least 1, got {self.max_body_bytes}")
        if self.rate_limit_per_s is not None and not (
            self.rate_limit_per_s > 0 and math.isfinite(self.rate_limit_per_s)
        ):
            raise SettingsError(f"limits.rate_limit_per_s must be a positive number, got {self.rate_limit_per_s}")
        if self.rate_limit_burst < 1:
            raise SettingsError(f"limits.rate_limit_burst must be at least 1, got {self.rate_limit_burst}")
        if self.timeout_s is not None and not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise SettingsError(f"limits.timeout_s must be a positive number of seconds, got {self.timeout_s}")
        if self.retry_after_s < 0:
            raise SettingsError(f"limits.retry_after_s must be at least 0, got {self.retry_after_s}")


@dataclass(frozen=True)
class JobSettings:
    """The durable jobs (``/v1/jobs``).

    Attributes:
        store_url: ``sqlite:///path`` or ``redis://host:port/db`` (several gateways share one Redis); None: the SQLite
            file :data:`JOBS_FILE` in the data folder.
        workers: jobs this gateway runs at once (0: it only queues and serves them; other replicas run them).
        webhook_secret: the HMAC key of webhook signatures; None: jobs with a webhook are refused.
        result_ttl_s: how long a finished job is kept; None: the store's default (Redis 1 h, SQLite for ever).
        webhook_allow_private: accept webhook URLs on loopback, private and link-local addresses (refused by
            default: a caller must not make the gateway POST into its own network).
        lease_s: how long this gateway's claim on a running job lasts without renewal (renewed every
            ``min(lease_s / 3, 0.5)`` s): if the gateway dies, its jobs are run again by another one (or by it,
            restarted) this long after its last renewal.
    """

    store_url: str | None = None
    workers: int = DEFAULT_JOB_WORKERS
    webhook_secret: str | None = field(default=None, repr=False)
    result_ttl_s: float | None = None
    webhook_allow_private: bool = False
    lease_s: float = DEFAULT_LEASE_S

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise SettingsError(f"--job-workers must be at least 0, got {self.workers}")
        if not (self.lease_s >= MIN_JOB_LEASE_S and math.isfinite(self.lease_s)):
            raise SettingsError(f"--job-lease-s must be a number of seconds >= {MIN_JOB_LEASE_S:g}, got {self.lease_s}")
        if self.result_ttl_s is not None and not (self.result_ttl_s > 0 and math.isfinite(self.result_ttl_s)):
            raise SettingsError(f"--job-result-ttl-s must be a positive number of seconds, got {self.result_ttl_s}")
        if self.webhook_secret is not None and not self.webhook_secret:
            raise SettingsError("--webhook-secret must not be empty")

    def store_url_in(self, data_dir: Path) -> str:
        """The store's URL, the default one under ``data_dir``."""
        return self.store_url or f"sqlite://{data_dir / JOBS_FILE}"


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the app needs, from the command line and the config file.

    Attributes:
        triton_url: ``grpc://host:port`` of the Triton server.
        data_dir: where images answered as URLs (and, by default, the jobs) are kept.
        models: the served models in order (the first is the default); empty: every model Triton holds.
        api_keys: the accepted keys; empty: no authentication (only allowed on a loopback host).
        limits: body size, rate limit, time budget.
        cors_origins: origins a browser may call the API from (CORS); empty: none.
        jobs: the durable jobs' store, workers and webhooks.
    """

    triton_url: str
    data_dir: Path
    models: tuple[ModelSettings, ...] = ()
    api_keys: tuple[ApiKey, ...] = ()
    limits: Limits = field(default_factory=Limits)
    cors_origins: tuple[str, ...] = ()
    jobs: JobSettings = field(default_factory=JobSettings)

    def __post_init__(self) -> None:
        names = [name for model in self.models for name in (model.name, *model.aliases)]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise SettingsError(f"models: each name and alias must be used once, repeated: {', '.join(repeated)}")


def default_data_dir(environment: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/sdtriton/gateway`` (``~/.local/state/sdtriton/gateway`` without it)."""
    state = environment.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "sdtriton" / "gateway"


def is_loopback(host: str) -> bool:
    """True for a host name or address only this machine reaches (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_keys: Sequence[ApiKey]) -> None:
    """Refuses to serve a non-loopback ``host`` without API keys: an open gateway spends someone's GPUs.

    Raises:
        SettingsError: keys are needed and none are configured.
    """
    if not api_keys and not is_loopback(host):
        raise SettingsError(
            f"refusing to listen on {host} without API keys: give --api-keys-file or ${API_KEYS_ENVIRONMENT} "
            "(or listen on 127.0.0.1)"
        )


def load_settings(
    *,
    triton_url: str,
    data_dir: Path,
    config_file: Path | None = None,
    api_keys_file: Path | None = None,
    environment: Mapping[str, str] = os.environ,
) -> GatewaySettings:
    """Settings from the options, the config file and the API keys (the file, else the environment variable).

    Raises:
        SettingsError: a file is unreadable or malformed, or a value is out of range.
    """
    try:
        endpoint = parse_url(triton_url)
    except ValueError as error:
        raise SettingsError(f"--triton: {error}") from None
    if endpoint.protocol != "grpc":
        raise SettingsError(f"--triton: the gateway streams over gRPC, give grpc://host:port, got {triton_url!r}")
    config = _read_toml(config_file) if config_file is not None else {}
    unknown = sorted(set(config) - {"models", "limits", "cors"})
    if unknown:
        raise SettingsError(f"{config_file}: unknown table(s) {', '.join(unknown)} (known: models, limits, cors)")
    if api_keys_file is not None:
        try:
            keys = parse_api_keys(api_keys_file.read_text(), source=str(api_keys_file))
        except OSError as error:
            raise SettingsError(f"cannot read the API keys file: {error}") from error
    else:
        text = environment.get(API_KEYS_ENVIRONMENT, "").replace(",", "\n")
        keys = parse_api_keys(text, source=f"${API_KEYS_ENVIRONMENT}")
    return GatewaySettings(
        triton_url=triton_url,
        data_dir=data_dir,
        models=tuple(_models(config.get("models", []), config_file)),
        api_keys=tuple(keys),
        limits=_limits(config.get("limits", {}), config_file),
        cors_origins=tuple(_strings(config.get("cors", {}).get("allow_origins", []), "cors.allow_origins")),
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise SettingsError(f"cannot read the config file: {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path}: not valid TOML: {error}") from error


def _models(entries: Any, source: Path | None) -> list[ModelSettings]:
    if not isinstance(entries, list):
        raise SettingsError(f"{source}: models must be an array of tables ([[models]])")
    models = []
    for index, entry in enumerate(entries):
        where = f"{source}: models[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise SettingsError(f"{where}: needs a name (the Triton entry model)")
        unknown = sorted(set(entry) - {"name", "aliases"})
        if unknown:
            raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)} (known: name, aliases)")
        models.append(ModelSettings(entry["name"], tuple(_strings(entry.get("aliases", []), f"{where}.aliases"))))
    return models


def _limits(table: Any, source: Path | None) -> Limits:
    if not isinstance(table, dict):
        raise SettingsError(f"{source}: limits must be a table")
    known = Limits.__dataclass_fields__
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise SettingsError(f"{source}: limits: unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SettingsError(f"{source}: limits.{key} must be a number, got {value!r}")
        if key in ("max_body_bytes", "rate_limit_burst", "retry_after_s") and not isinstance(value, int):
            raise SettingsError(f"{source}: limits.{key} must be an integer, got {value!r}")
    return Limits(**table)


def _strings(values: Any, where: str) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(value, str) and value for value in values):
        raise SettingsError(f"{where} must be an array of non-empty strings, got {values!r}")
    return values
