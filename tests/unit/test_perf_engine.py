"""The engine profile's pure parts: its spec, percentiles, request classes, ratios, the simulated allowance, reports."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sdtriton.export.variants import engine_limits_of, engine_variant
from sdtriton.perf.load import ClientClass, InProcessEngineError, InstrumentedNetworks, ServedFiles, run_closed_loop
from sdtriton.perf.model import (
    BATCHING_OFF,
    BATCHING_ON,
    CEILING_SERVED,
    DIRECT_GRPC,
    GATEWAY_HTTP,
    IN_PROCESS,
    LONG,
    MIXED_INPUTS_SERVED,
    SHORT,
    SIMULATED,
    BurstResult,
    CeilingResult,
    EngineResult,
    GatewayResult,
    Load,
    MachineInfo,
    MixedResult,
    Outcome,
    RequestRecord,
    SimulatedResult,
    allowed_images_per_s,
    classify_error,
)
from sdtriton.perf.profiles import (
    DEFAULT_PERF_DIR,
    INPUT_DATA_DIR_NAME,
    BurstSpec,
    MixedSpec,
    Profile,
    load_profiles,
    parse_profiles,
)
from sdtriton.perf.report import headline, summary_markdown, write_reports
from sdtriton.perf.workload import fixed_requests, load_input_data, raw_inputs
from sdtriton.serving.engine import EngineLimits
from sdtriton.serving.simulated import SimulatedLatency
from sdtriton.tiny import FAMILIES
from tests.unit.test_engine import CONFIG, TOKENS, FakeNetworks
from tests.unit.test_perf_results import unresolved_readme_links


def _record(
    request_class: str, latency_ms: float, outcome: Outcome = Outcome.OK, *, load: str = "mixed", error_type: str = ""
) -> RequestRecord:
    return RequestRecord(
        load=load,
        request_class=request_class,
        client=0,
        started_s=0.0,
        latency_ms=latency_ms,
        outcome=outcome,
        message="" if outcome is Outcome.OK else "server busy: full",
        error_type=error_type,
    )


def test_records_split_by_class_in_order_and_summaries_count_completed_ones_only() -> None:
    records = [
        _record(SHORT, 100.0),
        _record(LONG, 900.0),
        _record(SHORT, 300.0),
        _record(SHORT, 50.0, Outcome.FAILED),
        _record(SHORT, 200.0),
    ]
    load = Load("mixed", 2, tuple(records), 2.0)
    short = load.of_class(SHORT)
    assert [record.latency_ms for record in short.records] == [100.0, 300.0, 50.0, 200.0]
    assert (short.completed, short.failed) == (3, 1)
    assert short.p50_ms == 200.0
    assert short.p99_ms == pytest.approx(float(np.percentile([100.0, 300.0, 200.0], 99)))
    assert short.mean_ms == pytest.approx(200.0)
    assert short.images_per_s == pytest.approx(1.5)
    assert load.of_class(LONG).completed == 1 and load.of_class("burst").completed == 0
    # A class none of whose requests succeeded has no latency (the report shows its failures, not a crash).
    none_ok = Load("mixed", 1, (_record(SHORT, 50.0, Outcome.FAILED),), 1.0)
    assert math.isnan(none_ok.p50_ms) and math.isnan(none_ok.p99_ms) and math.isnan(none_ok.mean_ms)
    assert (none_ok.completed, none_ok.failed) == (0, 1)


def test_a_refusal_is_the_servers_busy_message() -> None:
    assert classify_error("server busy: 4 requests running or queued") is Outcome.REFUSED
    assert classify_error(" Server busy: retry later") is Outcome.REFUSED
    assert classify_error("Stream removed (Socket closed)") is Outcome.FAILED
    assert classify_error("pipeline: internal error (server busy)") is Outcome.FAILED


def test_burst_counts_accepted_refused_and_the_slowest_refusal() -> None:
    records = (
        _record("burst", 400.0, load="burst"),
        _record("burst", 12.0, Outcome.REFUSED, load="burst", error_type="ServerUnavailableError"),
        _record("burst", 61.0, Outcome.REFUSED, load="burst", error_type="InferenceError"),
        _record("burst", 30.0, Outcome.FAILED, load="burst", error_type="InferenceError"),
    )
    warmup = (
        _record("burst", 110.0, Outcome.REFUSED, load="burst_warmup"),
        _record("burst", 500.0, load="burst_warmup"),
    )
    burst = BurstResult(spec=BurstSpec(max_pending_requests=2, requests=4), records=records, warmup_records=warmup)
    assert burst.latencies_ms(Outcome.REFUSED, warmup=True) == [110.0]
    assert (burst.accepted, *map(burst.count, Outcome)) == (2, 1, 2, 1)
    assert burst.refused_as_unavailable == 1
    assert burst.latencies_ms(Outcome.REFUSED) == [12.0, 61.0]
    assert burst.max_refusal_ms == 61.0


def test_allowed_throughput_counts_the_non_unet_work_beside_the_modelled_calls() -> None:
    latency = SimulatedLatency(fixed_ms=10.0, per_item_ms=2.0)
    # No other work: exactly the latency model's own ratio.
    one = allowed_images_per_s(latency, concurrency=1, rows_per_image=2, unet_calls_per_image=20, non_unet_s=0)
    eight = allowed_images_per_s(latency, concurrency=8, rows_per_image=2, unet_calls_per_image=20, non_unet_s=0)
    assert one == pytest.approx(1 / (20 * 0.014))
    assert eight / one == pytest.approx(latency.throughput_ratio(8, 2))
    # 20 ms of other work an image: c1 20 x 14 + 20 = 300 ms an image, c8 20 x 42 + 8 x 20 = 1000 ms for eight.
    one = allowed_images_per_s(latency, concurrency=1, rows_per_image=2, unet_calls_per_image=20, non_unet_s=0.02)
    eight = allowed_images_per_s(latency, concurrency=8, rows_per_image=2, unet_calls_per_image=20, non_unet_s=0.02)
    assert (one, eight) == (pytest.approx(1 / 0.3), pytest.approx(8.0))
    with pytest.raises(ValueError, match="non_unet"):
        allowed_images_per_s(latency, concurrency=1, rows_per_image=2, unet_calls_per_image=1, non_unet_s=-1)


def _in_process(concurrency: int, requests: int, elapsed_s: float, unet_calls: int, unet_rows: int) -> Load:
    """The in-process engine's closed loop: ``requests`` completed in ``elapsed_s``, its UNet calls and rows."""
    records = tuple(_record(IN_PROCESS, 1000.0 * elapsed_s, load=IN_PROCESS) for _ in range(requests))
    return Load(IN_PROCESS, concurrency, records, elapsed_s, unet_calls=unet_calls, unet_rows=unet_rows)


