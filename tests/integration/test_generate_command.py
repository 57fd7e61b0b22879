"""``sdtriton generate`` as a person runs it: a progress bar, previews, a time budget, and Ctrl-C that cancels."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.integration.processes import server_cpu_rate

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
IDLE_CORES = 0.15


def _command(url: str, output: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "sdtriton.cli", "generate", PROMPT, "--url", url, "-o", str(output), *options]


def test_progress_bar_and_previews(grpc_url: str, tmp_path: Path) -> None:
    output = tmp_path / "star.png"
    done = subprocess.run(
        [
            *_command(grpc_url, output, "--steps", "10", "--seed", "3", "--scheduler", "ddim", "--progress"),
            "--preview-every",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(output).size == (64, 64)
    assert "10/10" in done.stderr  # the bar reached the last step
    previews = sorted(path.name for path in (tmp_path / "star_previews").iterdir())
    assert previews == ["step0004_0.png", "step0008_0.png"]


def test_a_time_budget_too_short_is_reported(grpc_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *_command(grpc_url, tmp_path / "late.png", "--steps", "150", "--width", "128", "--height", "128"),
            "--timeout-s",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "time budget of 500 ms" in done.stderr
    assert not (tmp_path / "late.png").exists()


@pytest.fixture
def sigint_not_ignored():
    """The command gets SIGINT as from a terminal, however this pytest was started: a shell starts a background job
    (``cmd &`` without job control) with SIGINT ignored, and an ignored signal stays ignored across exec (seen: the
    command ran to its end). A handler here is reset to the default in the child."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("progress", [False, True], ids=["plain", "progress"])
@pytest.mark.usefixtures("sigint_not_ignored")
def test_ctrl_c_cancels_the_request_on_the_server(grpc_url: str, tiny_repository: Path, tmp_path, progress) -> None:
    options = ["--steps", "150", "--width", "128", "--height", "128", *(["--progress"] if progress else [])]
    process = subprocess.Popen(_command(grpc_url, tmp_path / "never.png", *options), stderr=subprocess.PIPE, text=True)
    # Wait until the server is working on it.
    started = time.monotonic()
    while server_cpu_rate(tiny_repository, window_s=0.2) < 0.5:
        assert time.monotonic() - started < 60, "the server never started the request"
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 130
    assert "cancelled" in process.stderr.read()
    interrupted = time.monotonic()
    while server_cpu_rate(tiny_repository, window_s=0.1) >= IDLE_CORES:
        assert time.monotonic() - interrupted < 2.0, "the server kept working after Ctrl-C"
