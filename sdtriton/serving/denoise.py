"""The txt2img pipelines of diffusers (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` and its refiner,
``StableDiffusion3Pipeline``, ``FluxPipeline``), with their networks behind an interface.

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
from sdtriton.schedulers import build_scheduler, set_flux_timesteps, set_sd3_timesteps
from sdtriton.serving.conditioning import ImageRequest, Stage, lora_scales_for, stages_for, text_ids_for
from sdtriton.serving.errors import RequestCancelledError
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
        if stage.set_begin_index and hasattr(scheduler, "set_begin_index"):
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
    """

    def __init__(
        self,
        *,
        params: GenerationParams,
        config: PipelineConfig,
        stages: Sequence[Stage],
        device: torch.device | str = "cpu",
    ) -> None:
        if not stages:
            raise ValueError("an image needs at least one denoising stage")
        self.params = params
        self.config = config
        self.do_guidance = params.uses_classifier_free_guidance
        # An SD 3 transformer exported with skip-guidance layers takes a per-row skip_layers flag in every call.
        self._takes_skip_flag = config.sd3 is not None and bool(config.sd3.skip_guidance_layers)
        # Prepare latents exactly as diffusers draws them, with the generator every stage then shares.
        self.device = torch.device(device)
        self.generator = torch.Generator("cpu").manual_seed(params.seed)
        self._runs = [_StageRun(stage, params, self.generator, self.device, config) for stage in stages]
        self._run_index = 0
        self._step_in_run = 0
        shape = config.latent_shape(height=params.height, width=params.width)
        self._latent_size = (shape[2], shape[3])
        # randn_tensor draws on the generator's device (the CPU) and moves the result, as diffusers does.
        latents = randn_tensor(shape, generator=self.generator, device=self.device, dtype=torch.float32)
        if config.flux is not None:
            from diffusers import FluxPipeline  # here: its module imports transformers (seconds of an SD start)

            # FluxPipeline.prepare_latents: drawn [1, C, h, w], then packed in 2x2 patches, [1, hw/4, 4C].
            latents = FluxPipeline._pack_latents(latents, *shape)
        # StableDiffusion3Pipeline and FluxPipeline do not scale them (flow matching starts at unit noise).
        self.latents = latents if config.flow_matching else latents * self._runs[0].scheduler.init_noise_sigma
        self.steps_done = 0
        # The scheduler's estimate of the clean latents at the last step, where it gives one (previews).
        self.predicted_original: torch.Tensor | None = None

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
        self.predicted_original = getattr(output, "pred_original_sample", None)
        self._step_in_run += 1
        self.steps_done += 1

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
        if config.vae_latents_mean is not None and config.vae_latents_std is not None:
            channels = (1, len(config.vae_latents_mean), 1, 1)
            mean = torch.tensor(config.vae_latents_mean, dtype=torch.float32, device=self.device).view(channels)
            std = torch.tensor(config.vae_latents_std, dtype=torch.float32, device=self.device).view(channels)
            return latents * std / config.vae_scaling_factor + mean
        return latents / config.vae_scaling_factor + config.vae_shift_factor


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
    # 2.-3. Timesteps and latents.
    denoiser = ImageDenoiser(
        params=image.params, config=config, stages=stages_for(image, config, encoded), device=components.device
    )
    # 4. Denoise.
    while not denoiser.done:
        if is_cancelled():
            raise RequestCancelledError
        denoiser.step(components.predict_noise(denoiser.unet, denoiser.model_input()))
    # 5. Decode and convert to uint8.
    return to_uint8_image(components.decode_latents(denoiser.scaled_latents()))
