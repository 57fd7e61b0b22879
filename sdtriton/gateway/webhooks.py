"""Webhooks: a finished job POSTed to its URL, signed, retried with backoff, every attempt recorded.

The body is the job's JSON (:meth:`~sdtriton.gateway.store.Job.to_dict`, or what ``payload`` makes of it), sent
with ``Content-Type: application/json``, the job id in ``Sdtriton-Job-Id`` (receivers deduplicate on it: a
delivery may arrive twice when an answer is lost) and ``Sdtriton-Signature: t=<unix seconds>,v1=<hex>``, where
``<hex>`` is HMAC-SHA256 with the shared secret over ``<unix seconds>.`` followed by the body's bytes. Receivers
check it with :func:`verify_signature`, refusing stale timestamps (replays). Any answer but 2xx (redirects
included: they are not followed) and any transport error is retried, up to ``attempts`` in all, waiting
``first_delay_s``, then ``backoff`` times longer each time, at most ``max_delay_s``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sdtriton.gateway.store import Job, WebhookDelivery

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Sdtriton-Signature"
JOB_ID_HEADER = "Sdtriton-Job-Id"
SIGNATURE_VERSION = "v1"
# How old a signature's timestamp may be when verified (and how far in the future, for clocks out of step).
DEFAULT_TOLERANCE_S = 300.0
_ERROR_TEXT_LIMIT = 200
WEBHOOK_SCHEMES = ("http", "https")


@dataclass(frozen=True, kw_only=True)
class WebhookPolicy:
    """How a delivery is retried.

    Attributes:
        attempts: Tries in all (1: no retry).
        first_delay_s: The wait after the first failed try.
        backoff: Each later wait is this many times the one before.
        max_delay_s: No wait is longer.
        timeout_s: How long one try waits for the receiver's answer.
    """

    attempts: int = 5
    first_delay_s: float = 1.0
    backoff: float = 2.0
    max_delay_s: float = 60.0
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.first_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"delays must be >= 0, got {self.first_delay_s} and {self.max_delay_s}")
        if self.backoff < 1:
            raise ValueError(f"backoff must be >= 1, got {self.backoff}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")

    def delay_s(self, attempt: int) -> float:
        """The wait after failed try ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.first_delay_s * self.backoff ** (attempt - 1))


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def _digest(secret: str | bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(_secret_bytes(secret), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: bytes, *, timestamp: int) -> str:
    """The ``Sdtriton-Signature`` header value of ``body`` sent at ``timestamp`` (unix seconds)."""
    return f"t={timestamp},{SIGNATURE_VERSION}={_digest(secret, body, timestamp)}"


def verify_signature(
    secret: str | bytes,
    header: str | None,
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``header`` (the ``Sdtriton-Signature`` value received) signs ``body`` (the raw bytes received)
    with ``secret``, at a timestamp within ``tolerance_s`` of ``now`` (default: this machine's clock)."""
    if not header:
        return False
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
        signature = parts[SIGNATURE_VERSION]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature, _digest(secret, body, timestamp))


def webhook_url_problem(url: str, *, allow_private: bool = False) -> str | None:
    """Why the gateway refuses to POST to ``url``, or None when it may: not http(s), no host, a host that does not
    resolve, or (unless ``allow_private``) one that resolves to an address that is not globally reachable
    (loopback, private, link-local such as a cloud's metadata service, reserved, multicast): a caller must not turn
    the gateway into a client of its own network. The check resolves the host now; redirects are never followed.
    """
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        return f"not a valid URL ({error})"
    if parts.scheme not in WEBHOOK_SCHEMES:
        return f"must be an http:// or https:// URL, got the scheme {parts.scheme!r}"
    host = parts.hostname
    if not host:
        return "must name a host"
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        return f"its host {host!r} does not resolve ({error})"
    if allow_private:
        return None
    for *_, address in found:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if not (mapped or ip).is_global or (mapped or ip).is_multicast:
            return (
                f"its host {host!r} resolves to {ip}, which is not a public address (loopback, private, link-local "
                "and reserved addresses are refused unless the gateway runs with --webhook-allow-private)"
            )
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx answer is then an HTTPError, counted as a failed try


_OPENER = urllib.request.build_opener(_NoRedirects)

Recorder = Callable[[WebhookDelivery], Awaitable[Any] | Any]


class WebhookSender:
    """Delivers finished jobs to their webhooks.

    Args:
        secret: The HMAC key (from the gateway's config); shared with the receivers.
        policy: Retries and timeouts.
        payload: Makes the body from the job (default :meth:`Job.to_dict`); the gateway adds image URLs here.
        on_attempt: Called with every attempt's :class:`WebhookDelivery` (the gateway counts them in its metrics).
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        policy: WebhookPolicy | None = None,
        payload: Callable[[Job], Mapping[str, Any]] | None = None,
        on_attempt: Callable[[WebhookDelivery], None] | None = None,
    ):
        self._secret = _secret_bytes(secret)
        self.policy = policy or WebhookPolicy()
        self._payload = payload or Job.to_dict
        self._on_attempt = on_attempt

    async def deliver(self, job: Job, record: Recorder) -> bool:
        """POSTs ``job`` to ``job.webhook`` until it is accepted or the attempts run out, passing each attempt's
        :class:`WebhookDelivery` to ``record`` (awaited if it returns an awaitable); True when accepted."""
        if not job.webhook:
            raise ValueError(f"job {job.id} has no webhook")
        body = json.dumps(self._payload(job), separators=(",", ":")).encode()
        for attempt in range(1, self.policy.attempts + 1):
            delivery = await asyncio.to_thread(self._post, job, body, attempt)
            if self._on_attempt is not None:
                self._on_attempt(delivery)
            recorded = record(delivery)
            if inspect.isawaitable(recorded):
                await recorded
            if delivery.ok:
                logger.info("webhook of job %s delivered on attempt %d", job.id, attempt)
                return True
            if attempt < self.policy.attempts:
                delay_s = self.policy.delay_s(attempt)
                logger.info(
                    "webhook of job %s: attempt %d failed (%s); next in %.1f s",
                    job.id,
                    attempt,
                    delivery.error,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
        logger.warning("webhook of job %s not delivered after %d attempts", job.id, self.policy.attempts)
        return False

    def _post(self, job: Job, body: bytes, attempt: int) -> WebhookDelivery:
        at = time.time()
        started = time.monotonic()
        request = urllib.request.Request(
            job.webhook,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "sdtriton-gateway",
                JOB_ID_HEADER: job.id,
                SIGNATURE_HEADER: sign(self._secret, body, timestamp=int(at)),
            },
        )
        status_code: int | None = None
        error: str | None = None
        try:
            with _OPENER.open(request, timeout=self.policy.timeout_s) as response:
                status_code = response.status
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
        except urllib.error.HTTPError as e:
            status_code, error = e.code, f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, ValueError) as e:
            error = f"{type(e).__name__}: {e}"[:_ERROR_TEXT_LIMIT]
        return WebhookDelivery(
            attempt=attempt, at=at, status_code=status_code, error=error, duration_s=time.monotonic() - started
        )