def _level(variant: str, concurrency: int, latencies_ms: list[float], duration_s: float) -> Load:
    records = tuple(_record(variant, latency, load=f"{variant}_c{concurrency}") for latency in latencies_ms)
    return Load(variant=variant, concurrency=concurrency, records=records, duration_s=duration_s)


def _simulated() -> SimulatedResult:
    latency = SimulatedLatency(fixed_ms=10.0, per_item_ms=2.0)
    low = _level(SIMULATED, 1, [300.0] * 16, 4.8)  # 3.33 images/s
    high = _level(SIMULATED, 8, [1000.0] * 64, 8.0)  # 8 images/s
    return SimulatedResult(
        latency=latency,
        rows_per_image=2,
        unet_calls_per_image=20,
        points=(low, high),
        # 20 ms of non-UNet work an image at both concurrencies: 50 images/s with a UNet that takes no time.
        non_unet_low=_in_process(concurrency=1, requests=32, elapsed_s=0.64, unet_calls=640, unet_rows=1280),
        non_unet_high=_in_process(concurrency=8, requests=32, elapsed_s=0.64, unet_calls=80, unet_rows=1280),
    )


def test_simulated_share_of_what_the_latency_model_allows() -> None:
    simulated = _simulated()
    assert simulated.measured_ratio == pytest.approx(8.0 / (16 / 4.8))
    assert simulated.unet_only_allowed_ratio == pytest.approx(8 * 14 / 42)
    assert simulated.allowed_ratio == pytest.approx(8.0 / (1 / 0.3))
    assert simulated.share_of_allowed == pytest.approx(1.0)
    assert simulated.share_of_unet_only_allowed == pytest.approx(2.4 / (8 * 14 / 42))


