"""The gateway's errors and the one table that turns each kind into an HTTP status and an OpenAI error body.

Every failure a client sees has OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``:

============================================  ======  =====================  ======================
kind                                          status  type                   code
============================================  ======  =====================  ======================
a field out of range (gateway or engine)      400     invalid_request_error  invalid_value
an input image that is not a PNG, or misfits  400     invalid_request_error  invalid_value
missing or unknown API key                    401     authentication_error   invalid_api_key
unknown model                                 404     invalid_request_error  model_not_found
unknown route or image                        404     invalid_request_error  not_found
unknown job (or another key's)                404     invalid_request_error  job_not_found
method not allowed on the route               405     invalid_request_error  method_not_allowed
request body over the limit                   413     invalid_request_error  request_too_large
rate limit of the key                         429     rate_limit_error       rate_limit_exceeded
cancelled (by the client, or the engine)      499     cancelled_error        request_cancelled
the engine failed the request                 500     server_error           inference_failed
engine busy, or draining (Retry-After)        503     server_error           server_busy, ..._draining
Triton unreachable or not ready (Retry-After) 503     server_error           triton_unavailable
the request's time budget ran out             504     server_error           deadline_exceeded
============================================  ======  =====================  ======================

The engine's messages pass through unchanged (they name the field and its allowed range; never a traceback).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sdtriton import interface
from sdtriton.client import (
    InferenceError,
    InvalidRequestError,
    RequestCancelledError,
    RequestTimeoutError,
    SdTritonError,
    ServerBusyError,
    ServerUnavailableError,
)
from sdtriton.gateway.images import ImageInputError

logger = logging.getLogger(__name__)

# nginx's "client closed request": the status OpenAI-style gateways answer a cancelled request with.
STATUS_CANCELLED = 499
# The request field a refused engine input came from, where the names differ (size is "WxH" on the gateway, the images
# are files).
REQUEST_FIELDS = {
    interface.WIDTH.name: "size",
    interface.HEIGHT.name: "size",
    interface.INPUT_IMAGE.name: "image",
    interface.MASK_IMAGE.name: "mask",
}
# An engine refusal starts with the input's name: "width: must be ...", "width x height: must be at most ...".
_ENGINE_FIELD = re.compile(r"(?P<field>[a-z_]+)(?: x [a-z_]+)?: ")


class SettingsError(ValueError):
    """A config file, an API keys file or an option is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class ErrorKind:
    """How one kind of failure is answered."""

    status: int
    type: str
    code: str
    retry_after: bool = False


INVALID_VALUE = ErrorKind(400, "invalid_request_error", "invalid_value")
INVALID_API_KEY = ErrorKind(401, "authentication_error", "invalid_api_key")
MODEL_NOT_FOUND = ErrorKind(404, "invalid_request_error", "model_not_found")
NOT_FOUND = ErrorKind(404, "invalid_request_error", "not_found")
JOB_NOT_FOUND = ErrorKind(404, "invalid_request_error", "job_not_found")
METHOD_NOT_ALLOWED = ErrorKind(405, "invalid_request_error", "method_not_allowed")
REQUEST_TOO_LARGE = ErrorKind(413, "invalid_request_error", "request_too_large")
RATE_LIMITED = ErrorKind(429, "rate_limit_error", "rate_limit_exceeded", retry_after=True)
CANCELLED = ErrorKind(STATUS_CANCELLED, "cancelled_error", "request_cancelled")
INFERENCE_FAILED = ErrorKind(500, "server_error", "inference_failed")
SERVER_BUSY = ErrorKind(503, "server_error", "server_busy", retry_after=True)
SERVER_DRAINING = ErrorKind(503, "server_error", "server_draining", retry_after=True)
TRITON_UNAVAILABLE = ErrorKind(503, "server_error", "triton_unavailable", retry_after=True)
DEADLINE_EXCEEDED = ErrorKind(504, "server_error", "deadline_exceeded")
# By HTTP status, for the errors the framework raises itself (an unknown route, a wrong method).
_BY_STATUS = {400: INVALID_VALUE, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 413: REQUEST_TOO_LARGE}
# The client's exceptions, most specific first (ServerBusyError and RequestTimeoutError are ServerUnavailableErrors).
_ENGINE_KINDS: tuple[tuple[type[SdTritonError], ErrorKind], ...] = (
    (InvalidRequestError, INVALID_VALUE),
    (RequestCancelledError, CANCELLED),
    (RequestTimeoutError, DEADLINE_EXCEEDED),
    (ServerBusyError, SERVER_BUSY),
    (ServerUnavailableError, TRITON_UNAVAILABLE),
    (InferenceError, INFERENCE_FAILED),
    (SdTritonError, INFERENCE_FAILED),
)


