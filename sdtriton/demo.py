"""``sdtriton demo``: the README's main job, end to end on this machine.

Exports the default model (the built-in ``shapes``; or ``tiny``, made with make-tiny; or any diffusers folder)
into the model repository, starts a real tritonserver on
free loopback ports, generates one picture through the client over gRPC, saves it as PNG and stops the
server.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdtriton.client import StableDiffusionClient
from sdtriton.server import ServerAddress, TritonServer

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "a yellow star on a purple background"
DEFAULT_MODEL = "shapes"
TINY_MODEL_NAME = "tiny"
TINY_MODEL_DIR = Path("models/tiny")


@dataclass(frozen=True)
class DemoResult:
    image_path: Path
    seed: int
    ready_s: float
    generate_s: float


def run_demo(
    *,
    model: str,
    repository: Path,
    output: Path,
    prompt: str = DEFAULT_PROMPT,
    seed: int = 0,
    num_inference_steps: int = 20,
) -> DemoResult:
    from sdtriton.export import export_repository
    from sdtriton.tiny import make_tiny

    source: str | Path = model
    if model == TINY_MODEL_NAME:
        source = TINY_MODEL_DIR
        if not (TINY_MODEL_DIR / "model_index.json").is_file():
            make_tiny(TINY_MODEL_DIR)
    export_repository(source, repository)
    server = TritonServer(
        repository, address=ServerAddress.on_free_ports(), log_path=output.parent / "tritonserver.log"
    )
    server.start()
    try:
        ready_s = server.wait_ready()
        logger.info("tritonserver ready after %.1f s (log: %s)", ready_s, server.log_path)
        with StableDiffusionClient(server.address.grpc_url) as client:
            started = time.perf_counter()
            result = client.generate(prompt, seed=seed, num_inference_steps=num_inference_steps)
            generate_s = time.perf_counter() - started
    finally:
        server.stop()
    output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(output)
    logger.info("%r, seed %d, %d steps: %.2f s through Triton", prompt, result.seed, num_inference_steps, generate_s)
    return DemoResult(image_path=output.resolve(), seed=result.seed, ready_s=ready_s, generate_s=generate_s)


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    """Adds ``demo`` to ``commands``."""
    demo = commands.add_parser("demo", help="make, export, serve and generate one picture (the README's main job)")
    demo.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="shapes (the trained built-in), tiny (random weights), or a diffusers folder",
    )
    demo.add_argument("--repository", type=Path, default=Path("model_repository"))
    demo.add_argument("-o", "--output", type=Path, default=Path("outputs/demo.png"))
    demo.add_argument("--prompt", default=DEFAULT_PROMPT)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    result = run_demo(
        model=args.model, repository=args.repository, output=args.output, prompt=args.prompt, seed=args.seed
    )
    sys.stdout.write(f"{result.image_path}\n")
    return 0
