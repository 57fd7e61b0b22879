"""``sdtriton perf`` end to end on a one-level profile: the three paths, the BLS probe and every output file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdtriton.perf.profiles import DEFAULT_PERF_DIR, INPUT_DATA_DIR_NAME, PerfOptions
from sdtriton.perf.runner import run_perf
from sdtriton.perf.workload import input_data_text, load_input_data

pytestmark = pytest.mark.integration

_STEPS = 2
_PROFILE = {
    "description": "smoke: the tiny model, one level, a few runs",
    "model": "tiny",
    "time_limit_s": 300,
    "baseline": {"input_data": "fixed.json", "runs": 2, "warmup_runs": 1, "slope_steps": [2, 4], "slope_runs": 2},
    "scenarios": [
        {"name": "grpc_fixed", "protocol": "grpc", "mode": "concurrency", "input_data": "fixed.json",
         "levels": [1], "min_requests": 3, "requests_per_concurrency": 3}
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def smoke_perf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    perf_dir = tmp_path_factory.mktemp("perf_dir")
    (perf_dir / "scenarios.json").write_text(json.dumps({"profiles": {"smoke": _PROFILE}}))
    (perf_dir / INPUT_DATA_DIR_NAME).mkdir()
    requests = load_input_data(DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME / "default_fixed.json")
    text = input_data_text([request.with_steps(_STEPS) for request in requests])
    (perf_dir / INPUT_DATA_DIR_NAME / "fixed.json").write_text(text)
    return perf_dir


def test_perf_command_writes_every_output(
    smoke_perf_dir: Path, tiny_model_dir: Path, tiny_repository: Path, tmp_path: Path
) -> None:
    work_dir = tmp_path / "work"
    options = PerfOptions(
        profile="smoke",
        output_dir=tmp_path / "out",
        perf_dir=smoke_perf_dir,
        model_dir=tiny_model_dir,
        repository=tiny_repository,
        work_dir=work_dir,
        show_progress=False,
    )
    result, files = run_perf(options)
    assert set(files) == {"load_csv", "paths_csv", "plot", "summary"}
    assert all(path.is_file() and path.stat().st_size > 0 for path in files.values())
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (point,) = result.points
    assert point.throughput_per_s > 0
    assert result.max_pixel_difference["onnx_loop vs triton"] == 0
    assert result.diffusers is not None and result.bls_round_trip is not None
    summary = files["summary"].read_text()
    for heading in ("Triton / plain ONNX loop", "Triton / diffusers", "one BLS UNet call (identity UNet)"):
        assert heading in summary
    assert (files["summary"].parent / "tritonserver_identity_unet.log").is_file()
