"""`sdtriton serve` drains on SIGTERM, as Kubernetes stops a pod: requests in flight finish with their images, new
ones are refused, and the process exits on its own within the drain budget (the Helm chart's termination grace is
set above it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sdtriton.client import SdTritonError, ServerUnavailableError, StableDiffusionClient
from sdtriton.server import ServerAddress, drain_args

pytestmark = pytest.mark.integration

DRAIN_S = 60


def test_drain_args_leave_an_explicit_exit_timeout_alone() -> None:
    assert drain_args(12.5, []) == ["--exit-timeout-secs=13"]
    assert drain_args(30, ["--exit-timeout-secs=5"]) == []
    with pytest.raises(ValueError, match="at least 0"):
        drain_args(-1, [])


def _wait_ready(client: StableDiffusionClient, process: subprocess.Popen[str], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not client.is_ready():
        assert process.poll() is None, f"sdtriton serve exited early: {process.stderr.read() if process.stderr else ''}"
        assert time.monotonic() < deadline, "the server was not ready in time"
        time.sleep(0.2)


def test_sigterm_lets_requests_in_flight_finish_and_refuses_new_ones(tiny_repository: Path, tmp_path: Path) -> None:
    address = ServerAddress.on_free_ports()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sdtriton.cli",
                "serve",
                str(tiny_repository),
                "--http-port",
                str(address.http_port),
                "--grpc-port",
                str(address.grpc_port),
                "--metrics-port",
                str(address.metrics_port),
                "--drain-timeout-s",
                str(DRAIN_S),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    client = StableDiffusionClient(address.grpc_url)
    try:
        _wait_ready(client, process)
        outcome: dict[str, object] = {}

        def long_request() -> None:
            try:
                outcome["result"] = client.generate("a slow one", num_inference_steps=30, width=128, height=128)
            except SdTritonError as error:
                outcome["error"] = error

        started = time.monotonic()
        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.5)  # the request is running
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        late = StableDiffusionClient(address.grpc_url)
        try:
            with pytest.raises(SdTritonError, match="draining") as refused:
                late.generate("too late", num_inference_steps=2)
            assert isinstance(refused.value, ServerUnavailableError)
        finally:
            late.close()
        assert worker.is_alive(), "the long request ended before the drain could be seen"
        worker.join(timeout=DRAIN_S)
        assert "error" not in outcome, f"the request in flight failed during the drain: {outcome.get('error')}"
        result = outcome["result"]
        assert result.images[0].size == (128, 128)
        exit_code = process.wait(timeout=DRAIN_S)
        stopped_s = time.monotonic() - started
    finally:
        client.close()
        if process.poll() is None:
            # serve stops its tritonserver (its own session) only on a signal it can catch: a kill would orphan it.
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=DRAIN_S + 60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert exit_code == 0, log_path.read_text()[-2000:]
    assert stopped_s < DRAIN_S, f"serve took {stopped_s:.1f} s to stop"
