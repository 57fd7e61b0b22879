"""What a running tritonserver costs, read from /proc: the CPU time and memory of the server and its stub processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path


def _server_processes(repository: Path) -> Iterator[Path]:
    """The /proc folders of tritonserver and its stub processes: those whose command names ``repository``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str(repository) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                yield entry
        except (FileNotFoundError, ProcessLookupError):
            continue


def server_cpu_s(repository: Path) -> float:
    """User and system CPU seconds of tritonserver and its stub processes: those whose command names ``repository``."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    total_ticks = 0
    for entry in _server_processes(repository):
        try:
            # Fields after the command name, which may hold spaces: utime and stime are the 14th and 15th.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total_ticks += int(fields[11]) + int(fields[12])
    return total_ticks / ticks_per_s


def server_cpu_rate(repository: Path, *, window_s: float) -> float:
    """Cores the server and its stubs kept busy over the next ``window_s`` seconds (1.0 = one core)."""
    before = server_cpu_s(repository)
    time.sleep(window_s)
    return (server_cpu_s(repository) - before) / window_s


def rss_bytes(repository: Path) -> int:
    """Resident memory of tritonserver and its stub processes together (the sum of their VmRSS), in bytes."""
    total_kib = 0
    for entry in _server_processes(repository):
        try:
            status = (entry / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # "VmRSS:	  123456 kB"; a process that is exiting (a zombie) has no such line.
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib * 1024
