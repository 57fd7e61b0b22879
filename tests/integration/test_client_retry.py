"""Client retries through real servers: across a restart on the same ports (the same image), a clear error when
the policy runs out, "server busy" refusals retried, and INVALID_ARG and server-enforced deadlines never."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from sdtriton.client import (
    GenerationResult,
    InvalidRequestError,
    RequestTimeoutError,
    RetriesExhaustedError,
    RetryPolicy,
    ServerBusyError,
    ServerUnavailableError,
    StableDiffusionClient,
)
from sdtriton.export.variants import engine_variant
from sdtriton.server import ServerAddress, TritonServer
from tests.conftest import serve

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
QUICK = {"seed": 7, "num_inference_steps": 4}
# Holds the engine's one slot for a few seconds on this CPU.
LONG = {"num_inference_steps": 20, "width": 128, "height": 128, "scheduler": "ddim"}
# Short waits, so that tests see a server come back soon after it does; seeded jitter.
PATIENT = RetryPolicy(deadline_s=90.0, initial_backoff_s=0.2, max_backoff_s=1.0, jitter_seed=0)
RESTART_DELAY_S = 2.5
CLIENT_LOGGER = "sdtriton.client.client"


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == CLIENT_LOGGER and "retrying in" in r.getMessage()]


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_without_a_server_the_error_is_clear_and_names_attempts(scheme, caplog):
    address = ServerAddress.on_free_ports()  # nothing listens there
    url = address.grpc_url if scheme == "grpc" else address.http_url
    with StableDiffusionClient(url) as client:  # no policy: at once, as ever
        started = time.monotonic()
        with pytest.raises(ServerUnavailableError) as caught:
            client.generate(PROMPT, **QUICK)
        assert not isinstance(caught.value, RetriesExhaustedError)
        assert time.monotonic() - started < 1.0
    short = RetryPolicy(deadline_s=1.0, initial_backoff_s=0.1, max_backoff_s=0.2, jitter_seed=1)
    with StableDiffusionClient(url, retry=short) as client:
        started = time.monotonic()
        with pytest.raises(
            RetriesExhaustedError, match=r"gave up after \d+ attempts in [01]\.\d s \(its deadline of 1 s"
        ):
            client.generate(PROMPT, **QUICK)
        assert time.monotonic() - started <= 1.2
    with StableDiffusionClient(url, retry=RetryPolicy(max_attempts=3, deadline_s=None, initial_backoff_s=0.05)) as c:
        with pytest.raises(RetriesExhaustedError, match=r"gave up after 3 attempts .*allows 3 attempts") as caught:
            c.generate(PROMPT, **QUICK)
    error = caught.value
    assert error.attempts == 3 and error.elapsed_s < 2.0
    assert isinstance(error.last_error, ServerUnavailableError) and error.__cause__ is error.last_error
    assert "cannot reach the server" in str(error) or "failed to connect" in str(error).lower()


@pytest.fixture(scope="module")
def busy_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model with room for one request: a second is refused at once with "server busy"."""
    repository = engine_variant(tiny_repository, tmp_path_factory.mktemp("busy") / "repository", max_pending_requests=1)
    yield from serve(repository, tmp_path_factory)


def test_a_busy_refusal_is_retried_until_the_slot_frees(busy_server, caplog):
    url = busy_server.address.grpc_url
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with StableDiffusionClient(url) as holder, StableDiffusionClient(url) as impatient:
        long = holder.submit(PROMPT, seed=1, **LONG)
        time.sleep(0.3)
        with pytest.raises(ServerBusyError, match="max_pending_requests 1"):
            impatient.generate(PROMPT, **QUICK)
        # A stream is retried too while nothing was delivered: here, refused twice.
        with (
            StableDiffusionClient(url, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.05)) as streaming,
            pytest.raises(RetriesExhaustedError, match=r"2 attempts.*ServerBusyError"),
        ):
            streaming.generate(PROMPT, on_progress=lambda _: None, **QUICK)
        with StableDiffusionClient(url, retry=PATIENT) as patient:
            started = time.monotonic()
            result = patient.generate(PROMPT, num_inference_steps=4)  # no seed: the client draws it
            waited_s = time.monotonic() - started
        assert long.done()
        long.result()
    retries = _retries(caplog)
    assert sum("ServerBusyError" in message for message in retries) >= 2, retries
    assert all(PROMPT not in message for message in caplog.messages)
    with StableDiffusionClient(url) as client:
        again = client.generate(PROMPT, num_inference_steps=4, seed=result.seed)
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
    logging.getLogger(__name__).info("busy: answered after %.1f s of refusals and waits", waited_s)


