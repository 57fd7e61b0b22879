"""Faults injected into a real server under load: a frozen stub, a killed tritonserver, a killed parent.

A stub stopped (SIGSTOP) for longer than a step: requests with a budget still end in time, one with a
RetryPolicy gets its image, the server is restarted (the frozen stub would abort it), nothing hangs.
tritonserver SIGKILLed under `sdtriton serve --restart-on-crash`: clients with a RetryPolicy get every image,
byte for byte, and the server is back within about its startup time. `sdtriton serve` itself SIGKILLed: its
tritonserver and stubs end with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sdtriton.client import RequestTimeoutError, RetryPolicy, ServerUnavailableError, StableDiffusionClient
from sdtriton.ops.supervisor import ServerSupervisor
from sdtriton.server import ServerAddress, end_process_group, process_group_members
from sdtriton.serving.liveness import StubProcess
from tests.conftest import supervise

pytestmark = pytest.mark.integration

PROMPT = "a red circle"
SMALL = {"num_inference_steps": 3, "width": 64, "height": 64}
# The entries answer a request this long past its budget when the engine cannot step (2 s), plus the VM's slack.
ANSWER_MARGIN_S = 2.0 + 6.0
GONE_WITHIN_S = 60.0
BACK_WITHIN_S = 240.0


def _image(client: StableDiffusionClient, seed: int) -> bytes:
    return client.generate(PROMPT, seed=seed, **SMALL).images[0].tobytes()


def _wait_gone(group: int) -> list[int]:
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := process_group_members(group)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.fixture(scope="module")
def supervisor(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSupervisor]:
    """One supervised server for the frozen-stub cases: the first (``unet``) ends with the server restarted, as a
    fresh one would start, and the second (``pipeline``) leaves it running."""
    yield from supervise(tiny_repository, tmp_path_factory.mktemp("frozen") / "t.log")


@pytest.mark.parametrize("frozen", ["unet", "pipeline"])
def test_a_frozen_stub_ends_budgets_in_time_and_the_server_comes_back(
    frozen: str, supervisor: ServerSupervisor, tiny_repository: Path
) -> None:
    """SIGSTOP for 5 s (a step takes ~0.1 s here) of a component's stub and of the engine's. Triton 2.51 reports a
    called stub that misses its 1 s health check "not healthy", and its next request after SIGCONT aborted
    tritonserver (measured): the engine ends such a stub, answers its requests UNAVAILABLE, and the supervisor
    restarts the server. The engine's own stub is only waited on: the entries answer budgets, SIGCONT resumes."""
    server = supervisor.server
    ended_before, restarted_before = len(supervisor.ends), supervisor.restarts
    group = server.pid
    url = server.address.grpc_url
    stub = StubProcess.find(parent_pid=group, model_directory=tiny_repository / frozen)
    assert stub is not None
    patient_parameters = {"seed": 5, "num_inference_steps": 40, "width": 64, "height": 64}
    with StableDiffusionClient(url) as client:
        reference = client.generate(PROMPT, **patient_parameters).images[0].tobytes()
    budget_s = 3.0

    def with_budget(seed: int) -> tuple[str, float]:
        sent = time.monotonic()
        try:
            with StableDiffusionClient(url, timeout_s=budget_s) as client:
                client.generate(PROMPT, seed=seed, num_inference_steps=150, width=128, height=128)
            return "image", time.monotonic() - sent
        except (RequestTimeoutError, ServerUnavailableError) as error:
            return str(error), time.monotonic() - sent

    def patient() -> bytes:
        retry = RetryPolicy(deadline_s=240.0, initial_backoff_s=0.2, max_backoff_s=1.0)
        with StableDiffusionClient(url, retry=retry) as client:
            return client.generate(PROMPT, **patient_parameters).images[0].tobytes()

    with ThreadPoolExecutor(4) as pool:
        budgeted = [pool.submit(with_budget, seed) for seed in range(3)]
        waiting = pool.submit(patient)
        time.sleep(0.5)  # all running: each has taken steps
        os.kill(stub.pid, signal.SIGSTOP)
        time.sleep(5.0)
        with contextlib.suppress(ProcessLookupError):  # ended by the server, as it should be
            os.kill(stub.pid, signal.SIGCONT)
        answers = [future.result(timeout=60) for future in budgeted]
        patient_image = waiting.result(timeout=300)
    for message, took_s in answers:
        assert "time budget of 3000 ms ran out" in message or f"model process died: {frozen}" in message, message
        assert took_s < budget_s + ANSWER_MARGIN_S, (took_s, message)
    assert patient_image == reference, "the request with a RetryPolicy gets its exact image"
    if frozen == "unet":
        # The engine's call to it failed the health check: the stub was ended, the server restarted.
        assert supervisor.wait_restarted(restarted_before + 1, timeout_s=BACK_WITHIN_S), supervisor.ends
        (end,) = supervisor.ends[ended_before:]
        assert f"model {frozen}" in end.reason
        log = server.log_path.with_name(server.log_path.name + ".1").read_text(errors="replace")
        assert "is not healthy" in log and "with SIGKILL" in log
        assert process_group_members(group) == [], "nothing of the first server is left"
    else:
        # Only waited on, never called while frozen: no health check failed; it goes on after SIGCONT.
        assert supervisor.ends[ended_before:] == [] and stub.alive()
        log = server.log_path.read_text(errors="replace")
    assert "lock_exception" not in log, "tritonserver did not abort"
    with StableDiffusionClient(url) as client:
        assert client.generate(PROMPT, **patient_parameters).images[0].tobytes() == reference


