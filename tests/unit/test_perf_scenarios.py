"""Profiles and scenarios of `sdtriton perf`, perf_analyzer's command lines, and its CSV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdtriton.perf.load import parse_perf_analyzer_csv, perf_analyzer_command
from sdtriton.perf.profiles import (
    DEFAULT_PERF_DIR,
    INPUT_DATA_DIR_NAME,
    LoadMode,
    Protocol,
    Scenario,
    load_profiles,
    parse_profiles,
    request_rates,
)
from sdtriton.tiny import FAMILIES, PROFILES

# perf_analyzer 2.51's -f output, as written against this project's server.
CONCURRENCY_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "1,0.785885,11,2323,7,90,1268563,552,5,1231158,1400708,1400708,1914503\n"
)
RATE_CSV = CONCURRENCY_CSV.replace("Concurrency,", "Request Rate,").replace("\n1,", "\n0.5,")


def _scenario(**overrides: object) -> Scenario:
    values: dict[str, object] = {
        "name": "grpc_fixed",
        "protocol": Protocol.GRPC,
        "mode": LoadMode.CONCURRENCY,
        "input_data": "default_fixed.json",
        "levels": (1.0, 4.0),
    }
    values.update(overrides)
    return Scenario(**values)  # type: ignore[arg-type]


def test_committed_profiles_parse_and_name_existing_files() -> None:
    profiles = load_profiles(DEFAULT_PERF_DIR)
    assert {"tiny", "sd15"} <= set(profiles)
    for profile in profiles.values():
        assert profile.model in {*PROFILES, *FAMILIES, "shapes"}
        for name in profile.input_data_files():
            assert (DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME / name).is_file()


def test_shapes_reuses_the_tiny_scenarios() -> None:
    profiles = load_profiles(DEFAULT_PERF_DIR)
    assert profiles["shapes"].model == "shapes"
    assert profiles["shapes"].scenarios == profiles["tiny"].scenarios
    assert profiles["shapes"].baseline == profiles["tiny"].baseline


def test_default_profile_sweeps_concurrency_1_to_16_both_protocols_and_a_request_rate() -> None:
    tiny = load_profiles(DEFAULT_PERF_DIR)["tiny"]
    concurrencies = {level for s in tiny.scenarios if s.mode is LoadMode.CONCURRENCY for level in s.levels}
    assert {1, 16} <= concurrencies
    assert {s.protocol for s in tiny.scenarios} == {Protocol.HTTP, Protocol.GRPC}
    assert any(s.mode is LoadMode.REQUEST_RATE for s in tiny.scenarios)
    assert tiny.baseline.input_data in {s.input_data for s in tiny.scenarios}


def test_heavy_profile_is_bounded_to_10_minutes() -> None:
    assert load_profiles(DEFAULT_PERF_DIR)["sd15"].time_limit_s <= 600


def _document(scenarios: list[dict[str, object]]) -> str:
    return json.dumps(
        {
            "profiles": {
                "p": {
                    "time_limit_s": 60,
                    "baseline": {"input_data": "a.json"},
                    "scenarios": scenarios,
                }
            }
        }
    )


def test_bad_scenarios_are_rejected_by_name() -> None:
    good = {"name": "c", "protocol": "grpc", "mode": "concurrency", "input_data": "a.json", "levels": [1, 2]}
    rate = {"name": "r", "protocol": "http", "mode": "request_rate", "input_data": "a.json", "levels": [0.5]}
    assert parse_profiles(_document([good, {**rate, "rate_reference": "c"}]))["p"].scenarios[1].levels == (0.5,)
    with pytest.raises(ValueError, match="concurency: Unexpected keyword argument"):
        parse_profiles(_document([{**good, "concurency": 3}]))
    with pytest.raises(ValueError, match="rate_reference"):
        parse_profiles(_document([good, rate]))
    with pytest.raises(ValueError, match="earlier concurrency scenario"):
        parse_profiles(_document([{**rate, "rate_reference": "c"}, good]))
    with pytest.raises(ValueError, match="integers"):
        parse_profiles(_document([{**good, "levels": [1.5]}]))
    with pytest.raises(ValueError, match="unique"):
        parse_profiles(_document([good, good]))


def test_request_counts() -> None:
    scenario = _scenario(min_requests=10, requests_per_concurrency=4)
    assert [scenario.request_count(c) for c in (1, 2, 4, 16)] == [10, 10, 16, 64]
    rate = _scenario(mode=LoadMode.REQUEST_RATE, min_requests=5, duration_s=10, rate_reference="x")
    assert [rate.request_count(r) for r in (0.2, 1.26)] == [5, 13]


def test_concurrency_command() -> None:
    command = perf_analyzer_command(
        _scenario(),
        4,
        binary="pa",
        address="127.0.0.1:8001",
        input_data_path=Path("in.json"),
        csv_path=Path("out.csv"),
    )
    assert command[:7] == ["pa", "-m", "stable_diffusion", "-i", "grpc", "-u", "127.0.0.1:8001"]
    joined = " ".join(command)
    assert "--concurrency-range 4:4:1" in joined
    assert "--request-count 16" in joined
    assert "--input-data in.json" in joined and "-f out.csv" in joined


def test_request_rate_command_is_open_loop_poisson() -> None:
    scenario = _scenario(protocol=Protocol.HTTP, mode=LoadMode.REQUEST_RATE, rate_reference="x")
    joined = " ".join(
        perf_analyzer_command(scenario, 2.5, binary="pa", address="h:1", input_data_path=Path("i"), csv_path=Path("o"))
    )
    assert "-i http" in joined
    assert "--request-rate-range 2.5:2.5:1" in joined
    assert "--request-distribution poisson" in joined
    assert "--async" in joined


def test_csv_rows_become_load_points_in_ms() -> None:
    (point,) = parse_perf_analyzer_csv(CONCURRENCY_CSV, _scenario(), request_count=10)
    assert point.concurrency == 1
    assert point.throughput_per_s == pytest.approx(0.785885)
    assert point.p50_ms == pytest.approx(1231.158)
    assert point.p99_ms == pytest.approx(1914.503)
    assert point.avg_ms == pytest.approx((11 + 2323 + 7 + 90 + 1268563 + 552 + 5) / 1000)
    assert point.server_compute_ms == pytest.approx((90 + 1268563 + 552) / 1000)
    rate = _scenario(mode=LoadMode.REQUEST_RATE, rate_reference="x")
    (rate_point,) = parse_perf_analyzer_csv(RATE_CSV, rate, request_count=4)
    assert rate_point.level == 0.5 and rate_point.concurrency is None
    with pytest.raises(ValueError, match="Request Rate"):
        parse_perf_analyzer_csv(CONCURRENCY_CSV, rate, request_count=4)


def test_request_rates_scale_the_peak() -> None:
    (point,) = parse_perf_analyzer_csv(CONCURRENCY_CSV, _scenario(), request_count=10)
    assert request_rates((0.5, 1.0), peak_throughput_per_s=point.throughput_per_s) == (0.393, 0.786)
    assert request_rates((0.5, 1.0), peak_throughput_per_s=4.0) == (2.0, 4.0)
    with pytest.raises(ValueError):
        request_rates((0.5,), peak_throughput_per_s=0)


def test_level_time_estimates_bound_the_run() -> None:
    from sdtriton.perf.runner import _estimated_level_s

    concurrency = _scenario(min_requests=10, requests_per_concurrency=4)
    assert _estimated_level_s(concurrency, 4, throughput_per_s=2.0) == pytest.approx(5.0 + 16 / 2.0)
    rate = _scenario(mode=LoadMode.REQUEST_RATE, min_requests=5, duration_s=10, rate_reference="x")
    assert _estimated_level_s(rate, 2.0, throughput_per_s=100.0) == pytest.approx(5.0 + 20 / 2.0)
