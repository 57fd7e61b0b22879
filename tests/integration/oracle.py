"""The diffusers oracle: what StableDiffusionPipeline (and its img2img, inpainting and other families' pipelines) draws
for a seed and parameters. Each helper runs its pipeline through one setup: the request's scheduler swapped in
(:func:`_schedulers_swapped`, :func:`_request_scheduler`) and the seed's generator (:func:`_generator`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from sdtriton.schedulers import build_scheduler, load_scheduler_overrides

# Images may differ by rounding of ONNX Runtime against torch, at most this much per pixel.
MAX_PIXEL_DIFFERENCE = 2


class BaseNetworkSession:
    """An exported network's ONNX Runtime session run as the base network diffusers' pipeline holds: where it was
    exported with LoRA adapters, its rows are sent none (``lora_scales`` zeros)."""

    def __init__(self, path) -> None:
        import onnxruntime as ort

        from sdtriton.components import LORA_SCALES_INPUT

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self._lora = {tensor.name: tensor for tensor in self.session.get_inputs()}.get(LORA_SCALES_INPUT)

    def run(self, outputs, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self._lora is not None:
            rows = len(next(iter(inputs.values())))
            inputs = {**inputs, self._lora.name: np.zeros((rows, self._lora.shape[-1]), dtype=np.float32)}
        return self.session.run(outputs, inputs)


def diffusers_image(
    pipeline,
    prompt: str,
    *,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    model_scheduler_settings: bool = True,
) -> np.ndarray:
    """[H, W, 3] uint8 image of diffusers with ``scheduler`` swapped in as diffusers documents.

    The model's own settings for that scheduler (its ``sdtriton_scheduler_overrides.json``) apply on top of its
    scheduler config, as they do in the served pipeline, unless ``model_scheduler_settings`` is False.
    """
    return _pipeline_image(
        pipeline,
        prompt,
        seed=seed,
        scheduler=scheduler,
        model_scheduler_settings=model_scheduler_settings,
        negative_prompt=negative_prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        width=width,
        height=height,
    )


def _pipeline_image(
    pipeline,
    prompt: str,
    *,
    seed: int,
    scheduler: str | None,
    model_scheduler_settings: bool = True,
    settings_of=None,
    **call,
) -> np.ndarray:
    """The first image of ``pipeline(prompt, **call)`` with the seed's generator and ``scheduler`` swapped in (the
    model's settings for it read from ``settings_of``, default ``pipeline``, where ``model_scheduler_settings``)."""
    build = _request_scheduler(scheduler, settings_of or pipeline, model_scheduler_settings=model_scheduler_settings)
    with _schedulers_swapped([pipeline], build):
        image = pipeline(prompt, generator=_generator(seed), **call).images[0]
    return np.asarray(image)


def _generator(seed: int) -> torch.Generator:
    """The generator a request's seed means: diffusers' CPU generator seeded with it."""
    return torch.Generator("cpu").manual_seed(seed)


def _request_scheduler(
    scheduler: str | None, settings_of, *, model_scheduler_settings: bool = True
) -> Callable[[object], object] | None:
    """How a pipeline gets the scheduler a request's key names: built from the pipeline's own config with the model's
    settings for it (``settings_of``'s ``sdtriton_scheduler_overrides.json``); None keeps the pipeline's own."""
    if scheduler is None:
        return None
    overrides = load_scheduler_overrides(settings_of.name_or_path) if model_scheduler_settings else {}
    return lambda pipeline: build_scheduler(pipeline.scheduler.config, scheduler, overrides)


@contextlib.contextmanager
def _schedulers_swapped(pipelines: Sequence[object], build: Callable[[object], object] | None) -> Iterator[None]:
    """``pipelines`` with the scheduler ``build`` makes for each swapped in (None: their own), restored after."""
    originals = [pipeline.scheduler for pipeline in pipelines]
    if build is not None:
        for pipeline in pipelines:
            pipeline.scheduler = build(pipeline)
    try:
        yield
    finally:
        for pipeline, original in zip(pipelines, originals, strict=True):
            pipeline.scheduler = original


def img2img_diffusers_image(
    pipeline,
    prompt: str,
    *,
    image: Image.Image,
    strength: float,
    seed: int,
    num_inference_steps: int,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    scheduler: str | None = None,
) -> np.ndarray:
    """[H, W, 3] uint8 image of ``StableDiffusionImg2ImgPipeline`` (``pipeline``) from ``image``, with ``scheduler``
    swapped in as :func:`diffusers_image` does."""
    return _pipeline_image(
        pipeline,
        prompt,
        seed=seed,
        scheduler=scheduler,
        image=image,
        strength=strength,
        negative_prompt=negative_prompt,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
    )


