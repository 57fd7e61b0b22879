"""The soak's report: ``report.json`` (:meth:`SoakResult.to_json`) and ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path

from sdtriton.ops.soak.plan import ALLOWED_OUTCOMES, KINDS
from sdtriton.ops.soak.run import SoakResult


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def render_markdown(result: SoakResult) -> str:
    """The report as markdown: outcomes by kind, lost and unexpected, latencies, memory, the restart."""
    report = result.to_json()
    lines = [
        "# Soak report",
        "",
        f"{report['requests']} requests in {report['duration_s']:.1f} s; answered {report['answered']}; "
        f"lost {len(report['lost'])}; unexpected outcomes {len(report['unexpected'])}; "
        f"client retries {report['client_retries']}.",
        "",
        "Settings: " + ", ".join(f"{key}={value}" for key, value in report["settings"].items()),
        "",
        "## Outcomes by kind",
        "",
        "| kind | requests | outcomes | allowed | p50 ms | p99 ms |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for kind in KINDS:
        outcomes = report["outcomes_by_kind"][kind.value]
        latency = report["latency_by_kind"].get(kind.value, {})
        lines.append(
            f"| {kind.value} | {sum(outcomes.values())} | "
            + ", ".join(f"{name} {count}" for name, count in outcomes.items())
            + f" | {', '.join(sorted(ALLOWED_OUTCOMES[kind]))} | {latency.get('p50_ms', '-')} | "
            f"{latency.get('p99_ms', '-')} |"
        )
    if report["unexpected"] or report["lost"]:
        lines += ["", "## Lost and unexpected", ""]
        lines += [f"- request {index}: lost (no answer in time)" for index in report["lost"]]
        lines += [
            f"- request {item['index']} ({item['kind']}): {item['outcome']}: {item['message']}"
            for item in report["unexpected"]
        ]
    memory = report["memory"]
    lines += ["", "## Server memory (VmRSS, MiB)", ""]
    if memory is None:
        lines.append("Not measured (no server pid).")
    else:
        lines += ["| process | after warm-up | at end | growth % |", "| --- | ---: | ---: | ---: |"]
        for row in memory["processes"]:
            growth = "-" if row["growth_percent"] is None else f"{row['growth_percent']:+.2f}"
            lines.append(
                f"| {row['name']} | {_kib(row['rss_after_warmup_kib'])} | {_kib(row['rss_at_end_kib'])} | {growth} |"
            )
        total_growth = "-" if memory["growth_percent"] is None else f"{memory['growth_percent']:+.2f}"
        lines.append(
            f"| **total** | {_kib(memory['total_after_warmup_kib'])} | {_kib(memory['total_at_end_kib'])} | "
            f"{total_growth} |"
        )
    restart = report["restart"]
    if restart is not None:
        downtime = "-" if restart["downtime_s"] is None else f"{restart['downtime_s']:.1f} s"
        lines += [
            "",
            "## Restart",
            "",
            f"Killed (SIGKILL) at {_seconds(restart['killed_s'])}, ready again at {_seconds(restart['ready_s'])}: "
            f"down {downtime}" + (f"; error: {restart['error']}" if restart["error"] else "") + ".",
            f"Sent while down: {restart['sent_during_outage']} "
            f"({', '.join(f'{k} {v}' for k, v in restart['outage_outcomes'].items()) or 'none'}); "
            f"retried to an image: {restart['outage_retried_to_image']}; "
            f"retries exhausted: {restart['outage_retries_exhausted']}.",
            f"Requests the client could not retry (submit, a stream past its first event) that failed with the "
            f"server: {restart['not_retryable_failed']}. The memory at the end is the restarted server's.",
        ]
    return "\n".join(lines) + "\n"


def write_report(result: SoakResult, out_dir: Path) -> tuple[Path, Path]:
    """Writes ``report.json`` and ``report.md`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(render_markdown(result), encoding="utf-8")
    return json_path, markdown_path
