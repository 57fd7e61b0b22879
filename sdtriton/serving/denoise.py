"""The txt2img pipelines of diffusers (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` and its refiner,
``StableDiffusion3Pipeline``, ``FluxPipeline``), their img2img ones (``StableDiffusionImg2ImgPipeline``,
``StableDiffusionXLImg2ImgPipeline``, ``StableDiffusion3Img2ImgPipeline``, ``FluxImg2ImgPipeline``) and inpainting
ones (``StableDiffusionInpaintPipeline``, ``StableDiffusionXLInpaintPipeline``, ``StableDiffusion3InpaintPipeline``,
``FluxInpaintPipeline``), with their networks behind an interface.

The numbered steps follow the pipelines' ``__call__`` so that the same seed and parameters give the same
image: latents drawn by ``randn_tensor`` from ``torch.Generator("cpu").manual_seed(seed)``, the same generator
handed to the scheduler's ``step``, classifier-free guidance as one batch of [negative, prompt], and the same
post-processing to uint8. What conditions the UNet comes from :mod:`sdtriton.serving.conditioning`. The
networks are reached through :class:`DiffusionComponents`: BLS calls inside Triton, ONNX Runtime sessions in the
baselines.

Device-agnostic: latents, text states and noise predictions are torch tensors on the networks' ``device`` from
the first step to the decoded image (on a GPU host they never cross to the host between steps); the latents and
every scheduler's noise are still drawn by the CPU generator and then moved, as diffusers draws them, so a seed
means the same image on every device.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from sdtriton.components import SKIP_LAYERS_INPUT, text_encoders_of
from sdtriton.interface import in_skip_layer_guidance_window
from sdtriton.pipeline_config import (
    FLUX_FAMILY,
    FLUX_PACKING,
    SD3_FAMILY,
    SD_FAMILY,
    SDXL_FAMILY,
    SKIP_LAYER_GUIDANCE_ROWS,
    PipelineConfig,
)
from sdtriton.schedulers import (
    build_scheduler,
    image_to_image_skipped_steps,
    set_flux_timesteps,
    set_sd3_timesteps,
)
from sdtriton.serving.conditioning import ImageRequest, Stage, lora_scales_for, stages_for, text_ids_for
from sdtriton.serving.errors import RequestCancelledError
from sdtriton.serving.tiling import decode_in_tiles, encode_in_tiles, tiling_of
from sdtriton.serving.validation import GenerationParams

# StableDiffusionPipeline's default eta: only DDIM reads it.
_ETA = 0.0
# The denoiser's latent input by family: the UNet's ``sample``, SD 3's and FLUX's transformer's ``hidden_states``.
LATENT_INPUTS: Mapping[str, str] = {
    SD_FAMILY: "sample",
    SDXL_FAMILY: "sample",
    SD3_FAMILY: "hidden_states",
    FLUX_FAMILY: "hidden_states",
}
# FluxPipeline passes its transformer timestep / 1000 (the transformer scales it back).
FLUX_TIMESTEP_DIVISOR = 1000


class DiffusionComponents(Protocol):
    """The networks of the pipeline, called with torch tensors; they answer on ``device``."""

    device: torch.device

    def encode_text(
        self, encoder: str, input_ids: torch.Tensor, lora_scales: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """[B, T] int64 token ids -> the text encoder ``encoder``'s outputs by name, [B, ...] each; ``lora_scales``
        [B, adapters]: each row's adapter weights, for an encoder exported with LoRA adapters."""

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The UNet ``unet``'s inputs by name ([B, C, h, w] sample, [B] timestep, conditioning) -> [B, C, h, w]."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] scaled latents -> [B, 3, H, W] image in -1..1."""

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] image in -1..1 -> the VAE's latent distribution: (mean, std), [B, C, h, w] each."""


# The VAE's latent distribution of one input image: (mean, std), [1, C, h, w] each.
LatentDistribution = tuple[torch.Tensor, torch.Tensor]
# The pictures an image sends through the VAE encoder (:func:`pictures_to_encode`), by name.
INPUT_PICTURE = "input_image"
MASKED_PICTURE = "masked_image"
# The inpainting pipelines' mask processor binarizes value / 255 at this threshold (VaeImageProcessor.binarize).
_MASK_THRESHOLD = 0.5


