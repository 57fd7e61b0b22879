"""The ``sdtriton`` command line: models (make-tiny, export, plan), serving (serve, soak), the client (generate,
batch), the HTTP gateway, the demo, the shapes model (train-shapes, eval-shapes, shapes-grid, shapes-curve) and perf
(perf, scale-sim).

Each group's options and handler live beside its domain, and this module only builds the top parser, calls each
group's ``add_*_command(s)``, sets up logging and dispatches: ``sdtriton/model_commands.py`` (models),
``sdtriton/ops/serve.py`` and ``sdtriton/ops/soak/command.py`` (serving), ``client/commands.py`` (the client),
``sdtriton/gateway/command.py`` (the gateway), ``sdtriton/demo.py``, ``sdtriton/shapes/commands.py``,
``sdtriton/perf/command.py`` (perf) and ``sdtriton/scaling.py`` (scale-sim).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sdtriton.client.commands import add_client_commands
from sdtriton.demo import add_demo_command
from sdtriton.gateway.command import add_gateway_command
from sdtriton.model_commands import add_model_commands
from sdtriton.ops.serve import add_serve_command
from sdtriton.ops.soak.command import add_soak_command
from sdtriton.perf.command import add_perf_command
from sdtriton.scaling import add_scale_sim_command
from sdtriton.shapes.commands import add_shapes_commands

logger = logging.getLogger("sdtriton")
# transformers says once, on the first import of diffusers' SD pipelines, that image processors fall back to PIL
# without torchvision. No command runs an image processor (the safety checker and its feature extractor are
# never loaded), so the notice is harmless here; any other transformers import warning still shows.
_TORCHVISION_FALLBACK_NOTICE = "requires torchvision (not installed); falling back"


def _not_torchvision_fallback(record: logging.LogRecord) -> bool:
    return _TORCHVISION_FALLBACK_NOTICE not in record.getMessage()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdtriton", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    add_model_commands(commands)
    add_serve_command(commands)
    add_soak_command(commands)
    add_client_commands(commands)
    add_gateway_command(commands)
    add_demo_command(commands)
    add_shapes_commands(commands)

    add_perf_command(commands)
    add_scale_sim_command(commands)
    return parser


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The command line's arguments; everything after the first ``--`` goes to tritonserver (``serve``'s ``extra``)
    whatever comes before it: argparse alone leaves ``serve REPO --host H -- ...``'s positional list empty and
    refuses the rest."""
    parser = build_parser()
    arguments = list(argv)
    passed_on: list[str] = []
    if "--" in arguments:
        cut = arguments.index("--")
        arguments, passed_on = arguments[:cut], arguments[cut + 1 :]
    args = parser.parse_args(arguments)
    if passed_on:
        if not hasattr(args, "extra"):
            parser.error("arguments after -- are tritonserver's: only `serve` takes them")
        args.extra = [*args.extra, *passed_on]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("transformers.utils.import_utils").addFilter(_not_torchvision_fallback)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
