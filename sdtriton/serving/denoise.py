"""The txt2img pipeline of diffusers' ``StableDiffusionPipeline``, with its networks behind an interface.

The numbered steps follow ``StableDiffusionPipeline.__call__`` so that the same seed and parameters give
the same image: latents drawn by ``randn_tensor`` from ``torch.Generator("cpu").manual_seed(seed)``, the
same generator handed to the scheduler's ``step``, classifier-free guidance as one batch of
[negative, prompt], and the same post-processing to uint8. The networks are reached through
:class:`DiffusionComponents`: BLS calls inside Triton, ONNX Runtime sessions in the baselines.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from sdtriton.pipeline_config import PipelineConfig
from sdtriton.schedulers import build_scheduler
from sdtriton.serving.errors import RequestCancelledError
from sdtriton.serving.validation import GenerationParams

_DEVICE = torch.device("cpu")
# StableDiffusionPipeline's default eta: only DDIM reads it.
_ETA = 0.0


class DiffusionComponents(Protocol):
    """The three networks of the pipeline, called with numpy arrays."""

    def encode_text(self, input_ids: np.ndarray) -> np.ndarray:
        """[B, T] int64 token ids -> [B, T, D] float32 last hidden state."""

    def predict_noise(self, sample: np.ndarray, timestep: np.ndarray, encoder_hidden_states: np.ndarray) -> np.ndarray:
        """[B, C, h, w] latents, [B] timesteps, [B, T, D] text states -> [B, C, h, w] noise prediction."""

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
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
    pixels = image.permute(0, 2, 3, 1).float().numpy()[0]
    return (pixels * 255).round().astype("uint8")


def text_ids_for(params: GenerationParams, input_ids: np.ndarray, negative_input_ids: np.ndarray) -> np.ndarray:
    """The rows one image sends to the text encoder: [negative, prompt] with guidance, else [prompt]."""
    ids = np.stack([negative_input_ids, input_ids]) if params.uses_classifier_free_guidance else input_ids[None]
    return ids.astype(np.int64, copy=False)


class ImageDenoiser:
    """One image's denoising loop, one network evaluation at a time, as ``StableDiffusionPipeline.__call__``.

    The plain loop (:func:`generate_image`) and the engine, which batches many images into one UNet call,
    drive the same object: ``model_input()`` gives this image's UNet rows, ``step(noise_pred)`` applies the
    UNet's answer for them with the image's own scheduler and generator. So a batched image is computed by
    exactly the code that computes it alone.

    Args:
        params: validated generation parameters.
        config: the exported model's geometry and scheduler config.
        prompt_embeds: [2, T, D] (negative, prompt) with guidance, else [1, T, D] text encoder states.
    """

    def __init__(self, *, params: GenerationParams, config: PipelineConfig, prompt_embeds: np.ndarray) -> None:
        self.params = params
        self.config = config
        self.prompt_embeds = prompt_embeds
        self.do_guidance = params.uses_classifier_free_guidance
        # 2. Prepare timesteps on a scheduler of this request's own.
        self.scheduler = build_scheduler(config.scheduler_config, params.scheduler, config.scheduler_overrides)
        self.scheduler.set_timesteps(params.num_inference_steps, device=_DEVICE)
        self.timesteps = list(self.scheduler.timesteps)
        # 3. Prepare latents exactly as diffusers draws them.
        self.generator = torch.Generator("cpu").manual_seed(params.seed)
        shape = config.latent_shape(height=params.height, width=params.width)
        latents = randn_tensor(shape, generator=self.generator, device=_DEVICE, dtype=torch.float32)
        self.latents = latents * self.scheduler.init_noise_sigma
        self.extra_step_kwargs = _extra_step_kwargs(self.scheduler, self.generator)
        self.steps_done = 0
        # The scheduler's estimate of the clean latents at the last step, where it gives one (previews).
        self.predicted_original: torch.Tensor | None = None

    @property
    def total_steps(self) -> int:
        """Network evaluations in all (second-order schedulers evaluate twice per step)."""
        return len(self.timesteps)

    @property
    def done(self) -> bool:
        return self.steps_done >= len(self.timesteps)

    @property
    def latent_size(self) -> tuple[int, int]:
        return int(self.latents.shape[2]), int(self.latents.shape[3])

    @property
    def rows(self) -> int:
        """UNet batch rows this image needs per evaluation."""
        return 2 if self.do_guidance else 1

    def model_input(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This evaluation's UNet inputs: sample [rows, C, h, w], timestep [rows], text states [rows, T, D]."""
        t = self.timesteps[self.steps_done]
        model_input = torch.cat([self.latents] * 2) if self.do_guidance else self.latents
        model_input = self.scheduler.scale_model_input(model_input, t)
        timestep = np.full((model_input.shape[0],), float(t), dtype=np.float32)
        return model_input.numpy(), timestep, self.prompt_embeds

    def step(self, noise_pred: np.ndarray) -> None:
        """Applies the UNet's answer for this image's rows: guidance, then the scheduler's step."""
        t = self.timesteps[self.steps_done]
        prediction = torch.from_numpy(noise_pred)
        if self.do_guidance:
            noise_pred_uncond, noise_pred_text = prediction.chunk(2)
            prediction = noise_pred_uncond + self.params.guidance_scale * (noise_pred_text - noise_pred_uncond)
        output = self.scheduler.step(prediction, t, self.latents, **self.extra_step_kwargs, return_dict=True)
        self.latents = output.prev_sample
        self.predicted_original = getattr(output, "pred_original_sample", None)
        self.steps_done += 1

    def scaled_latents(self) -> np.ndarray:
        """The final latents as the VAE decoder takes them, [1, C, h, w]."""
        return (self.latents / self.config.vae_scaling_factor).numpy()


def generate_image(
    *,
    input_ids: np.ndarray,
    negative_input_ids: np.ndarray,
    params: GenerationParams,
    config: PipelineConfig,
    components: DiffusionComponents,
    is_cancelled: Callable[[], bool] = lambda: False,
) -> np.ndarray:
    """Generates one image alone, no serving: the plain loop; returns [H, W, 3] uint8.

    Args:
        input_ids: [T] token ids of the prompt, padded and truncated as diffusers does.
        negative_input_ids: [T] token ids of the negative prompt ("" when none was given).
        params: validated generation parameters.
        config: the exported model's geometry and scheduler config.
        components: the three networks.
        is_cancelled: polled before every denoising step.
    """
    # 1. Encode the prompt; with guidance, [negative, prompt] in one batch.
    prompt_embeds = components.encode_text(text_ids_for(params, input_ids, negative_input_ids))
    # 2.-3. Timesteps and latents.
    image = ImageDenoiser(params=params, config=config, prompt_embeds=prompt_embeds)
    # 4. Denoise.
    while not image.done:
        if is_cancelled():
            raise RequestCancelledError
        image.step(components.predict_noise(*image.model_input()))
    # 5. Decode and convert to uint8.
    return to_uint8_image(torch.from_numpy(components.decode_latents(image.scaled_latents())))
