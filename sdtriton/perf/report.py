"""Writes a run's CSV files, plot (PNG) and markdown summary, for either profile. What the simulated accelerator
measured is labelled so: a ``simulated`` CSV column, SIMULATED in its section, goals and plot panel. A summary gives
each section's numbers and verdicts; how a section is measured is in perf/README.md, under the same heading."""

from __future__ import annotations

import csv
import dataclasses
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sdtriton.perf import model
from sdtriton.perf.model import EngineResult, Load, Outcome, PerfResult, Run
from sdtriton.perf.profiles import LoadMode

SUMMARY_NAME = "summary.md"
# The perf_analyzer profile's files, and the engine profile's.
LOAD_CSV_NAME, PATHS_CSV_NAME, PLOT_NAME = "load_points.csv", "paths.csv", "throughput_latency.png"
ENGINE_LOAD_CSV_NAME, REQUESTS_CSV_NAME = "engine_load_points.csv", "engine_requests.csv"
GOALS_CSV_NAME, ENGINE_PLOT_NAME = "engine_goals.csv", "engine_sweep.png"
# Other processes' share of the CPU above which the summary says the run shared the machine.
OTHER_CPU_SHARE_NOTE = 0.05
# perf/README.md, as a summary in perf/results/<profile>/ links it.
README_LINK = "../../README.md"
_PERCENTILES = (50, 90, 95, 99)
_ENGINE_LOAD_COLUMNS = ("section", "variant", "simulated", "concurrency", "requests", "failed", "duration_s")
_ENGINE_LOAD_COLUMNS += ("images_per_s", *(f"p{q}_ms" for q in _PERCENTILES), "mean_ms")
_REQUEST_COLUMNS = ("load", "simulated", "class", "client", "started_s", "latency_ms", "outcome", "error_type")
_REQUEST_COLUMNS += ("message",)
_GOAL_COLUMNS = ("measure", "measured", "goal", "verdict", "simulated")
_POINT_TIMES = ("p50_ms", "p90_ms", "p99_ms", "avg_ms", "server_queue_ms", "server_compute_ms")
_PATH_COLUMNS = ("series", "num_inference_steps", "runs", "median_ms", "min_ms", "max_ms", "latencies_ms")
# The engine plot's lines and the gateway table's rows: a variant's label and colour.
_VARIANTS = {
    model.BATCHING_ON: ("step batching on", "tab:blue"),
    model.BATCHING_OFF: ("step batching off", "tab:orange"),
    model.DIRECT_GRPC: ("direct gRPC", "tab:purple"),
    model.GATEWAY_HTTP: ("HTTP gateway", "tab:red"),
}
# A ceiling section's in-process engine and server on the engine plot's throughput panel.
_CEILING_MARKS = (("*", "in-process engine (ceiling)"), ("x", "Triton"))
_NOT_RUN = ["Not run (see below)."]
# A summary is blocks separated by blank lines: a paragraph, a table's lines; False or None is left out.
Block = str | Sequence[str] | bool | None


