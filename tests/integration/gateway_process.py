"""A real ``sdtriton gateway`` process for the integration tests: started on a free loopback port in its own process
group (ended with pytest, even a killed one, where ``setpriv`` exists), ready when ``/readyz`` answers 200."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from sdtriton.server import free_port

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


@contextlib.contextmanager
def running_gateway(grpc_url: str, folder: Path, *options: str) -> Iterator[str]:
    """A gateway in front of ``grpc_url`` with its data and log in ``folder`` and these command-line options,
    stopped on exit; its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "sdtriton.cli", "gateway", "--triton", grpc_url, "--port", str(port)]
    command += ["--data-dir", str(folder / "data"), *options]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:  # the gateway ends with this process, even if pytest is killed
        command = [setpriv, "--pdeathsig", "TERM", "--", *command]
    log_path = folder / "gateway.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)
        logger.info("gateway ready in %.1f s", time.monotonic() - started)
        yield url
    finally:
        stopping = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.error("the gateway did not stop within %g s of SIGTERM:\n%s", STOP_TIMEOUT_S, log_path.read_text())
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        logger.info("gateway stopped in %.1f s (%s)", time.monotonic() - stopping, process.returncode)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the gateway exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"the gateway was not ready within {READY_TIMEOUT_S} s:\n{log_path.read_text()}")
