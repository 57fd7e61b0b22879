"""A real ``sdtriton gateway`` process, for the tests and ``sdtriton perf``: started on a free port in its own process
group (ended with this process where ``setpriv`` exists), logged to a file, stopped with SIGTERM (SIGKILL after 10 s)
or killed outright with SIGKILL."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from sdtriton.server import answers_ok, bound_to_this_process, end_process_group, free_port, launch, rotate_log

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


class GatewayNotReadyError(RuntimeError):
    """The gateway exited, or did not answer ``/readyz`` in time; the message holds its log."""


class GatewayProcess:
    """``sdtriton gateway --triton GRPC_URL --port PORT *options``, its log at ``log_path`` (an earlier one rotated).

    ``start()`` returns at once, ``wait_ready()`` until ``/readyz`` answers 200; ``stop()`` and ``start()`` again
    restart it on the same port (and the same options: the same job store).
    """

    def __init__(self, grpc_url: str, options: Sequence[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        rotate_log(log_path)
        self._command = [sys.executable, "-m", "sdtriton.cli", "gateway", "--triton", grpc_url]
        self._command += ["--port", str(self.port), *options]
        self._process: subprocess.Popen[bytes] | None = None
        self._started = 0.0

    @property
    def pid(self) -> int:
        """The running gateway's process id, and its process group's (job store owners begin ``host:pid:``)."""
        if self._process is None:
            raise RuntimeError("the gateway is not running")
        return self._process.pid

    def start(self) -> GatewayProcess:
        """Starts it in a process group of its own, ended with this process even if this one is killed."""
        self._started = time.monotonic()
        with self.log_path.open("ab") as log:
            self._process = launch(bound_to_this_process(self._command), output=log)
        return self

    def wait_ready(self) -> GatewayProcess:
        """Returns once ``/readyz`` answers 200; :class:`GatewayNotReadyError` if it exits or 60 s pass first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise GatewayNotReadyError(f"the gateway exited with {code}:\n{self.log_path.read_text()}")
            if answers_ok(f"{self.url}/readyz"):
                logger.info("gateway ready in %.1f s", time.monotonic() - self._started)
                return self
            time.sleep(0.1)
        log = self.log_path.read_text()
        raise GatewayNotReadyError(f"the gateway was not ready within {READY_TIMEOUT_S} s:\n{log}")

    @contextlib.contextmanager
    def running(self) -> Iterator[GatewayProcess]:
        """Started and ready for the ``with`` block (stopped even when it never gets ready), stopped after it."""
        self.start()
        try:
            yield self.wait_ready()
        finally:
            self.stop()

    def stop(self) -> int | None:
        """SIGTERM (a graceful stop: running jobs go back to the queue), SIGKILL if it is still up after 10 s."""
        process, self._process = self._process, None
        if process is None:
            return None
        stopping = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.error(
                "the gateway did not stop within %s s of SIGTERM:\n%s", STOP_TIMEOUT_S, self.log_path.read_text()
            )
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        end_process_group(process.pid)
        logger.info("gateway stopped in %.1f s (%s)", time.monotonic() - stopping, process.returncode)
        return process.returncode

    def kill(self) -> int:
        """SIGKILL, as a crash would end it: nothing is handed back, its leases are left to run out."""
        process, self._process = self._process, None
        if process is None:
            raise RuntimeError("the gateway is not running")
        os.killpg(process.pid, signal.SIGKILL)
        returncode = process.wait()
        logger.info("gateway killed (%s)", returncode)
        return returncode
