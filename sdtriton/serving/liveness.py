"""Whether a sibling model's stub process is alive, read from ``/proc`` (Linux): no Triton API tells it.

tritonserver 2.51 restarts the stub of a non-decoupled Python model on its next request, but never the stub of a
decoupled one (``pipeline``): requests in flight there wait forever for responses that cannot come (measured:
SIGKILL of the ``pipeline`` stub left every client waiting). The entries watch it with this and answer for it.
"""

from __future__ import annotations

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
        """The stub of the model in ``model_directory`` among ``parent_pid``'s children (its ``model.py`` is the
        stub's first argument); None when there is none."""
        prefix = f"{model_directory}/"
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
                return cls(pid=int(entry.name), start_ticks=int(fields[19]))
        return None

    def alive(self) -> bool:
        """False once the process has ended (a zombie counts as ended) or its pid belongs to another process."""
        fields = _stat_fields(self.pid)
        return fields is not None and fields[0] != "Z" and int(fields[19]) == self.start_ticks