def _result() -> EngineResult:
    plain = Load.timed("onnx_loop", 20, (380.0, 390.0, 400.0))
    on = [_level(BATCHING_ON, 1, [400.0] * 16, 6.4), _level(BATCHING_ON, 8, [3000.0] * 64, 24.0)]
    off = [_level(BATCHING_OFF, 1, [390.0] * 16, 6.2), _level(BATCHING_OFF, 8, [3200.0] * 64, 32.0)]
    mixed = MixedResult(
        spec=MixedSpec(short_clients=1, long_clients=1),
        mixed=Load("mixed", 2, (_record(SHORT, 1000.0), _record(SHORT, 1500.0), _record(LONG, 20000.0)), 20.0),
        short_only=Load("short_only", 2, (_record(SHORT, 1000.0, load="short_only"),) * 2, 2.0),
    )
    burst = BurstResult(
        spec=BurstSpec(max_pending_requests=1, requests=2),
        records=(
            _record("burst", 400.0, load="burst"),
            _record("burst", 20.0, Outcome.REFUSED, load="burst", error_type="ServerUnavailableError"),
        ),
    )
    return EngineResult(
        profile="engine",
        machine=MachineInfo(
            started_utc="2026-11-29 16:00 UTC",
            hostname="vm",
            cpu_model="a CPU",
            cpu_count=2,
            memory_gib=24.0,
            triton_version="2.51.0",
            load_average_before=(0.1, 0.2, 0.3),
        ),
        request=fixed_requests(size_px=64, num_inference_steps=20)[0],
        input_data="default_fixed.json",
        ceiling=CeilingResult(
            in_process=_in_process(concurrency=8, requests=32, elapsed_s=10.0, unet_calls=80, unet_rows=1280),
            served=Load.merged(
                [_level(CEILING_SERVED, 8, [3000.0] * 16, 6.0), _level(CEILING_SERVED, 8, [3000.0] * 16, 6.0)]
            ),
            plain_loop=plain,
            served_one=_level(CEILING_SERVED, 1, [400.0] * 10, 4.0),
            turn_ratios=(0.833, 0.833),
        ),
        sweep=(*on, *off),
        mixed=mixed,
        burst=burst,
        simulated=_simulated(),
        skipped=("burst: about 40 s needed, 10 s left of the 900 s limit",),
        elapsed_s=300.0,
    )


def test_served_ratios_and_on_off_ratios() -> None:
    result = _result()
    assert result.ceiling is not None and len(result.ceiling.served.records) == 32
    assert result.ceiling.served_over_ceiling == pytest.approx((32 / 12.0) / 3.2)
    assert result.ceiling.one_over_plain_loop == pytest.approx(400.0 / 390.0)
    assert result.on_off_ratios() == [(1, pytest.approx(2.5 / (16 / 6.2))), (8, pytest.approx((64 / 24) / 2.0))]
    assert result.mixed is not None and result.mixed.short_p99_ratio == pytest.approx(
        float(np.percentile([1000, 1500], 99)) / 1000
    )
    empty = dataclasses.replace(result, ceiling=None, sweep=(), mixed=None, burst=None, simulated=None)
    assert all(row.met is None for row in empty.goal_rows())


def test_goal_verdicts() -> None:
    rows = _result().goal_rows()
    assert rows[0].verdict == "MISSED"  # 2.67 images/s served against 3.2 in-process: 0.833x
    assert rows[1].verdict == "met"  # 400 ms against 390 ms: 1.026x
    assert all(row.verdict == "met" for row in rows[2:])
    assert [row.simulated for row in rows] == [False] * 6 + [True, True]
    # 64 simulated images in 8.4 s: 2.29x c1, 95% of the 2.4x allowed with the non-UNet work, 86% of the UNet's 2.67x.
    simulated = dataclasses.replace(_simulated(), points=(_simulated().low, _level(SIMULATED, 8, [1000.0] * 64, 8.4)))
    rows = dataclasses.replace(_result(), simulated=simulated).goal_rows()
    assert [(row.measured, row.verdict) for row in rows[-2:]] == [("95.2%", "met"), ("85.7%", "MISSED")]


