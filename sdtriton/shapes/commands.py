"""The ``shapes`` commands: ``train-shapes``, ``eval-shapes``, ``shapes-grid`` and ``shapes-curve``.

Each handler imports its module (torch, diffusers) only when it runs, so that ``sdtriton --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdtriton import interface


def add_shapes_commands(commands: argparse._SubParsersAction) -> None:
    """Adds ``train-shapes``, ``eval-shapes``, ``shapes-grid`` and ``shapes-curve`` to ``commands``."""
    train = commands.add_parser("train-shapes", help="train the embedded 'shapes' model (resumable)")
    train.add_argument("output", type=Path, help="run folder: checkpoints, curve.csv, model/")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vae-steps", type=int, default=1200)
    train.add_argument("--vae-batch-size", type=int, default=16)
    train.add_argument("--unet-steps", type=int, default=5000)
    train.add_argument("--unet-batch-size", type=int, default=32)
    train.add_argument("--learning-rate", type=float, default=8e-4)
    train.add_argument("--eval-every-steps", type=int, default=500)
    train.add_argument("--eval-prompts", type=int, default=64)
    train.add_argument("--vae-edge-weight", type=float, default=1.0, help="weight of the VAE's edge (gradient) loss")
    train.add_argument("--offset-noise", type=float, default=0.0, help="per-channel constant noise in UNet training")
    train.add_argument(
        "--noisy-half-fraction", type=float, default=0.0, help="share of each batch with timesteps t >= T/2"
    )
    train.add_argument(
        "--init-from", type=Path, help="an earlier run's checkpoints/unet.pt: fine-tune its EMA UNet and text encoder"
    )
    train.add_argument("--vae-gate", type=float, default=0.95, help="least judged accuracy of VAE reconstructions")
    train.set_defaults(run=_train_shapes)

    evaluate = commands.add_parser("eval-shapes", help="judge prompt adherence of a served 'shapes' model")
    evaluate.add_argument("--url", default="http://127.0.0.1:8000")
    evaluate.add_argument("--count", type=int, default=200)
    evaluate.add_argument("--prompt-seed", type=int, default=0)
    evaluate.add_argument("--scheduler", default="dpmpp_2m", choices=[*interface.SCHEDULER_NAMES, "all"])
    evaluate.add_argument("--steps", type=int, default=20)
    evaluate.add_argument("--guidance-scale", type=float, default=7.5)
    evaluate.set_defaults(run=_eval_shapes)

    grid = commands.add_parser("shapes-grid", help="a picture grid of 8 prompts (2 held-out pairs) through a server")
    grid.add_argument("--url", default="http://127.0.0.1:8000")
    grid.add_argument("-o", "--output", type=Path, default=Path("docs/shapes_grid.png"))
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--steps", type=int, default=20)
    grid.set_defaults(run=_shapes_grid)

    curve = commands.add_parser("shapes-curve", help="plot the training curve CSV (accuracy against training time)")
    curve.add_argument("curve", type=Path, nargs="?", default=Path("docs/shapes_training_curve.csv"))
    curve.add_argument("-o", "--output", type=Path, default=Path("docs/shapes_training_curve.png"))
    curve.set_defaults(run=_shapes_curve)


def _train_shapes(args: argparse.Namespace) -> int:
    from sdtriton.shapes.train import TrainingPlan, train_shapes

    plan = TrainingPlan(
        seed=args.seed,
        vae_steps=args.vae_steps,
        vae_batch_size=args.vae_batch_size,
        unet_steps=args.unet_steps,
        unet_batch_size=args.unet_batch_size,
        unet_learning_rate=args.learning_rate,
        eval_every_steps=args.eval_every_steps,
        eval_prompts=args.eval_prompts,
        vae_gate_accuracy=args.vae_gate,
        vae_edge_weight=args.vae_edge_weight,
        offset_noise=args.offset_noise,
        init_from=str(args.init_from) if args.init_from else None,
        noisy_half_fraction=args.noisy_half_fraction,
    )
    sys.stdout.write(f"{train_shapes(args.output, plan)}\n")
    return 0


def _eval_shapes(args: argparse.Namespace) -> int:
    from sdtriton.shapes.evaluate import evaluate_server

    schedulers = interface.SCHEDULER_NAMES if args.scheduler == "all" else (args.scheduler,)
    lines = [
        "| scheduler | prompts | colour | background | shape | all correct | held-out all correct |",
        "|---|---|---|---|---|---|---|",
    ]
    for scheduler in schedulers:
        result = evaluate_server(
            args.url,
            count=args.count,
            prompt_seed=args.prompt_seed,
            scheduler=scheduler,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
        )
        lines.append(
            f"| {scheduler} | {result.count} | {result.colour:.1%} | {result.background:.1%} | {result.shape:.1%} "
            f"| {result.all_correct:.1%} | {result.held_out_all_correct:.1%} ({result.held_out_count}) |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _shapes_grid(args: argparse.Namespace) -> int:
    from sdtriton.shapes.grid import GRID_PROMPTS, make_grid

    make_grid(args.url, args.output, prompts=GRID_PROMPTS, seed=args.seed, num_inference_steps=args.steps)
    sys.stdout.write(f"{args.output.resolve()}\n")
    return 0


def _shapes_curve(args: argparse.Namespace) -> int:
    from sdtriton.shapes.curve import plot_curve, read_curve

    plot_curve(read_curve(args.curve), args.output)
    sys.stdout.write(f"{args.output.resolve()}\n")
    return 0
