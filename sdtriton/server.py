"""Starts and stops a real ``tritonserver``: the one inside the ``nvidia-pytriton`` wheel, or one named.

The pip server needs three things the wheel does not arrange (measured): the Python-backend stub copied
into ``backends/python/``; ``LD_LIBRARY_PATH`` holding the wheel's ``nvidia_pytriton.libs`` and this
interpreter's own ``lib`` directory ahead of the system's (else ``undefined symbol: _PyModule_Add``); and
this environment's ``bin`` first on ``PATH``, since the stub imports from the Python it finds there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

from sdtriton.serving.drain import DRAIN_FILE_ENVIRONMENT, in_flight_requests

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_READY_TIMEOUT_S = 300.0
DEFAULT_STOP_TIMEOUT_S = 60.0
# `sdtriton serve`: how long requests in flight may finish after SIGTERM (tritonserver's own default is 30 s), and
# the time after that drain for the models to unload before the server is killed.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
UNLOAD_MARGIN_S = 30.0
_DRAIN_POLL_S = 0.25
_STUB_NAME = "triton_python_backend_stub"
_POLL_INTERVAL_S = 0.25
# A restarted server's earlier logs are kept as <log>.1 (the newest) .. <log>.N.
DEFAULT_KEPT_LOGS = 10
# How long the processes of a stopped server's group may take to go after SIGKILL.
_GROUP_EXIT_TIMEOUT_S = 10.0
_LOG_TAIL_LINES = 30
# util-linux's setpriv: sets the parent-death signal (prctl PR_SET_PDEATHSIG) and execs tritonserver in place.
_SETPRIV = "setpriv"
# The Python backend names each stub's shared-memory region <prefix><uuid> under /dev/shm. A stub that dies by a
# signal (or is SIGKILLed with its dead server's group) never unlinks its region: a run of the test suite left 29
# regions of 1 MiB (measured), and a supervised server restarted after each crash would fill a container's 64 MiB
# /dev/shm. Each TritonServer gives its stubs a prefix of its own and unlinks what is left under it once they are gone.
_SHM_DIRECTORY = Path("/dev/shm")
_SHM_PREFIX_OPTION = "shm-region-prefix-name="


def rotate_log(path: Path, *, keep: int = DEFAULT_KEPT_LOGS) -> Path | None:
    """Moves a non-empty ``path`` to ``path.1`` (``path.1`` to ``path.2``, ... up to ``path.<keep>``, the oldest
    dropped), so a restarted server never overwrites what explains the last one's end; returns ``path.1``."""
    if keep < 1 or not path.is_file() or path.stat().st_size == 0:
        return None
    path.with_name(f"{path.name}.{keep}").unlink(missing_ok=True)
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.rename(path.with_name(f"{path.name}.{index + 1}"))
    kept = path.with_name(f"{path.name}.1")
    path.rename(kept)
    return kept


def describe_exit(code: int | None) -> str:
    """A process's end in words: ``exit code 1``, ``killed by SIGSEGV (exit -11)``."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit {code})"
    return f"exit code {code}"


def _group_stat_fields(group_id: int) -> dict[int, list[str]]:
    """Each live process of group ``group_id`` (read from /proc; zombies left out) by pid: its stat fields after the
    command name, which may hold spaces (state is the 1st, pgrp the 3rd, utime and stime the 12th and 13th)."""
    members = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group_id:
            members[int(entry.name)] = fields
    return members


def process_group_members(group_id: int) -> list[int]:
    """The pids of the processes in process group ``group_id`` (zombies left out)."""
    return list(_group_stat_fields(group_id))


def process_group_cpu_s(group_id: int) -> float:
    """The CPU seconds (user and system) the live processes of group ``group_id`` have used."""
    ticks = sum(int(fields[11]) + int(fields[12]) for fields in _group_stat_fields(group_id).values())
    return ticks / os.sysconf("SC_CLK_TCK")


def end_process_group(group_id: int, *, timeout_s: float = _GROUP_EXIT_TIMEOUT_S) -> list[int]:
    """SIGKILLs every process left in ``group_id`` (a dead tritonserver's Python stubs, reparented to init, keep
    their shared memory until killed: measured) and waits until none is left; returns the pids it killed."""
    survivors = process_group_members(group_id)
    if not survivors:
        return []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group_id, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while process_group_members(group_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = process_group_members(group_id)
    if left:
        logger.error("processes %s of group %d did not end within %.0f s of SIGKILL", left, group_id, timeout_s)
    return survivors


# Linux sends a child its parent-death signal when the *thread* that forked it ends, so a server started from a
# short-lived thread (a test's restart thread) got SIGTERM as soon as that thread returned (measured). This one
# worker thread forks every bound server and lives as long as this process.
_LAUNCHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdtriton-launcher")


def bound_to_this_process(command: Sequence[str]) -> list[str]:
    """``command`` under util-linux's ``setpriv --pdeathsig TERM``: it gets SIGTERM when this process dies, however it
    dies, so that a Python parent killed without stopping it (SIGKILL, an OOM kill, pytest ended by a timeout) leaves
    nothing behind (measured before: tritonserver and 6 stubs kept running under init). Start it with :func:`launch`:
    Linux sends the signal when the forking *thread* ends. Without setpriv, ``command`` as it is."""
    setpriv = shutil.which(_SETPRIV)
    if setpriv is None:
        logger.warning("%s not found: %s will outlive this process if it is killed", _SETPRIV, command[0])
        return list(command)
    return [setpriv, "--pdeathsig", "TERM", "--", *command]


def launch(
    command: Sequence[str], *, output: IO[bytes] | None = None, environment: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Starts ``command`` in a process group of its own (:func:`end_process_group` ends what it leaves), its output
    (stdout and stderr) to ``output`` (None: inherited), forked from :data:`_LAUNCHER`, which lives as long as this
    process."""
    stderr = subprocess.STDOUT if output else None
    options = {"env": environment, "stdout": output, "stderr": stderr, "start_new_session": True}
    return _LAUNCHER.submit(subprocess.Popen, list(command), **options).result()