def test_reports_label_the_simulated_results(tmp_path: Path) -> None:
    result = _result()
    files = write_reports(result, tmp_path)
    assert sorted(path.name for path in files.values()) == [
        "engine_goals.csv",
        "engine_load_points.csv",
        "engine_requests.csv",
        "engine_sweep.png",
        "summary.md",
    ]
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"
    with files["load_csv"].open() as file:
        rows = list(csv.DictReader(file))
    assert {row["simulated"] for row in rows if row["section"] == "simulated"} == {"True"}
    assert {row["simulated"] for row in rows if row["section"] != "simulated"} == {"False"}
    assert [row["images_per_s"] for row in rows if row["variant"] == BATCHING_ON] == ["2.500", "2.667"]
    assert [row["images_per_s"] for row in rows if row["variant"] == CEILING_SERVED] == ["2.500", "2.667"]
    with files["goals_csv"].open() as file:
        goals = list(csv.DictReader(file))
    assert [goal["simulated"] for goal in goals if "SIMULATED" in goal["measure"]] == ["True", "True"]
    with files["requests_csv"].open() as file:
        requests = list(csv.DictReader(file))
    assert {row["simulated"] for row in requests if row["load"].startswith(SIMULATED)} == {"True"}
    summary = summary_markdown(result)
    assert "## (e) SIMULATED accelerator" in summary
    assert "**Every number in this section is SIMULATED**" in summary
    assert "| (a) served / in-process engine images/s at concurrency 8 | 0.833x | >= 0.9x | MISSED |" in summary
    assert "burst: about 40 s needed" in summary
    assert "Other processes" not in summary  # not measured
    shared = dataclasses.replace(result, other_cpu_s=60.0)  # over 300 s on 2 cores
    assert shared.other_cpu_share == pytest.approx(0.1)
    assert "used 60 CPU-seconds during the run: 10.0% of the 2 cores' time. **Above 5%" in summary_markdown(shared)
    text = headline(result)
    assert "concurrency 8 0.833x (goal >= 0.9x: MISSED)" in text and "(e) SIMULATED: measured" in text


def test_gateway_ratio_overhead_and_a_summary_of_its_section_alone() -> None:
    direct = (_level(DIRECT_GRPC, 1, [100.0] * 8, 0.8), _level(DIRECT_GRPC, 8, [400.0] * 32, 1.6))
    through = (_level(GATEWAY_HTTP, 1, [104.0] * 8, 0.84), _level(GATEWAY_HTTP, 8, [420.0] * 32, 1.7))
    gateway = GatewayResult(direct, through, (0.95, 0.93), (5.0, 12.0))
    levels = [(d.concurrency, g.concurrency, ratio, overhead_ms) for d, g, ratio, overhead_ms in gateway.levels()]
    assert levels == [(1, 1, pytest.approx(0.8 / 0.84), 4.0), (8, 8, pytest.approx(1.6 / 1.7), 20.0)]
    assert gateway.over_direct == pytest.approx(1.6 / 1.7)
    result = dataclasses.replace(
        _result(), ceiling=None, sweep=(), mixed=None, burst=None, simulated=None, gateway=gateway, planned=("gateway",)
    )
    [row] = result.goal_rows()
    assert (row.measure, row.measured, row.verdict) == (
        "(f) gateway / direct gRPC images/s at concurrency 8",
        "0.941x",
        "MISSED",
    )
    summary = summary_markdown(result)
    assert "## (f) The HTTP gateway against direct gRPC" in summary and "## (a)" not in summary
    assert "| gateway / direct | 8 | **0.941x** | **+20.0** |" in summary
    assert "**12.0 ms** per request it served, 5.0 ms per direct request" in summary
    assert (
        headline(result) == "engine: (f) gateway / direct gRPC images/s at concurrency 8 0.941x (goal >= 0.95x: MISSED)"
    )


def test_each_section_of_the_summary_links_its_subsection_of_perf_readme() -> None:
    planned = (*_result().planned, "gateway", "mixed_inputs")  # the gateway not run: its heading and link alone
    summary = summary_markdown(dataclasses.replace(_result(), mixed_inputs=_mixed_ceiling(), planned=planned))
    assert summary.count("How this is measured: [perf/README.md](../../README.md#") == 7
    assert not unresolved_readme_links(summary)


