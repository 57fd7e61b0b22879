"""The client's exception for each server answer, built as tritonclient builds it over HTTP, gRPC and a gRPC stream.

tritonclient.http: ``InferenceServerException(msg=<the JSON "error">, status=str(<HTTP status>))``, where Triton's
HttpCodeFromError gives 400 for INVALID_ARG, CANCELLED, UNKNOWN and ALREADY_EXISTS, 500 for INTERNAL and 503 for
UNAVAILABLE (older Tritons 400 for every error). tritonclient.grpc: ``status=str(rpc_error.code())``. An error
inside a gRPC stream: ``InferenceServerException(msg=response.error_message)``, no status at all. The messages are
the server's own, built by the code that sends them.
"""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from sdtriton import interface
from sdtriton.client import (
    InferenceError,
    InvalidRequestError,
    RequestCancelledError,
    RequestTimeoutError,
    ServerBusyError,
    ServerUnavailableError,
    is_retryable,
)
from sdtriton.client.client import wrap_error
from sdtriton.serving import errors

INVALID = str(errors.InvalidInputError("num_inference_steps", "must be an integer in 1..150, got 0"))
PIXELS = str(errors.InvalidInputError("width x height", "must be at most 5120 pixels, got 80 x 80 = 6400"))
CANCELLED = "request cancelled"  # the Triton adapters' message for RequestCancelledError
INTERNAL = "pipeline: internal error (see the server log)"  # theirs for any other failure, by model name
EXPIRED = str(errors.DeadlineExceededError(budget_s=0.001, elapsed_s=0.055, where="at step 1 of 29"))
BUSY = str(errors.ServerBusyError.full(4, 4))
DRAINING = str(errors.ServerBusyError.draining())
DIED = str(errors.ComponentDiedError("unet", 1234, in_flight=True))

CASES = [
    # HTTP, as Triton 2.51 answers (measured through a real server where one could be provoked).
    ("400", INVALID, InvalidRequestError),
    ("400", "[request id: <id_unknown>] unexpected datatype FP32 for input 'seed'", InvalidRequestError),
    ("400", CANCELLED, RequestCancelledError),
    ("500", INTERNAL, InferenceError),
    ("503", EXPIRED, RequestTimeoutError),
    ("503", BUSY, ServerBusyError),
    ("503", DRAINING, ServerBusyError),
    ("503", "Server not ready", ServerUnavailableError),
    ("503", DIED, ServerUnavailableError),
    # HTTP from a Triton that answers 400 for every error.
    ("400", INTERNAL, InferenceError),
    ("400", EXPIRED, RequestTimeoutError),
    ("400", BUSY, ServerBusyError),
    # gRPC.
    ("StatusCode.INVALID_ARGUMENT", INVALID, InvalidRequestError),
    ("StatusCode.CANCELLED", CANCELLED, RequestCancelledError),
    ("StatusCode.CANCELLED", "Locally cancelled by application!", RequestCancelledError),
    ("StatusCode.INTERNAL", INTERNAL, InferenceError),
    ("StatusCode.UNAVAILABLE", EXPIRED, RequestTimeoutError),
    ("StatusCode.UNAVAILABLE", BUSY, ServerBusyError),
    ("StatusCode.UNAVAILABLE", DRAINING, ServerBusyError),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", ServerUnavailableError),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", RequestTimeoutError),
    # A gRPC stream: the message alone.
    (None, INVALID, InvalidRequestError),
    (None, PIXELS, InvalidRequestError),
    (None, CANCELLED, RequestCancelledError),
    (None, INTERNAL, InferenceError),
    (None, EXPIRED, RequestTimeoutError),
    (None, BUSY, ServerBusyError),
    (None, DIED, ServerUnavailableError),
]


@pytest.mark.parametrize(("status", "message", "expected"), CASES)
def test_each_answer_becomes_its_own_exception_keeping_the_message(status, message: str, expected: type) -> None:
    wrapped = wrap_error(InferenceServerException(msg=message, status=status))
    assert type(wrapped) is expected
    assert str(wrapped) == message


def test_a_refusal_of_any_public_input_is_recognised_without_a_status() -> None:
    for tensor in interface.STREAM_INPUTS:
        message = str(errors.InvalidInputError(tensor.name, "must be something else"))
        assert type(wrap_error(InferenceServerException(msg=message))) is InvalidRequestError, tensor.name


def test_an_unknown_answer_is_an_inference_error_that_names_its_status() -> None:
    wrapped = wrap_error(InferenceServerException(msg="something odd", status="StatusCode.UNKNOWN"))
    assert type(wrapped) is InferenceError and str(wrapped) == "something odd (status StatusCode.UNKNOWN)"
    # A message that merely contains a known phrase is not one of the server's own.
    assert type(wrap_error(InferenceServerException(msg="the request cancelled itself"))) is InferenceError
    assert type(wrap_error(InferenceServerException(msg="a prompt: was odd"))) is InferenceError


def test_only_a_refusal_before_any_work_is_retried() -> None:
    def retried(status, message: str) -> bool:
        return is_retryable(wrap_error(InferenceServerException(msg=message, status=status)))

    assert retried("503", BUSY) and retried("503", DRAINING) and retried("StatusCode.UNAVAILABLE", "unreachable")
    assert not any(retried("400", message) for message in (INVALID, CANCELLED, INTERNAL, EXPIRED))
    assert not retried("503", EXPIRED)


def test_transport_errors_are_wrapped() -> None:
    assert type(wrap_error(TimeoutError("timed out"))) is RequestTimeoutError
    assert type(wrap_error(ConnectionRefusedError("refused"))) is ServerUnavailableError
    assert type(wrap_error(RuntimeError("odd"))) is InferenceError