def _children(parent_pid: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == parent_pid and command == name and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _tritonserver_of(serve_pid: int, timeout_s: float = 60.0, *, other_than: int | None = None) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [pid for pid in _children(serve_pid, "tritonserver") if pid != other_than]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no tritonserver under sdtriton serve (pid {serve_pid})")


def test_serve_restarts_a_killed_server_under_load_and_ends_with_its_own_process(
    tiny_repository: Path, tmp_path: Path
) -> None:
    address = ServerAddress.on_free_ports()
    log_path = tmp_path / "serve.log"
    command = [sys.executable, "-m", "sdtriton.cli", "serve", str(tiny_repository), "--restart-on-crash"]
    command += ["--http-port", str(address.http_port), "--grpc-port", str(address.grpc_port)]
    command += ["--metrics-port", str(address.metrics_port), "--log-file", str(tmp_path / "tritonserver.log")]
    started = time.monotonic()
    with log_path.open("w") as log:
        serve = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    groups: list[int] = []
    try:
        retry = RetryPolicy(deadline_s=240.0, initial_backoff_s=0.2, max_backoff_s=1.0)
        with StableDiffusionClient(address.grpc_url, retry=retry) as client:
            references = {seed: _image(client, seed) for seed in range(4)}  # retried until the server is up
        startup_s = time.monotonic() - started
        first = _tritonserver_of(serve.pid)
        groups.append(first)

        def one_client(number: int) -> list[tuple[int, bytes]]:
            with StableDiffusionClient(address.grpc_url, retry=retry) as client:
                return [(seed, _image(client, seed)) for seed in (number % 4, (number + 1) % 4, (number + 2) % 4)]

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(one_client, number) for number in range(4)]
            time.sleep(1.0)  # requests in flight
            killed_at = time.monotonic()
            os.kill(first, signal.SIGKILL)
            second = _tritonserver_of(serve.pid, other_than=first)
            groups.append(second)
            with StableDiffusionClient(address.http_url) as probe:
                while not probe.is_ready():
                    assert time.monotonic() - killed_at < 240, "the server did not come back"
                    time.sleep(0.1)
            back_s = time.monotonic() - killed_at
            images = [item for future in futures for item in future.result(timeout=300)]
        assert len(images) == 12
        assert all(image == references[seed] for seed, image in images), "every client got its exact image"
        # Back within about its startup time: the 1 s backoff, then a start like the first (which included
        # Python's imports and the clients' first connection; wide margin for this VM).
        assert back_s < 1.0 + 2 * startup_s + 10, (back_s, startup_s)
        assert serve.poll() is None
        # The supervisor says so after its own readiness poll (every 0.25 s), which may come after the clients'.
        deadline = time.monotonic() + 30
        while "is back (restart 1)" not in (output := log_path.read_text(errors="replace")):
            assert time.monotonic() < deadline, output[-3000:]
            time.sleep(0.2)
        assert "killed by SIGKILL (exit -9)" in output
        assert process_group_members(first) == [], "the dead server's stubs were ended"

        # A killed parent takes its server along: the second tritonserver was started by the supervisor's thread.
        assert len(process_group_members(second)) >= 2, "tritonserver and its stubs run"
        serve.kill()
        serve.wait()
        assert _wait_gone(second) == [], "tritonserver and its stubs outlived sdtriton serve"
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for group in groups:  # a failed test leaves nothing running either
            end_process_group(group)
