"""The client's commands: ``generate`` (one image) and ``batch`` (a JSON Lines file of them, resumable).

Both talk to a running server through :class:`~sdtriton.client.StableDiffusionClient`; ``batch``'s runner is
:mod:`sdtriton.batch`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdtriton import interface

if TYPE_CHECKING:
    from sdtriton.client import RetryPolicy

logger = logging.getLogger(__name__)


def add_client_commands(commands: argparse._SubParsersAction) -> None:
    """Adds ``generate`` and ``batch`` to ``commands``."""
    generate = commands.add_parser("generate", help="generate an image through a running server")
    generate.add_argument("prompt")
    generate.add_argument("--url", default="http://127.0.0.1:8000", help="http://host:port or grpc://host:port")
    generate.add_argument("-o", "--output", type=Path, default=Path("out.png"))
    generate.add_argument(
        "--model", default=interface.ENTRY_MODEL_NAME, help="the entry model (<prefix>stable_diffusion)"
    )
    generate.add_argument("--negative-prompt")
    generate.add_argument(
        "--steps",
        type=int,
        help=f"num_inference_steps, {interface.MIN_INFERENCE_STEPS}..{interface.MAX_INFERENCE_STEPS}",
    )
    generate.add_argument("--guidance-scale", type=float, help="0..30; <= 1 turns guidance off")
    generate.add_argument("--seed", type=int, help="0..2^63-1; default: random (the seed used is logged)")
    generate.add_argument("--width", type=int)
    generate.add_argument("--height", type=int)
    generate.add_argument(
        "--scheduler",
        choices=interface.ACCEPTED_SCHEDULER_NAMES,
        help=f"SD 1.x/2.x, SDXL: {', '.join(interface.SCHEDULER_NAMES)}; SD 3, FLUX: "
        f"{', '.join(interface.FLOW_SCHEDULER_NAMES)} (a model refuses the others by name)",
    )
    generate.add_argument(
        "--refiner-fraction",
        type=float,
        help="SDXL exported with a refiner: the share of the denoising the refiner does, e.g. 0.2 (default: off)",
    )
    generate.add_argument(
        "--true-cfg-scale",
        type=float,
        help="FLUX: true classifier-free guidance, above 1 with --negative-prompt (default: 1, off)",
    )
    generate.add_argument(
        "--skip-layer-guidance-scale",
        type=float,
        help="SD 3 exported with --skip-guidance-layers: skip-layer guidance, e.g. 2.8 (default: 0, off)",
    )
    generate.add_argument(
        "--skip-layer-guidance-start",
        type=float,
        help=f"its first share of the steps, 0..1 (default: {interface.DEFAULT_SKIP_LAYER_GUIDANCE_START:g})",
    )
    generate.add_argument(
        "--skip-layer-guidance-stop",
        type=float,
        help=f"its last share of the steps (default: {interface.DEFAULT_SKIP_LAYER_GUIDANCE_STOP:g})",
    )
    generate.add_argument(
        "--vae-tiling",
        action=argparse.BooleanOptionalAction,
        help="decode in overlapping tiles as diffusers' vae.enable_tiling() (default: above the export's "
        "--vae-tile-above size; --no-vae-tiling: in one call, refused above it)",
    )
    generate.add_argument(
        "--image",
        type=Path,
        help="image-to-image: start from this image file (SD 1.x/2.x, SDXL); the output has its size",
    )
    generate.add_argument(
        "--mask",
        type=Path,
        help="inpainting, with --image: a mask file of the image's size (read as gray, as diffusers does: 128..255 "
        "repaint, darker keep)",
    )
    generate.add_argument(
        "--strength",
        type=float,
        help=f"with --image: how much of the denoising is redone, above 0 and at most 1 "
        f"(default: {interface.DEFAULT_STRENGTH:g}; with --mask the inpainting pipeline's, SD 1, SDXL 0.9999, "
        "SD 3 and FLUX 0.6)",
    )
    generate.add_argument(
        "--lora",
        type=_lora_choice,
        metavar="NAME[:SCALE]",
        help=f"a LoRA adapter the repository was exported with (export --lora), and its weight "
        f"({interface.MIN_LORA_SCALE:g}..{interface.MAX_LORA_SCALE:g}, default {interface.DEFAULT_LORA_SCALE:g})",
    )
    generate.add_argument(
        "--timeout-s", type=float, help="time budget: the server ends the request, queued or running, when it runs out"
    )
    generate.add_argument("--progress", action="store_true", help="show a progress bar (gRPC streaming)")
    generate.add_argument(
        "--preview-every", type=int, help="save a cheap preview every K steps beside the output (gRPC streaming)"
    )
    _add_retry_options(generate, default_deadline_s=None)
    generate.set_defaults(run=_generate)

    batch = commands.add_parser(
        "batch", help="one image per line of a JSON Lines file, with its parameters; resumable (skips what is done)"
    )
    batch.add_argument(
        "prompts",
        type=Path,
        help="JSON Lines: each line an object with prompt, any other public input, and an optional id",
    )
    batch.add_argument("--out", type=Path, required=True, help="folder for ID.png, ID.json and ID.error.json")
    batch.add_argument("--url", default="http://127.0.0.1:8000", help="http://host:port or grpc://host:port")
    batch.add_argument("--model", default=interface.ENTRY_MODEL_NAME, help="the entry model (<prefix>stable_diffusion)")
    batch.add_argument("--concurrency", type=int, default=1, help="requests in flight (threads, one client each)")
    batch.add_argument("--timeout-s", type=float, help="time budget of each request on the server")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_retry_options(batch, default_deadline_s=300.0)
    batch.set_defaults(run=_batch)


def _add_retry_options(command: argparse.ArgumentParser, *, default_deadline_s: float | None) -> None:
    retry = command.add_argument_group("retries (only refusals before work, UNAVAILABLE, connection errors)")
    shown = "off" if default_deadline_s is None else f"{default_deadline_s:g}"
    retry.add_argument(
        "--retry-deadline-s",
        type=float,
        default=default_deadline_s,
        help=f"retry with backoff until this many seconds have passed, in all, per image (0: off; default {shown})",
    )
    retry.add_argument("--retry-attempts", type=int, help="at most this many attempts per image (default: no limit)")


def _retry_policy(args: argparse.Namespace) -> RetryPolicy | None:
    """The client's RetryPolicy from --retry-deadline-s / --retry-attempts (None: no retries)."""
    from sdtriton.client import RetryPolicy

    deadline_s = args.retry_deadline_s if args.retry_deadline_s else None
    if deadline_s is None and args.retry_attempts is None:
        return None
    try:
        return RetryPolicy(deadline_s=deadline_s, max_attempts=args.retry_attempts)
    except ValueError as error:
        raise SystemExit(f"retry options: {error}") from None


