"""The ``perf`` command: runs a profile of ``perf/scenarios.json`` (:func:`sdtriton.perf.runner.run_perf`)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

logger = logging.getLogger("sdtriton")


def _perf(args: argparse.Namespace) -> int:
    from sdtriton.perf.profiles import DEFAULT_PERF_DIR
    from sdtriton.perf.report import headline
    from sdtriton.perf.runner import DEFAULT_OUTPUT_DIR, PerfOptions, default_profile, run_perf

    profile = args.profile or default_profile()
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(PerfOptions) if field.name in args}
    output_dir, perf_dir = args.output_dir or DEFAULT_OUTPUT_DIR / profile, args.perf_dir or DEFAULT_PERF_DIR
    options = PerfOptions(**{**given, "profile": profile, "output_dir": output_dir, "perf_dir": perf_dir})
    result, files = run_perf(options)
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
    perf.add_argument(
        "--profile",
        help="a profile of perf/scenarios.json: shapes (the default model; default once its weights exist), "
        "tiny (default until then), sd15 (heavy: SD 1.5 shapes, ~4 GB, bounded to 10 minutes), engine and "
        "transformer (the diffusion engine on the default model and on a tiny SD 3.5)",
    )
    perf.add_argument(
        "-o", "--output", dest="output_dir", type=Path, help="results folder (default: outputs/perf/PROFILE)"
    )
    perf.add_argument(
        "--model", dest="model_dir", type=Path, help="diffusers pipeline folder (default: made with make-tiny)"
    )
    perf.add_argument("--repository", type=Path, help="model repository of --model (default: exported from it)")
    perf.add_argument("--work-dir", type=Path, help="keep made models here (default: a temporary folder, removed)")
    perf.add_argument("--perf-dir", type=Path, help="scenarios.json and input_data/ (default: the repository's perf/)")
    perf.add_argument("--perf-analyzer", type=Path, help="the binary (default: tools/perf_analyzer or PATH)")
    perf.add_argument("--tritonserver", type=Path, help="a tritonserver binary (default: the pip wheel's)")
    perf.add_argument("--skip-diffusers", action="store_true", help="leave out the in-process diffusers baseline")
    perf.add_argument("--gpu", action="store_true", help="baselines on the GPU, for a repository exported with --gpu")
    perf.add_argument("--time-limit-s", type=float, help="overrides the profile's time limit")
    perf.set_defaults(run=_perf)
