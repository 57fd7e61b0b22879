"""Finds and runs ``perf_analyzer``: one process per load level, its CSV parsed into a :class:`LoadPoint`."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

from sdtriton.perf.scenarios import LoadPoint, Protocol, Scenario, parse_perf_analyzer_csv, perf_analyzer_command
from sdtriton.server import ServerAddress

logger = logging.getLogger(__name__)

PERF_ANALYZER_ENV = "PERF_ANALYZER"
# Where scripts/setup_perf.sh installs it: a wrapper that puts its libraries on LD_LIBRARY_PATH.
REPOSITORY_PERF_ANALYZER = Path(__file__).resolve().parents[2] / "tools" / "perf_analyzer" / "perf_analyzer"
_LOG_TAIL_LINES = 25


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, or a run failed (request errors, an unreachable server, a timeout)."""


def find_perf_analyzer(explicit: Path | None = None) -> Path:
    """``explicit``, else ``$PERF_ANALYZER``, else ``tools/perf_analyzer/perf_analyzer``, else one on PATH."""
    if explicit is not None:
        if explicit.is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise PerfAnalyzerError(f"{explicit} is not an executable perf_analyzer")
    candidates = [Path(os.environ[PERF_ANALYZER_ENV])] if os.environ.get(PERF_ANALYZER_ENV) else []
    candidates.append(REPOSITORY_PERF_ANALYZER)
    on_path = shutil.which("perf_analyzer")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise PerfAnalyzerError(
        "perf_analyzer not found: run scripts/setup_perf.sh (or scripts/setup.sh), set $PERF_ANALYZER, "
        "or use the NGC SDK container's (see perf/README.md)"
    )


def endpoint(address: ServerAddress, protocol: Protocol) -> str:
    """``host:port`` of a server's HTTP or gRPC endpoint, as perf_analyzer's ``-u`` wants it."""
    host = f"[{address.host}]" if ":" in address.host else address.host
    port = address.grpc_port if protocol is Protocol.GRPC else address.http_port
    return f"{host}:{port}"


def level_file_stem(scenario: Scenario, level: float) -> str:
    return f"{scenario.name}_{level:g}".replace(".", "p")


def run_level(
    scenario: Scenario,
    level: float,
    *,
    binary: Path,
    address: ServerAddress,
    input_data_path: Path,
    output_dir: Path,
    timeout_s: float | None = None,
) -> LoadPoint:
    """Runs one level; its CSV and log are kept in ``output_dir``. Raises :class:`PerfAnalyzerError` on failure."""
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = level_file_stem(scenario, level)
    csv_path = output_dir / f"{stem}.csv"
    log_path = output_dir / f"{stem}.log"
    csv_path.unlink(missing_ok=True)
    command = perf_analyzer_command(
        scenario,
        level,
        binary=binary,
        address=endpoint(address, scenario.protocol),
        input_data_path=input_data_path,
        csv_path=csv_path,
    )
    logger.debug("running %s", " ".join(command))
    with log_path.open("wb") as log:
        try:
            completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerError(f"{stem}: perf_analyzer ran past {timeout_s:.0f} s; log: {log_path}") from None
    if completed.returncode != 0 or not csv_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:])
        raise PerfAnalyzerError(f"{stem}: perf_analyzer exited with {completed.returncode}; {log_path}:\n{tail}")
    return parse_perf_analyzer_csv(csv_path.read_text(), scenario, request_count=scenario.request_count(level))[0]
