"""``sdtriton soak`` as a person runs it, on a real tritonserver it starts itself: every request of a mixed run
ends in an image or the typed error its kind allows, none is lost, the memory of every server process is
reported; and with the server killed and restarted mid-run, the requests sent while it was down are retried
to images."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdtriton.ops.soak.plan import ALLOWED_OUTCOMES, IMAGE, Kind

pytestmark = pytest.mark.integration

REQUESTS = 40
RESTART_REQUESTS = 20
SOAK_LIMIT_S = 90.0
QUICK = ["--min-steps", "4", "--max-steps", "4", "--min-side-px", "16", "--max-side-px", "64", "--settle-s", "1"]


def _soak(repository: Path, out_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    command = [
        sys.executable,
        "-m",
        "sdtriton.cli",
        "soak",
        "--repository",
        str(repository),
        "--out",
        str(out_dir),
        "--no-progress",
        *QUICK,
        *extra,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (out_dir / "report.json").is_file(), completed.stderr[-3000:]
    return completed, json.loads((out_dir / "report.json").read_text())


def test_a_mixed_soak_accounts_for_every_request(tiny_repository, tmp_path):
    started = time.monotonic()
    completed, report = _soak(
        tiny_repository, tmp_path / "soak", "--requests", str(REQUESTS), "--concurrency", "4", "--seed", "1"
    )
    elapsed_s = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert elapsed_s < SOAK_LIMIT_S
    assert f"{REQUESTS} requests: answered {REQUESTS}, lost 0, unexpected 0" in completed.stdout

    outcomes = report["outcomes_by_kind"]
    assert sum(sum(counts.values()) for counts in outcomes.values()) == REQUESTS
    assert report["lost"] == [] and report["unexpected"] == []
    for kind in Kind:
        assert set(outcomes[kind.value]) <= ALLOWED_OUTCOMES[kind], (kind, outcomes[kind.value])
        assert outcomes[kind.value], f"no {kind.value} request in the mix"
    assert outcomes["bad"] == {"InvalidRequestError": round(0.1 * REQUESTS)}
    assert outcomes["ok"] == {IMAGE: sum(outcomes["ok"].values())}
    # The expiring budgets and the cancels really end early somewhere in the run, not only as images.
    assert outcomes["deadline"].get("RequestTimeoutError", 0) > 0
    assert set(outcomes["cancel"]) - {IMAGE}

    memory = report["memory"]
    names = [row["name"] for row in memory["processes"]]
    assert names[0] == "tritonserver"
    assert {"stub:pipeline_0_0", "stub:stable_diffusion_0_0", "stub:stable_diffusion_stream_0_0"} <= set(names)
    for row in memory["processes"]:
        assert row["rss_after_warmup_kib"] > 0 and row["rss_at_end_kib"] > 0, row
    assert memory["total_at_end_kib"] > 0 and memory["growth_percent"] is not None

    markdown = (tmp_path / "soak" / "report.md").read_text()
    assert "| tritonserver |" in markdown and "| bad | 4 | InvalidRequestError 4 |" in markdown
    assert (tmp_path / "soak" / "tritonserver.log").stat().st_size > 0


def test_a_server_killed_mid_run_loses_no_retried_request(tiny_repository, tmp_path):
    completed, report = _soak(
        tiny_repository,
        tmp_path / "restart",
        "--requests",
        str(RESTART_REQUESTS),
        "--concurrency",
        "4",
        "--restart-at",
        "0.3",
        # Only requests the client may retry (generate, and streams before their first event).
        "--cancel-fraction",
        "0",
        "--deadline-fraction",
        "0",
        "--bad-fraction",
        "0",
        "--stream-fraction",
        "0.3",
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert report["lost"] == [] and report["unexpected"] == []
    restart = report["restart"]
    assert restart["error"] is None and restart["downtime_s"] > 0
    assert restart["sent_during_outage"] >= 1
    assert restart["outage_outcomes"] == {IMAGE: restart["sent_during_outage"]}
    assert restart["outage_retries_exhausted"] == 0
    assert report["client_retries"] > 0
    # Plain requests are always retried; a stream cut off after it had shown progress is the one allowed loss.
    assert report["outcomes_by_kind"]["ok"] == {IMAGE: sum(report["outcomes_by_kind"]["ok"].values())}
    failed = [record for record in report["records"] if record["outcome"] != IMAGE]
    assert all(record["kind"] == "stream" and not record["retryable"] for record in failed), failed
    # The memory at the end is the new server's: other processes, still all there.
    memory = report["memory"]
    assert all(row["pid_after_warmup"] != row["pid_at_end"] for row in memory["processes"])
    assert "## Restart" in (tmp_path / "restart" / "report.md").read_text()