def test_the_committed_engine_profiles() -> None:
    profiles = load_profiles(DEFAULT_PERF_DIR)
    engine_profiles = {name: p for name, p in profiles.items() if p.engine}
    assert set(engine_profiles) == {"engine", "transformer", "gateway", "mixed_inputs"}
    # The mixed inputs: the base request's ceiling and the mix's on one model, exported with the mix's adapters; every
    # kind sent equally often on every side (a turn's requests a multiple of the mix's and of the concurrency).
    mixed = engine_profiles["mixed_inputs"]
    assert mixed.engine_sections == ("ceiling", "mixed_inputs") and mixed.mixed_inputs is not None
    mix = load_input_data(DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME / mixed.mixed_inputs.input_data)
    assert [request.kind for request in mix] == ["text", "img2img", "inpaint", "lora style", "lora detail"]
    assert {request.lora for request in mix} - {""} == set(mixed.loras)
    assert any(request.lora and request.lora_scale != 1 for request in mix)
    spec = mixed.mixed_inputs
    assert spec.requests % (spec.turns * len(mix) * spec.concurrency) == 0
    assert spec.plain_loop_runs % (spec.turns * len(mix)) == 0
    # The two ceilings alternate turn by turn: turns of the same size, so that a drift hits both alike.
    sizes = ("concurrency", "requests", "plain_loop_runs", "turns")
    assert [getattr(mixed.ceiling, size) for size in sizes] == [getattr(spec, size) for size in sizes]
    # The gateway profile: the tiny model, the gateway against direct gRPC at concurrency 1 and 8, nothing else.
    gateway = engine_profiles["gateway"]
    assert gateway.model == "tiny" and gateway.engine_sections == ("gateway",)
    assert gateway.gateway is not None and gateway.gateway.levels == (1, 8) and gateway.gateway.turns >= 2
    for profile in engine_profiles.values():
        assert (DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME / profile.input_data).is_file()
    # The transformer profile: a tiny SD 3.5 (make-tiny --family sd35), its ceiling at concurrency 8 and 1 only.
    transformer = engine_profiles["transformer"]
    assert transformer.model == "sd35" and transformer.model in FAMILIES
    assert transformer.ceiling is not None and transformer.ceiling.concurrency == 8
    assert (transformer.sweep, transformer.mixed, transformer.burst, transformer.simulated) == (None,) * 4
    profile = engine_profiles["engine"]
    assert profile.model == "shapes"
    assert profile.ceiling is not None and profile.sweep is not None
    assert profile.ceiling.concurrency in profile.sweep.levels and 1 in profile.sweep.levels
    assert profile.mixed is not None and profile.mixed.concurrency == 8
    assert profile.simulated is not None and str(profile.simulated.latency) == "10ms+2ms"
    # The perf_analyzer profiles are the others.
    assert all(not p.engine for n, p in profiles.items() if n not in engine_profiles)


def test_instrumented_networks_count_a_transformers_rows() -> None:
    """SD 3's denoiser takes ``hidden_states`` where the UNet takes ``sample``: rows and zeros follow the latents."""
    networks = InstrumentedNetworks(FakeNetworks(), zero_time_unet=True)
    latents = torch.ones(4, 16, 8, 8)
    noise = networks.predict_noise("transformer", {"hidden_states": latents, "timestep": torch.zeros(4)})
    assert networks.unet_rows == 4 and noise.shape == latents.shape and not noise.any()


def _profile(**engine: object) -> dict[str, object]:
    return {"model": "tiny", "time_limit_s": 60, "engine": {"input_data": "fixed.json", **engine}}


