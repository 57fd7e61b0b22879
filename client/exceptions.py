"""Exceptions of the sdtriton client; each wraps the tritonclient error it came from (``__cause__``)."""

from __future__ import annotations


class SdTritonError(Exception):
    """Base class of every error the client raises."""


class InvalidRequestError(SdTritonError):
    """The server rejected the request's inputs (Triton ``INVALID_ARG``); the message names the field."""


class ServerUnavailableError(SdTritonError):
    """The server could not be reached, or is not ready."""


class InferenceError(SdTritonError):
    """The server accepted the request but failed to answer it."""


class ServerBusyError(ServerUnavailableError):
    """The server holds as many requests as it may and refused this one before any work (safe to retry)."""


class RequestTimeoutError(ServerUnavailableError):
    """The request's time budget (``timeout_s``) ran out, queued or running; the server stopped its work."""


class RequestCancelledError(SdTritonError):
    """The request was cancelled (by this client, or the server ended it as cancelled)."""