def answers_ok(url: str, *, timeout_s: float = 2.0) -> bool:
    """Whether a GET of ``url`` answers 200 within ``timeout_s`` (a health or readiness route)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nothing listens on right now, for servers started by tests and demos."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = DEFAULT_HOST) -> list[int]:
    """``count`` different TCP ports nothing listens on right now: each stays bound until all are chosen (ports
    chosen one after the other may repeat; seen once: gRPC and metrics given the same port)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


class ServerError(RuntimeError):
    """The server could not be found, failed to start, or died."""


@dataclass(frozen=True)
class TritonInstallation:
    """Where a ``tritonserver`` binary is and what it needs in its environment."""

    tritonserver: Path
    backend_directory: Path | None = None
    cache_directory: Path | None = None
    environment: dict[str, str] = field(default_factory=dict)


def _pytriton_root() -> Path:
    # Found without importing pytriton: we want its files, not its Python dependencies.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("nvidia-pytriton is not installed: install nvidia-pytriton==0.7.0 with --no-deps")
    return Path(next(iter(spec.submodule_search_locations)))


def _prepend_path(value: str | None, *entries: str) -> str:
    parts = [entry for entry in entries if entry]
    if value:
        parts.append(value)
    return os.pathsep.join(parts)


def pip_triton_installation() -> TritonInstallation:
    """The tritonserver of the installed ``nvidia-pytriton`` wheel, made ready to run."""
    root = _pytriton_root() / "tritonserver"
    tritonserver = root / "bin" / "tritonserver"
    if not tritonserver.is_file():
        raise ServerError(f"no tritonserver binary at {tritonserver}")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub_source = root / "python_backend_stubs" / version / _STUB_NAME
    stub_target = root / "backends" / "python" / _STUB_NAME
    if not stub_source.is_file():
        raise ServerError(f"the wheel has no Python-backend stub for Python {version} ({stub_source})")
    if not stub_target.is_file() or stub_target.stat().st_size != stub_source.stat().st_size:
        shutil.copy2(stub_source, stub_target)
        logger.info("installed the Python-backend stub for Python %s into %s", version, stub_target.parent)
    wheel_libs = root.parent.parent / "nvidia_pytriton.libs"
    environment = {
        "LD_LIBRARY_PATH": _prepend_path(
            os.environ.get("LD_LIBRARY_PATH"), str(wheel_libs), str(sysconfig.get_config_var("LIBDIR") or "")
        ),
        "PATH": _prepend_path(os.environ.get("PATH"), str(Path(sys.executable).parent)),
    }
    return TritonInstallation(
        tritonserver=tritonserver,
        backend_directory=root / "backends",
        cache_directory=root / "caches",
        environment=environment,
    )


def named_triton_installation(tritonserver: Path) -> TritonInstallation:
    """A tritonserver named by path (e.g. the NGC container's), run with its own defaults."""
    if not tritonserver.is_file():
        raise ServerError(f"no tritonserver binary at {tritonserver}")
    return TritonInstallation(
        tritonserver=tritonserver,
        environment={"PATH": _prepend_path(os.environ.get("PATH"), str(Path(sys.executable).parent))},
    )


