"""Keeps a tritonserver up: restarts it when it dies, with backoff, and says why it died.

A crash is contained and explained, never retried away in silence: each end is logged with its exit code or
signal and the last lines of the server's log, the log itself is kept (``tritonserver.log.1``, ... by
:class:`~sdtriton.server.TritonServer`), and what was left of the dead server's process group is killed before
its successor starts. Clients with a :class:`~sdtriton.client.RetryPolicy` carry their requests over the gap.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from sdtriton.server import DEFAULT_READY_TIMEOUT_S, ServerError, TritonServer, describe_exit
from sdtriton.serving.liveness import StubProcess

logger = logging.getLogger(__name__)

_WATCH_INTERVAL_S = 0.1
# A server whose model lost its stub fails (or, decoupled, holds forever) every request that needs it; it is
# stopped this fast.
_STUCK_SERVER_STOP_TIMEOUT_S = 2.0


def python_model_directories(repository: Path) -> list[Path]:
    """The folders of the repository's Python-backend models: tritonserver 2.51 restarts none of their stubs."""
    directories = []
    for config_path in sorted(Path(repository).glob("*/config.pbtxt")):
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        if config.backend == "python":
            directories.append(config_path.parent)
    return directories


@dataclass(frozen=True)
class RestartBackoff:
    """How long to wait before each restart: ``initial_s`` doubling up to ``max_s``; a server that stayed up for
    ``reset_after_s`` starts the count again. ``max_restarts`` in a row without such a stable run: give up."""

    initial_s: float = 1.0
    max_s: float = 30.0
    reset_after_s: float = 60.0
    max_restarts: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.initial_s <= self.max_s:
            raise ValueError(f"backoff: need 0 <= initial_s <= max_s, got {self.initial_s} and {self.max_s}")
        if self.max_restarts < 0:
            raise ValueError(f"backoff: max_restarts must be at least 0, got {self.max_restarts}")

    def delay_s(self, attempt: int) -> float:
        """The wait before restart number ``attempt`` (1 for the first) of a run of crashes."""
        return min(self.max_s, self.initial_s * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class ServerEnd:
    """One unexpected end of the server: when, how, and what its log said last."""

    exit_code: int | None
    uptime_s: float
    log_tail: tuple[str, ...]
    at_unix_s: float
    reason: str = ""  # set when the server was stopped for a dead stub, not dead itself

    def describe(self) -> str:
        tail = "\n".join(f"    {line}" for line in self.log_tail) or "    (no log file: see the server's output)"
        how = self.reason or f"tritonserver died after {self.uptime_s:.1f} s up: {describe_exit(self.exit_code)}"
        return f"{how}; last lines of its log:\n{tail}"


class ServerSupervisor:
    """Starts ``server`` and, with ``restart_on_crash``, starts it again whenever it ends without being asked.

    ``ends`` lists every unexpected end; ``restarts`` counts the successful restarts; ``gave_up`` is set once the
    backoff's ``max_restarts`` ran out (or, without ``restart_on_crash``, at the first end).
    """

    def __init__(
        self,
        server: TritonServer,
        *,
        restart_on_crash: bool = True,
        backoff: RestartBackoff = RestartBackoff(),
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    ) -> None:
        self.server = server
        self.restart_on_crash = restart_on_crash
        self.backoff = backoff
        self.ready_timeout_s = ready_timeout_s
        self.ends: list[ServerEnd] = []
        self.restarts = 0
        self.gave_up = threading.Event()
        self.back_up = threading.Event()  # set whenever the server (re)started and is ready
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._started_at = 0.0
        self._python_models = python_model_directories(server.repository)
        self._stubs: dict[str, StubProcess] = {}

    def start(self) -> float:
        """Starts the server and waits until it is ready (raises :class:`ServerError` if it is not); returns the
        seconds it took. From then on a watcher thread restarts it when it dies."""
        started = time.monotonic()
        with self._lock:
            self._start_locked()
        self._watcher = threading.Thread(target=self._watch, name="sdtriton-supervisor", daemon=True)
        self._watcher.start()
        return time.monotonic() - started

    def _start_locked(self) -> None:
        self.back_up.clear()
        self.server.start()
        self._started_at = time.monotonic()
        try:
            self.server.wait_ready(timeout_s=self.ready_timeout_s)
        except ServerError:
            self.server.stop()
            raise
        self._stubs = {}
        for directory in self._python_models:
            stubs = StubProcess.find_all(parent_pid=self.server.pid or 0, model_directory=directory)
            for instance, stub in enumerate(stubs):
                self._stubs[directory.name if len(stubs) == 1 else f"{directory.name} #{instance}"] = stub
        self.back_up.set()

    def _watch(self) -> None:
        crashes_in_a_row = 0
        while not self._stopping.wait(_WATCH_INTERVAL_S):
            with self._lock:
                if self._stopping.is_set():
                    return
                code = self.server.exit_code()
                dead_stub = None if code is not None else self._dead_stub()
                if code is None and dead_stub is None:
                    continue
                uptime_s = time.monotonic() - self._started_at
                reason = ""
                if dead_stub is not None:
                    name, stub = dead_stub
                    reason = (
                        f"the stub process of model {name} (pid {stub.pid}) died after {uptime_s:.1f} s up "
                        "and tritonserver 2.51 restarts no stub: stopping tritonserver"
                    )
                    logger.error("%s", reason)
                    code = self.server.stop(timeout_s=_STUCK_SERVER_STOP_TIMEOUT_S)
                end = ServerEnd(
                    exit_code=code,
                    uptime_s=uptime_s,
                    log_tail=tuple(self.server.log_tail()),
                    at_unix_s=time.time(),
                    reason=reason,
                )
                self.ends.append(end)
                self.back_up.clear()
                self.server.stop()  # reaps it, ends what is left of its process group, closes its log
            logger.error("%s", end.describe())
            if not self.restart_on_crash:
                self.gave_up.set()
                return
            crashes_in_a_row = 1 if end.uptime_s >= self.backoff.reset_after_s else crashes_in_a_row + 1
            if not self._restart(crashes_in_a_row):
                return

    def _restart(self, attempt: int) -> bool:
        """Restarts after the backoff's wait, again after failed starts; False when stopping or out of attempts."""
        while True:
            if attempt > self.backoff.max_restarts:
                logger.error("tritonserver ended %d times in a row; not restarting it again", attempt - 1)
                self.gave_up.set()
                return False
            delay_s = self.backoff.delay_s(attempt)
            logger.warning("restarting tritonserver in %.1f s (restart %d in a row)", delay_s, attempt)
            if self._stopping.wait(delay_s):
                return False
            with self._lock:
                if self._stopping.is_set():
                    return False
                try:
                    self._start_locked()
                except ServerError as error:
                    logger.error("the restart failed: %s", error)
                    self.ends.append(
                        ServerEnd(exit_code=None, uptime_s=0.0, log_tail=(str(error),), at_unix_s=time.time())
                    )
                    attempt += 1
                    continue
            self.restarts += 1
            logger.warning("tritonserver is back (restart %d)", self.restarts)
            return True

    @property
    def started_at_s(self) -> float:
        """When the running server (the first or the latest restart) was started, on ``time.monotonic()``."""
        return self._started_at

    def wait_restarted(self, restarts: int, *, timeout_s: float) -> bool:
        """Waits until the server has been restarted ``restarts`` times and is ready; False on timeout or give-up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.gave_up.is_set():
            if self.restarts >= restarts and self.back_up.is_set():
                return True
            time.sleep(_WATCH_INTERVAL_S)
        return self.restarts >= restarts and self.back_up.is_set()

    def _dead_stub(self) -> tuple[str, StubProcess] | None:
        return next(((name, stub) for name, stub in self._stubs.items() if not stub.alive()), None)

    @property
    def running(self) -> bool:
        return self.server.running

    def stop(self, *, timeout_s: float | None = None) -> int | None:
        """Stops watching, then stops the server (see :meth:`TritonServer.stop`); returns its exit code."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join()
        with self._lock:
            return self.server.stop() if timeout_s is None else self.server.stop(timeout_s=timeout_s)
