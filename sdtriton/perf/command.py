"""The ``perf`` command: runs a profile of ``perf/scenarios.json`` (:func:`sdtriton.perf.runner.run_perf`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from sdtriton.perf.profiles import PerfOptions

logger = logging.getLogger("sdtriton")


def _perf(args: argparse.Namespace) -> int:
    from sdtriton.perf.report import headline
    from sdtriton.perf.runner import run_perf

    given = {field.name: getattr(args, field.name) for field in _cli_fields()}
    result, files = run_perf(PerfOptions(**{name: value for name, value in given.items() if value is not None}))
    for path in files.values():
        sys.stdout.write(f"{path.resolve()}\n")
    sys.stdout.write(f"{headline(result)}\n")
    for reason in result.skipped:
        logger.warning("not run: %s", reason)
    return 1 if any("FAILED" in reason for reason in result.skipped) else 0


def _cli_fields() -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(PerfOptions) if "cli" in field.metadata]


def add_perf_command(commands: argparse._SubParsersAction) -> None:
    perf = commands.add_parser(
        "perf", help="load-test the served model with perf_analyzer against in-process baselines (perf/README.md)"
    )
    for field in _cli_fields():
        cli = dict(field.metadata["cli"])
        flags = cli.pop("flags") or (f"--{field.name.replace('_', '-')}",)
        perf.add_argument(*flags, dest=field.name, **cli)
    perf.set_defaults(run=_perf)