@dataclass(frozen=True)
class ServerAddress:
    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT

    @classmethod
    def on_free_ports(cls, host: str = DEFAULT_HOST) -> ServerAddress:
        http_port, grpc_port, metrics_port = free_ports(3, host)
        return cls(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)

    @property
    def _url_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self._url_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._url_host}:{self.metrics_port}/metrics"


# Triton's endpoint groups that change or expose the server rather than serve images: loading and unloading models
# and the repository index, shared-memory registration, trace and log settings. `sdtriton serve` restricts them.
ADMIN_API_CATEGORIES = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_KEY_HEADER = "sdtriton-admin-key"
ADMIN_KEY_ENVIRONMENT = "SDTRITON_ADMIN_KEY"
_GRPC_RESTRICTED_HEADER_PREFIX = "triton-grpc-protocol-"
_ADMIN_KEY_PATTERN = re.compile(r"[A-Za-z0-9_.~-]{16,256}")


@dataclass(frozen=True)
class AdminAccess:
    """Triton's admin endpoint groups answer only requests carrying the key: HTTP header ``header``, gRPC metadata
    ``grpc_header``.

    Everything else (health, metadata, inference, statistics, model configs) stays open. Triton itself enforces
    it (``--http-restricted-api`` and ``--grpc-restricted-protocol``).
    """

    key: str
    header: str = ADMIN_KEY_HEADER
    categories: tuple[str, ...] = ADMIN_API_CATEGORIES

    def __post_init__(self) -> None:
        if not _ADMIN_KEY_PATTERN.fullmatch(self.key):
            raise ValueError("the admin key must be 16 to 256 characters of letters, digits and -._~")

    @property
    def grpc_header(self) -> str:
        """The gRPC metadata key: Triton prefixes the configured header with ``triton-grpc-protocol-`` (measured)."""
        return f"{_GRPC_RESTRICTED_HEADER_PREFIX}{self.header}"

    @classmethod
    def random(cls) -> AdminAccess:
        """A key nobody knows: the admin endpoints are closed to everyone."""
        return cls(key=secrets.token_urlsafe(32))

    def tritonserver_args(self) -> list[str]:
        restriction = f"{','.join(self.categories)}:{self.header}={self.key}"
        return [f"--http-restricted-api={restriction}", f"--grpc-restricted-protocol={restriction}"]


def drain_args(drain_timeout_s: float, extra_args: Sequence[str]) -> list[str]:
    """tritonserver's ``--exit-timeout-secs`` for a drain of ``drain_timeout_s``, unless ``extra_args`` set it.

    On SIGTERM tritonserver stops taking new requests and waits up to that long for those in flight.
    """
    if drain_timeout_s < 0:
        raise ValueError(f"the drain timeout must be at least 0 s, got {drain_timeout_s}")
    if any(arg.startswith("--exit-timeout-secs") for arg in extra_args):
        return []
    return [f"--exit-timeout-secs={math.ceil(drain_timeout_s)}"]


def trace_args(trace_file: Path, *, rate: int = 1) -> list[str]:
    """tritonserver's arguments for request tracing into ``trace_file``: Triton's own mode, TIMESTAMPS level, one
    request in ``rate``, the file written when the server stops (``log-frequency=0``).

    Each traced entry request gets its ``pipeline`` request as a child trace; the engine's batched network calls
    serve many requests at once and are not traced (their time is in model statistics and ``sdtriton_*`` metrics).
    """
    if rate < 1:
        raise ValueError(f"the trace rate must be at least 1 (every request), got {rate}")
    return [
        f"--trace-config=triton,file={trace_file}",
        f"--trace-config=rate={rate}",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=triton,log-frequency=0",
    ]


def _shm_region_prefix(extra_args: Sequence[str]) -> str:
    """The Python backend's shared-memory region prefix: the one ``extra_args`` set, else a new one of our own."""
    for arg in extra_args:
        if _SHM_PREFIX_OPTION in arg:
            return arg.split(_SHM_PREFIX_OPTION, 1)[1].split(",", 1)[0]
    return f"sdtriton_{os.getpid()}_{secrets.token_hex(4)}_"