def _f(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _images_per_s(load: Load) -> float:
    """The plain loop is timed one image at a time, with no wall time of its own: one image over its median."""
    return 1000.0 / load.median_ms if load.variant == model.ONNX_LOOP else load.images_per_s


def _spread(timing: Load, digits: int) -> list[str]:
    """A timed series' median, min and max (ms)."""
    return [f"{ms:.{digits}f}" for ms in (timing.median_ms, min(timing.latencies_ms), max(timing.latencies_ms))]


def _heading(heading: str) -> list[str]:
    """A section's heading and a link to perf/README.md's section of the same heading, which says how it is measured
    (GitHub's anchor: lower case, punctuation dropped, a hyphen for each space)."""
    anchor = "".join(char for char in heading.lower() if char.isalnum() or char in " -_").replace(" ", "-")
    return [f"## {heading}", f"How this is measured: [perf/README.md]({README_LINK}#{anchor})."]


def _table(align: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table; ``align`` has an ``l`` (left) or ``r`` (right) per column."""
    rule = "|".join("---:" if side == "r" else "---" for side in align)
    return [f"| {' | '.join(header)} |", f"|{rule}|", *(f"| {' | '.join(map(str, row))} |" for row in rows)]


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    with path.open("w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    return path


def write_reports(result: Run, directory: Path) -> dict[str, Path]:
    """Writes every output of a run into ``directory``: its CSV files, plot and summary; returns them by kind."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(result, EngineResult):
        goals = [(row.measure, row.measured, row.goal, row.verdict, row.simulated) for row in result.goal_rows()]
        loads = [_load_row(*load) for load in _engine_loads(result)]
        tables = {
            "load_csv": (ENGINE_LOAD_CSV_NAME, _ENGINE_LOAD_COLUMNS, loads),
            "requests_csv": (REQUESTS_CSV_NAME, _REQUEST_COLUMNS, _request_rows(result)),
            "goals_csv": (GOALS_CSV_NAME, _GOAL_COLUMNS, goals),
        }
        plot = ENGINE_PLOT_NAME
    else:
        names = [field.name for field in dataclasses.fields(model.LoadPoint)]
        points = ([getattr(point, name) for name in names] for point in result.points)
        tables = {
            "load_csv": (LOAD_CSV_NAME, names, points),
            "paths_csv": (PATHS_CSV_NAME, _PATH_COLUMNS, _path_rows(result)),
        }
        plot = PLOT_NAME
    files = {kind: _write_csv(directory / name, header, rows) for kind, (name, header, rows) in tables.items()}
    files["plot"] = _write_plot(result, directory / plot)
    files["summary"] = directory / SUMMARY_NAME
    files["summary"].write_text(summary_markdown(result))
    return files


def _path_rows(result: PerfResult) -> Iterable[list[object]]:
    """One row per timed in-process or client run series: the concurrency-1 comparison."""
    series = [("diffusers", result.diffusers)] if result.diffusers is not None else []
    series += [("onnx_loop", result.onnx_loop), ("onnx_loop_slope_low", result.onnx_loop_slope.low)]
    series += [("onnx_loop_slope_high", result.onnx_loop_slope.high), ("triton_client", result.triton_client)]
    series += [("triton_slope_low", result.triton_slope.low), ("triton_slope_high", result.triton_slope.high)]
    for name, timing in series:
        latencies = " ".join(f"{value:.3f}" for value in timing.latencies_ms)
        yield [name, timing.steps, len(timing.latencies_ms), *_spread(timing, 3), latencies]


def _load_row(section: str, load: Load, variant: str = "") -> list[object]:
    """A client load; the plain loop, timed one image at a time (images/s from its median, no wall time); or the
    in-process engine (its wall time, no percentiles)."""
    plain, in_process = load.variant == model.ONNX_LOOP, load.variant == model.IN_PROCESS
    times = [None] * 5 if in_process else [*(load.percentile_ms(q) for q in _PERCENTILES), load.mean_ms]
    counts = [len(load.records), "" if plain or in_process else load.failed, "" if plain else _f(load.duration_s)]
    row = [section, variant or load.variant, section == model.SIMULATED, load.concurrency, *counts]
    return [*row, _f(_images_per_s(load)), *map(_f, times)]


def _engine_loads(result: EngineResult) -> list[tuple[str, Load, str]]:
    """Every load of the load CSV, in its order: (section, load, the variant shown if not the load's own)."""
    simulated, loads = result.simulated, []
    for section, ceiling in _ceilings(result):
        loads += [(section, ceiling.plain_loop, "plain_loop")]
        loads += [(section, load, "") for load in (ceiling.in_process, ceiling.served_one, ceiling.served)]
    sweep = sorted(result.sweep, key=lambda point: (point.variant != model.BATCHING_ON, point.concurrency))
    zero_time = (simulated.non_unet_low, simulated.non_unet_high) if simulated else ()
    loads += [("sweep", point, "") for point in sweep]
    loads += [(model.SIMULATED, run, "in_process_engine_zero_time_unet") for run in zero_time]
    loads += [(model.SIMULATED, point, "") for point in (simulated.points if simulated else ())]
    return loads + [("gateway", load, "") for load in _gateway_loads(result)]


def _gateway_loads(result: EngineResult) -> tuple[Load, ...]:
    return (*result.gateway.direct, *result.gateway.gateway) if result.gateway is not None else ()


def _ceilings(result: EngineResult) -> list[tuple[str, model.CeilingResult]]:
    """The ceiling sections that ran: the base request's, the mixed inputs'."""
    ceilings = (("ceiling", result.ceiling), ("mixed_inputs", result.mixed_inputs))
    return [(section, ceiling) for section, ceiling in ceilings if ceiling is not None]


def _request_rows(result: EngineResult) -> Iterable[list[object]]:
    """Every client request; ``started_s`` counts from the start of its load (of its turn, for loads in turns)."""
    loads = [load for _, load, _ in _engine_loads(result) if load.variant not in (model.ONNX_LOOP, model.IN_PROCESS)]
    loads += [result.mixed.short_only, result.mixed.mixed] if result.mixed is not None else []
    records = [record for load in loads for record in load.records]
    if result.burst is not None:
        records += [*result.burst.warmup_records, *result.burst.records]
    for r in records:
        started, latency, simulated = f"{r.started_s:.4f}", f"{r.latency_ms:.3f}", r.load.startswith(model.SIMULATED)
        yield [r.load, simulated, r.request_class, r.client, started, latency, r.outcome.value, r.error_type, r.message]


def _write_plot(result: Run, path: Path) -> Path:
    """perf_analyzer: throughput against p50 and p99 latency, a line per scenario. Engine: throughput and latency
    against concurrency, step batching on and off, and the simulated accelerator apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine = isinstance(result, EngineResult)
    panels = 3 if engine and result.shown(model.SIMULATED) else 2
    figure, axes = plt.subplots(1, panels, figsize=(4 + 4 * panels, 4.8))
    (_engine_plot if engine else _perf_analyzer_plot)(result, axes)
    for axis in axes:
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _label(axis: Any, xlabel: str, ylabel: str, title: str, levels: list[int] | None = None) -> None:
    """A panel's labels; with ``levels``, a log-2 concurrency axis labelled with the levels themselves (1, 2, 4, 8)."""
    axis.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if levels is not None:
        axis.set_xscale("log", base=2)
    if levels:
        axis.set_xticks(levels, [str(level) for level in levels])
        axis.minorticks_off()


def _perf_analyzer_plot(result: PerfResult, axes: Sequence[Any]) -> None:
    for axis, attribute, title in ((axes[0], "p50_ms", "p50 latency"), (axes[1], "p99_ms", "p99 latency")):
        for scenario in result.scenarios:
            points = result.points_of(scenario.name)
            xs, ys = [point.throughput_per_s for point in points], [getattr(point, attribute) for point in points]
            style = "o-" if scenario.mode is LoadMode.CONCURRENCY else "s--"
            if points:
                axis.plot(xs, ys, style, label=f"{scenario.name} ({scenario.mode.value.replace('_', ' ')})")
            for point, x, y in zip(points, xs, ys, strict=True):
                label = f"c{int(point.level)}" if point.concurrency is not None else f"{point.level:g}/s"
                axis.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if attribute == "p50_ms":
            axis.axhline(result.onnx_loop.median_ms, color="grey", linestyle=":", label="plain ONNX loop, c1")
            if result.diffusers is not None:
                axis.axhline(result.diffusers.median_ms, color="black", linestyle=":", label="diffusers, c1")
        _label(axis, "throughput (images/s)", f"{title} (ms)", f"{result.profile}: throughput vs {title}")


def _engine_plot(result: EngineResult, axes: Sequence[Any]) -> None:
    throughput_axis, latency_axis, *simulated_axes = axes
    gateway = _gateway_loads(result)
    for variant, (label, colour) in _VARIANTS.items():
        points = sorted((p for p in (*result.sweep, *gateway) if p.variant == variant), key=lambda p: p.concurrency)
        levels = [p.concurrency for p in points]
        if points:
            throughput_axis.plot(levels, [p.images_per_s for p in points], "o-", color=colour, label=label)
            latency_axis.plot(levels, [p.p50_ms for p in points], "o-", color=colour, label=f"{label}, p50")
            latency_axis.plot(levels, [p.p99_ms for p in points], "s--", color=colour, label=f"{label}, p99")
    for section, ceiling in _ceilings(result):
        what, colour = ("", "black") if section == "ceiling" else ("mixed inputs: ", "tab:green")
        for load, (mark, name) in zip((ceiling.in_process, ceiling.served), _CEILING_MARKS, strict=True):
            throughput_axis.plot([load.concurrency], [load.images_per_s], mark, color=colour, ms=10, label=what + name)
        plain_per_s = _images_per_s(ceiling.plain_loop)
        throughput_axis.axhline(plain_per_s, color=colour, linestyle=":", label=f"{what}plain loop, one at a time")
    levels = sorted({*result.levels(), *(load.concurrency for load in gateway)})
    for axis, measure in ((throughput_axis, "throughput (images/s)"), (latency_axis, "latency (ms)")):
        title = f"{result.profile}: {measure.split(' (')[0]} against concurrency"
        _label(axis, "concurrency (client threads)", measure, title, levels)
    simulated = result.simulated
    for axis in simulated_axes:  # the third panel, when the profile has the section
        points = sorted(simulated.points if simulated else (), key=lambda p: p.concurrency)
        levels, what = [p.concurrency for p in points], "not run" if simulated is None else f"UNet {simulated.latency}"
        title = f"SIMULATED accelerator ({what})"
        _label(axis, "concurrency", "SIMULATED throughput (images/s)", title, levels or None)
        if simulated is not None:
            low = simulated.low.images_per_s
            axis.plot(levels, [p.images_per_s for p in points], "o-", color="tab:green", label="measured")
            allowed = [low * simulated.latency.throughput_ratio(level, simulated.rows_per_image) for level in levels]
            axis.plot(levels, allowed, "k:", label="allowed, UNet alone (x c1)")
            counted, high = "allowed, non-UNet parts counted (x c1)", simulated.high.concurrency
            axis.plot([high], [low * simulated.allowed_ratio], "r*", markersize=12, label=counted)


def _header(result: Run) -> list[Block]:
    """The run's title, machine, load and base request."""
    machine, request, share = result.machine, result.request, result.other_cpu_share
    averages = (machine.load_average_before, machine.load_average_after)
    before, after = ("/".join(map("{:.2f}".format, values)) for values in averages)
    shared = f". **Above {OTHER_CPU_SHARE_NOTE:.0%}: the numbers below shared the CPU with other work.**"
    engine = " (the diffusion engine)" if isinstance(result, EngineResult) else ""
    return [
        f"# sdtriton perf: `{result.profile}` profile{engine}",
        f"{machine.started_utc} on `{machine.hostname}`: {machine.cpu_model}, {machine.cpu_count} cores, "
        f"{machine.memory_gib:.0f} GiB, {'baselines on the GPU' if machine.gpu else 'no GPU used'}; "
        f"tritonserver {machine.triton_version}. Run took {result.elapsed_s / 60:.1f} min.",
        f"Load average (1/5/15 min) before the run {before}, after {after}.",
        share is not None
        and f"Other processes (not this run, its servers or their stubs) used {result.other_cpu_s:.0f} CPU-seconds "
        f"during the run: {share:.1%} of the {machine.cpu_count} cores' time"
        + (shared if share > OTHER_CPU_SHARE_NOTE else "."),
        machine.busy_at_start
        and f"**The 1-minute load average was {machine.load_average_before[0]:.2f} on {machine.cpu_count} cores when "
        "this run started: other work (or a run that had just ended) was using the CPU.**",
        f"Base request (`{result.input_data}`): prompt {request.prompt!r}, negative prompt "
        f"{request.negative_prompt!r}, {request.num_inference_steps} steps, guidance {request.guidance_scale:g}, "
        f"{request.width}x{request.height}, seed {request.seed}, scheduler `{request.scheduler}`.",
    ]


def _goal_table(rows: list[model.GoalRow]) -> list[str]:
    cells = [(row.measure, row.measured, row.goal, row.verdict) for row in rows]
    return _table("lrrl", ("measure", "measured", "goal", "verdict"), cells)


def _plus_minus(error_ms: float | None) -> str:
    return " (single runs: not resolved)" if error_ms is None else f" ± {error_ms:.3f}"


def summary_markdown(result: Run) -> str:
    """The run's markdown summary: machine, goals, then each measurement's numbers and verdicts."""
    engine = isinstance(result, EngineResult)
    blocks = [*_header(result), *(_engine_sections(result) if engine else _perf_analyzer_sections(result))]
    if result.skipped:
        blocks += ["## Not run", [f"- {reason}" for reason in result.skipped]]
    lines = [line for block in blocks if block for line in ("", *([block] if isinstance(block, str) else block))]
    return "\n".join(lines[1:]) + "\n"


def _perf_analyzer_sections(result: PerfResult) -> list[Block]:
    paths = [
        ("(a) diffusers `StableDiffusionPipeline`, in-process", result.diffusers),
        ("(b) plain loop over the served ONNX files, no Triton", result.onnx_loop),
        ("(c) Triton over gRPC, the client's request, one at a time", result.triton_client),
    ]
    rows = [(name, *_spread(t, 1), len(t.latencies_ms)) if t else (name, "skipped", "", "", "") for name, t in paths]
    point = result.triton_concurrency_1
    if point is not None:
        name = f"(c) Triton, perf_analyzer `{point.scenario}` at concurrency 1 (p50)"
        rows.append((name, f"{point.p50_ms:.1f}", "", f"p99 {point.p99_ms:.1f}", point.request_count))
    source = "perf_analyzer p50 at concurrency 1" if point is not None else "the client's median"
    slope, loop_slope, stats = result.triton_slope, result.onnx_loop_slope, result.slope_unet_stats
    probe = "The identity-UNet probe did not run (see below), so the BLS goal is not judged."
    if result.bls_round_trip is not None:
        cost, error = result.bls_round_trip
        probe = (
            f"With an identity UNet, the per-step slope between {slope.low.steps} and {slope.high.steps} steps is "
            f"{result.probe_triton_slope.ms_per_step:.3f} ms/step through Triton and "
            f"{result.probe_loop_slope.ms_per_step:.3f} ms/step in the plain loop: one BLS UNet call costs "
            f"**{cost:.3f}{_plus_minus(error)} ms**."
        )
    net, net_error = result.unet_call_net
    breakdown = [(part, _f(loop_ms, 1), _f(triton_ms, 1)) for part, loop_ms, triton_ms in result.time_breakdown()]
    pairs = ", ".join(f"{name} {value}/255" for name, value in result.max_pixel_difference.items())
    header = ["scenario", "protocol", "mode", "level", "requests", "images/s"]
    header += [time.replace("_", " ") for time in _POINT_TIMES]
    points = []
    for p in (point for scenario in result.scenarios for point in result.points_of(scenario.name)):
        level = f"c={int(p.level)}" if p.concurrency is not None else f"{p.level:g}/s"
        times = (f"{getattr(p, name):.1f}" for name in _POINT_TIMES)
        points.append([p.scenario, p.protocol, p.mode, level, p.request_count, f"{p.throughput_per_s:.2f}", *times])
    return [
        *_heading("Concurrency 1: Triton against its baselines"),
        _table("lrrrr", ("path", "median ms", "min ms", "max ms", "runs"), rows),
        f"Triton end to end = {source} = {result.triton_end_to_end_ms:.1f} ms.",
        _goal_table(result.goal_rows()),
        f"{probe} With the real UNet: {slope.ms_per_step:.3f} ms/step through Triton, {loop_slope.ms_per_step:.3f} "
        f"in the plain loop ({result.unet_calls_per_step:g} UNet call(s) a step): serving adds "
        f"**{net:.3f}{_plus_minus(net_error)} ms** per real UNet call. Triton's `unet` statistics over those runs: "
        f"{stats.ms_per_request():.3f} ms a call (queue {stats.ms_per_request('queue'):.3f}, compute "
        f"{stats.ms_per_request('compute_infer'):.3f}), the plain loop's ONNX Runtime call "
        f"{result.onnx_loop_networks.unet_ms_per_call:.3f} ms.",
        *_heading("Where one request's time goes (ms)"),
        _table("lrr", ("part", "plain ONNX loop", "Triton"), breakdown),
        bool(pairs) and f"Same image on every path (largest pixel difference): {pairs}.",
        *_heading("Load curves (perf_analyzer)"),
        f"![throughput against latency]({PLOT_NAME})",
        _table("lllrrrrrrrrr", header, points),
    ]


def _engine_sections(result: EngineResult) -> list[Block]:
    """The goals, then each section the profile has or that ran."""
    sections = (
        ("ceiling", "(a) Compute ceiling against served throughput", _ceiling_lines),
        ("sweep", "(b) Concurrency sweep, step batching on and off", _sweep_lines),
        ("mixed", "(c) Mixed steps: short requests beside long ones", _mixed_lines),
        ("burst", "(d) A burst past the queue limit", _burst_lines),
        ("simulated", "(e) SIMULATED accelerator", _simulated_lines),
        ("gateway", "(f) The HTTP gateway against direct gRPC", _gateway_lines),
        ("mixed_inputs", "(g) Mixed inputs: text only, img2img, inpaint, two adapters", _mixed_inputs_lines),
    )
    blocks: list[Block] = ["## Goals", _goal_table(result.goal_rows())]
    for name, title, body in sections:
        section = getattr(result, name)
        if result.shown(name):
            ran = section and (name != "gateway" or section.levels())
            blocks += [*_heading(title), *(body(result, section) if ran else _NOT_RUN)]
    return blocks


def _level_cells(level: Load | None, digits: int = 1, percentiles: Sequence[int] = (50, 99)) -> list[str]:
    """images/s and the ``percentiles`` (ms) of a level; empty when it completed no request."""
    if level is None or not level.completed:
        return [""] * (1 + len(percentiles))
    return [f"{_images_per_s(level):.2f}", *(f"{level.percentile_ms(q):.{digits}f}" for q in percentiles)]


def _ceiling_lines(result: EngineResult, ceiling: model.CeilingResult) -> list[Block]:
    run, plain, served, one = ceiling.in_process, ceiling.plain_loop, ceiling.served, ceiling.served_one
    rows = [
        ("plain loop (`generate_image`, one image at a time; median)", 1, *_level_cells(plain), len(plain.records)),
        ("Triton", 1, *_level_cells(one), len(one.records)),
        ("in-process engine (ceiling)", run.concurrency, f"{run.images_per_s:.2f}", "", "", run.completed),
        ("Triton", served.concurrency, *_level_cells(served), len(served.records)),
    ]
    return [
        f"The in-process engine: {run.concurrency} requests at once, UNet calls of {run.rows_per_unet_call:.1f} rows "
        f"on average; it and the server ran in {len(ceiling.turn_ratios)} turns.",
        _table("lrrrrr", ("path", "concurrency", "images/s", "p50 ms", "p99 ms", "requests"), rows),
        f"Served / ceiling at concurrency {run.concurrency}: **{ceiling.served_over_ceiling:.3f}x** (by turn: "
        f"{', '.join(f'{ratio:.3f}' for ratio in ceiling.turn_ratios)}); served p50 at concurrency 1 / plain loop "
        f"median: **{ceiling.one_over_plain_loop:.3f}x**.",
    ]


def _mixed_inputs_lines(result: EngineResult, mix: model.CeilingResult) -> list[Block]:
    """(a) over the mixed requests, the requests of each kind, and the two ceilings side by side."""
    header = ("kind", "in-process requests", "served requests", "served p50 ms", "served requests at 1", "p50 ms at 1")
    kinds = [
        (kind, run.completed, served.completed, _f(served.p50_ms, 0), one.completed, _f(one.p50_ms, 0))
        for kind, (run, served, one) in mix.kinds().items()
    ]
    measures = (
        (f"served images/s at concurrency {mix.served.concurrency}", lambda ceiling: ceiling.served.images_per_s),
        ("in-process engine images/s (ceiling)", lambda ceiling: ceiling.in_process.images_per_s),
        ("served / in-process engine", lambda ceiling: ceiling.served_over_ceiling),
        ("plain loop images/s, one at a time", lambda ceiling: _images_per_s(ceiling.plain_loop)),
        ("served p50 at concurrency 1 / plain loop median", lambda ceiling: ceiling.one_over_plain_loop),
    )
    text = result.ceiling
    side = [(name, _f(of(text)), _f(of(mix)), f"{of(mix) / of(text):.3f}x") for name, of in measures] if text else []
    return [
        *_ceiling_lines(result, mix),
        _table("lrrrrr", header, kinds),
        bool(side) and "Beside the base request alone (section (a), the same model, server and networks):",
        bool(side) and _table("lrrr", ("measure", "text only (a)", "mixed inputs (g)", "mixed / text only"), side),
    ]


def _sweep_lines(result: EngineResult, sweep: tuple[Load, ...]) -> list[Block]:
    ratios, variants = dict(result.on_off_ratios()), (model.BATCHING_ON, model.BATCHING_OFF)
    header = ["concurrency"]
    header += [f"{side}: {measure}" for side in ("on", "off") for measure in ("images/s", "p50 ms", "p99 ms")]
    rows = []
    for level in result.levels():
        cells = [cell for variant in variants for cell in _level_cells(result.sweep_point(variant, level), 0)]
        rows.append([level, *cells, f"{ratios[level]:.2f}x" if level in ratios else ""])
    return [f"![sweep]({ENGINE_PLOT_NAME})", _table("r" * 8, [*header, "on/off images/s"], rows)]


def _mixed_lines(result: EngineResult, mixed: model.MixedResult) -> list[Block]:
    spec = mixed.spec
    loads = [
        ("short only", model.SHORT, spec.short_steps, spec.concurrency, mixed.short_only),
        ("mixed", model.SHORT, spec.short_steps, spec.short_clients, mixed.mixed.of_class(model.SHORT)),
        ("mixed", model.LONG, spec.long_steps, spec.long_clients, mixed.mixed.of_class(model.LONG)),
    ]
    rows = []
    for load, name, steps, clients, level in loads:
        failed = level.failed if level.completed else ""
        rows.append([load, name, steps, clients, level.completed, failed, *_level_cells(level, 0, (50, 90, 99))])
    header = ("load", "class", "steps", "clients", "completed", "failed", "images/s", "p50 ms", "p90 ms", "p99 ms")
    return [
        f"{spec.short_clients} client threads send short requests back to back while {spec.long_clients} send "
        f"{spec.long_requests_per_client} long ones each; the reference: {spec.concurrency} clients, short ones only.",
        _table("ll" + "r" * 8, header, rows),
        f"Mixed load {mixed.mixed.duration_s:.1f} s, short-only load {mixed.short_only.duration_s:.1f} s. Short "
        f"requests' p99 beside long ones / alone: **{_f(mixed.short_p99_ratio, 2)}x**.",
    ]


def _burst_lines(result: EngineResult, burst: model.BurstResult) -> list[Block]:
    refusals, accepted = burst.latencies_ms(Outcome.REFUSED), burst.latencies_ms(Outcome.OK)
    header = ("sent", "accepted", "completed", "refused", "of which as UNAVAILABLE", "failed after acceptance")
    completed, refused, failed = (burst.count(outcome) for outcome in (Outcome.OK, Outcome.REFUSED, Outcome.FAILED))
    counts = (len(burst.records), burst.accepted, completed, refused, burst.refused_as_unavailable)
    failures = sorted({record.message for record in burst.records if record.outcome is Outcome.FAILED})
    cold = max(burst.latencies_ms(Outcome.REFUSED, warmup=True), default=None)
    lines = [
        refusals
        and f"Time to refusal: min {min(refusals):.1f} ms, median {statistics.median(refusals):.1f} ms, max "
        f"{max(refusals):.1f} ms (goal < {model.GOAL_REFUSAL_MS:g} ms each; "
        f"{sum(value >= model.GOAL_REFUSAL_MS for value in refusals)} at or over it).",
        accepted and f"Accepted requests' latency: {', '.join(f'{value:.0f}' for value in sorted(accepted))} ms.",
        burst.warmup_records
        and f"{burst.spec.warmup_bursts} warm-up burst(s) first, not judged: slowest refusal "
        f"{'-' if cold is None else f'{cold:.1f}'} ms.",
        failures and f"Failures: {'; '.join(failures)}.",
    ]
    return [
        f"`max_pending_requests` {burst.spec.max_pending_requests}; {burst.spec.requests} requests sent at once.",
        _table("r" * 6, header, [(*counts, failed)]),
        [line for line in lines if line],
    ]


def _simulated_lines(result: EngineResult, simulated: model.SimulatedResult) -> list[Block]:
    low, high, latency = simulated.non_unet_low, simulated.non_unet_high, simulated.latency
    c_low, c_high, rows = simulated.low.concurrency, simulated.high.concurrency, simulated.rows_per_image
    levels = sorted(simulated.points, key=lambda point: point.concurrency)
    points = [(level.concurrency, *_level_cells(level), len(level.records)) for level in levels]
    return [
        f"**Every number in this section is SIMULATED**: the UNet is a stand-in that sleeps {latency} (fixed + per "
        "batch row) a call; the text encoder and VAE decoder are the real ONNX models on this CPU.",
        _table("rrrrr", ("SIMULATED concurrency", "images/s", "p50 ms", "p99 ms", "requests"), points),
        f"Measured c{c_high}/c{c_low}: **{simulated.measured_ratio:.2f}x** (SIMULATED).",
        f"Allowed for the UNet alone (`SimulatedLatency.throughput_ratio`): {simulated.unet_only_allowed_ratio:.2f}x "
        f"({c_high} images of {rows} rows in one call of {latency.call_s(c_high * rows) * 1000:.0f} ms against one of "
        f"{latency.call_s(c_low * rows) * 1000:.0f} ms). The rest of a request, timed with a zero-time UNet: "
        f"{1000 / low.images_per_s:.1f} ms an image at c={low.concurrency} and {1000 / high.images_per_s:.1f} ms at "
        f"c={high.concurrency}; counted with {simulated.unet_calls_per_image:g} UNet calls an image: "
        f"{simulated.allowed_images_per_s(low):.2f} and {simulated.allowed_images_per_s(high):.2f} images/s, "
        f"**{simulated.allowed_ratio:.2f}x** allowed. Measured / allowed: **{simulated.share_of_allowed:.1%}** (goal "
        f">= {model.GOAL_SIMULATED_SHARE_OF_ALLOWED:.0%}); against the UNet-alone ratio: "
        f"{simulated.share_of_unet_only_allowed:.1%}.",
    ]


def _gateway_lines(result: EngineResult, gateway: model.GatewayResult) -> list[Block]:
    header = ("path", "concurrency", "images/s", "p50 ms", "p95 ms", "p99 ms", "requests", "failed")
    rows = []
    for direct, through, ratio, overhead_ms in gateway.levels():
        for load in (direct, through):
            cells = [*_level_cells(load, 1, (50, 95, 99)), len(load.records), load.failed]
            rows.append([_VARIANTS[load.variant][0], load.concurrency, *cells])
        rows.append(["gateway / direct", direct.concurrency, f"**{ratio:.3f}x**", f"**{overhead_ms:+.1f}**", *[""] * 4])
    idle_ms, serving_ms = gateway.gateway_cpu_ms or (math.nan, math.nan)
    return [
        _table("lrrrrrrr", header, rows),
        f"Gateway / direct images/s at concurrency {gateway.levels()[-1][0].concurrency}: "
        f"**{gateway.over_direct:.3f}x** (goal >= {model.GOAL_GATEWAY_OVER_DIRECT}; by turn: "
        f"{', '.join(f'{ratio:.3f}' for ratio in gateway.turn_ratios)}). The gateway process group's CPU time (from "
        f"`/proc`): **{serving_ms:.1f} ms** per request it served, {idle_ms:.1f} ms per direct request while idle.",
    ]


def headline(result: Run) -> str:
    """The run's line for the terminal: each measured goal and its verdict (the summary has the rest)."""
    rows = (row for row in result.goal_rows() if row.met is not None)
    parts = [f"{row.measure} {row.measured} (goal {row.goal}: {row.verdict})" for row in rows]
    if isinstance(result, PerfResult):
        parts.insert(0, f"Triton at concurrency 1: {result.triton_end_to_end_ms:.1f} ms")
        parts.append(f"serving adds {result.unet_call_net[0]:.3f} ms per real UNet call")
    return f"{result.profile}: {'; '.join(parts) or 'nothing measured'}"
