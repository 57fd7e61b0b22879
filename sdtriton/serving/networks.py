"""The networks interface of the engine and the plain loop, over one ``run(spec, inputs)`` per transport.

:class:`SpecNetworks` turns the three calls the denoising code makes (``encode_text``, ``predict_noise``,
``decode_latents``) into runs of the component specs of the exported model's family; subclasses say how one
component runs: a BLS call inside Triton, an ONNX Runtime session in the baselines and tests.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sdtriton.components import VAE_DECODER_MODEL_NAME, ComponentSpec, components_of
from sdtriton.pipeline_config import PipelineConfig


class SpecNetworks:
    """A :class:`~sdtriton.serving.denoise.DiffusionComponents` over the components of one exported model."""

    def __init__(self, config: PipelineConfig) -> None:
        self.specs: dict[str, ComponentSpec] = {spec.model_name: spec for spec in components_of(config)}

    def run(self, spec: ComponentSpec, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs one component on its inputs by name; returns its outputs by name."""
        raise NotImplementedError

    def _spec(self, model_name: str) -> ComponentSpec:
        try:
            return self.specs[model_name]
        except KeyError:
            raise KeyError(f"this model has no component {model_name!r} (it has {sorted(self.specs)})") from None

    def encode_text(self, encoder: str, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        spec = self._spec(encoder)
        (ids,) = spec.input_names
        return self.run(spec, {ids: input_ids})

    def predict_noise(self, unet: str, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        spec = self._spec(unet)
        (noise_pred,) = spec.output_names
        return self.run(spec, inputs)[noise_pred]

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        spec = self._spec(VAE_DECODER_MODEL_NAME)
        ((latents_name,), (image,)) = spec.input_names, spec.output_names
        return self.run(spec, {latents_name: latents})[image]
