"""perf_analyzer against the real server for a few seconds: throughput above zero, no failed request."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtriton import interface
from sdtriton.perf.load import find_perf_analyzer, run_level
from sdtriton.perf.profiles import DEFAULT_PERF_DIR, INPUT_DATA_DIR_NAME, LoadMode, Protocol, Scenario
from sdtriton.perf.workload import input_data_text, load_input_data
from sdtriton.server import ModelStats

pytestmark = pytest.mark.integration

# The committed requests with fewer steps, so that the whole test takes seconds.
_SMOKE_STEPS = 2


@pytest.fixture(scope="module")
def smoke_input_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    requests = load_input_data(DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME / "default_varied.json")
    path = tmp_path_factory.mktemp("perf") / "smoke.json"
    path.write_text(input_data_text([request.with_steps(_SMOKE_STEPS) for request in requests[:4]]))
    return path


@pytest.mark.parametrize(
    ("protocol", "mode", "level"),
    [(Protocol.GRPC, LoadMode.CONCURRENCY, 2.0), (Protocol.HTTP, LoadMode.REQUEST_RATE, 2.0)],
)
def test_perf_analyzer_measures_the_real_server(
    triton_server, smoke_input_data: Path, tmp_path: Path, protocol: Protocol, mode: LoadMode, level: float
) -> None:
    binary = find_perf_analyzer()  # installed by scripts/setup_perf.sh, which scripts/setup.sh runs
    scenario = Scenario(
        name=f"smoke_{protocol.value}",
        protocol=protocol,
        mode=mode,
        input_data=smoke_input_data.name,
        levels=(level,),
        min_requests=4,
        duration_s=1.0,
        rate_reference="none" if mode is LoadMode.REQUEST_RATE else None,
    )
    http_url = triton_server.address.http_url
    before = ModelStats.fetch(http_url, interface.ENTRY_MODEL_NAME)
    # run_level raises PerfAnalyzerError, with perf_analyzer's log, when any request fails.
    point = run_level(
        scenario,
        level,
        binary=binary,
        address=triton_server.address,
        input_data_path=smoke_input_data,
        output_dir=tmp_path,
        timeout_s=120,
    )
    delta = ModelStats.fetch(http_url, interface.ENTRY_MODEL_NAME).minus(before)
    assert point.throughput_per_s > 0
    assert 0 < point.p50_ms <= point.p99_ms
    assert delta.failures == 0
    assert delta.requests >= scenario.request_count(level)