@pytest.mark.parametrize("scheme", ["grpc", "http"])
def test_invalid_requests_and_server_deadlines_are_not_retried(busy_server, scheme, caplog):
    address = busy_server.address
    url = address.grpc_url if scheme == "grpc" else address.http_url
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with StableDiffusionClient(url, retry=PATIENT) as client:
        started = time.monotonic()
        with pytest.raises(InvalidRequestError, match="width"):
            client.generate(PROMPT, width=7, **QUICK)
        assert time.monotonic() - started < 2.0
    with StableDiffusionClient(url, timeout_s=0.5, retry=PATIENT) as client:
        with pytest.raises(RequestTimeoutError, match="time budget of 500 ms"):
            client.generate(PROMPT, seed=2, **LONG)
    # The policy's own deadline, cut into the attempt's budget, ends a long request: one attempt, a clear error.
    # The server ends it at the first step boundary past the budget (a step's time late: seconds on a loaded CPU),
    # long before its last step.
    with StableDiffusionClient(url, retry=RetryPolicy(deadline_s=1.0)) as client:
        with pytest.raises(RetriesExhaustedError, match=r"1 attempt in [\d.]+ s .*ran out during") as caught:
            client.generate(PROMPT, seed=3, **LONG)
    assert isinstance(caught.value.last_error, RequestTimeoutError)
    stopped_at = re.search(r"at step (\d+) of (\d+)", str(caught.value.last_error))
    assert stopped_at and int(stopped_at[1]) < int(stopped_at[2]) == LONG["num_inference_steps"]
    assert _retries(caplog) == []


# Last in this file: it stops the module's server (and starts, then stops, its successor).
def test_a_seeded_request_retried_across_a_restart_gives_the_same_image(busy_server, tmp_path, caplog):
    address = busy_server.address
    with StableDiffusionClient(address.grpc_url) as client:
        expected = np.asarray(client.generate(PROMPT, **QUICK).image)
    busy_server.stop()
    # Down now. The same server comes back on the same ports while both clients below are retrying.
    second = TritonServer(busy_server.repository, address=address, log_path=tmp_path / "second.log")
    moments: dict[str, float] = {}

    def restart() -> None:
        time.sleep(RESTART_DELAY_S)
        moments["started"] = time.monotonic()
        second.start()
        second.wait_ready(timeout_s=120)
        moments["ready"] = time.monotonic()

    def patient_call(url: str) -> tuple[GenerationResult, float, float]:
        with StableDiffusionClient(url, retry=PATIENT) as patient:
            started = time.monotonic()
            return patient.generate(PROMPT, **QUICK), started, time.monotonic()

    restarter = threading.Thread(target=restart)
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    try:
        restarter.start()
        with ThreadPoolExecutor(max_workers=2) as pool:
            calls = list(pool.map(patient_call, [address.grpc_url, address.http_url]))
    finally:
        restarter.join()
        second.stop()
    for result, _, answered in calls:
        assert np.array_equal(np.asarray(result.image), expected)
        assert answered > moments["ready"]  # answered by the new server, after waiting for it
    retries = _retries(caplog)
    assert len(retries) >= 2, retries  # both transports retried while the server was down
    assert all(PROMPT not in message for message in caplog.messages)
    # Seen soon after it came back: within about the policy's longest wait (1 s, +20% jitter) and a generation,
    # not after gRPC's own reconnect backoff (which grows to 120 s).
    noticed_s = [answered - moments["ready"] for _, _, answered in calls]
    assert max(noticed_s) < 5.0, noticed_s
    logging.getLogger(__name__).info(
        "restart: answered %.1f s after the first attempt; the new server took %.1f s to start; the clients "
        "answered %s s after it was ready; %d retries in all",
        max(answered for *_, answered in calls) - min(started for _, started, _ in calls),
        moments["ready"] - moments["started"],
        ", ".join(f"{seconds:.2f}" for seconds in noticed_s),
        len(retries),
    )
