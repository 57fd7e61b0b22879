"""Writes an engine profile's results: CSV files, the sweep plot (PNG) and the markdown summary.

Everything measured on the simulated accelerator is labelled so: ``simulated`` is a CSV column, its summary
section and goal say SIMULATED, and its plot panel's title does too.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from sdtriton.perf.engine_results import (
    BATCHING_OFF,
    BATCHING_ON,
    GOAL_REFUSAL_MS,
    GOAL_SIMULATED_SHARE_OF_ALLOWED,
    LONG,
    SHORT,
    SIMULATED,
    EngineResult,
    LatencySummary,
    LevelResult,
    Outcome,
    goal_rows,
    percentile,
)
from sdtriton.perf.report import SUMMARY_NAME

LOAD_CSV_NAME = "engine_load_points.csv"
REQUESTS_CSV_NAME = "engine_requests.csv"
GOALS_CSV_NAME = "engine_goals.csv"
PLOT_NAME = "engine_sweep.png"
# Other processes' share of the CPU above which the summary says the run shared the machine.
OTHER_CPU_SHARE_NOTE = 0.05
_LOAD_COLUMNS = (
    "section",
    "variant",
    "simulated",
    "concurrency",
    "requests",
    "failed",
    "duration_s",
    "images_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
)
_VARIANT_LABELS = {
    BATCHING_ON: "step batching on",
    BATCHING_OFF: "step batching off",
}


def _f(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def load_rows(result: EngineResult) -> list[dict[str, object]]:
    """One row per measured load: in-process runs, client-thread levels; ``simulated`` marks the stand-in UNet."""
    rows: list[dict[str, object]] = []
    if result.ceiling is not None:
        plain = result.ceiling.plain_loop
        rows.append(
            {
                "section": "ceiling",
                "variant": "plain_loop",
                "simulated": False,
                "concurrency": 1,
                "requests": len(plain.latencies_ms),
                "images_per_s": _f(1000.0 / plain.median_ms),
                "p50_ms": _f(plain.median_ms),
                "p90_ms": _f(percentile(plain.latencies_ms, 90)),
                "p99_ms": _f(percentile(plain.latencies_ms, 99)),
                "mean_ms": _f(plain.mean_ms),
            }
        )
        run = result.ceiling.in_process
        rows.append(
            {
                "section": "ceiling",
                "variant": "in_process_engine",
                "simulated": False,
                "concurrency": run.concurrency,
                "requests": run.requests,
                "duration_s": _f(run.elapsed_s),
                "images_per_s": _f(run.images_per_s),
            }
        )
        rows.append(_level_row("ceiling", result.ceiling.served_one, simulated=False))
        rows.append(_level_row("ceiling", result.ceiling.served, simulated=False))
    for point in sorted(result.sweep, key=lambda p: (p.variant != BATCHING_ON, p.concurrency)):
        rows.append(_level_row("sweep", point, simulated=False))
    simulated = result.simulated
    if simulated is not None:
        for run in (simulated.non_unet_low, simulated.non_unet_high):
            rows.append(
                {
                    "section": "simulated",
                    "variant": "in_process_engine_zero_time_unet",
                    "simulated": True,
                    "concurrency": run.concurrency,
                    "requests": run.requests,
                    "duration_s": _f(run.elapsed_s),
                    "images_per_s": _f(run.images_per_s),
                }
            )
        for point in simulated.points:
            rows.append(_level_row("simulated", point, simulated=True))
    return [{column: row.get(column, "") for column in _LOAD_COLUMNS} for row in rows]


def _level_row(section: str, level: LevelResult, *, simulated: bool) -> dict[str, object]:
    summary = level.summary
    return {
        "section": section,
        "variant": level.variant,
        "simulated": simulated,
        "concurrency": level.concurrency,
        "requests": len(level.records),
        "failed": level.failed,
        "duration_s": _f(level.duration_s),
        "images_per_s": _f(level.images_per_s),
        "p50_ms": _f(summary.p50_ms),
        "p90_ms": _f(summary.p90_ms),
        "p99_ms": _f(summary.p99_ms),
        "mean_ms": _f(summary.mean_ms),
    }


def write_load_csv(result: EngineResult, path: Path) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=_LOAD_COLUMNS)
        writer.writeheader()
        writer.writerows(load_rows(result))
    return path


def write_requests_csv(result: EngineResult, path: Path) -> Path:
    """Every client request: ceiling, sweep and simulated levels, the mixed and short-only loads, the burst.

    ``started_s`` counts from the start of the request's load (of its turn, for loads run in turns).
    """
    records = []
    if result.ceiling is not None:
        records += [*result.ceiling.served_one.records, *result.ceiling.served.records]
    records += [record for level in result.sweep for record in level.records]
    if result.simulated is not None:
        records += [record for level in result.simulated.points for record in level.records]
    if result.mixed is not None:
        records += [*result.mixed.short_only, *result.mixed.mixed]
    if result.burst is not None:
        records += [*result.burst.warmup_records, *result.burst.records]
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["load", "simulated", "class", "client", "started_s", "latency_ms", "outcome", "error_type", "message"]
        )
        for record in records:
            writer.writerow(
                [
                    record.load,
                    record.load.startswith(SIMULATED),
                    record.request_class,
                    record.client,
                    f"{record.started_s:.4f}",
                    f"{record.latency_ms:.3f}",
                    record.outcome.value,
                    record.error_type,
                    record.message,
                ]
            )
    return path


def write_goals_csv(result: EngineResult, path: Path) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["measure", "measured", "goal", "verdict", "simulated"])
        for row in goal_rows(result):
            writer.writerow([row.measure, row.measured, row.goal, row.verdict, row.simulated])
    return path


def _concurrency_axis(axis: object, levels: list[int]) -> None:
    """A log-2 concurrency axis labelled with the levels themselves (1, 2, 4, 8)."""
    axis.set_xscale("log", base=2)
    if levels:
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.minorticks_off()


def write_plot(result: EngineResult, path: Path) -> Path:
    """Throughput and latency against concurrency, batching on and off; the simulated accelerator apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    throughput_axis, latency_axis, simulated_axis = axes
    for variant, colour in ((BATCHING_ON, "tab:blue"), (BATCHING_OFF, "tab:orange")):
        points = sorted((p for p in result.sweep if p.variant == variant), key=lambda p: p.concurrency)
        if not points:
            continue
        levels = [p.concurrency for p in points]
        label = _VARIANT_LABELS[variant]
        throughput_axis.plot(levels, [p.images_per_s for p in points], "o-", color=colour, label=label)
        latency_axis.plot(levels, [p.p50_ms for p in points], "o-", color=colour, label=f"{label}, p50")
        latency_axis.plot(levels, [p.p99_ms for p in points], "s--", color=colour, label=f"{label}, p99")
    if result.ceiling is not None:
        run = result.ceiling.in_process
        throughput_axis.plot(
            [run.concurrency], [run.images_per_s], "k*", markersize=12, label="in-process engine (ceiling)"
        )
        throughput_axis.plot(
            [result.ceiling.served.concurrency],
            [result.ceiling.served.images_per_s],
            "kx",
            markersize=10,
            label="Triton, in turns with the ceiling",
        )
        throughput_axis.axhline(
            1000.0 / result.ceiling.plain_loop.median_ms, color="grey", linestyle=":", label="plain loop, one at a time"
        )
    throughput_axis.set_ylabel("throughput (images/s)")
    throughput_axis.set_title(f"{result.profile}: throughput, step batching on/off")
    latency_axis.set_ylabel("latency (ms)")
    latency_axis.set_title(f"{result.profile}: latency, step batching on/off")
    sweep_levels = sorted({p.concurrency for p in result.sweep})
    for axis in (throughput_axis, latency_axis):
        axis.set_xlabel("concurrency (client threads, gRPC)")
        _concurrency_axis(axis, sweep_levels)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    simulated = result.simulated
    if simulated is not None:
        points = sorted(simulated.points, key=lambda p: p.concurrency)
        levels = [p.concurrency for p in points]
        low = simulated.low.images_per_s
        simulated_axis.plot(levels, [p.images_per_s for p in points], "o-", color="tab:green", label="measured")
        simulated_axis.plot(
            levels,
            [low * simulated.latency.throughput_ratio(level, simulated.rows_per_image) for level in levels],
            "k:",
            label="allowed, UNet alone (x c1)",
        )
        simulated_axis.plot(
            [simulated.high_concurrency],
            [low * simulated.allowed_ratio],
            "r*",
            markersize=12,
            label="allowed, non-UNet parts counted (x c1)",
        )
        _concurrency_axis(simulated_axis, levels)
        simulated_axis.legend(fontsize=7)
        simulated_axis.grid(True, alpha=0.3)
    simulated_axis.set_xlabel("concurrency")
    simulated_axis.set_ylabel("SIMULATED throughput (images/s)")
    latency_text = "not run" if simulated is None else f"UNet {simulated.latency}"
    simulated_axis.set_title(f"SIMULATED accelerator ({latency_text})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _summary_row(load: str, name: str, steps: int, clients: int, summary: LatencySummary | None) -> str:
    if summary is None:
        return f"| {load} | {name} | {steps} | {clients} | 0 | | | | | |"
    return (
        f"| {load} | {name} | {steps} | {clients} | {summary.count} | {summary.failed} | {summary.images_per_s:.2f} | "
        f"{summary.p50_ms:.0f} | {summary.p90_ms:.0f} | {summary.p99_ms:.0f} |"
    )


def _ceiling_lines(result: EngineResult) -> list[str]:
    ceiling = result.ceiling
    if ceiling is None:
        return ["Not run (see below)."]
    run = ceiling.in_process
    plain = ceiling.plain_loop
    turns = len(ceiling.turn_ratios)
    lines = [
        f"The ceiling is the engine driven in this process (`DiffusionEngine` over ONNX Runtime sessions of the same "
        f"ONNX files, the batching-on repository's limits, no Triton), fed {run.concurrency} requests at once as a "
        f"closed loop: its UNet calls held {run.rows_per_unet_call:.1f} rows on average, as the server's do at "
        f"concurrency {run.concurrency}. It and the server ran in {turns} turns (in-process, served at "
        f"{run.concurrency}, plain loop, served at 1, again) while the batching-on server was up, so that a drift of "
        "this machine's speed hits both sides of each ratio alike; the server's loads are client threads over gRPC.",
        "",
        "| path | concurrency | images/s | p50 ms | p99 ms | requests |",
        "|---|---:|---:|---:|---:|---:|",
        f"| plain loop (`generate_image`, one image at a time; median) | 1 | {1000.0 / plain.median_ms:.2f} | "
        f"{plain.median_ms:.1f} | {percentile(plain.latencies_ms, 99):.1f} | {len(plain.latencies_ms)} |",
        f"| Triton | 1 | {ceiling.served_one.images_per_s:.2f} | {ceiling.served_one.p50_ms:.1f} | "
        f"{ceiling.served_one.p99_ms:.1f} | {len(ceiling.served_one.records)} |",
        f"| in-process engine (ceiling) | {run.concurrency} | {run.images_per_s:.2f} | | | {run.requests} |",
        f"| Triton | {ceiling.served.concurrency} | {ceiling.served.images_per_s:.2f} | {ceiling.served.p50_ms:.1f} | "
        f"{ceiling.served.p99_ms:.1f} | {len(ceiling.served.records)} |",
        "",
        f"Served / ceiling at concurrency {run.concurrency}: **{ceiling.served_over_ceiling:.3f}x** (by turn: "
        f"{', '.join(f'{ratio:.3f}' for ratio in ceiling.turn_ratios)}); served p50 at concurrency 1 / plain loop "
        f"median: **{ceiling.one_over_plain_loop:.3f}x**.",
    ]
    return lines


def _sweep_lines(result: EngineResult, plot_name: str) -> list[str]:
    if not result.sweep:
        return ["Not run (see below)."]
    levels = sorted({p.concurrency for p in result.sweep if p.concurrency is not None})
    ratios = dict(result.on_off_ratios())
    lines = [
        "Two repositories of the same export: `max_running_images` 8 (one UNet call per step for every running "
        "image) and 1 (each image its own UNet call, requests one after another). Each level is a closed loop of "
        "client threads over gRPC (`StableDiffusionClient`, one per thread), each sending the base request back to "
        "back, a fixed number of requests per level; images/s is completed requests over the wall time from the first "
        "request to the last answer (as the in-process ceiling is timed), percentiles linear between ranks.",
        "",
        f"![sweep]({plot_name})",
        "",
        "| concurrency | on: images/s | on: p50 ms | on: p99 ms | off: images/s | off: p50 ms | off: p99 ms | "
        "on/off images/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        on, off = result.sweep_point(BATCHING_ON, level), result.sweep_point(BATCHING_OFF, level)
        cells = []
        for point in (on, off):
            cells += (
                ["", "", ""]
                if point is None
                else [f"{point.images_per_s:.2f}", f"{point.p50_ms:.0f}", f"{point.p99_ms:.0f}"]
            )
        ratio = ratios.get(level)
        lines.append(f"| {level} | {' | '.join(cells)} | {'' if ratio is None else f'{ratio:.2f}x'} |")
    return lines


def _mixed_lines(result: EngineResult) -> list[str]:
    mixed = result.mixed
    if mixed is None:
        return ["Not run (see below)."]
    spec = mixed.spec
    classes = mixed.mixed_classes
    short_only = mixed.short_only_summary if any(r.outcome is Outcome.OK for r in mixed.short_only) else None
    lines = [
        f"On the batching-on server, client threads over gRPC (`StableDiffusionClient`): {spec.short_clients} sending "
        f"short requests ({spec.short_steps} steps) back to back while {spec.long_clients} send "
        f"{spec.long_requests_per_client} long ones ({spec.long_steps} steps) each; the reference is "
        f"{spec.concurrency} clients all sending short requests (the same concurrency, no long request). "
        "Percentiles are linear between ranks over the completed requests.",
        "",
        "| load | class | steps | clients | completed | failed | images/s | p50 ms | p90 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        _summary_row("short only", SHORT, spec.short_steps, spec.concurrency, short_only),
        _summary_row("mixed", SHORT, spec.short_steps, spec.short_clients, classes.get(SHORT)),
        _summary_row("mixed", LONG, spec.long_steps, spec.long_clients, classes.get(LONG)),
        "",
        f"Mixed load {mixed.mixed_duration_s:.1f} s, short-only load {mixed.short_only_duration_s:.1f} s. Short "
        f"requests' p99 beside long ones / alone: **{_f(mixed.short_p99_ratio, 2)}x**.",
    ]
    return lines


def _burst_lines(result: EngineResult) -> list[str]:
    burst = result.burst
    if burst is None:
        return ["Not run (see below)."]
    refusals = burst.refusal_ms
    accepted = [r.latency_ms for r in burst.records if r.outcome is Outcome.OK]
    failed = [r for r in burst.records if r.outcome is Outcome.FAILED]
    lines = [
        f"A repository of the same export whose engine and entries hold at most {burst.spec.max_pending_requests} "
        f"requests (`max_pending_requests`); {burst.spec.requests} requests sent at once (an asyncio gRPC client "
        "each, on one event loop, released together, connections made first), after the warm-up below. A refusal "
        "is `UNAVAILABLE` with a "
        'message starting "server busy" (the client raises `ServerUnavailableError`); time to refusal is from '
        "sending to the error.",
        "",
        "| sent | accepted | completed | refused | of which as UNAVAILABLE | failed after acceptance |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {len(burst.records)} | {burst.accepted} | {burst.completed} | {burst.refused} | "
        f"{burst.refused_as_unavailable} | {burst.failed} |",
        "",
    ]
    if refusals:
        lines.append(
            f"Time to refusal: min {min(refusals):.1f} ms, median {statistics.median(refusals):.1f} ms, max "
            f"{max(refusals):.1f} ms (goal < {GOAL_REFUSAL_MS:g} ms each; "
            f"{sum(value >= GOAL_REFUSAL_MS for value in refusals)} at or over it)."
        )
    if accepted:
        lines.append(f"Accepted requests' latency: {', '.join(f'{value:.0f}' for value in sorted(accepted))} ms.")
    if burst.warmup_records:
        cold = burst.warmup_max_refusal_ms
        lines.append(
            f"Before it, {burst.spec.warmup_bursts} burst(s) of the same size warmed the server up, not judged: the "
            "first burst after a server's start pays one-off costs (threads of the entry model and gRPC); its "
            f"slowest refusal took {'-' if cold is None else f'{cold:.1f}'} ms."
        )
    if failed:
        lines.append(f"Failures: {'; '.join(sorted({r.message for r in failed}))}.")
    return lines


def _simulated_lines(result: EngineResult) -> list[str]:
    simulated = result.simulated
    if simulated is None:
        return ["Not run (see below)."]
    low, high = simulated.non_unet_low, simulated.non_unet_high
    lines = [
        f"**Every number in this section is SIMULATED**: the batching-on repository with its UNet replaced by the "
        f"stand-in of `sdtriton/perf/simulated.py`, which sleeps {simulated.latency} (fixed + per batch row) a "
        "call and burns no CPU; the text encoder and VAE decoder are the real ONNX models on this CPU.",
        "",
        "| SIMULATED concurrency | images/s | p50 ms | p99 ms | requests |",
        "|---:|---:|---:|---:|---:|",
    ]
    for point in sorted(simulated.points, key=lambda p: p.concurrency):
        lines.append(
            f"| {point.concurrency} | {point.images_per_s:.2f} | {point.p50_ms:.1f} | {point.p99_ms:.1f} | "
            f"{len(point.records)} |"
        )
    c_low, c_high = simulated.low_concurrency, simulated.high_concurrency
    calls = simulated.unet_calls_per_image
    rows = simulated.rows_per_image
    lines += [
        "",
        f"Measured c{c_high}/c{c_low}: **{simulated.measured_ratio:.2f}x** (SIMULATED).",
        "",
        f"What the latency model allows: for the UNet alone, `SimulatedLatency.throughput_ratio` gives "
        f"{simulated.unet_only_allowed_ratio:.2f}x ({c_high} images of {rows} rows in one call of "
        f"{simulated.latency.call_s(c_high * rows) * 1000:.0f} ms against one of "
        f"{simulated.latency.call_s(c_low * rows) * 1000:.0f} ms). The rest of a request (text encoder, VAE decoder, "
        "scheduler steps, the engine's glue) runs on this CPU and does not shrink with the simulated UNet, so it is "
        "counted at its own cost: the engine driven in this process with a UNet that takes no time gave "
        f"{low.images_per_s:.1f} images/s at c={low.concurrency} and {high.images_per_s:.1f} images/s at "
        f"c={high.concurrency}, i.e. {1000 / low.images_per_s:.1f} and {1000 / high.images_per_s:.1f} ms of non-UNet "
        f"work an image. With {calls:g} UNet calls an image, a batch of c images takes calls x call(c x {rows} rows) "
        "+ c x that work, so the model allows "
        f"{simulated.allowed_images_per_s(low):.2f} and {simulated.allowed_images_per_s(high):.2f} images/s: "
        f"**{simulated.allowed_ratio:.2f}x**. Measured / allowed: **{simulated.share_of_allowed:.1%}** (goal >= "
        f"{GOAL_SIMULATED_SHARE_OF_ALLOWED:.0%}); against the UNet-alone ratio: "
        f"{simulated.share_of_unet_only_allowed:.1%}. What the allowance leaves out is serving's own cost: BLS hops, "
        "gRPC, the entry model, Python threads sharing the CPU with the real text encoder and VAE.",
    ]
    return lines


def summary_markdown(result: EngineResult, *, plot_name: str = PLOT_NAME) -> str:
    machine = result.machine
    request = result.request
    lines = [
        f"# sdtriton perf: `{result.profile}` profile (the diffusion engine)",
        "",
        f"{machine.started_utc} on `{machine.hostname}`: {machine.cpu_model}, {machine.cpu_count} cores, "
        f"{machine.memory_gib:.0f} GiB, {'GPU' if machine.gpu else 'no GPU used'}; tritonserver "
        f"{machine.triton_version}. Run took {result.elapsed_s / 60:.1f} min.",
        "",
        f"Load average (1/5/15 min) before the run {'/'.join(f'{v:.2f}' for v in machine.load_average_before)}, "
        f"after {'/'.join(f'{v:.2f}' for v in machine.load_average_after)}.",
    ]
    share = result.other_cpu_share
    if share is not None:
        lines += [
            "",
            f"Other processes (not this run, its servers or their stubs) used {result.other_cpu_s:.0f} CPU-seconds "
            f"during the run: {share:.1%} of the {machine.cpu_count} cores' time"
            + (
                f". **Above {OTHER_CPU_SHARE_NOTE:.0%}: the numbers below shared the CPU with other work.**"
                if share > OTHER_CPU_SHARE_NOTE
                else "."
            ),
        ]
    if machine.busy_at_start:
        lines += [
            "",
            f"**The 1-minute load average was {machine.load_average_before[0]:.2f} on {machine.cpu_count} cores when "
            "this run started: other work was using the CPU.**",
        ]
    lines += [
        "",
        f"Base request (`{result.input_data}`): prompt {request.prompt!r}, {request.num_inference_steps} steps, "
        f"guidance {request.guidance_scale:g}, {request.width}x{request.height}, seed {request.seed}, scheduler "
        f"`{request.scheduler}`.",
        "",
        "## Goals",
        "",
        "| measure | measured | goal | verdict |",
        "|---|---:|---:|---|",
        *(f"| {row.measure} | {row.measured} | {row.goal} | {row.verdict} |" for row in goal_rows(result)),
        "",
        "## (a) Compute ceiling against served throughput",
        "",
        *_ceiling_lines(result),
        "",
        "## (b) Concurrency sweep, step batching on and off",
        "",
        *_sweep_lines(result, plot_name),
        "",
        "## (c) Mixed steps: short requests beside long ones",
        "",
        *_mixed_lines(result),
        "",
        "## (d) A burst past the queue limit",
        "",
        *_burst_lines(result),
        "",
        "## (e) SIMULATED accelerator",
        "",
        *_simulated_lines(result),
    ]
    if result.skipped:
        lines += ["", "## Not run", "", *(f"- {reason}" for reason in result.skipped)]
    return "\n".join(lines) + "\n"


def engine_headline(result: EngineResult) -> str:
    """The headline ratios in one paragraph, for the terminal."""
    parts = []
    if result.served_over_ceiling is not None:
        parts.append(f"served/ceiling {result.served_over_ceiling:.3f}x")
    if result.c1_over_plain_loop is not None:
        parts.append(f"c1 served/plain loop {result.c1_over_plain_loop:.3f}x")
    ratios = result.on_off_ratios()
    if ratios:
        parts.append("batching on/off " + ", ".join(f"c{level} {ratio:.2f}x" for level, ratio in ratios))
    if result.mixed is not None and result.mixed.short_p99_ratio is not None:
        parts.append(f"short p99 mixed/alone {result.mixed.short_p99_ratio:.2f}x")
    if result.burst is not None:
        slowest = result.burst.max_refusal_ms
        parts.append(
            f"burst {result.burst.accepted} accepted ({result.burst.completed} completed), {result.burst.refused} "
            f"refused, slowest refusal {'-' if slowest is None else f'{slowest:.1f}'} ms"
        )
    if result.simulated is not None:
        simulated = result.simulated
        parts.append(
            f"SIMULATED c{simulated.high_concurrency}/c{simulated.low_concurrency} {simulated.measured_ratio:.2f}x = "
            f"{simulated.share_of_allowed:.1%} of the allowed {simulated.allowed_ratio:.2f}x"
        )
    missed = [row.measure for row in goal_rows(result) if row.met is False]
    verdict = f"goals missed: {'; '.join(missed)}" if missed else "every measured goal met"
    return f"Engine ({result.profile}): {'; '.join(parts) or 'nothing measured'}. {verdict}."


def write_engine_reports(result: EngineResult, directory: Path) -> dict[str, Path]:
    """Writes every output of an engine run into ``directory``; returns them by kind."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = directory / SUMMARY_NAME
    summary.write_text(summary_markdown(result))
    return {
        "load_csv": write_load_csv(result, directory / LOAD_CSV_NAME),
        "requests_csv": write_requests_csv(result, directory / REQUESTS_CSV_NAME),
        "goals_csv": write_goals_csv(result, directory / GOALS_CSV_NAME),
        "plot": write_plot(result, directory / PLOT_NAME),
        "summary": summary,
    }
