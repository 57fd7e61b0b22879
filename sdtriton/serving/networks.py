"""The networks interface of the engine and the plain loop, over one ``run(spec, inputs)`` per transport.

:class:`SpecNetworks` turns the calls the denoising code makes (``encode_text``, ``predict_noise``,
``decode_latents``, and for image-to-image ``encode_image``) into runs of the component specs of the exported
model's family; subclasses say how one component runs: a BLS call inside Triton, an ONNX Runtime session in the
baselines and tests. Tensors are torch tensors on the networks' ``device`` (a GPU host's loop keeps them there; the
CPU run is the same code).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from sdtriton.components import (
    LORA_SCALES_INPUT,
    ONNX_FILE_NAME,
    VAE_DECODER_MODEL_NAME,
    VAE_ENCODER_MODEL_NAME,
    ComponentSpec,
    components_of,
)
from sdtriton.interface import PIPELINE_MODEL_NAME
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.serving.onnx_runtime import ComponentSession

TORCH_DTYPES = {"FP32": torch.float32, "FP16": torch.float16, "INT64": torch.int64, "INT32": torch.int32}


def _lora_columns(scales: torch.Tensor, spec: ComponentSpec, adapters: int) -> torch.Tensor:
    """``lora_scales`` as float32 [rows, adapters]; an empty [rows, 0] (none sent) is zeros: the base network."""
    if scales.shape[-1] == 0:
        return torch.zeros((scales.shape[0], adapters), dtype=torch.float32, device=scales.device)
    if scales.shape[-1] != adapters:
        raise ValueError(f"{spec.model_name}: lora_scales has {scales.shape[-1]} columns, the network {adapters}")
    return scales.to(torch.float32)


class SpecNetworks:
    """A :class:`~sdtriton.serving.denoise.DiffusionComponents` over the components of one exported model."""

    def __init__(self, config: PipelineConfig, *, device: torch.device | str = "cpu") -> None:
        self.specs: dict[str, ComponentSpec] = {spec.model_name: spec for spec in components_of(config)}
        self.device = torch.device(device)
        self.lora_adapters = len(config.loras)

    def run(self, spec: ComponentSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Runs one component on its inputs by name; returns its outputs by name, on ``device``."""
        raise NotImplementedError

    def _spec(self, model_name: str) -> ComponentSpec:
        try:
            return self.specs[model_name]
        except KeyError:
            raise KeyError(f"this model has no component {model_name!r} (it has {sorted(self.specs)})") from None

    def encode_text(
        self, encoder: str, input_ids: torch.Tensor, lora_scales: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        spec = self._spec(encoder)
        ids, *lora = spec.input_names
        inputs = {ids: input_ids}
        if lora:
            # A network exported with adapters: each row's weights (none given: the base network's rows).
            scales = lora_scales if lora_scales is not None else input_ids.new_zeros((len(input_ids), 0))
            inputs[LORA_SCALES_INPUT] = _lora_columns(scales, spec, self.lora_adapters)
        return self.run(spec, inputs)

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        spec = self._spec(unet)
        (noise_pred,) = spec.output_names
        return self.run(spec, inputs)[noise_pred]

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        spec = self._spec(VAE_DECODER_MODEL_NAME)
        ((latents_name,), (image,)) = spec.input_names, spec.output_names
        return self.run(spec, {latents_name: latents})[image]

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self._spec(VAE_ENCODER_MODEL_NAME)
        ((image_name,), (mean, std)) = spec.input_names, spec.output_names
        outputs = self.run(spec, {image_name: image})
        return outputs[mean], outputs[std]


class OnnxRuntimeComponents(SpecNetworks):
    """The networks in ONNX Runtime, no Triton: a :class:`DiffusionComponents` for baselines and tests."""

    def __init__(
        self,
        config: PipelineConfig,
        onnx_paths: Mapping[str, Path],
        *,
        device: torch.device | str = "cpu",
        **session_options: object,
    ) -> None:
        super().__init__(config, device=device)
        self.sessions = {
            name: ComponentSession(spec, onnx_paths[name], **session_options) for name, spec in self.specs.items()
        }

    @classmethod
    def from_model_repository(
        cls, repository: Path, config: PipelineConfig | None = None, **session_options: object
    ) -> OnnxRuntimeComponents:
        """Sessions over ``repository/<component>/1/model.onnx``; the config defaults to the repository's own."""
        if config is None:
            config = PipelineConfig.load(repository / PIPELINE_MODEL_NAME / "1")
        paths = {spec.model_name: repository / spec.model_name / "1" / ONNX_FILE_NAME for spec in components_of(config)}
        return cls(config, paths, **session_options)

    def run(self, spec: ComponentSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self.sessions[spec.model_name].run({name: value.cpu().numpy() for name, value in inputs.items()})
        return {name: torch.from_numpy(value).to(self.device) for name, value in outputs.items()}
