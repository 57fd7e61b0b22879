"""Writes a run's results: CSV files, the throughput/latency plot (PNG) and the markdown summary."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from sdtriton.perf.results import (
    GOAL_BLS_UNET_CALL_MS,
    GOAL_TRITON_OVER_DIFFUSERS,
    GOAL_TRITON_OVER_ONNX_LOOP,
    PerfResult,
    points_of,
    time_breakdown,
)
from sdtriton.perf.run import PathTiming
from sdtriton.perf.scenarios import LoadMode, LoadPoint

LOAD_CSV_NAME = "load_points.csv"
PATHS_CSV_NAME = "paths.csv"
PLOT_NAME = "throughput_latency.png"
SUMMARY_NAME = "summary.md"


def write_load_csv(points: Sequence[LoadPoint], path: Path) -> Path:
    names = [field.name for field in dataclasses.fields(LoadPoint)]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=names)
        writer.writeheader()
        for point in points:
            writer.writerow({name: getattr(point, name) for name in names})
    return path


def _path_rows(result: PerfResult) -> list[tuple[str, PathTiming]]:
    rows = [] if result.diffusers is None else [("diffusers", result.diffusers)]
    rows += [
        ("onnx_loop", result.onnx_loop),
        ("onnx_loop_slope_low", result.onnx_loop_slope.low),
        ("onnx_loop_slope_high", result.onnx_loop_slope.high),
        ("triton_client", result.triton_client),
        ("triton_slope_low", result.triton_slope.low),
        ("triton_slope_high", result.triton_slope.high),
    ]
    return rows


def write_paths_csv(result: PerfResult, path: Path) -> Path:
    """One row per timed in-process or client run series: the concurrency-1 comparison."""
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["series", "num_inference_steps", "runs", "median_ms", "min_ms", "max_ms", "latencies_ms"])
        for name, timing in _path_rows(result):
            writer.writerow(
                [
                    name,
                    timing.num_inference_steps,
                    len(timing.latencies_ms),
                    f"{timing.median_ms:.3f}",
                    f"{timing.min_ms:.3f}",
                    f"{timing.max_ms:.3f}",
                    " ".join(f"{value:.3f}" for value in timing.latencies_ms),
                ]
            )
    return path


def write_plot(result: PerfResult, path: Path) -> Path:
    """Throughput against p50 (left) and p99 (right) latency, one line per scenario, levels annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=False)
    for axis, attribute, title in ((axes[0], "p50_ms", "p50 latency"), (axes[1], "p99_ms", "p99 latency")):
        for scenario in result.scenarios:
            points = points_of(result.points, scenario.name)
            if not points:
                continue
            xs = [point.throughput_per_s for point in points]
            ys = [getattr(point, attribute) for point in points]
            style = "o-" if scenario.mode is LoadMode.CONCURRENCY else "s--"
            axis.plot(xs, ys, style, label=f"{scenario.name} ({scenario.mode.value.replace('_', ' ')})")
            for point, x, y in zip(points, xs, ys, strict=True):
                label = f"c{int(point.level)}" if point.concurrency is not None else f"{point.level:g}/s"
                axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if attribute == "p50_ms":
            axis.axhline(result.onnx_loop.median_ms, color="grey", linestyle=":", label="plain ONNX loop, c1")
            if result.diffusers is not None:
                axis.axhline(result.diffusers.median_ms, color="black", linestyle=":", label="diffusers, c1")
        axis.set_xlabel("throughput (images/s)")
        axis.set_ylabel(f"{title} (ms)")
        axis.set_title(f"{result.profile}: throughput vs {title}")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def goal_verdict(measured: float | None, goal: float, unit: str) -> str:
    """``met``, or by how much a measured value (lower is better) missed its goal."""
    if measured is None:
        return "not measured"
    if measured <= goal:
        return "met"
    return f"missed by {measured - goal:.3g}{unit} ({measured / goal:.2f}x the goal)"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def headline(result: PerfResult) -> str:
    """The concurrency-1 comparison in one paragraph, for the terminal."""
    over_diffusers = result.triton_over_diffusers
    diffusers = (
        "diffusers skipped"
        if over_diffusers is None
        else f"{over_diffusers:.3f}x diffusers (goal <= {GOAL_TRITON_OVER_DIFFUSERS}x: "
        f"{goal_verdict(over_diffusers, GOAL_TRITON_OVER_DIFFUSERS, 'x')})"
    )
    bls = result.bls_unet_call_ms
    bls_text = (
        "identity-UNet BLS probe not run"
        if bls is None
        else f"one BLS UNet call {bls:.3f} ms (goal < {GOAL_BLS_UNET_CALL_MS} ms: "
        f"{goal_verdict(bls, GOAL_BLS_UNET_CALL_MS, ' ms')})"
    )
    return (
        f"Triton at concurrency 1: {result.triton_end_to_end_ms:.1f} ms = {result.triton_over_onnx_loop:.3f}x the "
        f"plain ONNX loop (goal <= {GOAL_TRITON_OVER_ONNX_LOOP}x: "
        f"{goal_verdict(result.triton_over_onnx_loop, GOAL_TRITON_OVER_ONNX_LOOP, 'x')}), {diffusers}; {bls_text}; "
        f"serving adds {result.unet_call_net_ms:.3f} ms per real UNet call"
    )


