"""Triton statistics, the numbers derived from a run (ratios, BLS cost, breakdown), and the written reports."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from sdtriton.perf.model import Load, LoadPoint, MachineInfo, NetworkTimes, PerfResult, StepSlope
from sdtriton.perf.profiles import LoadMode, Protocol, Scenario
from sdtriton.perf.report import headline, summary_markdown, write_reports
from sdtriton.perf.workload import fixed_requests
from sdtriton.server import ModelStats

PERF_README = Path(__file__).resolve().parents[2] / "perf" / "README.md"


def unresolved_readme_links(summary: str) -> list[str]:
    """The anchors of a summary's links to perf/README.md that no heading there has (GitHub's anchors: lower case,
    punctuation dropped, a hyphen for each space); the summary must link it at least once."""
    headings = re.findall(r"^#+ (.+)$", PERF_README.read_text(), re.MULTILINE)
    anchors = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
    links = re.findall(r"\]\(\.\./\.\./README\.md#([^)]+)\)", summary)
    assert links, "the summary links no section of perf/README.md"
    return [link for link in links if link not in anchors]


def _stats_json(name: str, *, requests: int, executions: int, queue_ns: int, infer_ns: float) -> dict[str, object]:
    def pair(count: int, ns: int) -> dict[str, int]:
        return {"count": count, "ns": ns}

    return {
        "model_stats": [
            {
                "name": name,
                "version": "1",
                "inference_count": requests,
                "execution_count": executions,
                "inference_stats": {
                    "success": pair(requests, int(queue_ns + infer_ns)),
                    "fail": pair(0, 0),
                    "queue": pair(requests, queue_ns),
                    "compute_input": pair(requests, 0),
                    "compute_infer": pair(requests, int(infer_ns)),
                    "compute_output": pair(requests, 0),
                    "cache_hit": pair(0, 0),
                    "cache_miss": pair(0, 0),
                },
                "batch_stats": [],
            }
        ]
    }


def _stats(name: str, *, requests: int, server_ms: float) -> ModelStats:
    return ModelStats.from_json(
        _stats_json(name, requests=requests, executions=requests, queue_ns=0, infer_ns=int(server_ms * requests * 1e6))
    )


def test_stats_differences_per_request() -> None:
    before = ModelStats.from_json(_stats_json("unet", requests=10, executions=5, queue_ns=10**6, infer_ns=9 * 10**6))
    after = ModelStats.from_json(_stats_json("unet", requests=30, executions=15, queue_ns=3 * 10**6, infer_ns=49e6))
    delta = after.minus(before)
    assert (delta.requests, delta.executions) == (20, 10)
    assert delta.ms_per_request("queue") == pytest.approx(0.1)
    assert delta.ms_per_request("compute_infer") == pytest.approx(2.0)
    assert delta.ms_per_request() == pytest.approx(2.1)
    with pytest.raises(ValueError, match="no successful requests"):
        before.minus(before).ms_per_request()
    with pytest.raises(ValueError, match="cannot subtract"):
        after.minus(_stats("pipeline", requests=1, server_ms=1))


def _timing(path: str, steps: int, *latencies: float) -> Load:
    return Load.timed(path, steps, latencies)


SCENARIOS = (
    Scenario("http_fixed", Protocol.HTTP, LoadMode.CONCURRENCY, "default_fixed.json", (1.0, 4.0)),
    Scenario("grpc_fixed", Protocol.GRPC, LoadMode.CONCURRENCY, "default_fixed.json", (1.0, 4.0)),
    Scenario("grpc_varied", Protocol.GRPC, LoadMode.CONCURRENCY, "default_varied.json", (1.0,)),
    Scenario(
        "grpc_rate", Protocol.GRPC, LoadMode.REQUEST_RATE, "default_fixed.json", (0.5,), rate_reference="grpc_fixed"
    ),
)


def _point(scenario: Scenario, level: float, *, throughput: float, p50_ms: float) -> LoadPoint:
    return LoadPoint(
        scenario=scenario.name,
        protocol=scenario.protocol.value,
        mode=scenario.mode.value,
        level=level,
        request_count=10,
        throughput_per_s=throughput,
        p50_ms=p50_ms,
        p90_ms=p50_ms * 1.1,
        p95_ms=p50_ms * 1.2,
        p99_ms=p50_ms * 1.3,
        avg_ms=p50_ms,
        server_queue_ms=0.1,
        server_compute_ms=p50_ms - 1,
    )


def _result(*, with_points: bool = True) -> PerfResult:
    points = (
        (
            _point(SCENARIOS[0], 1, throughput=9.0, p50_ms=111.0),
            _point(SCENARIOS[1], 1, throughput=9.5, p50_ms=105.0),
            _point(SCENARIOS[1], 4, throughput=20.0, p50_ms=200.0),
            _point(SCENARIOS[2], 1, throughput=5.0, p50_ms=50.0),
            _point(SCENARIOS[3], 10.0, throughput=10.0, p50_ms=120.0),
        )
        if with_points
        else ()
    )
    return PerfResult(
        profile="tiny",
        machine=MachineInfo(
            started_utc="2026-11-24 04:50 UTC",
            hostname="vm",
            cpu_model="a CPU",
            cpu_count=2,
            memory_gib=24.0,
            triton_version="2.51.0",
            load_average_before=(0.1, 0.2, 0.3),
        ),
        request=fixed_requests(size_px=64, num_inference_steps=20)[0],
        diffusers=_timing("diffusers", 20, 300.0, 310.0, 290.0),
        onnx_loop=_timing("onnx_loop", 20, 100.0, 101.0, 99.0),
        onnx_loop_networks=NetworkTimes(
            encode_text_ms=1.0, unet_ms_per_call=4.0, unet_calls_per_request=20, decode_ms=3.0
        ),
        onnx_loop_slope=StepSlope(low=_timing("onnx_loop", 5, 40.0), high=_timing("onnx_loop", 45, 200.0)),
        unet_calls_per_step=1.0,
        triton_client=_timing("triton", 20, 104.0),
        triton_slope=StepSlope(low=_timing("triton", 5, 42.0), high=_timing("triton", 45, 210.0)),
        triton_breakdown={
            "stable_diffusion": _stats("stable_diffusion", requests=10, server_ms=0.5),
            "pipeline": _stats("pipeline", requests=10, server_ms=1.0),
            "text_encoder": _stats("text_encoder", requests=10, server_ms=1.5),
            "unet": _stats("unet", requests=200, server_ms=4.2),
            "vae_decoder": _stats("vae_decoder", requests=10, server_ms=3.5),
        },
        slope_unet_stats=_stats("unet", requests=500, server_ms=4.2),
        points=points,
        scenarios=SCENARIOS,
        input_data="default_fixed.json",
        skipped=("grpc_rate_0p9: about 30 s needed, 10 s left of the 900 s limit",),
        max_pixel_difference={"onnx_loop vs triton": 0},
        elapsed_s=300.0,
        probe_loop_slope=StepSlope(low=_timing("onnx_loop", 5, 4.0), high=_timing("onnx_loop", 45, 42.0)),
        probe_triton_slope=StepSlope(low=_timing("triton", 5, 4.0), high=_timing("triton", 45, 46.0)),
    )


def test_triton_end_to_end_is_perf_analyzer_at_concurrency_1_over_grpc_on_the_baseline_request() -> None:
    result = _result()
    assert result.triton_concurrency_1 is not None and result.triton_concurrency_1.scenario == "grpc_fixed"
    assert result.triton_end_to_end_ms == 105.0
    assert result.triton_over_onnx_loop == pytest.approx(105.0 / 100.0)
    assert result.triton_over_diffusers == pytest.approx(105.0 / 300.0)
    assert _result(with_points=False).triton_end_to_end_ms == 104.0


def test_bls_cost_is_the_difference_of_per_step_slopes() -> None:
    result = _result()
    # Real UNet: Triton (210 - 42) / 40 = 4.2 ms/step, plain loop (200 - 40) / 40 = 4.0 ms/step.
    assert result.unet_call_net[0] == pytest.approx(0.2)
    # Identity UNet: (46 - 4) / 40 = 1.05 ms/step against (42 - 4) / 40 = 0.95 ms/step.
    assert result.bls_round_trip is not None and result.bls_round_trip[0] == pytest.approx(0.1)
    assert dataclasses.replace(result, probe_triton_slope=None).bls_round_trip is None
    assert "not judged" in summary_markdown(dataclasses.replace(result, probe_triton_slope=None))


def test_breakdown_adds_up() -> None:
    rows = {part.split(" (")[0].split(":")[0]: times for part, *times in _result().time_breakdown()}
    assert rows["UNet"] == [pytest.approx(80.0), pytest.approx(84.0)]
    assert rows["loop glue"] == [pytest.approx(100.0 - 1.0 - 80.0 - 3.0), None]  # the mean of 100, 101, 99
    assert rows["entry and pipeline `execute`"] == [None, pytest.approx(1.5)]
    assert rows["rest of Triton"][1] == pytest.approx(104.0 - 1.5 - 84.0 - 3.5 - 1.5)
    assert rows["total"][1] == pytest.approx(104.0)


def test_summary_states_each_goal(tmp_path: Path) -> None:
    text = summary_markdown(_result())
    assert "| Triton / plain ONNX loop | 1.050x | <= 1.1x | met |" in text
    assert "| Triton / diffusers | 0.350x | <= 0.9x | met |" in text
    assert "| one BLS UNet call (identity UNet) | 0.100 ms | < 0.3 ms | met |" in text
    assert "grpc_rate_0p9" in text
    assert "load average was" not in text
    assert not unresolved_readme_links(text)  # how each section is measured: perf/README.md, under its heading
    slow = dataclasses.replace(_result(), triton_client=_timing("triton", 20, 150.0), points=())
    assert "missed by 0.4x" in summary_markdown(slow)

    files = write_reports(_result(), tmp_path)
    assert sorted(path.name for path in files.values()) == [
        "load_points.csv",
        "paths.csv",
        "summary.md",
        "throughput_latency.png",
    ]
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    assert files["load_csv"].read_text().count("\n") == 1 + len(_result().points)


def test_slope_errors_need_two_runs_a_side() -> None:
    single = StepSlope(low=_timing("triton", 5, 40.0), high=_timing("triton", 45, 200.0))
    assert single.error_ms_per_step is None
    repeated = StepSlope(low=_timing("triton", 5, 40.0, 42.0), high=_timing("triton", 45, 200.0, 202.0))
    # stdev sqrt(2) on each side, two runs: SE = 1.2533 * sqrt(2) / sqrt(2) per median; sqrt(2) of them over 40 steps.
    assert repeated.error_ms_per_step == pytest.approx(1.2533 * 2**0.5 / 40, rel=1e-3)
    assert "not resolved" in summary_markdown(dataclasses.replace(_result(), probe_triton_slope=None))


def test_headline_gives_each_goal_its_verdict() -> None:
    text = headline(_result())
    assert text.startswith(
        "tiny: Triton at concurrency 1: 105.0 ms; Triton / plain ONNX loop 1.050x (goal <= 1.1x: met)"
    )
    assert "one BLS UNet call (identity UNet) 0.100 ms (goal < 0.3 ms: met)" in text
    assert "Triton / diffusers" not in headline(dataclasses.replace(_result(), diffusers=None))
