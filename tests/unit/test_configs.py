"""Every config parses against Triton's own ModelConfig, and the committed repository is the rendered one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sdtriton import interface
from sdtriton.components import COMPONENTS
from sdtriton.export.configs import (
    CONFIG_FILE_NAME,
    ENGINE_PARAMETERS,
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
from sdtriton.serving.engine import EngineLimits

COMMITTED_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
EXPECTED_MODELS = {
    "text_encoder",
    "unet",
    "vae_decoder",
    "vae_encoder",
    "pipeline",
    "stable_diffusion",
    "stable_diffusion_stream",
}


@pytest.fixture(scope="module")
def default_pipeline_config():
    # The committed repository is the rendering for the default model, the built-in 'shapes'.
    return pipeline_config_of(load_source_pipeline("shapes"))


def test_committed_repository_holds_exactly_the_models() -> None:
    models = {path.name for path in COMMITTED_REPOSITORY.iterdir() if path.is_dir()}
    assert models == EXPECTED_MODELS
    # Triton loads only models with a version folder.
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


def test_entries_expose_the_public_interface_and_the_pipeline_takes_both(default_pipeline_config) -> None:
    configs = render_all_configs(default_pipeline_config, RenderOptions(max_running_images=4))
    entry, stream = configs[interface.ENTRY_MODEL_NAME], configs[interface.STREAM_ENTRY_MODEL_NAME]
    assert [i.name for i in entry.input] == [t.name for t in interface.ENTRY_INPUTS]
    assert [o.name for o in entry.output] == [t.name for t in interface.PUBLIC_OUTPUTS]
    # HTTP /infer answers 501 for a decoupled model: the plain entry must not be one.
    assert not entry.model_transaction_policy.decoupled
    assert stream.model_transaction_policy.decoupled
    assert [i.name for i in stream.input] == [t.name for t in interface.STREAM_INPUTS]
    assert [o.name for o in stream.output] == [t.name for t in interface.STREAM_OUTPUTS]
    pipeline = configs["pipeline"]
    assert pipeline.model_transaction_policy.decoupled
    assert {i.name for i in pipeline.input} >= {i.name for i in stream.input}
    assert all(i.optional for i in pipeline.input)
    assert pipeline.parameters["max_running_images"].string_value == "4"
    # Every engine limit is set by the export, under its field's name.
    assert set(ENGINE_PARAMETERS) == {field.name for field in dataclasses.fields(EngineLimits)}
    assert set(ENGINE_PARAMETERS) <= set(pipeline.parameters)
    # A network call holds every running image, two rows each with guidance.
    assert configs["unet"].max_batch_size == int(pipeline.parameters["max_unet_rows"].string_value) == 16


def test_entries_describe_the_model_to_callers(default_pipeline_config) -> None:
    configs = render_all_configs(default_pipeline_config, RenderOptions())
    for name in (interface.ENTRY_MODEL_NAME, interface.STREAM_ENTRY_MODEL_NAME):
        parameters = {key: value.string_value for key, value in configs[name].parameters.items()}
        described = interface.ModelDescription.from_parameters(parameters)
        assert described == default_pipeline_config.description
        assert described.scheduler_names == interface.SCHEDULER_NAMES
    # A repository exported before the description was written has none.
    assert interface.ModelDescription.from_parameters({"max_pending_requests": "32"}) is None


def test_component_dims_follow_the_model(default_pipeline_config) -> None:
    configs = render_all_configs(default_pipeline_config, RenderOptions())
    unet = configs["unet"]
    sample = next(i for i in unet.input if i.name == "sample")
    assert list(sample.dims) == [default_pipeline_config.latent_channels, -1, -1]
    timestep = next(i for i in unet.input if i.name == "timestep")
    assert list(timestep.dims) == [1] and timestep.HasField("reshape") and list(timestep.reshape.shape) == []


def test_a_gpu_repository_keeps_the_engines_tensors_on_the_gpu(default_pipeline_config) -> None:
    from sdtriton.components import ENGINE_DEVICE_PARAMETER

    gpu = render_all_configs(default_pipeline_config, RenderOptions(gpu=True))["pipeline"]
    assert gpu.parameters[ENGINE_DEVICE_PARAMETER].string_value == "cuda:0"
    # The pipeline model itself stays a CPU instance: it holds the loop, not a network.
    assert gpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    cpu = render_all_configs(default_pipeline_config, RenderOptions())["pipeline"]
    assert ENGINE_DEVICE_PARAMETER not in cpu.parameters
