"""What a running tritonserver costs, read from /proc: the CPU time of the server and its stub processes."""

from __future__ import annotations

import os
import time
from pathlib import Path


def server_cpu_s(repository: Path) -> float:
    """User and system CPU seconds of tritonserver and its stub processes: those whose command names ``repository``."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    total_ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str(repository) not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
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
