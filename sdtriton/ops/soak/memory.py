"""The server's processes (tritonserver and its Python-backend stubs) and their resident memory, read from /proc."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

_STUB_NAME = "triton_python_backend_stub"
# The stub's argv: [stub, model.py, shm region, sizes..., parent pid, backend dir, ..., instance name, ...].
_STUB_INSTANCE_ARG = 8


@dataclass(frozen=True)
class ProcessMemory:
    """One server process: its pid, its role (``tritonserver`` or a stub's model instance), its VmRSS in KiB."""

    pid: int
    name: str
    rss_kib: int


def _parent_pid(pid: int) -> int | None:
    try:
        # The command name may hold spaces and parentheses: the fields after the last ")" are safe.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and every process descended from it, read from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := _parent_pid(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    tree, frontier = [], [root_pid]
    while frontier:
        pid = frontier.pop()
        tree.append(pid)
        frontier.extend(children.get(pid, []))
    return sorted(tree)


def process_name(pid: int) -> str:
    """``tritonserver``, a stub's model instance (``pipeline_0_0``), or the program's name."""
    try:
        argv = [arg.decode(errors="replace") for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return "?"
    program = Path(argv[0]).name if argv and argv[0] else "?"
    if program == _STUB_NAME:
        if len(argv) > _STUB_INSTANCE_ARG and argv[_STUB_INSTANCE_ARG]:
            return f"stub:{argv[_STUB_INSTANCE_ARG]}"
        return f"stub:{Path(argv[1]).parent.parent.name}" if len(argv) > 1 else "stub"
    return program


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB; None if it is gone (or a zombie)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def sample_memory(root_pid: int) -> list[ProcessMemory]:
    """VmRSS of ``root_pid`` and its descendants (those still alive), by role."""
    rows = []
    for pid in process_tree(root_pid):
        if (rss := rss_kib(pid)) is not None:
            rows.append(ProcessMemory(pid=pid, name=process_name(pid), rss_kib=rss))
    return rows


@dataclass(frozen=True)
class MemoryComparison:
    """Server memory after the warm-up and at the end, per process role and in all."""

    after_warmup: tuple[ProcessMemory, ...]
    at_end: tuple[ProcessMemory, ...]

    @property
    def total_after_warmup_kib(self) -> int:
        return sum(row.rss_kib for row in self.after_warmup)

    @property
    def total_at_end_kib(self) -> int:
        return sum(row.rss_kib for row in self.at_end)

    @property
    def growth_percent(self) -> float | None:
        if not self.total_after_warmup_kib:
            return None
        return 100.0 * (self.total_at_end_kib - self.total_after_warmup_kib) / self.total_after_warmup_kib

    def rows(self) -> list[dict[str, Any]]:
        """One row per role: KiB after the warm-up, at the end, growth in percent."""
        before = {row.name: row for row in self.after_warmup}
        after = {row.name: row for row in self.at_end}
        rows = []
        for name in sorted(set(before) | set(after), key=lambda n: (n != "tritonserver", n)):
            first, last = before.get(name), after.get(name)
            growth = (
                None
                if first is None or last is None or not first.rss_kib
                else round(100.0 * (last.rss_kib - first.rss_kib) / first.rss_kib, 2)
            )
            rows.append(
                {
                    "name": name,
                    "pid_after_warmup": None if first is None else first.pid,
                    "pid_at_end": None if last is None else last.pid,
                    "rss_after_warmup_kib": None if first is None else first.rss_kib,
                    "rss_at_end_kib": None if last is None else last.rss_kib,
                    "growth_percent": growth,
                }
            )
        return rows