class TritonServer:
    """One tritonserver process over a model repository.

    Args:
        repository: the model repository folder.
        address: host and ports to listen on.
        installation: which tritonserver; default: the pip wheel's.
        log_path: where the server's output goes; default: inherited stdout/stderr.
        extra_args: more tritonserver arguments, e.g. ``--cache-config=local,size=1048576``.
        admin_access: restrict the admin endpoint groups to requests carrying this key (None: open).
        drain_file: a path that does not exist yet; :meth:`drain` creates it, and from then on the entries refuse
            new requests (None: no drain before a stop; see :mod:`sdtriton.serving.drain`).
        keep_logs: a start moves an earlier log at ``log_path`` to ``<log>.1`` and keeps this many (0: overwrite).

    tritonserver runs in a process group of its own with its Python stubs; :meth:`stop` ends the whole group, so
    no stub outlives the server however it ended.
    """

    def __init__(
        self,
        repository: Path,
        *,
        address: ServerAddress | None = None,
        installation: TritonInstallation | None = None,
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        admin_access: AdminAccess | None = None,
        drain_file: Path | None = None,
        keep_logs: int = DEFAULT_KEPT_LOGS,
        end_with_parent: bool = True,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.keep_logs = keep_logs
        self.end_with_parent = end_with_parent
        self.admin_access = admin_access
        self.drain_file = drain_file
        self.address = address or ServerAddress()
        self.installation = installation or pip_triton_installation()
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.shm_region_prefix = _shm_region_prefix(self.extra_args)

    def command(self) -> list[str]:
        a = self.address
        command = [
            str(self.installation.tritonserver),
            f"--model-repository={self.repository}",
            f"--http-address={a.host}",
            f"--http-port={a.http_port}",
            f"--grpc-address={a.host}",
            f"--grpc-port={a.grpc_port}",
            f"--metrics-address={a.host}",
            f"--metrics-port={a.metrics_port}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Our configs are complete; auto-complete would start one extra stub process per model.
            "--disable-auto-complete-config",
        ]
        if self.installation.backend_directory is not None:
            command.append(f"--backend-directory={self.installation.backend_directory}")
        if self.installation.cache_directory is not None:
            command.append(f"--cache-directory={self.installation.cache_directory}")
        if self.admin_access is not None:
            command += self.admin_access.tritonserver_args()
        if not any(_SHM_PREFIX_OPTION in arg for arg in self.extra_args):
            command.append(f"--backend-config=python,{_SHM_PREFIX_OPTION}{self.shm_region_prefix}")
        return command + self.extra_args

    def leftover_shm_regions(self) -> list[Path]:
        """The shared-memory regions under this server's prefix that exist now (none once it is stopped)."""
        return sorted(_SHM_DIRECTORY.glob(f"{self.shm_region_prefix}*"))

    def start(self) -> None:
        if self._process is not None:
            raise ServerError("server already started")
        environment = {**os.environ, **self.installation.environment}
        if self.drain_file is not None:
            self.drain_file.unlink(missing_ok=True)
            environment[DRAIN_FILE_ENVIRONMENT] = str(self.drain_file)
        output: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            kept = rotate_log(self.log_path, keep=self.keep_logs)
            if kept is not None:
                logger.info("the previous server's log is kept as %s", kept)
            self._log_file = output = self.log_path.open("wb")
        shown = " ".join(self.command())
        if self.admin_access is not None:
            shown = shown.replace(self.admin_access.key, "***")
        # At INFO where to reach it; the whole command line (several hundred characters) at DEBUG (sdtriton -v).
        logger.info("starting tritonserver on %s and %s", self.address.http_url, self.address.grpc_url)
        logger.debug("tritonserver command: %s", shown)
        command = self._launch_command()

        self._process = launch(command, output=output, environment=environment)

    def _launch_command(self) -> list[str]:
        """:meth:`command`, bound to this process's life (:func:`bound_to_this_process`) when ``end_with_parent``."""
        return bound_to_this_process(self.command()) if self.end_with_parent else self.command()

    def is_ready(self) -> bool:
        return answers_ok(f"{self.address.http_url}/v2/health/ready")

    def in_flight_requests(self) -> int:
        """Requests the server's engines hold now (running plus waiting), read from its metrics page.

        Raises:
            OSError: the metrics page does not answer.
            ValueError: it shows no engine gauges.
        """
        with urllib.request.urlopen(self.address.metrics_url, timeout=2) as response:
            return in_flight_requests(response.read().decode("utf-8", errors="replace"))

    def drain(self, *, timeout_s: float) -> bool:
        """Stops new requests (the entries refuse them) and waits up to ``timeout_s`` until the engines hold none.

        Returns whether the server drained in time; without a ``drain_file`` there is nothing to wait on (False).
        """
        if self.drain_file is None or not self.running:
            return False
        self.drain_file.parent.mkdir(parents=True, exist_ok=True)
        self.drain_file.touch()
        started = time.monotonic()
        idle_polls = 0
        while time.monotonic() - started < timeout_s and self.running:
            try:
                in_flight = self.in_flight_requests()
            except (OSError, ValueError) as error:
                logger.warning("draining: cannot read the engines' in-flight requests (%s); not waiting", error)
                return False
            # Two idle looks in a row: a request an entry admitted just before the drain reaches its engine
            # within milliseconds, and is counted there from then on.
            idle_polls = idle_polls + 1 if in_flight == 0 else 0
            if idle_polls >= 2:
                logger.info("drained in %.1f s", time.monotonic() - started)
                return True
            time.sleep(_DRAIN_POLL_S)
        logger.warning("not drained within %.0f s; stopping with requests in flight", timeout_s)
        return False

    def wait_ready(self, *, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> float:
        """Waits until every model is ready; returns the seconds since start."""
        if self._process is None:
            raise ServerError("server not started")
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self._process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self._process.returncode}{self._log_hint()}")
            if self.is_ready():
                return time.monotonic() - started
            time.sleep(_POLL_INTERVAL_S)
        raise ServerError(f"tritonserver not ready after {timeout_s:.0f} s{self._log_hint()}")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> list[str]:
        """The last ``lines`` lines of the server's log file (none without one)."""
        if self.log_path is None or not self.log_path.is_file():
            return []
        return self.log_path.read_text(errors="replace").splitlines()[-lines:]

    def _log_hint(self) -> str:
        tail = self.log_tail()
        return f"; last lines of {self.log_path}:\n" + "\n".join(tail) if tail else ""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """tritonserver's pid (also its process group's id), while started and not yet stopped."""
        return None if self._process is None else self._process.pid

    def exit_code(self) -> int | None:
        """tritonserver's exit code once it has ended (negative: the signal that killed it); None while running."""
        return None if self._process is None else self._process.poll()

    def stop(self, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """Stops the server gracefully (SIGTERM, then SIGKILL after ``timeout_s``), then ends every process left in
        its process group; returns its exit code (the one it had if it had already ended)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("tritonserver did not stop within %.0f s; killing it", timeout_s)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # The group has tritonserver's pid as its id; what is left in it (stubs of a server that died) goes now.
        killed = end_process_group(process.pid)
        if killed:
            logger.warning(
                "tritonserver (%s) left %d process(es) of its group running: killed %s",
                describe_exit(process.returncode),
                len(killed),
                killed,
            )
        self._unlink_shm_regions()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return process.returncode

    def _unlink_shm_regions(self) -> None:
        """Unlinks the regions of this server's stubs that they did not (a stub killed by a signal leaves its own)."""
        regions = self.leftover_shm_regions()
        for region in regions:
            region.unlink(missing_ok=True)
        if regions:
            logger.info("unlinked %d shared-memory region(s) its stubs left: %s*", len(regions), self.shm_region_prefix)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# Triton's per-request inference statistics, in ns.
_TIMED_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")
_NS_PER_MS = 1e6


@dataclass(frozen=True)
class ModelStats:
    """Triton's cumulative counters of one model (``/v2/models/<name>/stats``): successful requests (a BLS call is
    one), the batch items they carried, the batches they ran in, and times summed over requests in ns; :meth:`minus`
    gives an interval's."""

    name: str
    requests: int
    failures: int
    inferences: int
    executions: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ModelStats:
        (stats, *_) = document["model_stats"]
        inference = stats["inference_stats"]
        return cls(
            name=str(stats["name"]),
            requests=int(inference["success"]["count"]),
            failures=int(inference["fail"]["count"]),
            inferences=int(stats["inference_count"]),
            executions=int(stats["execution_count"]),
            **{f"{part}_ns": int(inference[part]["ns"]) for part in _TIMED_PARTS},
        )

    @classmethod
    def fetch(cls, http_url: str, model_name: str) -> ModelStats:
        with urllib.request.urlopen(f"{http_url}/v2/models/{model_name}/stats", timeout=10) as response:
            return cls.from_json(json.load(response))

    def minus(self, earlier: ModelStats) -> ModelStats:
        if earlier.name != self.name:
            raise ValueError(f"cannot subtract stats of {earlier.name!r} from {self.name!r}")
        counts = {f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self) if f.name != "name"}
        return ModelStats(name=self.name, **counts)

    def ms_per_request(self, *parts: str) -> float:
        """Time per request in ``parts`` (``queue``, ``compute_infer``...); by default the model's whole time inside
        the server (queue and compute)."""
        if self.requests <= 0:
            raise ValueError(f"{self.name}: no successful requests in this interval")
        return sum(getattr(self, f"{part}_ns") for part in parts or _TIMED_PARTS) / self.requests / _NS_PER_MS