def inpaint_diffusers_image(
    pipeline,
    prompt: str,
    *,
    image: Image.Image,
    mask: Image.Image,
    seed: int,
    num_inference_steps: int,
    strength: float | None = None,
    scheduler: str | None = None,
    **call,
) -> np.ndarray:
    """[H, W, 3] uint8 image of diffusers' inpainting pipeline on ``pipeline``'s modules (``AutoPipelineForInpainting``:
    ``StableDiffusionInpaintPipeline`` or ``StableDiffusionXLInpaintPipeline``, whichever UNet it has) from ``image``
    and ``mask`` at the image's size (the pipelines resize to their default size otherwise), ``strength`` None: the
    pipeline's default, with ``scheduler`` swapped in as :func:`diffusers_image` does."""
    from diffusers import AutoPipelineForInpainting

    inpainting = AutoPipelineForInpainting.from_pipe(pipeline)
    inpainting.set_progress_bar_config(disable=True)
    given = {} if strength is None else {"strength": strength}
    return _pipeline_image(
        inpainting,
        prompt,
        seed=seed,
        scheduler=scheduler,
        settings_of=pipeline,
        image=image,
        mask_image=mask,
        width=image.width,
        height=image.height,
        num_inference_steps=num_inference_steps,
        **given,
        **call,
    )


def inpaint_mask(width: int, height: int, variant: int = 0) -> Image.Image:
    """A gray mask: a block to repaint (its edge at 128, which repaints, beside 127, which keeps, as diffusers
    binarizes), the rest kept; ``variant`` moves the block."""
    rows, columns = np.mgrid[0:height, 0:width]
    left = width // 3 + 8 * variant
    pixels = np.where((columns >= left) & (rows >= height // 4), 255, 0)
    pixels[:, left - 1] = 127
    pixels[:, left] = 128
    return Image.fromarray(pixels.astype(np.uint8), mode="L")


def start_picture(width: int, height: int, variant: int = 0) -> Image.Image:
    """A smooth picture (a gradient and a disc, not noise) to start image-to-image from; ``variant`` tints it."""
    rows, columns = np.mgrid[0:height, 0:width]
    disc = (rows - height / 2) ** 2 + (columns - width / 3) ** 2 < (height / 4) ** 2
    blue = np.full_like(rows, 60 + 40 * variant)
    pixels = np.stack([columns * 255 // width, rows * 255 // height, blue], axis=-1)
    pixels[disc] = (250, 220, 30)
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return int(np.max(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def sdxl_diffusers_image(
    base,
    prompt: str,
    *,
    seed: int,
    num_inference_steps: int,
    refiner=None,
    refiner_fraction: float = 0.0,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    image: Image.Image | None = None,
    strength: float | None = None,
) -> np.ndarray:
    """[H, W, 3] uint8 image of ``StableDiffusionXLPipeline``; with ``refiner_fraction``, diffusers' base+refiner
    recipe: the base to ``denoising_end = 1 - fraction`` as latents, the refiner from ``denoising_start`` there,
    one generator passed to both, ``scheduler`` swapped into both with the base model's own scheduler settings.
    With ``image``, the base is ``StableDiffusionXLImg2ImgPipeline`` on the base's modules (image-to-image from it
    at ``strength``), the rest the same."""
    generator = _generator(seed)
    common = {
        "negative_prompt": negative_prompt,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "generator": generator,
    }
    first, start = base, {"width": width, "height": height}
    if image is not None:
        from diffusers import StableDiffusionXLImg2ImgPipeline

        first, start = StableDiffusionXLImg2ImgPipeline.from_pipe(base), {"image": image, "strength": strength}
    # Swapped into the pipelines that run: from_pipe made ``first`` with the base's scheduler of that moment.
    pipelines = [first] if refiner is None else [first, refiner]
    with _schedulers_swapped(pipelines, _request_scheduler(scheduler, base)):
        if not refiner_fraction:
            result = first(prompt, **start, **common).images[0]
        else:
            split = 1.0 - float(np.float32(refiner_fraction))
            latents = first(prompt, **start, denoising_end=split, output_type="latent", **common).images
            result = refiner(prompt, image=latents, denoising_start=split, **common).images[0]
    return np.asarray(result)


def sd3_diffusers_scheduler(pipeline, scheduler: str | None):
    """The scheduler a request's key names, built from the SD 3 pipeline's own config as diffusers documents it:
    the multistep solvers on flow sigmas with the model's shift (written out here, not taken from sdtriton)."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
        FlowMatchHeunDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    config = pipeline.scheduler.config
    flow_sigmas = {"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": config.shift}
    built = {
        None: lambda: pipeline.scheduler,
        "flow_euler": lambda: FlowMatchEulerDiscreteScheduler.from_config(config),
        "flow_heun": lambda: FlowMatchHeunDiscreteScheduler.from_config(config),
        "dpmpp_2m": lambda: DPMSolverMultistepScheduler.from_config(config, **flow_sigmas),
        "unipc": lambda: UniPCMultistepScheduler.from_config(config, **flow_sigmas),
    }
    return built[scheduler]()


def flow_diffusers_image(pipeline, prompt: str, *, seed: int, scheduler: str | None = None, **call) -> np.ndarray:
    """[H, W, 3] uint8 image of ``StableDiffusion3Pipeline`` or ``FluxPipeline`` with the scheduler a request's key
    names swapped in (:func:`sd3_diffusers_scheduler`); ``call``'s arguments go to the pipeline's ``__call__``, whose
    own defaults apply where one is None (guidance, size, negative prompt)."""
    given = {name: value for name, value in call.items() if value is not None}
    with _schedulers_swapped([pipeline], lambda pipe: sd3_diffusers_scheduler(pipe, scheduler)):
        image = pipeline(prompt, generator=_generator(seed), **given).images[0]
    return np.asarray(image)
