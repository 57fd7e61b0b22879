"""The networks interface of the engine and the plain loop, over one ``run(spec, inputs)`` per transport.

:class:`SpecNetworks` turns the three calls the denoising code makes (``encode_text``, ``predict_noise``,
``decode_latents``) into runs of the component specs of the exported model's family; subclasses say how one
component runs: a BLS call inside Triton, an ONNX Runtime session in the baselines and tests. Tensors are torch
tensors on the networks' ``device`` (a GPU host's loop keeps them there; the CPU run is the same code).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from sdtriton.components import VAE_DECODER_MODEL_NAME, ComponentSpec, components_of
from sdtriton.pipeline_config import PipelineConfig

TORCH_DTYPES = {"FP32": torch.float32, "FP16": torch.float16, "INT64": torch.int64, "INT32": torch.int32}


class SpecNetworks:
    """A :class:`~sdtriton.serving.denoise.DiffusionComponents` over the components of one exported model."""

    def __init__(self, config: PipelineConfig, *, device: torch.device | str = "cpu") -> None:
        self.specs: dict[str, ComponentSpec] = {spec.model_name: spec for spec in components_of(config)}
        self.device = torch.device(device)

    def run(self, spec: ComponentSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs one component on its inputs by name; returns its outputs by name, on ``device``."""
        raise NotImplementedError

    def _spec(self, model_name: str) -> ComponentSpec:
        try:
            return self.specs[model_name]
        except KeyError:
            raise KeyError(f"this model has no component {model_name!r} (it has {sorted(self.specs)})") from None

    def encode_text(self, encoder: str, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        spec = self._spec(encoder)
        (ids,) = spec.input_names
        return self.run(spec, {ids: input_ids})

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        spec = self._spec(unet)
        (noise_pred,) = spec.output_names
        return self.run(spec, inputs)[noise_pred]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        spec = self._spec(VAE_DECODER_MODEL_NAME)
        ((latents_name,), (image,)) = spec.input_names, spec.output_names
        return self.run(spec, {latents_name: latents})[image]