def _plus_minus(error_ms: float | None) -> str:
    return " (single runs: not resolved)" if error_ms is None else f" ± {error_ms:.3f}"


def _bls_paragraph(result: PerfResult) -> str:
    low = result.triton_slope.low.num_inference_steps
    high = result.triton_slope.high.num_inference_steps
    stats = result.slope_unet_stats
    parts = []
    probe = result.bls_probe
    if probe is not None:
        parts.append(
            f"One BLS UNet call, measured with an identity UNet (the same repository, its UNet returning the "
            f"sample): the per-step slope between {low} and {high} steps is {probe.triton_slope.ms_per_step:.3f} "
            f"ms/step through Triton and {probe.onnx_loop_slope.ms_per_step:.3f} ms/step in the plain loop, so "
            f"the call mechanism costs **{probe.round_trip_ms:.3f}{_plus_minus(probe.round_trip_error_ms)} ms** "
            "per call (± one standard error of the medians)."
        )
    else:
        parts.append("The identity-UNet probe did not run (see below), so the BLS goal is not judged.")
    parts.append(
        f"With the real UNet, the slopes are {result.triton_slope.ms_per_step:.3f} ms/step through Triton and "
        f"{result.onnx_loop_slope.ms_per_step:.3f} ms/step in the plain loop ({result.unet_calls_per_step:g} UNet "
        f"call(s) per step): serving adds **{result.unet_call_net_ms:.3f}"
        f"{_plus_minus(result.unet_call_net_error_ms)} ms** per real UNet call, fixed costs cancelled. Triton's "
        f"statistics for `unet` over those runs: {stats.server_ms_per_request:.3f} ms per call in the server "
        f"(queue {stats.queue_ms_per_request:.3f} ms, compute {stats.compute_infer_ms_per_request:.3f} ms) against "
        f"{result.onnx_loop_networks.unet_ms_per_call:.3f} ms for the bare ONNX Runtime call in the plain loop."
    )
    return " ".join(parts)