def _lora_choice(text: str) -> dict[str, object]:
    """``NAME`` or ``NAME:SCALE`` -> ``generate``'s ``lora`` and ``lora_scale`` (the server checks both)."""
    name, separator, scale = text.rpartition(":") if ":" in text else (text, "", "")
    if not name:
        raise argparse.ArgumentTypeError(f"must be NAME or NAME:SCALE, got {text!r}")
    if not separator:
        return {"lora": name}
    try:
        return {"lora": name, "lora_scale": float(scale)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"SCALE must be a number, got {scale!r}") from None


def _generate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from sdtriton.client import SdTritonError, StableDiffusionClient

    retry = _retry_policy(args)
    parameters = {
        "negative_prompt": args.negative_prompt,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "seed": args.seed,
        "width": args.width,
        "height": args.height,
        "scheduler": args.scheduler,
        "refiner_fraction": args.refiner_fraction,
        "true_cfg_scale": args.true_cfg_scale,
        "skip_layer_guidance_scale": args.skip_layer_guidance_scale,
        "skip_layer_guidance_start": args.skip_layer_guidance_start,
        "skip_layer_guidance_stop": args.skip_layer_guidance_stop,
        "vae_tiling": args.vae_tiling,
        "strength": args.strength,
        **(args.lora or {}),
    }
    preview_dir = args.output.parent / f"{args.output.stem}_previews" if args.preview_every else None
    for option, argument, mode in (("--image", "image", "RGB"), ("--mask", "mask", "L")):
        try:
            parameters[argument] = _picture(getattr(args, argument), mode)
        except OSError as error:
            sys.stderr.write(f"error: {option}: {error}\n")
            return 2
    try:
        with StableDiffusionClient(args.url, model_name=args.model, timeout_s=args.timeout_s, retry=retry) as client:
            if not (args.progress or args.preview_every):
                result = client.generate(args.prompt, **parameters)
            else:
                with tqdm(desc="denoising", unit="step", disable=not args.progress) as bar:

                    def show(progress) -> None:
                        bar.total = sum(progress.total_steps)
                        bar.n = sum(progress.steps_done)
                        bar.refresh()
                        for index, preview in enumerate(progress.previews or []):
                            preview_dir.mkdir(parents=True, exist_ok=True)
                            preview.save(preview_dir / f"step{sum(progress.steps_done):04d}_{index}.png")

                    result = client.generate(
                        args.prompt, on_progress=show, preview_every=args.preview_every, **parameters
                    )
    except KeyboardInterrupt:
        sys.stderr.write("cancelled\n")
        return 130
    except SdTritonError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(args.output)
    sys.stdout.write(f"{args.output.resolve()}\n")
    logger.info("seed %d, %dx%d", result.seed, result.image.width, result.image.height)
    return 0


def _picture(path: Path | None, mode: str) -> Any:
    """The ``--image`` (RGB) or ``--mask`` (L, gray) file as a PIL image of that mode (None without one)."""
    if path is None:
        return None
    from PIL import Image

    with Image.open(path) as image:
        return image.convert(mode)


def _batch(args: argparse.Namespace) -> int:
    from sdtriton import batch as batching
    from sdtriton.client import StableDiffusionClient, parse_url

    if args.concurrency < 1:
        raise SystemExit("--concurrency must be at least 1")
    try:
        parse_url(args.url)
    except ValueError as error:
        raise SystemExit(f"--url: {error}") from None
    retry = _retry_policy(args)
    try:
        jobs = batching.read_jobs(args.prompts)
    except (OSError, batching.BatchFileError) as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    plan = batching.plan_batch(jobs, args.out)

    def client() -> StableDiffusionClient:
        return StableDiffusionClient(args.url, model_name=args.model, timeout_s=args.timeout_s, retry=retry)

    try:
        if plan.to_run:
            # Once, up front: a wrong URL or model name fails the run, not every line after its retries.
            wait_s = retry.deadline_s if retry is not None and retry.deadline_s is not None else 0.0
            with client() as probe:
                if not batching.wait_until_ready(probe, timeout_s=wait_s):
                    sys.stderr.write(f"error: model {args.model} at {args.url} not ready after {wait_s:g} s\n")
                    return 2
        summary = batching.run_batch(
            plan,
            args.out,
            client_factory=client,
            concurrency=args.concurrency,
            metadata={"model": args.model, "url": args.url},
            show_progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        sys.stderr.write("interrupted: run the same command again to finish\n")
        return 130
    sys.stdout.write(f"{summary.describe()}\n")
    return 1 if summary.failed else 0
