"""A server's failures arrive as the client's own exception classes over HTTP, gRPC and a gRPC stream.

Each check also records what tritonclient itself raised (the ``__cause__``): HTTP status, gRPC status, or none in a
stream. The server runs with explicit model control, so that a component can be unloaded under the pipeline: a
request then fails inside the server (INTERNAL), as one whose component broke would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import tritonclient.http as httpclient

from sdtriton.client import InferenceError, InvalidRequestError, RequestTimeoutError, SdTritonError, parse_url
from sdtriton.client import StableDiffusionClient as Client
from sdtriton.components import VAE_DECODER_MODEL_NAME
from tests.conftest import serve

pytestmark = pytest.mark.integration

PROMPT = "a red circle"
# The raw status each transport gives, per server error code (INTERNAL, UNAVAILABLE, INVALID_ARG).
STATUSES = {
    "http": {"INTERNAL": "500", "UNAVAILABLE": "503", "INVALID_ARG": "400"},
    "grpc": {
        "INTERNAL": "StatusCode.INTERNAL",
        "UNAVAILABLE": "StatusCode.UNAVAILABLE",
        "INVALID_ARG": "StatusCode.INVALID_ARGUMENT",
    },
    "stream": {"INTERNAL": None, "UNAVAILABLE": None, "INVALID_ARG": None},
}


@pytest.fixture(scope="module")
def server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    yield from serve(tiny_repository, tmp_path_factory, ("--model-control-mode=explicit", "--load-model=*"))


def _generate(server, transport: str, *, timeout_s: float | None = None) -> Callable[..., object]:
    """generate() over ``transport``: a plain HTTP or gRPC request, or a gRPC stream."""
    url = server.address.http_url if transport == "http" else server.address.grpc_url

    def generate(**kwargs: object) -> object:
        with Client(url, timeout_s=timeout_s) as client:
            if transport == "stream":
                return list(client.stream(PROMPT, **kwargs))
            return client.generate(PROMPT, **kwargs)

    return generate


def _raised(expected: type[SdTritonError], call: Callable[[], object]) -> SdTritonError:
    with pytest.raises(SdTritonError) as caught:
        call()
    assert type(caught.value) is expected, f"{type(caught.value).__name__}: {caught.value}"
    return caught.value


@pytest.mark.parametrize("transport", ["http", "grpc", "stream"])
def test_an_expired_time_budget_is_a_request_timeout_error(server, transport: str) -> None:
    generate = _generate(server, transport, timeout_s=0.001)
    error = _raised(RequestTimeoutError, lambda: generate(num_inference_steps=20, seed=1))
    assert str(error).startswith("timeout: the request's time budget of 1 ms ran out")
    assert error.__cause__.status() == STATUSES[transport]["UNAVAILABLE"]


@pytest.mark.parametrize("transport", ["http", "grpc", "stream"])
def test_a_refused_input_is_an_invalid_request_error(server, transport: str) -> None:
    generate = _generate(server, transport)
    error = _raised(InvalidRequestError, lambda: generate(num_inference_steps=0))
    assert str(error) == "num_inference_steps: must be an integer in 1..150, got 0"
    assert error.__cause__.status() == STATUSES[transport]["INVALID_ARG"]


def test_a_failure_inside_the_server_is_an_inference_error(server) -> None:
    admin = httpclient.InferenceServerClient(parse_url(server.address.http_url).address)
    admin.unload_model(VAE_DECODER_MODEL_NAME)
    try:
        for transport in ("http", "grpc", "stream"):
            error = _raised(InferenceError, lambda t=transport: _generate(server, t)(num_inference_steps=1, seed=1))
            assert str(error).startswith("pipeline: internal error (see the server log)"), transport
            assert error.__cause__.status() == STATUSES[transport]["INTERNAL"], transport
    finally:
        admin.load_model(VAE_DECODER_MODEL_NAME)
        admin.close()
    assert _generate(server, "http")(num_inference_steps=1, seed=1).seed == 1