def preprocess_image(pixels: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """[H, W, 3] uint8 -> [1, 3, H, W] in -1..1, as ``VaeImageProcessor.preprocess`` makes a PIL image of a size the
    VAE takes (``pil_to_numpy``'s / 255, then its own ``numpy_to_pt`` and ``normalize``); no resize: the size was
    checked to be a multiple of the model's size step."""
    scaled = pixels[None].astype(np.float32) / 255.0
    return VaeImageProcessor.normalize(VaeImageProcessor.numpy_to_pt(scaled)).to(device)


def preprocess_mask(mask: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """[H, W, 1] uint8 -> [1, 1, H, W] of 0 and 1, as the inpainting pipelines' ``mask_processor`` makes a gray PIL
    mask (``VaeImageProcessor`` with ``do_binarize``, no normalize: ``pil_to_numpy``'s / 255, then ``binarize``)."""
    scaled = VaeImageProcessor.numpy_to_pt(mask[None].astype(np.float32) / 255.0)
    return (scaled >= _MASK_THRESHOLD).to(torch.float32).to(device)


def uses_input_latents(params: GenerationParams, config: PipelineConfig) -> bool:
    """Whether an image-to-image image draws from its input image's latents: always, but an inpainting UNet's at
    strength 1 (its pipeline's ``prepare_latents`` then starts from noise alone, encoding no image)."""
    if params.strength is None:
        return False
    return not (params.inpaint and config.inpainting_unet and params.strength == 1.0)


def pictures_to_encode(
    image: ImageRequest, config: PipelineConfig, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The [1, 3, H, W] pictures (-1..1) one image sends through the VAE encoder, by name: the input image where its
    latents are used (:func:`uses_input_latents`), and for an inpainting UNet the masked image as its pipeline makes
    it (``init_image * (mask < 0.5)``). Empty for text-to-image."""
    if image.input_image is None:
        return {}
    pixels = preprocess_image(image.input_image, device)
    pictures = {INPUT_PICTURE: pixels} if uses_input_latents(image.params, config) else {}
    if image.params.inpaint and config.inpainting_unet:
        pictures[MASKED_PICTURE] = pixels * (preprocess_mask(image.mask_image, device) < _MASK_THRESHOLD)
    return pictures


def _extra_step_kwargs(scheduler: object, generator: torch.Generator) -> dict[str, object]:
    # As StableDiffusionPipeline.prepare_extra_step_kwargs: pass what the scheduler's step accepts.
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, object] = {}
    if "eta" in accepted:
        kwargs["eta"] = _ETA
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


def to_uint8_image(decoded: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in -1..1 -> [H, W, 3] uint8, as diffusers' VaeImageProcessor.postprocess + numpy_to_pil."""
    image = (decoded / 2 + 0.5).clamp(0, 1)
    pixels = image.permute(0, 2, 3, 1).float().cpu().numpy()[0]
    return (pixels * 255).round().astype("uint8")


class _StageRun:
    """One stage's scheduler (a fresh one, this image's own) and the timesteps it runs."""

    def __init__(
        self,
        stage: Stage,
        params: GenerationParams,
        generator: torch.Generator,
        device: torch.device,
        config: PipelineConfig,
        *,
        strength: float | None = None,
    ) -> None:
        self.stage = stage
        scheduler = build_scheduler(stage.scheduler_config, params.scheduler, stage.scheduler_overrides)
        if config.flow_matching:
            # The image's sequence length: packed 2x2 latents (FLUX), patches (SD 3).
            side = config.vae_scale_factor * (FLUX_PACKING if config.flux is not None else config.sd3.patch_size)
            image_seq_len = (params.height // side) * (params.width // side)
            set_timesteps = set_flux_timesteps if config.flux is not None else set_sd3_timesteps
            set_timesteps(scheduler, params.num_inference_steps, image_seq_len=image_seq_len, device=device)
        else:
            scheduler.set_timesteps(params.num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        begin = 0
        train_steps = scheduler.config.num_train_timesteps
        # Image-to-image: the timestep the input image's latents are noised to (None: text-to-image).
        self.start_timestep: torch.Tensor | None = None
        if strength is not None:
            # As StableDiffusionImg2ImgPipeline.get_timesteps (SDXL's without denoising_start, SD 3's, FLUX's): the
            # noisiest steps skipped, the scheduler told where it begins; noise added at the first remaining timestep.
            skipped = image_to_image_skipped_steps(
                params.num_inference_steps, strength, flow_matching=config.flow_matching
            )
            begin = skipped * scheduler.order
            timesteps = timesteps[begin:]
            self.start_timestep = timesteps[:1]
        if stage.denoising_start is not None:
            # As StableDiffusionXLImg2ImgPipeline.get_timesteps with denoising_start.
            cutoff = round(train_steps - stage.denoising_start * train_steps)
            count = int((timesteps < cutoff).sum().item())
            if scheduler.order == 2 and count % 2 == 0:
                count += 1  # end after a second-order step's second half, never between the two
            begin = len(timesteps) - count
            timesteps = timesteps[begin:]
        if stage.denoising_end is not None:
            # As StableDiffusionXLPipeline.__call__ with denoising_end.
            cutoff = round(train_steps - stage.denoising_end * train_steps)
            timesteps = timesteps[: len([t for t in timesteps if t >= cutoff])]
        if (stage.set_begin_index or strength is not None) and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        self.scheduler = scheduler
        self.timesteps = list(timesteps)
        # StableDiffusion3Pipeline and FluxPipeline pass their scheduler's step nothing beyond the sample.
        self.extra_step_kwargs = {} if config.flow_matching else _extra_step_kwargs(scheduler, generator)


class ImageDenoiser:
    """One image's denoising loop, one network evaluation at a time, as its diffusers pipeline's ``__call__``.

    The plain loop (:func:`generate_image`) and the engine, which batches many images into one UNet call,
    drive the same object: ``model_input()`` gives this image's UNet and its rows, ``step(noise_pred)`` applies
    the UNet's answer for them with the image's own scheduler and generator. So a batched image is computed by
    exactly the code that computes it alone. An SDXL image with a refiner has two stages: the base's steps down
    to ``denoising_end``, then the refiner's from there on the same latents, with the same generator (as
    diffusers' base+refiner recipe with one generator passed to both pipelines).

    Args:
        params: validated generation parameters.
        config: the exported model's geometry and scheduler config.
        stages: the image's denoising stages (:func:`~sdtriton.serving.conditioning.stages_for`).
        device: where the latents live (the networks' device); the generator stays on the CPU.
        input_latents: image-to-image (``params.strength`` set, where :func:`uses_input_latents`): the VAE's latent
            distribution of the input image (:meth:`DiffusionComponents.encode_image` of :func:`preprocess_image`).
            The latents are then drawn as the img2img pipelines' ``prepare_latents`` does: a sample of it with the
            image's generator (``retrieve_latents``), normalized, and noised to the first timestep by the
            scheduler's ``add_noise`` (flow matching: ``scale_noise``, then FLUX's packing) with noise drawn next
            from the same generator.
        mask: inpainting (``params.inpaint``): the [H, W, 1] uint8 mask. The latents are drawn as the inpainting
            pipelines' ``prepare_latents`` and ``prepare_mask_latents`` draw them (:meth:`_inpainting_start`); a
            plain UNet's latents are blended with the re-noised input image outside the mask after every step.
        masked_latents: inpainting with an inpainting UNet: the VAE's latent distribution of the masked image
            (:func:`pictures_to_encode`), sampled with the generator and sent to the UNet with the mask.
    """

    def __init__(
        self,
        *,
        params: GenerationParams,
        config: PipelineConfig,
        stages: Sequence[Stage],
        device: torch.device | str = "cpu",
        input_latents: LatentDistribution | None = None,
        mask: np.ndarray | None = None,
        masked_latents: LatentDistribution | None = None,
    ) -> None:
        if not stages:
            raise ValueError("an image needs at least one denoising stage")
        if uses_input_latents(params, config) != (input_latents is not None):
            raise ValueError("an image-to-image image needs its strength and its input image's latent distribution")
        if params.inpaint != (mask is not None) or (params.inpaint and config.inpainting_unet) != (
            masked_latents is not None
        ):
            raise ValueError("an inpainting image needs its mask (and, for an inpainting UNet, its masked image's)")
        self.params = params
        self.config = config
        self.do_guidance = params.uses_classifier_free_guidance
        # An SD 3 transformer exported with skip-guidance layers takes a per-row skip_layers flag in every call.
        self._takes_skip_flag = config.sd3 is not None and bool(config.sd3.skip_guidance_layers)
        # Prepare latents exactly as diffusers draws them, with the generator every stage then shares.
        self.device = torch.device(device)
        self.generator = torch.Generator("cpu").manual_seed(params.seed)
        self._runs = [
            _StageRun(
                stage, params, self.generator, self.device, config, strength=params.strength if index == 0 else None
            )
            for index, stage in enumerate(stages)
        ]
        self._run_index = 0
        self._step_in_run = 0
        shape = config.latent_shape(height=params.height, width=params.width)
        self._latent_size = (shape[2], shape[3])
        self.steps_done = 0
        # The scheduler's estimate of the clean latents at the last step, where it gives one (previews).
        self.predicted_original: torch.Tensor | None = None
        # Inpainting: the mask at latent size [1, 1, h, w]; an inpainting UNet's masked-image latents; a plain UNet's
        # input-image latents and the noise they are re-noised with before every blend.
        self._mask: torch.Tensor | None = None
        self._masked_image_latents: torch.Tensor | None = None
        self._image_latents: torch.Tensor | None = None
        self._noise: torch.Tensor | None = None
        if mask is not None:
            self.latents = self._inpainting_start(input_latents, mask, masked_latents)
            return
        if input_latents is not None:
            self.latents = self._noised_input(input_latents)
            return
        # randn_tensor draws on the generator's device (the CPU) and moves the result, as diffusers does.
        latents = randn_tensor(shape, generator=self.generator, device=self.device, dtype=torch.float32)
        if config.flux is not None:
            # FluxPipeline.prepare_latents: drawn [1, C, h, w], then packed in 2x2 patches, [1, hw/4, 4C].
            latents = _pack(latents)
        # StableDiffusion3Pipeline and FluxPipeline do not scale them (flow matching starts at unit noise).
        self.latents = latents if config.flow_matching else latents * self._runs[0].scheduler.init_noise_sigma

    def _sample(self, distribution: LatentDistribution) -> torch.Tensor:
        """``retrieve_latents``: DiagonalGaussianDistribution.sample, mean + std x noise drawn on the generator's
        device, then moved."""
        mean, std = (value.to(self.device) for value in distribution)
        return mean + std * randn_tensor(mean.shape, generator=self.generator, device=self.device, dtype=mean.dtype)

    def _inpainting_start(
        self, input_latents: LatentDistribution | None, mask: np.ndarray, masked_latents: LatentDistribution | None
    ) -> torch.Tensor:
        """The first latents of an inpainting image, with the generator's draws in the order of
        ``StableDiffusionInpaintPipeline.__call__`` (and its SDXL and SD 3 twins'): the input image's sample where it
        is used, the noise, then the masked image's sample (drawn for a plain UNet too, which never reads it). Their
        ``_encode_vae_image`` shifts and scales the sample (SD 3's shift; no SDXL latents_mean); flow matching noises
        with the scheduler's ``scale_noise`` and starts from unit noise."""
        config, run = self.config, self._runs[0]
        image_latents = None if input_latents is None else self._inpainting_latents(input_latents)
        shape = config.latent_shape(height=self.params.height, width=self.params.width)
        noise = randn_tensor(shape, generator=self.generator, device=self.device, dtype=torch.float32)
        timestep = run.start_timestep.repeat(shape[0])
        if self.params.strength == 1.0 and config.flux is None:
            # is_strength_max: pure noise (FluxInpaintPipeline has no such case: it always noises the image)
            latents = noise if config.flow_matching else noise * run.scheduler.init_noise_sigma
        elif config.flow_matching:
            latents = run.scheduler.scale_noise(image_latents, timestep, noise)
        else:
            latents = run.scheduler.add_noise(image_latents, noise, timestep)
        # prepare_mask_latents: the binarized mask resized (nearest) to the latents.
        self._mask = torch.nn.functional.interpolate(preprocess_mask(mask, self.device), size=self._latent_size)
        if masked_latents is not None:
            self._masked_image_latents = self._inpainting_latents(masked_latents)
        else:
            randn_tensor(shape, generator=self.generator, device=self.device, dtype=torch.float32)
            self._image_latents, self._noise = image_latents, noise
        if config.flux is None:
            return latents
        # FluxInpaintPipeline blends packed latents: the mask repeated over the channels and packed alike.
        self._mask = _pack(self._mask.repeat(1, shape[1], 1, 1))
        self._image_latents, self._noise = _pack(image_latents), _pack(noise)
        return _pack(latents)

    def _inpainting_latents(self, distribution: LatentDistribution) -> torch.Tensor:
        """A picture's latents as the inpainting pipelines' ``_encode_vae_image`` makes them: a sample, shifted and
        scaled (SD, SDXL: no shift; unlike their img2img twins, SDXL's ignores the VAE's latents_mean/std)."""
        return (self._sample(distribution) - self.config.vae_shift_factor) * self.config.vae_scaling_factor

    def _noised_input(self, input_latents: LatentDistribution) -> torch.Tensor:
        """The first latents of an image-to-image image (``StableDiffusionImg2ImgPipeline.prepare_latents``)."""
        latents = normalize_latents(self._sample(input_latents), self.config)
        noise = randn_tensor(latents.shape, generator=self.generator, device=self.device, dtype=latents.dtype)
        run = self._runs[0]
        timestep = run.start_timestep.repeat(latents.shape[0])
        if not self.config.flow_matching:
            return run.scheduler.add_noise(latents, noise, timestep)
        # StableDiffusion3Img2ImgPipeline and FluxImg2ImgPipeline: the flow schedulers' interpolation toward the noise.
        latents = run.scheduler.scale_noise(latents, timestep, noise)
        return latents if self.config.flux is None else _pack(latents)

    @property
    def timesteps(self) -> list:
        """Every stage's timesteps, in order."""
        return [t for run in self._runs for t in run.timesteps]

    @property
    def total_steps(self) -> int:
        """Network evaluations in all (second-order schedulers evaluate twice per step)."""
        return sum(len(run.timesteps) for run in self._runs)

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the latents (FLUX's before packing): images of one latent size share a network call."""
        return self._latent_size

    @property
    def unet(self) -> str:
        """The UNet model of the next evaluation."""
        return self._current().stage.unet

    @property
    def rows(self) -> int:
        """UNet batch rows this image needs in this evaluation: [negative, prompt] with guidance, one more in
        skip-layer guidance's window."""
        if self._skips_layers():
            return SKIP_LAYER_GUIDANCE_ROWS
        return 2 if self.do_guidance else 1

    def _skips_layers(self) -> bool:
        """Whether this evaluation adds skip-layer guidance's row, as ``StableDiffusion3Pipeline.__call__``: with
        classifier-free guidance, at evaluation i with steps * start < i < steps * stop (its requested steps)."""
        params = self.params
        if not (self._takes_skip_flag and self.do_guidance and params.skip_layer_guidance_scale > 0):
            return False
        self._current()
        return in_skip_layer_guidance_window(
            self._step_in_run,
            params.num_inference_steps,
            start=params.skip_layer_guidance_start,
            stop=params.skip_layer_guidance_stop,
        )

    def _current(self) -> _StageRun:
        while self._step_in_run >= len(self._runs[self._run_index].timesteps):
            self._run_index += 1
            self._step_in_run = 0
        return self._runs[self._run_index]

    @property
    def latent_input(self) -> str:
        """The name of the denoiser's latent input: ``sample`` (UNet), ``hidden_states`` (SD 3's transformer)."""
        return LATENT_INPUTS[self.config.family]

    def model_input(self) -> dict[str, torch.Tensor]:
        """This evaluation's denoiser inputs: the latents [rows, C, h, w] (FLUX: packed, [rows, seq, 4C];
        :attr:`latent_input`), timestep [rows], the stage's conditioning. SD 3's and FLUX's pipelines scale no model
        input (flow matching); FLUX's passes timestep / 1000."""
        run = self._current()
        t = run.timesteps[self._step_in_run]
        model_input = torch.cat([self.latents] * 2) if self.do_guidance else self.latents
        if not self.config.flow_matching:
            model_input = run.scheduler.scale_model_input(model_input, t)
        if self._masked_image_latents is not None:
            # An inpainting UNet's channels: the scaled latents, the mask, the masked image's latents.
            rows = (model_input.shape[0], 1, 1, 1)
            model_input = torch.cat(
                [model_input, self._mask.repeat(rows), self._masked_image_latents.repeat(rows)], dim=1
            )
        timestep = torch.full((model_input.shape[0],), float(t), dtype=torch.float32, device=self.device)
        if self.config.flux is not None:
            timestep = timestep / FLUX_TIMESTEP_DIVISOR
        inputs = {self.latent_input: model_input, "timestep": timestep, **run.stage.conditioning}
        if not self._takes_skip_flag:
            return inputs
        flags = [0.0] * len(model_input)
        if self._skips_layers():
            # The prompt's row again (the last), its flag set: diffusers' call with skip_layers on the prompt alone.
            inputs = {name: torch.cat([value, value[-1:]]) for name, value in inputs.items()}
            flags.append(1.0)
        inputs[SKIP_LAYERS_INPUT] = torch.tensor(flags, dtype=torch.float32, device=self.device)
        return inputs

    def step(self, noise_pred: torch.Tensor) -> None:
        """Applies the UNet's answer for this image's rows: guidance, then the scheduler's step."""
        run = self._current()
        t = run.timesteps[self._step_in_run]
        prediction = noise_pred
        if self.do_guidance:
            skips_layers = self._skips_layers()
            noise_pred_uncond, noise_pred_text, *skipped = prediction.chunk(
                SKIP_LAYER_GUIDANCE_ROWS if skips_layers else 2
            )
            prediction = noise_pred_uncond + self.params.cfg_scale * (noise_pred_text - noise_pred_uncond)
            if skips_layers:
                prediction = prediction + (noise_pred_text - skipped[0]) * self.params.skip_layer_guidance_scale
        output = run.scheduler.step(prediction, t, self.latents, **run.extra_step_kwargs, return_dict=True)
        self.latents = output.prev_sample
        if self._image_latents is not None:
            self.latents = self._blend(run)
        self.predicted_original = getattr(output, "pred_original_sample", None)
        self._step_in_run += 1
        self.steps_done += 1

    def _blend(self, run: _StageRun) -> torch.Tensor:
        """A plain UNet's inpainting, as its pipeline after each step: the input image's latents noised to the next
        timestep (none after the last) outside the mask, the denoised latents inside."""
        known = self._image_latents
        following = self._step_in_run + 1
        if following < len(run.timesteps):
            timestep = run.timesteps[following].reshape(1)
            if self.config.flow_matching:
                known = run.scheduler.scale_noise(known, timestep, self._noise)
            else:
                known = run.scheduler.add_noise(known, self._noise, timestep)
        return (1 - self._mask) * known + self._mask * self.latents

    def spatial(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents as the loop holds them -> [1, C, h, w] (FLUX's unpacked by ``FluxPipeline._unpack_latents``)."""
        if self.config.flux is None:
            return latents
        from diffusers import FluxPipeline

        params = self.params
        return FluxPipeline._unpack_latents(latents, params.height, params.width, self.config.vae_scale_factor)

    def preview_latents(self) -> torch.Tensor:
        """[1, C, h, w]: the scheduler's estimate of the clean latents where it gives one, else the latents."""
        return self.spatial(self.predicted_original if self.predicted_original is not None else self.latents)

    def scaled_latents(self) -> torch.Tensor:
        """The final latents as the VAE decoder takes them, [1, C, h, w] (de-normalized as diffusers does)."""
        config = self.config
        latents = self.spatial(self.latents)
        if self.params.inpaint and config.sd3 is not None:
            # StableDiffusion3InpaintPipeline decodes latents / scaling_factor without adding back the VAE's
            # shift_factor it subtracted when encoding (its text-to-image and img2img twins add it): as it draws.
            return latents / config.vae_scaling_factor
        channel_stats = _latent_channel_stats(config, latents.device)
        if channel_stats is not None:
            mean, std = channel_stats
            return latents * std / config.vae_scaling_factor + mean
        return latents / config.vae_scaling_factor + config.vae_shift_factor


def _pack(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's 2x2 packing of [B, C, h, w] latents into [B, hw/4, 4C] (``FluxPipeline._pack_latents``)."""
    from diffusers import FluxPipeline  # here: its module imports transformers (seconds of an SD start)

    return FluxPipeline._pack_latents(latents, *latents.shape)


def _latent_channel_stats(config: PipelineConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The VAE config's per-channel ``latents_mean`` and ``latents_std`` as [1, C, 1, 1] (an SDXL VAE may have them)."""
    if config.vae_latents_mean is None or config.vae_latents_std is None:
        return None
    channels = (1, len(config.vae_latents_mean), 1, 1)
    mean = torch.tensor(config.vae_latents_mean, dtype=torch.float32, device=device).view(channels)
    std = torch.tensor(config.vae_latents_std, dtype=torch.float32, device=device).view(channels)
    return mean, std


def normalize_latents(latents: torch.Tensor, config: PipelineConfig) -> torch.Tensor:
    """A VAE encoder's latents as the denoiser takes them, the inverse of :meth:`ImageDenoiser.scaled_latents`: as the
    img2img pipelines' ``prepare_latents``, (latents - latents_mean) x scaling / latents_std where the VAE has
    per-channel statistics (SDXL), else (latents - shift) x scaling (SD: no shift; SD 3 and FLUX have one)."""
    channel_stats = _latent_channel_stats(config, latents.device)
    if channel_stats is not None:
        mean, std = channel_stats
        return (latents - mean) * config.vae_scaling_factor / std
    return (latents - config.vae_shift_factor) * config.vae_scaling_factor


def encode_image_text(
    image: ImageRequest, config: PipelineConfig, components: DiffusionComponents
) -> dict[str, dict[str, torch.Tensor]]:
    """One image's text-encoder outputs, encoder by encoder (the plain loop; the engine batches these calls)."""
    encoded = {}
    for spec in text_encoders_of(config):
        ids = torch.from_numpy(text_ids_for(image, spec.model_name)).to(components.device)
        scales = lora_scales_for(image, config, spec.model_name)
        lora = None if scales is None else torch.from_numpy(scales).to(components.device)
        encoded[spec.model_name] = components.encode_text(spec.model_name, ids, lora)
    return encoded


def generate_image(
    *,
    image: ImageRequest,
    config: PipelineConfig,
    components: DiffusionComponents,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> np.ndarray:
    """Generates one image alone, no serving: the plain loop; returns [H, W, 3] uint8.

    Args:
        image: validated parameters and token ids (:func:`sdtriton.serving.requests.parse_request`).
        config: the exported model's geometry and scheduler config.
        components: the networks.
        is_cancelled: polled before every denoising step.
    """
    # 1. Encode the prompt; with guidance, [negative, prompt] in one batch.
    encoded = encode_image_text(image, config, components)
    # 2.-3. Timesteps and latents (image-to-image and inpainting: from the input pictures' latent distributions).
    distributions = {
        name: encode_in_tiles(pixels, tiling_of(image.params, config, pixels, encode=True), components.encode_image)
        for name, pixels in pictures_to_encode(image, config, components.device).items()
    }
    denoiser = ImageDenoiser(
        params=image.params,
        config=config,
        stages=stages_for(image, config, encoded),
        device=components.device,
        input_latents=distributions.get(INPUT_PICTURE),
        mask=image.mask_image,
        masked_latents=distributions.get(MASKED_PICTURE),
    )
    # 4. Denoise.
    while not denoiser.done:
        if is_cancelled():
            raise RequestCancelledError
        denoiser.step(components.predict_noise(denoiser.unet, denoiser.model_input()))
    # 5. Decode (in tiles where the image asks) and convert to uint8.
    latents = denoiser.scaled_latents()
    tiling = tiling_of(image.params, config, latents)
    return to_uint8_image(decode_in_tiles(latents, tiling, components.decode_latents))
