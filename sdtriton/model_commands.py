"""The commands about a model's files: ``make-tiny`` (make one), ``export`` (turn one into a model repository)
and ``plan`` (size a GPU for one from its configs).

Their domains, :mod:`sdtriton.tiny`, :mod:`sdtriton.export` and :mod:`sdtriton.plan`, load torch and diffusers;
each handler imports its domain only when it runs, so that ``sdtriton --help`` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from sdtriton import interface
from sdtriton.pipeline_config import (
    DEFAULT_MAX_INFERENCE_STEPS,
    DEFAULT_MAX_PROMPT_BYTES,
    HARD_MAX_INFERENCE_STEPS,
    HARD_MAX_PROMPT_BYTES,
    RequestLimits,
)


def add_model_commands(commands: argparse._SubParsersAction) -> None:
    """Adds ``make-tiny``, ``export`` and ``plan`` to ``commands``."""
    tiny = commands.add_parser("make-tiny", help="write a seeded random-weight SD pipeline folder")
    tiny.add_argument("output", type=Path)
    tiny.add_argument("--profile", default="tiny", help="tiny (default) or sd15 (full SD 1.5 shapes, ~4 GB)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--family",
        default="sd",
        help="sd (default; StableDiffusionPipeline), sdxl (StableDiffusionXLPipeline), sd-inpaint or sdxl-inpaint "
        "(their inpainting pipelines: a 9-channel UNet), sdxl-refiner "
        "(StableDiffusionXLImg2ImgPipeline sharing the sdxl base's second encoder and VAE at the same --seed), "
        "sd3 or sd35 (StableDiffusion3Pipeline; sd35: SD 3.5's dual attention and RMS q/k norm), flux-dev or "
        "flux-schnell (FluxPipeline; dev: guidance embedding and dynamic shifting)",
    )
    tiny.add_argument(
        "--without-t5",
        action="store_true",
        help="sd3/sd35: no text_encoder_3 (T5), as diffusers allows; its states are zeros",
    )
    tiny.set_defaults(run=_make_tiny)

    export = commands.add_parser("export", help="export a diffusers SD pipeline to a Triton model repository")
    export.add_argument("source", help="a diffusers pipeline folder (or a hub id where a network exists)")
    export.add_argument("--output", type=Path, required=True, help="the model repository to write")
    export.add_argument(
        "--backend",
        choices=["python", "onnxruntime", "tensorrt"],
        default="python",
        help="python: Python-backend models over ONNX Runtime (pip tritonserver); onnxruntime: NGC's ORT backend "
        "(with --gpu: its TensorRT provider, fp16); tensorrt: fp16 TensorRT engines built on this GPU",
    )
    export.add_argument("--gpu", action="store_true", help="run the networks on GPU instances")
    export.add_argument("--max-batch-size", type=_int_in(1), default=8)
    export.add_argument(
        "--max-running-images",
        type=_int_in(1),
        default=8,
        help="images denoised together, one UNet call a step (1: off)",
    )
    export.add_argument(
        "--max-pending-requests",
        type=_int_in(1),
        default=32,
        help="running plus queued requests; more are refused at once with UNAVAILABLE",
    )
    export.add_argument(
        "--response-cache-mb",
        type=_int_in(0),
        default=64,
        help="MiB of images of fully seeded non-streaming requests answered again from the engine's cache (0: off)",
    )
    export.add_argument(
        "--text-cache-entries",
        type=_int_in(0),
        default=256,
        help="text-encoder rows kept so that a repeated prompt skips the text encoder (0: off)",
    )
    export.add_argument(
        "--max-size-factor", type=_int_in(1), default=2, help="largest side, as a multiple of the native"
    )
    export.add_argument(
        "--vae-tile-above",
        type=_int_in(0),
        metavar="PX",
        help="decode images wider or taller than PX pixels in overlapping tiles, as diffusers' vae.enable_tiling() "
        "(default: the VAE's sample_size, its tile; 0: only requests that send vae_tiling true)",
    )
    export.add_argument(
        "--default-steps",
        type=_int_in(1, HARD_MAX_INFERENCE_STEPS),
        help="num_inference_steps when a request omits it (default: 30; SD 3: its pipeline's default, 28)",
    )
    export.add_argument(
        "--max-sequence-length",
        type=_int_in(1),
        help="SD 3: T5's token rows (default: its pipeline's max_sequence_length, 256; at most 512)",
    )
    export.add_argument(
        "--skip-guidance-layers",
        type=_layer_list,
        default=(),
        help="SD 3.5: transformer blocks skip-layer guidance skips, e.g. 7,8,9 (SD 3.5 Medium's); requests then may "
        "send skip_layer_guidance_scale (default: none)",
    )
    export.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a LoRA adapter (a diffusers or kohya safetensors file diffusers' load_lora_weights takes) exported into "
        "the networks it adapts; requests choose it per image by NAME (lora, lora_scale); repeatable",
    )
    limits = export.add_argument_group("request limits (refused with INVALID_ARG naming the field)")
    limits.add_argument(
        "--max-steps",
        type=_int_in(1, HARD_MAX_INFERENCE_STEPS),
        default=DEFAULT_MAX_INFERENCE_STEPS,
        help="most num_inference_steps a request may ask",
    )
    limits.add_argument(
        "--max-prompt-bytes",
        type=_int_in(1, HARD_MAX_PROMPT_BYTES),
        default=DEFAULT_MAX_PROMPT_BYTES,
        help="most UTF-8 bytes of each prompt",
    )
    limits.add_argument(
        "--max-pixels", type=_int_in(1), help="most width x height of an image (default: the largest sides allow)"
    )
    export.add_argument(
        "--refiner", help="an SDXL refiner folder (StableDiffusionXLImg2ImgPipeline): served as a second stage"
    )
    export.add_argument(
        "--model-prefix",
        default="",
        help="put before every model name (e.g. sdxl_ -> sdxl_stable_diffusion), to serve several repositories "
        "from one tritonserver",
    )
    trt = export.add_argument_group("TensorRT (--backend tensorrt)")
    trt.add_argument(
        "--trt-static-shapes",
        action="store_true",
        help="engines for the default image size only (fastest; the batch stays dynamic); other sizes are refused",
    )
    trt.add_argument("--timing-cache", type=Path, help="TensorRT timing cache file (read, then updated)")
    trt.add_argument("--onnx-dir", type=Path, help="keep the prepared fp16 ONNX files here (default: a temp folder)")
    trt.add_argument(
        "--no-engine-build",
        action="store_true",
        help="prepare and check the ONNX files and write ONNX_DIR/build_engines.sh (trtexec lines) for the GPU host",
    )
    trt.add_argument(
        "--dry-run",
        action="store_true",
        help="print each engine's profile (min/opt/max shapes), precision and trtexec line; read configs only",
    )
    export.set_defaults(run=_export)

    planner = commands.add_parser(
        "plan", help="size a GPU for a model from its configs: memory, FLOPs, latency floor (docs/gpu_sizing.md)"
    )
    planner.add_argument(
        "--model",
        default="sd15",
        help="sd15 (default), sdxl, sd35-medium, sd35-large, flux-dev, flux-schnell (published configs), "
        "or a diffusers pipeline folder",
    )
    planner.add_argument(
        "--width", type=_int_in(1), help="pixels (default: the model's native size, 1024 for SDXL, SD 3.5 and FLUX.1)"
    )
    planner.add_argument("--height", type=_int_in(1), help="pixels (default: the model's native size)")
    planner.add_argument(
        "--steps",
        type=_int_in(1, HARD_MAX_INFERENCE_STEPS),
        help="denoising steps (default: the pipeline's; 50 SD/SDXL, 28 SD 3.5 and FLUX dev, 4 schnell)",
    )
    planner.add_argument("--batch", type=_int_in(1), default=1, help="images per request")
    planner.add_argument(
        "--guidance",
        action=argparse.BooleanOptionalAction,
        help="classifier-free guidance: denoiser and text encoders at twice the batch (default: on; off for FLUX.1, "
        "which dev embeds instead; on for FLUX.1 is true_cfg_scale with a negative prompt)",
    )
    planner.add_argument(
        "--skip-layer-guidance",
        action="store_true",
        help="SD 3.5 with guidance: a third transformer row an image in the steps of skip-layer guidance's window "
        f"(the pipeline's {interface.DEFAULT_SKIP_LAYER_GUIDANCE_START:g}.."
        f"{interface.DEFAULT_SKIP_LAYER_GUIDANCE_STOP:g} of them; export --skip-guidance-layers)",
    )
    planner.add_argument(
        "--vae-tile-above",
        type=_int_in(0),
        metavar="PX",
        help="as export's: the VAE decodes larger sides in tiles, its peak one tile's (default: the VAE's "
        "sample_size; 0: never)",
    )
    planner.add_argument("--gpu", default="all", help="a GPU of the planner's table, or all (default: a row each)")
    planner.add_argument(
        "--dtype",
        choices=["fp16", "bf16", "fp32"],
        help="weights and activations (default: fp16 SD/SDXL, bf16 SD 3.5 and FLUX.1; T5 is never fp16: bf16)",
    )
    planner.add_argument(
        "--attention",
        choices=["fused", "math"],
        default="fused",
        help="fused (flash/memory-efficient SDPA, as GPUs run it) or math (attention matrices held)",
    )
    planner.add_argument(
        "--overhead-gib", type=float, help="CUDA context, workspaces and allocator slack (default: 1 GiB)"
    )
    planner.add_argument(
        "--markdown", action="store_true", help="print docs/gpu_sizing.md (every built-in model on every GPU) instead"
    )
    planner.set_defaults(run=_plan)


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low`` (and at most ``high``), refused by name otherwise."""
    allowed = f"in {low}..{high}" if high is not None else f"at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value

    return parse


