"""``sdtriton perf`` on a one-level engine profile: every section through real servers, no failed request; the
gateway profile's comparison through a real ``sdtriton gateway`` process; and the mixed inputs' ceiling on a model
the run exports with two adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdtriton.perf.model import BATCHING_OFF, BATCHING_ON, GATEWAY_HTTP, LONG, SHORT, EngineResult, Outcome
from sdtriton.perf.profiles import DEFAULT_PERF_DIR, INPUT_DATA_DIR_NAME, PerfOptions, load_profiles
from sdtriton.perf.runner import run_perf
from sdtriton.perf.workload import input_data_text, load_input_data

pytestmark = pytest.mark.integration

_STEPS = 2
_ENGINE = {
    "input_data": "fixed.json",
    "ceiling": {"concurrency": 2, "requests": 4, "warmup_requests": 2, "plain_loop_runs": 2,
                "plain_loop_warmup_runs": 1},
    "sweep": {"levels": [1, 2], "min_requests": 4, "requests_per_concurrency": 2},
    "mixed": {"short_steps": 2, "long_steps": 6, "short_clients": 1, "long_clients": 1, "long_requests_per_client": 1,
              "short_only_requests": 4},
    "burst": {"max_pending_requests": 1, "requests": 4},
    "simulated": {"latency": "10ms+2ms", "levels": [1, 2], "min_requests": 4, "requests_per_concurrency": 2,
                  "in_process_requests": 4},
}  # fmt: skip

# The mixed inputs: one turn, each of the five kinds once a side (the ceiling's concurrency 5: one request a client).
_ONE_TURN = {
    "concurrency": 2,
    "requests": 2,
    "warmup_requests": 0,
    "plain_loop_runs": 1,
    "plain_loop_warmup_runs": 0,
    "turns": 1,
}
_MIX = {"input_data": "mixed.json", "concurrency": 5, "requests": 5, "plain_loop_runs": 5}
_KINDS = ["text", "img2img", "inpaint", "lora style", "lora detail"]  # fmt: skip


@pytest.fixture(scope="module")
def engine_perf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    perf_dir = tmp_path_factory.mktemp("engine_perf_dir")
    profile = {"description": "smoke: the tiny model, one level", "model": "tiny", "time_limit_s": 300}
    gateway = {
        "input_data": "fixed.json",
        "gateway": {"levels": [1, 2], "min_requests": 2, "requests_per_concurrency": 1, "turns": 2},
    }
    committed = load_profiles(DEFAULT_PERF_DIR)["mixed_inputs"]
    mixed = {"input_data": "fixed.json", "ceiling": _ONE_TURN, "mixed_inputs": {**_ONE_TURN, **_MIX}}
    profiles = {
        "engine_smoke": {**profile, "engine": _ENGINE},
        "gateway_smoke": {**profile, "engine": gateway},
        "mixed_smoke": {**profile, "loras": committed.loras, "engine": mixed},
    }
    (perf_dir / "scenarios.json").write_text(json.dumps({"profiles": profiles}))
    (perf_dir / INPUT_DATA_DIR_NAME).mkdir()
    for name, source in (("fixed.json", "default_fixed.json"), ("mixed.json", committed.mixed_inputs.input_data)):
        requests = load_input_data(DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME / source)
        text = input_data_text([request.with_steps(_STEPS) for request in requests])
        (perf_dir / INPUT_DATA_DIR_NAME / name).write_text(text)
    return perf_dir


def _options(profile: str, perf_dir: Path, model_dir: Path, repository: Path, tmp_path: Path) -> PerfOptions:
    return PerfOptions(
        profile=profile,
        output_dir=tmp_path / "out",
        perf_dir=perf_dir,
        model_dir=model_dir,
        repository=repository,
        work_dir=tmp_path / "work",
        show_progress=False,
    )


def test_engine_profile_runs_every_section(
    engine_perf_dir: Path, tiny_model_dir: Path, tiny_repository: Path, tmp_path: Path
) -> None:
    result, files = run_perf(_options("engine_smoke", engine_perf_dir, tiny_model_dir, tiny_repository, tmp_path))

    assert isinstance(result, EngineResult)
    assert not [reason for reason in result.skipped if "FAILED" in reason], result.skipped
    assert result.ceiling is not None and result.ceiling.in_process.images_per_s > 0
    assert result.ceiling.in_process.rows_per_unet_call == 4  # two guided images in every UNet call
    for variant in (BATCHING_ON, BATCHING_OFF):
        for concurrency in (1, 2):
            level = result.sweep_point(variant, concurrency)
            assert level is not None and level.failed == 0 and level.images_per_s > 0
    assert result.ceiling.served_over_ceiling > 0 and result.ceiling.one_over_plain_loop > 0
    assert result.mixed is not None and result.mixed.mixed.failed == result.mixed.short_only.failed == 0
    assert {record.request_class for record in result.mixed.mixed.records} == {SHORT, LONG}
    assert result.burst is not None
    refused, failed = result.burst.count(Outcome.REFUSED), result.burst.count(Outcome.FAILED)
    assert result.burst.accepted >= 1 and refused >= 1 and failed == 0
    assert result.burst.accepted + refused == 4
    assert result.simulated is not None and result.simulated.measured_ratio > 0
    assert result.simulated.rows_per_image == 2 and result.simulated.unet_calls_per_image == _STEPS
    assert set(files) == {"load_csv", "requests_csv", "goals_csv", "plot", "summary"}
    assert all(path.is_file() and path.stat().st_size > 0 for path in files.values())
    assert "## (e) SIMULATED accelerator" in files["summary"].read_text()


def test_gateway_profile_compares_the_gateway_with_direct_grpc(
    engine_perf_dir: Path, tiny_model_dir: Path, tiny_repository: Path, tmp_path: Path
) -> None:
    result, files = run_perf(_options("gateway_smoke", engine_perf_dir, tiny_model_dir, tiny_repository, tmp_path))

    assert isinstance(result, EngineResult) and result.gateway is not None
    assert not result.skipped, result.skipped
    levels = result.gateway.levels()
    assert [direct.concurrency for direct, *_ in levels] == [1, 2]
    assert all(load.failed == 0 and load.completed >= 2 for level in levels for load in level[:2])
    assert len(result.gateway.turn_ratios) == 2 and result.gateway.over_direct > 0
    assert result.gateway.gateway_cpu_ms is not None and min(result.gateway.gateway_cpu_ms) >= 0
    [row] = result.goal_rows()  # only the gateway's goal: the profile has no other section
    assert row.measure.startswith("(f)") and row.measured == f"{result.gateway.over_direct:.3f}x"
    summary = files["summary"].read_text()
    assert "## (f) The HTTP gateway against direct gRPC" in summary and "## (a)" not in summary
    assert GATEWAY_HTTP in files["load_csv"].read_text()


def test_mixed_inputs_profile_serves_every_kind_beside_the_base_requests_ceiling(
    engine_perf_dir: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # No repository given: the run makes the profile's adapters and exports the model with them.
    options = _options("mixed_smoke", engine_perf_dir, tiny_model_dir, tmp_path / "repository", tmp_path)
    result, files = run_perf(options)

    assert isinstance(result, EngineResult) and result.ceiling is not None and result.mixed_inputs is not None
    assert not result.skipped, result.skipped
    kinds = result.mixed_inputs.kinds()
    assert list(kinds) == _KINDS
    for kind, (in_process, served, served_one) in kinds.items():
        assert (in_process.completed, served.completed, served_one.completed) == (1, 1, 1), kind
        assert served.failed == served_one.failed == 0, kind
    assert result.mixed_inputs.in_process.rows_per_unet_call > 2  # the kinds share UNet calls
    rows = {row.measure: row for row in result.goal_rows()}
    served_row = rows["(g) mixed inputs: served / in-process engine images/s at concurrency 5"]
    assert served_row.measured == f"{result.mixed_inputs.served_over_ceiling:.3f}x"
    assert "(a) served / in-process engine images/s at concurrency 2" in rows
    summary = files["summary"].read_text()
    assert "## (g) Mixed inputs: text only, img2img, inpaint, two adapters" in summary
    text_only, mixed = result.ceiling.served_over_ceiling, result.mixed_inputs.served_over_ceiling
    assert f"| served / in-process engine | {text_only:.3f} | {mixed:.3f} | {mixed / text_only:.3f}x |" in summary
    assert "mixed_inputs,in_process_engine," in files["load_csv"].read_text()
