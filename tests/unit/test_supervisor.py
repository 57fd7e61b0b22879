"""Pure parts of crash containment: log rotation, exit descriptions, restart backoff, decoupled models."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtriton.ops.supervisor import RestartBackoff, python_model_directories
from sdtriton.server import describe_exit, rotate_log


def test_rotation_keeps_earlier_logs_newest_first_and_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "tritonserver.log"
    for run in range(4):
        rotate_log(log, keep=2)
        log.write_text(f"run {run}\n")
    assert log.read_text() == "run 3\n"
    assert (tmp_path / "tritonserver.log.1").read_text() == "run 2\n"
    assert (tmp_path / "tritonserver.log.2").read_text() == "run 1\n"
    assert not (tmp_path / "tritonserver.log.3").exists()


def test_an_empty_or_missing_log_is_not_rotated(tmp_path: Path) -> None:
    log = tmp_path / "tritonserver.log"
    assert rotate_log(log) is None
    log.write_text("")
    assert rotate_log(log) is None
    assert not (tmp_path / "tritonserver.log.1").exists()


def test_exits_are_described_by_signal_name_or_code() -> None:
    assert describe_exit(-11) == "killed by SIGSEGV (exit -11)"
    assert describe_exit(-9) == "killed by SIGKILL (exit -9)"
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(None) == "still running"


def test_backoff_doubles_up_to_its_ceiling() -> None:
    backoff = RestartBackoff(initial_s=1.0, max_s=5.0)
    assert [backoff.delay_s(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    with pytest.raises(ValueError, match="initial_s"):
        RestartBackoff(initial_s=10.0, max_s=5.0)


def test_every_model_of_the_committed_repository_has_a_stub_to_watch() -> None:
    repository = Path(__file__).resolve().parents[2] / "model_repository"
    names = [directory.name for directory in python_model_directories(repository)]
    assert names == [
        "pipeline",
        "stable_diffusion",
        "stable_diffusion_stream",
        "text_encoder",
        "unet",
        "vae_decoder",
        "vae_encoder",
    ]
