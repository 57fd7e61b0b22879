"""SD 3 / 3.5 export: each exported network equals diffusers' own on new inputs (SD 3.5 with T5 and skip-guidance
layers: its flagged rows equal diffusers' ``skip_layers=``, the others the plain forward; SD 3's plain transformer
without T5, of other geometry: 1x1 patches, 4 latent channels). Serving them is ``test_sd3_serving.py``.

The oracle is the diffusers pipeline loaded from the same folder, called as ``StableDiffusion3Pipeline`` calls
its parts (``_get_clip_prompt_embeds``, ``_get_t5_prompt_embeds``, the transformer, ``vae.decode``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from sdtriton.components import ONNX_FILE_NAME, SKIP_LAYERS_INPUT
from sdtriton.export.configs import MODEL_VERSION, PIPELINE_MODEL_NAME
from sdtriton.pipeline_config import PipelineConfig
from tests.integration.oracle import BaseNetworkSession

# fp32 ONNX Runtime against fp32 torch (measured: <= 4e-6 on the tiny models).
ATOL = 1e-4
# Two batch sizes, each with a non-square latent; 48 is the tiny transformer's widest latent (24 patches of 2).
LATENT_SHAPES = ((1, 32, 32), (3, 16, 48))
PROMPTS = ("a red circle on a blue background", "", "a photo of a cat, highly detailed, 4k")


@dataclass(frozen=True)
class Exported:
    pipeline: object  # StableDiffusion3Pipeline
    repository: Path
    config: PipelineConfig
    prefix: str

    def session(self, model_name: str) -> BaseNetworkSession:
        return BaseNetworkSession(self.repository / f"{self.prefix}{model_name}" / MODEL_VERSION / ONNX_FILE_NAME)


@pytest.fixture(scope="module")
def exported(sd3_exports) -> dict[str, Exported]:
    from diffusers import StableDiffusion3Pipeline

    models = {}
    for name, (folder, repository, prefix) in sd3_exports.items():
        without_t5 = {} if (folder / "text_encoder_3").is_dir() else {"text_encoder_3": None, "tokenizer_3": None}
        pipeline = StableDiffusion3Pipeline.from_pretrained(folder, dtype=torch.float32, **without_t5)
        config = PipelineConfig.load(repository / f"{prefix}{PIPELINE_MODEL_NAME}" / MODEL_VERSION)
        models[name] = Exported(pipeline=pipeline, repository=repository, config=config, prefix=prefix)
    return models


def _close(actual: np.ndarray, expected: torch.Tensor, what: str) -> None:
    expected_array = expected.detach().numpy()
    assert actual.shape == expected_array.shape, what
    error = float(np.max(np.abs(actual - expected_array)))
    assert error <= ATOL, f"{what}: max |onnxruntime - torch| = {error:.3g}"


def _timesteps(pipeline, rows: int) -> np.ndarray:
    """Timesteps as the pipeline passes them: its scheduler's sigma x 1000, as FP32, one per row (any mu where the
    scheduler shifts dynamically)."""
    mu = {"mu": 0.5} if pipeline.scheduler.config.use_dynamic_shifting else {}
    pipeline.scheduler.set_timesteps(rows + 1, **mu)
    return pipeline.scheduler.timesteps[:rows].numpy().astype(np.float32)


@pytest.mark.parametrize("family", ["sd35", "sd3_no_t5"])
def test_every_exported_network_equals_diffusers(exported: dict[str, Exported], family: str) -> None:
    model = exported[family]
    pipeline, config = model.pipeline, model.config
    assert config.family == "sd3" and config.sd3 is not None
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for rows in (1, 3):
            prompts = list(PROMPTS[:rows])
            for index, (name, tokenizer) in enumerate(
                (("text_encoder", pipeline.tokenizer), ("text_encoder_2", pipeline.tokenizer_2))
            ):
                ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
                hidden, pooled = model.session(name).run(None, {"input_ids": ids.input_ids.astype(np.int64)})
                expected_hidden, expected_pooled = pipeline._get_clip_prompt_embeds(prompts, clip_model_index=index)
                _close(hidden, expected_hidden, f"{family} {name} hidden, {rows} rows")
                _close(pooled, expected_pooled, f"{family} {name} pooled, {rows} rows")
            t5_rows = config.sd3.t5_max_length
            if not config.sd3.has_t5:
                assert not (model.repository / f"{model.prefix}text_encoder_3").exists()
                continue
            ids = pipeline.tokenizer_3(prompts, padding="max_length", max_length=t5_rows, truncation=True)
            (t5_states,) = model.session("text_encoder_3").run(None, {"input_ids": np.array(ids.input_ids)})
            expected = pipeline._get_t5_prompt_embeds(prompts, max_sequence_length=t5_rows)
            _close(t5_states, expected, f"{family} text_encoder_3, {rows} rows")
        transformer, vae = model.session("transformer"), model.session("vae_decoder")
        # The SD 3 without T5 is of other geometry (tests/conftest.py: 1x1 patches, 4 latent channels).
        channels, text = config.latent_channels, (77 + t5_rows, config.sd3.joint_attention_dim)
        for batch, height, width in LATENT_SHAPES:
            inputs = {
                "hidden_states": rng.standard_normal((batch, channels, height, width), dtype=np.float32),
                "encoder_hidden_states": rng.standard_normal((batch, *text), dtype=np.float32),
                "pooled_projections": rng.standard_normal((batch, config.sd3.pooled_projection_dim), dtype=np.float32),
                "timestep": _timesteps(pipeline, batch),
            }
            torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
            layers = list(config.sd3.skip_guidance_layers)
            if layers:
                # Exported with skip-guidance layers: every other row flagged, each equal to diffusers' skip_layers=.
                flags = np.arange(batch) % 2 == 1
                inputs[SKIP_LAYERS_INPUT] = flags.astype(np.float32)
                plain = pipeline.transformer(**torch_inputs, return_dict=False)[0]
                skipped = pipeline.transformer(**torch_inputs, skip_layers=layers, return_dict=False)[0]
                expected = torch.where(torch.from_numpy(flags).view(-1, 1, 1, 1), skipped, plain)
            else:
                expected = pipeline.transformer(**torch_inputs, return_dict=False)[0]
            (velocity,) = transformer.run(None, inputs)
            _close(velocity, expected, f"{family} transformer, {batch}x{height}x{width}")
            latents = rng.standard_normal((batch, channels, height, width), dtype=np.float32)
            (image,) = vae.run(None, {"latents": latents})
            _close(image, pipeline.vae.decode(torch.from_numpy(latents), return_dict=False)[0], f"{family} vae")