def summary_markdown(result: PerfResult, *, plot_name: str = PLOT_NAME) -> str:
    """The run's markdown summary: machine, concurrency-1 comparison and goals, breakdown, load curves."""
    machine = result.machine
    request = result.request
    lines = [
        f"# sdtriton perf: `{result.profile}` profile",
        "",
        f"{machine.started_utc} on `{machine.hostname}`: {machine.cpu_model}, {machine.cpu_count} cores, "
        f"{machine.memory_gib:.0f} GiB, {'baselines on the GPU' if machine.gpu else 'no GPU used'}; "
        f"tritonserver {machine.triton_version}. Run took {result.elapsed_s / 60:.1f} min.",
        "",
        f"Load average (1/5/15 min) before the run {'/'.join(f'{v:.2f}' for v in machine.load_average_before)}, "
        f"after {'/'.join(f'{v:.2f}' for v in machine.load_average_after)}.",
    ]
    if machine.busy_at_start:
        lines += [
            "",
            f"**The 1-minute load average was {machine.load_average_before[0]:.2f} on {machine.cpu_count} cores when "
            "this run started: other work (or a run that had just ended) was using the CPU; compare the spread of "
            "the runs below.**",
        ]
    lines += [
        "",
        f"Baseline request (`{result.baseline_input_data}`): prompt {request.prompt!r}, negative prompt "
        f"{request.negative_prompt!r}, {request.num_inference_steps} steps, guidance {request.guidance_scale:g}, "
        f"{request.width}x{request.height}, seed {request.seed}, scheduler `{request.scheduler}`; the same weights "
        "on every path.",
        "",
        "## Concurrency 1: Triton against its baselines",
        "",
        "| path | median ms | min ms | max ms | runs |",
        "|---|---:|---:|---:|---:|",
    ]
    named = [
        ("(a) diffusers `StableDiffusionPipeline`, in-process", result.diffusers),
        ("(b) plain loop over the served ONNX files, no Triton", result.onnx_loop),
        ("(c) Triton over gRPC, the client's request, one at a time", result.triton_client),
    ]
    for name, timing in named:
        if timing is None:
            lines.append(f"| {name} | skipped | | | |")
        else:
            lines.append(
                f"| {name} | {timing.median_ms:.1f} | {timing.min_ms:.1f} | {timing.max_ms:.1f} | "
                f"{len(timing.latencies_ms)} |"
            )
    point = result.triton_concurrency_1
    if point is not None:
        lines.append(
            f"| (c) Triton, perf_analyzer `{point.scenario}` at concurrency 1 (p50) | {point.p50_ms:.1f} | | "
            f"p99 {point.p99_ms:.1f} | {point.request_count} |"
        )
    triton_source = "perf_analyzer p50 at concurrency 1" if point is not None else "the client's median"
    bls = result.bls_unet_call_ms
    over_diffusers = result.triton_over_diffusers
    lines += [
        "",
        f"Triton end to end = {triton_source} = {result.triton_end_to_end_ms:.1f} ms.",
        "",
        "| measure | measured | goal | verdict |",
        "|---|---:|---:|---|",
        f"| Triton / plain ONNX loop | {result.triton_over_onnx_loop:.3f}x | <= {GOAL_TRITON_OVER_ONNX_LOOP}x | "
        f"{goal_verdict(result.triton_over_onnx_loop, GOAL_TRITON_OVER_ONNX_LOOP, 'x')} |",
        f"| Triton / diffusers | {'' if over_diffusers is None else f'{over_diffusers:.3f}x'} | "
        f"<= {GOAL_TRITON_OVER_DIFFUSERS}x | {goal_verdict(over_diffusers, GOAL_TRITON_OVER_DIFFUSERS, 'x')} |",
        f"| one BLS UNet call (identity UNet) | {'' if bls is None else f'{bls:.3f} ms'} | "
        f"< {GOAL_BLS_UNET_CALL_MS} ms | {goal_verdict(bls, GOAL_BLS_UNET_CALL_MS, ' ms')} |",
        "",
        "The goals are those of issue 3, set for the default model at concurrency 1; on other profiles they are "
        "for reference.",
        "",
        _bls_paragraph(result),
        "",
        "## Where one request's time goes (ms)",
        "",
        "Means per request over the timed runs. Plain loop: timers around each network call. Triton: per-model "
        "statistics (queue + compute) over the client-timed runs.",
        "",
        "| part | plain ONNX loop | Triton |",
        "|---|---:|---:|",
    ]
    for row in time_breakdown(result):
        lines.append(f"| {row.part} | {_ms(row.onnx_loop_ms)} | {_ms(row.triton_ms)} |")
    if result.max_pixel_difference:
        pairs = ", ".join(f"{name} {value}/255" for name, value in result.max_pixel_difference.items())
        lines += ["", f"Same image on every path (largest pixel difference): {pairs}."]
    lines += [
        "",
        "## Load curves (perf_analyzer)",
        "",
        f"![throughput against latency]({plot_name})",
        "",
        "| scenario | protocol | mode | level | requests | images/s | p50 ms | p90 ms | p99 ms | avg ms | "
        "server queue ms | server compute ms |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in result.scenarios:
        for load in points_of(result.points, scenario.name):
            level = f"c={int(load.level)}" if load.concurrency is not None else f"{load.level:g}/s"
            lines.append(
                f"| {load.scenario} | {load.protocol} | {load.mode} | {level} | {load.request_count} | "
                f"{load.throughput_per_s:.2f} | {load.p50_ms:.1f} | {load.p90_ms:.1f} | {load.p99_ms:.1f} | "
                f"{load.avg_ms:.1f} | {load.server_queue_ms:.1f} | {load.server_compute_ms:.1f} |"
            )
    if result.skipped:
        lines += ["", "Not run:", "", *(f"- {reason}" for reason in result.skipped)]
    return "\n".join(lines) + "\n"


def write_reports(result: PerfResult, directory: Path) -> dict[str, Path]:
    """Writes every output of a run into ``directory``; returns them by kind."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = directory / SUMMARY_NAME
    summary.write_text(summary_markdown(result))
    return {
        "load_csv": write_load_csv(result.points, directory / LOAD_CSV_NAME),
        "paths_csv": write_paths_csv(result, directory / PATHS_CSV_NAME),
        "plot": write_plot(result, directory / PLOT_NAME),
        "summary": summary,
    }
