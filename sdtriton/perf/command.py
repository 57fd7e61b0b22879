"""The ``perf`` command: runs a profile of ``perf/scenarios.json`` (:func:`sdtriton.perf.runner.run_perf`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

logger = logging.getLogger("sdtriton")


def _perf(args: argparse.Namespace) -> int:
    from sdtriton.perf.profiles import PerfOptions
    from sdtriton.perf.report import headline
    from sdtriton.perf.runner import run_perf

    given = {field.name: getattr(args, field.name, None) for field in dataclasses.fields(PerfOptions)}
    result, files = run_perf(PerfOptions(**{name: value for name, value in given.items() if value is not None}))
    for path in files.values():
        sys.stdout.write(f"{path.resolve()}\n")
    sys.stdout.write(f"{headline(result)}\n")
    for reason in result.skipped:
        logger.warning("not run: %s", reason)
    return 1 if any("FAILED" in reason for reason in result.skipped) else 0


def add_perf_command(commands: argparse._SubParsersAction) -> None:
    perf = commands.add_parser(
        "perf", help="load-test the served model with perf_analyzer against in-process baselines (perf/README.md)"
    )
    option = perf.add_argument
    option(
        "--profile",
        help="a profile of perf/scenarios.json, whose descriptions say what each measures (default: shapes, the "
        "default model, once its trained weights exist; tiny until then)",
    )
    option("-o", "--output", dest="output_dir", type=Path, help="results folder (default: outputs/perf/PROFILE)")
    option("--model", dest="model_dir", type=Path, help="diffusers pipeline folder (default: made with make-tiny)")
    option("--repository", type=Path, help="model repository of --model (default: exported from it)")
    option("--work-dir", type=Path, help="keep made models here (default: a temporary folder, removed)")
    option("--perf-dir", type=Path, help="scenarios.json and input_data/ (default: the repository's perf/)")
    option("--perf-analyzer", type=Path, help="the binary (default: tools/perf_analyzer or PATH)")
    option("--tritonserver", type=Path, help="a tritonserver binary (default: the pip wheel's)")
    option("--skip-diffusers", action="store_true", help="leave out the in-process diffusers baseline")
    option("--gpu", action="store_true", help="baselines on the GPU, for a repository exported with --gpu")
    option("--time-limit-s", type=float, help="overrides the profile's time limit")
    perf.set_defaults(run=_perf)
