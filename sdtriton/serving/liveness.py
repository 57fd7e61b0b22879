"""Whether a sibling model's stub process is alive, read from ``/proc`` (Linux): no Triton API tells it.

tritonserver 2.51 restarts no Python model's stub (measured): after SIGKILL of the ``unet`` stub every later
request failed after 1 s with ``Stub process 'unet_0_0' is not healthy``, for as long as the server ran; after
SIGKILL of the decoupled ``pipeline`` stub its requests waited forever. And a stub that stops answering while it
holds a request (SIGSTOP, or starved of CPU past the backend's 1 s health check) is reported "not healthy" and,
once it runs again, its next request aborts tritonserver (``boost::interprocess::lock_exception``, SIGABRT:
measured). The pipeline and the entries use this module to tell a dead or unhealthy stub, end it, and answer
for it; the supervisor (``sdtriton serve --restart-on-crash``) sees the dead stub and restarts the server.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        # Fields after the command name, which may hold spaces: state is the 3rd field, ppid the 4th, starttime 22nd.
        return (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


@dataclass(frozen=True)
class StubProcess:
    """One Python-backend stub process, told apart from a later process with its pid by its start time."""

    pid: int
    start_ticks: int

    @classmethod
    def find(cls, *, parent_pid: int, model_directory: Path) -> StubProcess | None:
        """The stub of the model in ``model_directory`` among ``parent_pid``'s children (the first, if the model
        has several instances); None when there is none."""
        return next(iter(cls.find_all(parent_pid=parent_pid, model_directory=model_directory)), None)

    @classmethod
    def find_all(cls, *, parent_pid: int, model_directory: Path) -> list[StubProcess]:
        """The stubs of the model in ``model_directory`` among ``parent_pid``'s children, one per instance (its
        ``model.py`` is the stub's first argument), by pid."""
        prefix = f"{model_directory}/"
        found = []
        for entry in _PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            if len(arguments) < 2 or not arguments[1].decode(errors="replace").startswith(prefix):
                continue
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent_pid and fields[0] != "Z":
                found.append(cls(pid=int(entry.name), start_ticks=int(fields[19])))
        return sorted(found, key=lambda stub: stub.pid)

    def alive(self) -> bool:
        """False once the process has ended (a zombie counts as ended) or its pid belongs to another process."""
        fields = _stat_fields(self.pid)
        return fields is not None and fields[0] != "Z" and int(fields[19]) == self.start_ticks

    def kill(self) -> bool:
        """SIGKILLs this stub if it is still the process it was; returns whether a signal was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True


# The python backend's error for a call to a stub that did not show itself healthy within its 1 s check.
UNHEALTHY_STUB_MESSAGE = "is not healthy"


def is_unhealthy_stub_error(message: str) -> bool:
    """Whether a Triton error message says the called model's stub is not healthy (dead, stopped or starved)."""
    return message.startswith("Stub process") and UNHEALTHY_STUB_MESSAGE in message


def end_stubs(*, parent_pid: int, model_directory: Path) -> list[int]:
    """SIGKILLs every stub of the model in ``model_directory`` (one whose health check failed: its next request
    would abort tritonserver); returns the pids it ended."""
    return [
        stub.pid for stub in StubProcess.find_all(parent_pid=parent_pid, model_directory=model_directory) if stub.kill()
    ]