def _layer_list(text: str) -> tuple[int, ...]:
    """``7,8,9`` -> (7, 8, 9): block indices, as ``--skip-guidance-layers`` takes them."""
    try:
        return tuple(int(item) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be block indices joined by commas, e.g. 7,8,9, got {text!r}") from None


def _make_tiny(args: argparse.Namespace) -> int:
    from sdtriton.tiny import FAMILIES, PROFILES, make_tiny

    if args.profile not in PROFILES:
        raise SystemExit(f"--profile must be one of {', '.join(PROFILES)}")
    if args.family not in FAMILIES:
        raise SystemExit(f"--family must be one of {', '.join(FAMILIES)}")
    try:
        make_tiny(args.output, profile=args.profile, seed=args.seed, family=args.family, t5=not args.without_t5)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    sys.stdout.write(f"{args.output}\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from sdtriton.export import ExportOptionError

    try:
        return _export_with(args)
    except ExportOptionError as error:
        # One line naming the flag, as the checks of the flags themselves below answer (exit status 1).
        flag = f"--{error.option.replace('_', '-')}" if hasattr(args, error.option) else error.option
        raise SystemExit(f"{flag}: {error.reason}") from None


def _export_with(args: argparse.Namespace) -> int:
    from sdtriton.export import (
        ComponentBackend,
        LoraSource,
        RenderOptions,
        TensorRtExportOptions,
        export_repository,
        tensorrt_dry_run,
    )

    backend = ComponentBackend(args.backend)
    uses_tensorrt = backend is ComponentBackend.TENSORRT
    tensorrt_flags = {
        "--trt-static-shapes": args.trt_static_shapes,
        "--timing-cache": args.timing_cache,
        "--onnx-dir": args.onnx_dir,
        "--no-engine-build": args.no_engine_build,
        "--dry-run": args.dry_run,
    }
    misplaced = [flag for flag, value in tensorrt_flags.items() if value and not uses_tensorrt]
    if misplaced:
        raise SystemExit(f"{', '.join(misplaced)}: only with --backend tensorrt")
    if args.default_steps is not None and args.default_steps > args.max_steps:
        raise SystemExit(f"--default-steps: {args.default_steps} is above --max-steps {args.max_steps}")
    if args.no_engine_build and args.onnx_dir is None:
        raise SystemExit("--no-engine-build needs --onnx-dir (where the prepared ONNX files and trtexec lines stay)")
    options = RenderOptions(
        component_backend=backend,
        # TensorRT engines run on a GPU only.
        gpu=args.gpu or uses_tensorrt,
        max_batch_size=args.max_batch_size,
        max_running_images=args.max_running_images,
        max_pending_requests=args.max_pending_requests,
        model_prefix=args.model_prefix,
        response_cache_mb=args.response_cache_mb,
        text_cache_entries=args.text_cache_entries,
    )
    tensorrt = TensorRtExportOptions(
        static_shapes=args.trt_static_shapes,
        timing_cache=args.timing_cache,
        onnx_dir=args.onnx_dir,
        build_engines=not args.no_engine_build,
    )
    if args.dry_run:
        builds = tensorrt_dry_run(
            args.source,
            args.output,
            options=options,
            tensorrt=tensorrt,
            refiner=args.refiner,
            max_size_factor=args.max_size_factor,
            max_sequence_length=args.max_sequence_length,
            skip_guidance_layers=args.skip_guidance_layers,
            loras=[LoraSource.parse(text) for text in args.lora],
        )
        sys.stdout.write("\n\n".join(build.describe() for build in builds) + "\n")
        return 0
    export_repository(
        args.source,
        args.output,
        options=options,
        max_size_factor=args.max_size_factor,
        default_num_inference_steps=args.default_steps,
        max_sequence_length=args.max_sequence_length,
        skip_guidance_layers=args.skip_guidance_layers,
        refiner=args.refiner,
        tensorrt=tensorrt,
        loras=[LoraSource.parse(text) for text in args.lora],
        limits=RequestLimits(
            max_inference_steps=args.max_steps, max_prompt_bytes=args.max_prompt_bytes, max_pixels=args.max_pixels
        ),
        vae_tile_above_px=args.vae_tile_above,
    )
    sys.stdout.write(f"{args.output}\n")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from sdtriton import plan as planning

    if args.markdown:
        sys.stdout.write(planning.sizing_markdown())
        return 0
    overhead_bytes = (
        planning.CUDA_OVERHEAD_BYTES if args.overhead_gib is None else round(args.overhead_gib * planning.GIB)
    )
    try:
        measurement = planning.measure_model(
            args.model,
            width_px=args.width,
            height_px=args.height,
            steps=args.steps,
            batch=args.batch,
            guidance=args.guidance,
            dtype=args.dtype,
            fused_attention=args.attention == "fused",
            skip_layer_guidance=args.skip_layer_guidance,
            vae_tile_above_px=args.vae_tile_above,
        )
        if args.gpu.lower() == "all":
            text = planning.render_table(measurement, overhead_bytes=overhead_bytes)
        else:
            report = planning.plan(measurement, planning.gpu_spec(args.gpu), overhead_bytes=overhead_bytes)
            text = planning.render_plan(report)
    except planning.PlanError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    sys.stdout.write(text)
    return 0
