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


class RetriesExhaustedError(ServerUnavailableError):
    """A :class:`~sdtriton.client.RetryPolicy` ran out of attempts or of time; ``__cause__`` is the last error.

    Attributes:
        attempts: requests sent, the first included.
        elapsed_s: seconds from the first attempt to giving up, waits included.
        last_error: the error of the last attempt (always one the policy retries, or the deadline's own timeout).
    """

    def __init__(self, reason: str, *, attempts: int, elapsed_s: float, last_error: SdTritonError) -> None:
        plural = "" if attempts == 1 else "s"
        super().__init__(
            f"gave up after {attempts} attempt{plural} in {elapsed_s:.1f} s ({reason}); "
            f"last error: {type(last_error).__name__}: {last_error}"
        )
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last_error = last_error
