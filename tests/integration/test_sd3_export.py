"""SD 3 / 3.5, export only: each exported network equals diffusers' own on new inputs, and its component models
serve through a real tritonserver, while the repository's ``pipeline`` refuses to load, naming the family.

The oracle is the diffusers pipeline loaded from the same folder, called as ``StableDiffusion3Pipeline`` calls
its parts (``_get_clip_prompt_embeds``, ``_get_t5_prompt_embeds``, the transformer, ``vae.decode``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sdtriton.components import ONNX_FILE_NAME
from sdtriton.export.configs import MODEL_VERSION, PIPELINE_MODEL_NAME
from sdtriton.pipeline_config import PipelineConfig
from tests.conftest import serve

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

    def session(self, model_name: str) -> ort.InferenceSession:
        path = self.repository / model_name / MODEL_VERSION / ONNX_FILE_NAME
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _make_and_export(root: Path, family: str) -> Exported:
    from diffusers import StableDiffusion3Pipeline

    from sdtriton.export import export_repository
    from sdtriton.tiny import make_tiny

    folder = make_tiny(root / family, family=family)
    repository = root / f"{family}_repository"
    config = export_repository(folder, repository, show_progress=False, fit_preview=False)
    pipeline = StableDiffusion3Pipeline.from_pretrained(folder, dtype=torch.float32)
    return Exported(pipeline=pipeline, repository=repository, config=config)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    root = tmp_path_factory.mktemp("sd3_export")
    return {family: _make_and_export(root, family) for family in ("sd3", "sd35")}


def _close(actual: np.ndarray, expected: torch.Tensor, what: str) -> None:
    expected_array = expected.detach().numpy()
    assert actual.shape == expected_array.shape, what
    error = float(np.max(np.abs(actual - expected_array)))
    assert error <= ATOL, f"{what}: max |onnxruntime - torch| = {error:.3g}"


def _timesteps(pipeline, rows: int) -> np.ndarray:
    """Timesteps as the pipeline passes them: its scheduler's sigma x 1000, as FP32, one per row."""
    pipeline.scheduler.set_timesteps(rows + 1)
    return pipeline.scheduler.timesteps[:rows].numpy().astype(np.float32)


@pytest.mark.parametrize("family", ["sd3", "sd35"])
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
            ids = pipeline.tokenizer_3(prompts, padding="max_length", max_length=t5_rows, truncation=True)
            (t5_states,) = model.session("text_encoder_3").run(None, {"input_ids": np.array(ids.input_ids)})
            expected = pipeline._get_t5_prompt_embeds(prompts, max_sequence_length=t5_rows)
            _close(t5_states, expected, f"{family} text_encoder_3, {rows} rows")
        transformer, vae = model.session("transformer"), model.session("vae_decoder")
        for batch, height, width in LATENT_SHAPES:
            inputs = {
                "hidden_states": rng.standard_normal((batch, 16, height, width), dtype=np.float32),
                "encoder_hidden_states": rng.standard_normal((batch, 77 + t5_rows, 88), dtype=np.float32),
                "pooled_projections": rng.standard_normal((batch, 72), dtype=np.float32),
                "timestep": _timesteps(pipeline, batch),
            }
            (velocity,) = transformer.run(None, inputs)
            expected = pipeline.transformer(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_dict=False)
            _close(velocity, expected[0], f"{family} transformer, {batch}x{height}x{width}")
            latents = rng.standard_normal((batch, 16, height, width), dtype=np.float32)
            (image,) = vae.run(None, {"latents": latents})
            _close(image, pipeline.vae.decode(torch.from_numpy(latents), return_dict=False)[0], f"{family} vae")


@pytest.fixture(scope="module")
def component_server(exported: dict[str, Exported], tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real tritonserver over the SD 3 repository with its component models only (explicit model control:
    the pipeline, which refuses SD 3, is not loaded at start)."""
    loads = tuple(f"--load-model={name}" for name in ("text_encoder_3", "transformer"))
    yield from serve(exported["sd3"].repository, tmp_path_factory, ("--model-control-mode=explicit", *loads))


def test_components_serve_through_triton_and_the_pipeline_refuses_the_family(
    exported: dict[str, Exported], component_server
) -> None:
    import tritonclient.http as httpclient

    model = exported["sd3"]
    client = httpclient.InferenceServerClient(component_server.address.http_url.removeprefix("http://"))
    try:
        _check_components_and_pipeline(client, model)
    finally:
        client.close()  # an open connection would hold the server's stop for its 30 s exit timeout


def _check_components_and_pipeline(client, model: Exported) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    pipeline, t5_rows = model.pipeline, model.config.sd3.t5_max_length

    def infer(model_name: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
        inputs = []
        for name, raw in arrays.items():
            array = raw[:, None] if raw.ndim == 1 else raw  # a per-item scalar is [1] in the config
            tensor = httpclient.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return client.infer(model_name, inputs).as_numpy(
            "last_hidden_state" if model_name == "text_encoder_3" else "noise_pred"
        )

    prompts = list(PROMPTS[:2])
    ids = pipeline.tokenizer_3(prompts, padding="max_length", max_length=t5_rows, truncation=True)
    with torch.no_grad():
        states = infer("text_encoder_3", {"input_ids": np.array(ids.input_ids, dtype=np.int64)})
        _close(states, pipeline._get_t5_prompt_embeds(prompts, max_sequence_length=t5_rows), "served T5")
        rng = np.random.default_rng(1)
        inputs = {
            "hidden_states": rng.standard_normal((2, 16, 24, 40), dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal((2, 77 + t5_rows, 88), dtype=np.float32),
            "pooled_projections": rng.standard_normal((2, 72), dtype=np.float32),
            "timestep": _timesteps(pipeline, 2),
        }
        velocity = infer("transformer", inputs)
        expected = pipeline.transformer(**{k: torch.from_numpy(v) for k, v in inputs.items()}, return_dict=False)[0]
        _close(velocity, expected, "served transformer")
    with pytest.raises(InferenceServerException, match="'sd3' family yet"):
        client.load_model(PIPELINE_MODEL_NAME)