def _engine_profile(values: dict[str, object]) -> Profile:
    return parse_profiles(json.dumps({"profiles": {"p": values}}))["p"]


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ({}, "or engine sections"),
        ({"sweep": {"levels": [2, 1]}}, "must increase"),
        ({"sweep": {"levels": [1], "turbo": 1}}, "sweep.turbo: Unexpected keyword argument"),
        ({"sweep": {"batching_on": 1, "batching_off": 1}}, "batching_off must be below"),
        ({"mixed": {"short_steps": 20, "long_steps": 10}}, "short_steps must be below"),
        ({"mixed": {"long_steps": 151}}, "less than or equal to 150"),
        ({"burst": {"requests": 0}}, "burst.requests: Input should be greater than or equal to 1"),
        ({"simulated": {"latency": "fast"}}, "FIXEDms"),
        ({"simulated": {"levels": [8]}}, "simulated.levels: Value should have at least 2 items"),
        ({"warp": {}}, "warp: Unexpected keyword argument"),
    ],
)
def test_engine_profiles_reject_bad_specs(engine: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _engine_profile(_profile(**engine))


def test_engine_profile_defaults_and_document() -> None:
    profile = _engine_profile(_profile(burst={}, simulated={"latency": "5ms + 0.5ms"}))
    assert profile.burst == BurstSpec()
    assert _engine_profile(_profile(burst={"warmup_bursts": 0})).burst == BurstSpec(warmup_bursts=0)
    # Warm-ups may be left out (0); the runner then runs none.
    ceiling = _engine_profile(_profile(ceiling={"warmup_requests": 0, "plain_loop_warmup_runs": 0})).ceiling
    assert ceiling is not None and (ceiling.warmup_requests, ceiling.plain_loop_warmup_runs) == (0, 0)
    with pytest.raises(ValueError, match=r"ceiling.warmup_requests: Input should be greater than or equal to 0"):
        _engine_profile(_profile(ceiling={"warmup_requests": -1}))
    assert profile.simulated is not None and profile.simulated.latency == SimulatedLatency(5.0, 0.5)
    assert profile.ceiling is None and profile.sweep is None and profile.mixed is None
    assert profile.engine


def test_raw_inputs_are_one_item_arrays_of_every_public_input() -> None:
    request = fixed_requests(size_px=64, num_inference_steps=20)[0]
    raw = raw_inputs(request)
    assert raw["prompt"].tolist() == [request.prompt]
    assert raw["num_inference_steps"].dtype == np.int32 and raw["seed"].dtype == np.int64
    assert all(value.shape == (1,) for value in raw.values())


class _FakeTokenizer:
    """Tokenizes as CLIP's tokenizer is called by ``tokenize_prompts``: fixed-length ids, one row a prompt."""

    model_max_length = TOKENS

    def __call__(self, prompts: list[str], **options: object) -> dict[str, np.ndarray]:
        ids = [[len(prompt) + index for index in range(TOKENS)] for prompt in prompts]
        return {"input_ids": np.asarray(ids, dtype=np.int64)}


def _small_request(steps: int = 4):
    return dataclasses.replace(
        fixed_requests(size_px=64, num_inference_steps=steps)[0], width=16, height=16, scheduler="ddim"
    )


def test_in_process_closed_loop_keeps_the_concurrency_and_counts_unet_rows() -> None:
    networks = FakeNetworks()
    run = run_closed_loop(
        ServedFiles(tokenizers={"text_encoder": _FakeTokenizer()}, config=CONFIG, networks=networks),
        EngineLimits(max_running_images=8, max_unet_rows=16),
        [_small_request(steps=4)],
        concurrency=3,
        requests=7,
        show_progress=False,
    )
    assert (run.concurrency, run.completed) == (3, 7)
    assert [record.client for record in run.records] == list(range(7)) and min(run.latencies_ms) > 0
    # Waves of 3, 3 and 1 guided images, 4 steps each.
    assert (run.unet_calls, run.unet_rows) == (12, 56)
    assert run.rows_per_unet_call == pytest.approx(56 / 12)
    assert run.images_per_s > 0
    assert networks.unet_batches[-12:] == [6] * 8 + [2] * 4


def test_in_process_zero_time_unet_and_failures() -> None:
    networks = FakeNetworks()
    zero = InstrumentedNetworks(networks, zero_time_unet=True)
    sample = torch.ones((2, 4, 8, 8))
    inputs = {"sample": sample, "timestep": torch.zeros(2), "encoder_hidden_states": torch.zeros((2, TOKENS, 4))}
    noise = zero.predict_noise("unet", inputs)
    assert noise.shape == sample.shape and not noise.any()
    assert networks.unet_batches == []
    networks.fail_unet = True
    with pytest.raises(InProcessEngineError, match="unet down"):
        run_closed_loop(
            ServedFiles(tokenizers={"text_encoder": _FakeTokenizer()}, config=CONFIG, networks=networks),
            EngineLimits(),
            [_small_request()],
            concurrency=2,
            requests=2,
            show_progress=False,
        )


def _rendered_repository(root: Path) -> Path:
    from sdtriton.export.configs import RenderOptions, config_text, render_entry_config, render_pipeline_config

    (root / "pipeline" / "1").mkdir(parents=True)
    options = RenderOptions(max_running_images=8, max_pending_requests=32)
    config = render_pipeline_config(CONFIG, options)
    (root / "pipeline" / "config.pbtxt").write_text(config_text(config))
    for stream in (False, True):
        entry = render_entry_config(CONFIG, options, stream=stream)
        (root / entry.name).mkdir()
        (root / entry.name / "config.pbtxt").write_text(config_text(entry))
    (root / "unet" / "1").mkdir(parents=True)
    (root / "unet" / "1" / "model.onnx").write_bytes(b"\0" * (2 << 20))
    return root


ENTRY_NAMES = ("stable_diffusion", "stable_diffusion_stream")


def _entry_limits(repository: Path) -> list[str]:
    from sdtriton.export.configs import parse_config_text

    configs = [parse_config_text((repository / name / "config.pbtxt").read_text()) for name in ENTRY_NAMES]
    return [config.parameters["max_pending_requests"].string_value for config in configs]


def test_engine_variant_changes_the_engines_limits_and_the_entries_refusals_only(tmp_path: Path) -> None:
    source = _rendered_repository(tmp_path / "source")
    before = engine_limits_of(source)
    assert (before.max_running_images, before.max_pending_requests) == (8, 32)

    variant = engine_variant(source, tmp_path / "off", max_running_images=1, max_pending_requests=4)

    limits = engine_limits_of(variant)
    assert (limits.max_running_images, limits.max_pending_requests) == (1, 4)
    assert dataclasses.replace(limits, max_running_images=8, max_pending_requests=32) == before
    assert engine_limits_of(source) == before  # the source is untouched
    # The entries refuse past the same limit before the hop to the engine, as an export renders them.
    assert _entry_limits(variant) == ["4", "4"] and _entry_limits(source) == ["32", "32"]
    assert (variant / "unet" / "1" / "model.onnx").is_symlink()
    assert not (variant / "pipeline" / "config.pbtxt").is_symlink()
    with pytest.raises(ValueError, match="exceeds the export"):
        engine_variant(source, tmp_path / "more", max_running_images=16)
    with pytest.raises(FileExistsError):
        engine_variant(source, variant, max_running_images=2)


def test_turns_merge_into_one_level_and_one_run() -> None:
    first, second = _level(BATCHING_ON, 2, [100.0, 300.0], 1.0), _level(BATCHING_ON, 2, [200.0, 200.0], 3.0)
    merged = Load.merged([first, second])
    assert (merged.completed, merged.duration_s, merged.images_per_s, merged.p50_ms) == (4, 4.0, 1.0, 200.0)
    with pytest.raises(ValueError, match="one variant"):
        Load.merged([first, _level(BATCHING_OFF, 2, [1.0], 1.0)])
    runs = [
        _in_process(concurrency=8, requests=8, elapsed_s=2.0, unet_calls=20, unet_rows=320),
        _in_process(concurrency=8, requests=16, elapsed_s=6.0, unet_calls=40, unet_rows=640),
    ]
    run = Load.merged(runs)
    assert (run.completed, run.duration_s, run.images_per_s, run.rows_per_unet_call) == (24, 8.0, 3.0, 16.0)
    with pytest.raises(ValueError, match="one variant and concurrency"):
        Load.merged([runs[0], dataclasses.replace(runs[1], concurrency=1)])


def test_load_tests_run_with_the_engines_caches_off(tmp_path: Path) -> None:
    source = _rendered_repository(tmp_path / "source")
    # An export's defaults turn both caches on: a fixed seeded request sent again and again would be a cache hit.
    assert engine_limits_of(source).response_cache_bytes > 0 and engine_limits_of(source).text_cache_entries > 0
    off = engine_limits_of(engine_variant(source, tmp_path / "off", caches_off=True))
    assert (off.response_cache_bytes, off.text_cache_entries) == (0, 0)
    assert off.max_running_images == engine_limits_of(source).max_running_images


_MIX = load_input_data(DEFAULT_PERF_DIR / INPUT_DATA_DIR_NAME / "default_mixed.json")
_KINDS = [request.kind for request in _MIX]


def test_a_client_class_of_several_requests_sends_them_as_one_closed_loop_and_records_each_kind() -> None:
    alone = ClientClass(SHORT, _MIX[:1], clients=3, requests_per_client=2)
    assert alone.request(2, 1) == (SHORT, _MIX[0])  # one request: the class's own name
    mixed = ClientClass(MIXED_INPUTS_SERVED, _MIX, clients=8, requests_per_client=5)
    sent = [mixed.request(client, n) for n in range(5) for client in range(8)]  # the loop's order: 40 requests
    assert [kind for kind, _ in sent] == _KINDS * 8
    assert all(request.kind == kind for kind, request in sent)


def _mixed_ceiling() -> CeilingResult:
    """Two of each kind a side; the served ones at 8 take 20% longer than the in-process engine's."""

    def load(variant: str, concurrency: int, latency_ms: float, duration_s: float) -> Load:
        records = [
            dataclasses.replace(_record(kind, latency_ms, load=variant), client=index)
            for index, kind in enumerate(_KINDS * 2)
        ]
        return Load(variant, concurrency, tuple(records), duration_s)

    return CeilingResult(
        in_process=load(IN_PROCESS, 8, 2000.0, 4.0),
        served=load(MIXED_INPUTS_SERVED, 8, 2400.0, 5.0),
        plain_loop=Load.timed("onnx_loop", 20, (300.0,) * 10),
        served_one=load(MIXED_INPUTS_SERVED, 1, 330.0, 3.3),
    )


def test_the_mixed_inputs_section_counts_each_kind_and_sets_its_ceiling_beside_the_base_requests(
    tmp_path: Path,
) -> None:
    mix = _mixed_ceiling()
    kinds = mix.kinds()
    assert list(kinds) == _KINDS  # in the order sent
    assert all([load.completed for load in loads] == [2, 2, 2] for loads in kinds.values())
    result = dataclasses.replace(_result(), mixed_inputs=mix, planned=("ceiling", "mixed_inputs"))
    rows = {row.measure: row for row in result.goal_rows()}
    served = rows["(g) mixed inputs: served / in-process engine images/s at concurrency 8"]
    assert (served.measured, served.verdict) == ("0.800x", "MISSED")  # 2 images/s against 2.5
    assert rows["(g) mixed inputs: served p50 at concurrency 1 / plain loop median"].measured == "1.100x"
    summary = summary_markdown(result)
    assert "## (g) Mixed inputs: text only, img2img, inpaint, two adapters" in summary
    assert "| lora detail | 2 | 2 | 2400 | 2 | 330 |" in summary
    text_only = result.ceiling.served_over_ceiling
    assert f"| served / in-process engine | {text_only:.3f} | 0.800 | {0.8 / text_only:.3f}x |" in summary
    files = write_reports(result, tmp_path)
    with files["load_csv"].open() as file:
        sections = [(row["section"], row["variant"]) for row in csv.DictReader(file)]
    assert ("mixed_inputs", MIXED_INPUTS_SERVED) in sections and ("mixed_inputs", "plain_loop") in sections
    with files["requests_csv"].open() as file:
        served_kinds = {row["class"] for row in csv.DictReader(file) if row["load"] == MIXED_INPUTS_SERVED}
    assert served_kinds == set(_KINDS)


def test_a_profiles_loras_are_make_tiny_lora_options_by_name_and_its_ceilings_name_their_files() -> None:
    loras = {"a": {"seed": 1, "rank": 4}}
    profile = _engine_profile({**_profile(mixed_inputs={"input_data": "mixed.json"}), "loras": loras})
    assert profile.loras == loras and profile.input_data_files() == ["fixed.json", "mixed.json"]
    with pytest.raises(ValueError, match=r"loras\.a: Input should be a valid dictionary"):
        _engine_profile({**_profile(ceiling={}), "loras": {"a": 4}})
