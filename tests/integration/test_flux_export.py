"""FLUX.1 export: each exported network of the tiny dev and schnell equals diffusers' own on new inputs, at sizes
other than the one it was traced at. Serving them is ``test_flux_serving.py``.

The oracle is the diffusers pipeline loaded from the same folder, called as ``FluxPipeline`` calls its parts
(``_get_clip_prompt_embeds``, ``_get_t5_prompt_embeds``, the transformer with 2-D ids, ``vae.decode``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdtriton.components import ONNX_FILE_NAME
from sdtriton.export.configs import MODEL_VERSION, PIPELINE_MODEL_NAME
from sdtriton.pipeline_config import PipelineConfig
from tests.integration.oracle import BaseNetworkSession

pytestmark = pytest.mark.integration

# fp32 ONNX Runtime against fp32 torch (measured: <= 2e-5 on the tiny models).
ATOL = 1e-4
# (batch, latent height, latent width): square and non-square, neither the traced 128 x 128.
LATENT_SHAPES = ((1, 32, 32), (3, 16, 48))
PROMPTS = ("a red circle on a blue background", "", "a photo of a cat, highly detailed, 4k")


def _close(actual: np.ndarray, expected: torch.Tensor, what: str) -> float:
    expected_array = expected.detach().numpy()
    assert actual.shape == expected_array.shape, what
    error = float(np.max(np.abs(actual - expected_array)))
    assert error <= ATOL, f"{what}: max |onnxruntime - torch| = {error:.3g}"
    return error


@pytest.mark.parametrize("family", ["flux-dev", "flux-schnell"])
def test_every_exported_flux_network_equals_diffusers(flux_exports, family: str) -> None:
    from diffusers import FluxPipeline

    folder, repository, prefix = flux_exports[family]
    pipeline = FluxPipeline.from_pretrained(folder, dtype=torch.float32)
    config = PipelineConfig.load(repository / f"{prefix}{PIPELINE_MODEL_NAME}" / MODEL_VERSION)
    flux = config.flux
    assert config.family == "flux" and flux is not None
    assert flux.guidance_embeds == (family == "flux-dev")

    def session(model_name: str) -> BaseNetworkSession:
        return BaseNetworkSession(Path(repository) / f"{prefix}{model_name}" / MODEL_VERSION / ONNX_FILE_NAME)

    rng = np.random.default_rng(0)
    with torch.no_grad():
        for rows in (1, 3):
            prompts = list(PROMPTS[:rows])
            ids = pipeline.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
            (pooled,) = session("text_encoder").run(None, {"input_ids": ids.input_ids.astype(np.int64)})
            _close(pooled, pipeline._get_clip_prompt_embeds(prompts), f"{family} CLIP pooled, {rows} rows")
            t5_ids = pipeline.tokenizer_2(prompts, padding="max_length", max_length=flux.t5_max_length, truncation=True)
            (states,) = session("text_encoder_2").run(None, {"input_ids": np.array(t5_ids.input_ids)})
            expected = pipeline._get_t5_prompt_embeds(prompts, max_sequence_length=flux.t5_max_length)
            _close(states, expected, f"{family} T5, {rows} rows")
        transformer, vae = session("transformer"), session("vae_decoder")
        for batch, height, width in LATENT_SHAPES:
            latents = torch.from_numpy(rng.standard_normal((batch, 16, height, width), dtype=np.float32))
            packed = FluxPipeline._pack_latents(latents, batch, 16, height, width)
            img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, "cpu", torch.float32)
            txt_ids = torch.zeros(flux.t5_max_length, 3)
            inputs = {
                "hidden_states": packed,
                "encoder_hidden_states": torch.from_numpy(
                    rng.standard_normal((batch, flux.t5_max_length, flux.t5_hidden_size), dtype=np.float32)
                ),
                "pooled_projections": torch.from_numpy(
                    rng.standard_normal((batch, flux.pooled_size), dtype=np.float32)
                ),
                "timestep": torch.tensor([0.9, 0.5, 0.1][:batch]),  # t / 1000, as FluxPipeline passes it
            }
            guidance = {"guidance": torch.full([batch], 3.5)} if flux.guidance_embeds else {}
            feeds = {
                **inputs,
                **guidance,
                "img_ids": img_ids.expand(batch, -1, -1),
                "txt_ids": txt_ids.expand(batch, -1, -1),
            }
            (velocity,) = transformer.run(None, {name: value.numpy() for name, value in feeds.items()})
            expected = pipeline.transformer(**inputs, **guidance, img_ids=img_ids, txt_ids=txt_ids, return_dict=False)
            _close(velocity, expected[0], f"{family} transformer, {batch}x{height}x{width}")
            (image,) = vae.run(None, {"latents": latents.numpy()})
            _close(image, pipeline.vae.decode(latents, return_dict=False)[0], f"{family} vae, {height}x{width}")
