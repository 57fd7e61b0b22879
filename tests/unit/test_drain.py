"""The drain's pure parts: reading the engines' in-flight requests off a metrics page, and the drain signal."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtriton.serving.drain import DrainSignal, in_flight_requests

PAGE = """# HELP sdtriton_requests_running Requests the diffusion engine is denoising now.
# TYPE sdtriton_requests_running gauge
sdtriton_requests_running{model="pipeline"} 3
sdtriton_requests_running{model="sdxl_pipeline"} 1
# TYPE sdtriton_requests_waiting gauge
sdtriton_requests_waiting{model="pipeline"} 2
sdtriton_requests_waiting_total{model="pipeline"} 40
nv_inference_pending_request_count{model="unet",version="1"} 7
"""


def test_in_flight_sums_running_and_waiting_over_every_pipeline() -> None:
    assert in_flight_requests(PAGE) == 6


def test_a_page_without_the_engine_gauges_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError, match="sdtriton_requests_running"):
        in_flight_requests('nv_inference_pending_request_count{model="unet"} 0\n')


def test_the_drain_signal_turns_on_when_its_file_appears_and_stays_on(tmp_path: Path) -> None:
    path = tmp_path / "draining"
    signal = DrainSignal(str(path))
    assert not signal.draining()
    path.touch()
    assert signal.draining()
    path.unlink()
    assert signal.draining()
    assert not DrainSignal(None).draining()
