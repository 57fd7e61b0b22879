"""Every config parses against Triton's own ModelConfig, and the committed repository is the rendered one."""

from __future__ import annotations

from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sdtriton import interface
from sdtriton.components import COMPONENTS
from sdtriton.export.configs import (
    CONFIG_FILE_NAME,
    MODEL_FILE_NAME,
    MODEL_VERSION,
    ComponentBackend,
    RenderOptions,
    config_text,
    model_file_text,
    parse_config_text,
    render_all_configs,
)
from sdtriton.export.repository import load_source_pipeline, pipeline_config_of

COMMITTED_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
EXPECTED_MODELS = {"tokenizer", "text_encoder", "unet", "vae_decoder", "pipeline", "stable_diffusion"}


@pytest.fixture(scope="module")
def default_pipeline_config():
    # The committed repository is the rendering for the default model, the built-in 'shapes'.
    return pipeline_config_of(load_source_pipeline("shapes"))


def test_committed_repository_holds_exactly_the_models() -> None:
    models = {path.name for path in COMMITTED_REPOSITORY.iterdir() if path.is_dir()}
    assert models == EXPECTED_MODELS
    # Triton loads only models with a version folder; the ensemble's holds nothing but a placeholder.
    assert all((COMMITTED_REPOSITORY / name / MODEL_VERSION).is_dir() for name in EXPECTED_MODELS)


@pytest.mark.parametrize("model_name", sorted(EXPECTED_MODELS))
def test_committed_config_parses_and_names_its_folder(model_name: str) -> None:
    config = parse_config_text((COMMITTED_REPOSITORY / model_name / CONFIG_FILE_NAME).read_text())
    assert isinstance(config, mc.ModelConfig)
    assert config.name == model_name


def test_committed_repository_is_the_render_of_the_default_model(default_pipeline_config) -> None:
    rendered = render_all_configs(default_pipeline_config, RenderOptions())
    for name, config in rendered.items():
        committed = (COMMITTED_REPOSITORY / name / CONFIG_FILE_NAME).read_text()
        assert committed == config_text(config), f"{name}/config.pbtxt is stale: re-run the README's main command"
        model_file = COMMITTED_REPOSITORY / name / MODEL_VERSION / MODEL_FILE_NAME
        if config.backend == "python":
            assert model_file.read_text() == model_file_text(name)
        else:
            assert not model_file.exists()


@pytest.mark.parametrize("backend", list(ComponentBackend))
@pytest.mark.parametrize("gpu", [False, True])
def test_every_variant_renders_to_a_parsable_config(default_pipeline_config, backend, gpu: bool) -> None:
    options = RenderOptions(component_backend=backend, gpu=gpu)
    for name, config in render_all_configs(default_pipeline_config, options).items():
        reparsed = parse_config_text(config_text(config))
        assert reparsed == config
        if name in COMPONENTS:
            expected_backend = {"python": "python", "onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}
            assert reparsed.backend == expected_backend[backend.value]
            kind = reparsed.instance_group[0].kind
            assert kind == (mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU)


def test_ensemble_exposes_the_public_interface(default_pipeline_config) -> None:
    ensemble = render_all_configs(default_pipeline_config, RenderOptions())[interface.ENTRY_MODEL_NAME]
    assert ensemble.platform == "ensemble"
    assert ensemble.max_batch_size >= 1
    assert [i.name for i in ensemble.input] == [t.name for t in interface.PUBLIC_INPUTS]
    assert [o.name for o in ensemble.output] == [t.name for t in interface.PUBLIC_OUTPUTS]
    produced = set()
    for step in ensemble.ensemble_scheduling.step:
        assert step.model_name in EXPECTED_MODELS
        produced.update(step.output_map.values())
    assert {t.name for t in interface.PUBLIC_OUTPUTS} <= produced


def test_component_dims_follow_the_model(default_pipeline_config) -> None:
    configs = render_all_configs(default_pipeline_config, RenderOptions())
    unet = configs["unet"]
    sample = next(i for i in unet.input if i.name == "sample")
    assert list(sample.dims) == [default_pipeline_config.latent_channels, -1, -1]
    timestep = next(i for i in unet.input if i.name == "timestep")
    assert list(timestep.dims) == [1] and timestep.HasField("reshape") and list(timestep.reshape.shape) == []