class GatewayError(Exception):
    """A failure the gateway answers itself: its kind, and the request field it concerns (or None).

    Attributes:
        retry_after_s: the Retry-After to send (kinds that have one); None: the gateway's default.
    """

    def __init__(
        self, kind: ErrorKind, message: str, *, param: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.param = param
        self.retry_after_s = retry_after_s


def unknown_model(name: str, served: list[str]) -> GatewayError:
    """The 404 of a ``model`` that is neither a served model nor an alias."""
    return GatewayError(
        MODEL_NOT_FOUND,
        f"model: {name!r} is not served here; one of {', '.join(served) or '(none yet)'}",
        param="model",
    )


@dataclass(frozen=True)
class ErrorAnswer:
    """A failure as the gateway answers it: status, OpenAI body, headers."""

    status: int
    body: dict[str, dict[str, str | None]]
    headers: dict[str, str]


def error_body(kind: ErrorKind, message: str, param: str | None) -> dict[str, dict[str, str | None]]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": kind.type, "param": param, "code": kind.code}}


def engine_kind(error: SdTritonError) -> ErrorKind:
    """The kind of one of the client's exceptions (a busy server and a draining one differ by message)."""
    kind = next(kind for error_class, kind in _ENGINE_KINDS if isinstance(error, error_class))
    if kind is SERVER_BUSY and str(error).startswith("server draining"):
        return SERVER_DRAINING
    return kind


def engine_param(message: str) -> str | None:
    """The request field an engine refusal names first (``width`` and ``height`` are the request's ``size``)."""
    match = _ENGINE_FIELD.match(message)
    if match is None:
        return None
    return REQUEST_FIELDS.get(match["field"], match["field"])


def classify(error: BaseException) -> tuple[ErrorKind, str, str | None]:
    """``error``'s kind, message and field: a :class:`GatewayError`, one of the client's exceptions, or anything
    else (``inference_failed``, with a message that tells nothing of it)."""
    if isinstance(error, GatewayError):
        return error.kind, str(error), error.param
    if isinstance(error, ImageInputError):
        return INVALID_VALUE, str(error), error.field
    if isinstance(error, SdTritonError):
        kind, message = engine_kind(error), str(error)
        return kind, message, engine_param(message) if kind is INVALID_VALUE else None
    return INFERENCE_FAILED, "internal error of the gateway (see its log)", None


def describe(error: BaseException) -> dict[str, str | None]:
    """The inner OpenAI error (``message``, ``type``, ``param``, ``code``) of ``error``: a failed job's ``error``,
    the same as the synchronous route's answer would carry."""
    return error_body(*classify(error))["error"]


def answer(error: Exception, *, retry_after_s: int) -> ErrorAnswer:
    """How the gateway answers ``error``: a :class:`GatewayError`, one of the client's exceptions, or anything
    else (500, with the traceback logged and never sent)."""
    if not isinstance(error, GatewayError | SdTritonError | ImageInputError):
        logger.error("unexpected error answering a request", exc_info=error)
    kind, message, param = classify(error)
    if isinstance(error, GatewayError) and error.retry_after_s is not None:
        retry_after_s = error.retry_after_s
    headers = {"Retry-After": str(retry_after_s)} if kind.retry_after else {}
    if kind is INVALID_API_KEY:
        headers["WWW-Authenticate"] = "Bearer"
    return ErrorAnswer(kind.status, error_body(kind, message, param), headers)


def status_kind(status: int) -> ErrorKind:
    """The kind of an HTTP error the framework raised (an unknown route: 404)."""
    return _BY_STATUS.get(
        status, ErrorKind(status, "invalid_request_error" if status < 500 else "server_error", "error")
    )
