"""A real ``redis-server`` (Debian's package, installed by scripts/setup_redis.sh) for the tests: a free loopback
port, its own temporary folder, no persistence, in its own process group and bound to this process's life."""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

from sdtriton.server import describe_exit, end_process_group, free_port

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0
_POLL_S = 0.02


class RedisServer:
    """``redis-server`` on ``127.0.0.1:<free port>`` with ``folder`` as its working directory and log folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        """Starts the server and waits until it answers PING; returns the seconds that took."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run scripts/setup_redis.sh")
        command = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # A test process killed without its fixtures' teardown leaves no redis-server behind.
            command = [setpriv, "--pdeathsig", "TERM", "--", *command]
        started = time.monotonic()
        self._process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL)
        while not self._answers_ping():
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server ended ({describe_exit(self._process.returncode)}): {self.log_tail()}")
            if time.monotonic() - started > _READY_TIMEOUT_S:
                self.stop()
                raise RuntimeError(f"redis-server did not answer within {_READY_TIMEOUT_S} s: {self.log_tail()}")
            time.sleep(_POLL_S)
        return time.monotonic() - started

    def stop(self) -> int | None:
        """Stops the server (SIGTERM, then SIGKILL) and whatever is left of its process group."""
        process, self._process = self._process, None
        if process is None:
            return None
        process.terminate()
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        end_process_group(process.pid)
        return process.returncode

    def log_tail(self, lines: int = 20) -> str:
        log = self.folder / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "(no log)"

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith(b"+PONG")
        except OSError:
            return False
