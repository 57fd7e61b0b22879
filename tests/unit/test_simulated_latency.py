"""The simulated UNet's pure parts: the latency model, its parameters, the request checks, the repository copy."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from sdtriton.components import COMPONENT_FAMILY_PARAMETER, ONNX_FILE_NAME, UNET
from sdtriton.export.configs import CONFIG_FILE_NAME, MODEL_FILE_NAME, config_text, parse_config_text
from sdtriton.export.variants import simulated_model_file_text, simulated_repository, simulated_unet_config_text
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.simulated import (
    FIXED_MS_PARAMETER,
    PER_ITEM_MS_PARAMETER,
    SimulatedLatency,
    checked_sample,
    latency_from_parameters,
    zero_noise_pred,
)

COMMITTED_UNET_CONFIG = Path(__file__).resolve().parents[2] / "model_repository" / "unet" / CONFIG_FILE_NAME
_BIG_FILE_BYTES = (1 << 20) + 1  # just over the size from which files are linked


# The latency model.


def test_call_s_is_fixed_plus_per_row() -> None:
    latency = SimulatedLatency(fixed_ms=10, per_item_ms=2)
    assert latency.call_s(1) == pytest.approx(0.012)
    assert latency.call_s(16) == pytest.approx(0.042)


@pytest.mark.parametrize("rows", [0, -1, 1.5, True])
def test_call_s_rejects_rows_below_one(rows: object) -> None:
    with pytest.raises(ValueError, match="rows"):
        SimulatedLatency(10, 2).call_s(rows)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fixed_ms", "per_item_ms", "field"),
    [(-1, 2, "fixed_ms"), (10, math.nan, "per_item_ms"), (math.inf, 0, "fixed_ms"), ("10", 2, "fixed_ms")],
)
def test_latency_rejects_junk(fixed_ms: object, per_item_ms: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SimulatedLatency(fixed_ms, per_item_ms)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10ms+2ms", SimulatedLatency(10, 2)),
        (" 12.5 ms + 0.25ms ", SimulatedLatency(12.5, 0.25)),
        ("0ms+0ms", SimulatedLatency(0, 0)),
        (".5ms+3.ms", SimulatedLatency(0.5, 3)),
    ],
)
def test_parse_reads_fixed_plus_per_item(text: str, expected: SimulatedLatency) -> None:
    assert SimulatedLatency.parse(text) == expected


@pytest.mark.parametrize("text", ["", "10+2", "10ms", "10ms+2", "10s+2ms", "-1ms+2ms", "10ms+2ms+1ms", "1e3ms+2ms"])
def test_parse_rejects_other_forms_naming_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"FIXEDms\+PER_ITEMms"):
        SimulatedLatency.parse(text)


@pytest.mark.parametrize(
    ("latency", "text"),
    [
        (SimulatedLatency(10, 2), "10ms+2ms"),
        (SimulatedLatency(12.5, 0.25), "12.5ms+0.25ms"),
        (SimulatedLatency(1e-05, 1234567.125), "0.00001ms+1234567.125ms"),
    ],
)
def test_str_gives_back_the_parsed_form(latency: SimulatedLatency, text: str) -> None:
    assert str(latency) == text
    assert SimulatedLatency.parse(text) == latency


def test_throughput_ratio_of_the_documented_example() -> None:
    latency = SimulatedLatency.parse("10ms+2ms")
    assert latency.throughput_ratio(8, 2) == pytest.approx(8 * (10 + 4) / (10 + 32))
    assert latency.throughput_ratio(1, 2) == pytest.approx(1.0)
    # All cost per row: batching gains nothing; all cost fixed: the gain is the batch.
    assert SimulatedLatency(0, 5).throughput_ratio(8, 2) == pytest.approx(1.0)
    assert SimulatedLatency(5, 0).throughput_ratio(8, 2) == pytest.approx(8.0)


def test_throughput_ratio_rejects_bad_counts_and_a_zero_latency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        SimulatedLatency(10, 2).throughput_ratio(0, 2)
    with pytest.raises(ValueError, match="rows_per_item"):
        SimulatedLatency(10, 2).throughput_ratio(4, 0)
    with pytest.raises(ValueError, match="undefined"):
        SimulatedLatency(0, 0).throughput_ratio(4, 2)


# Config parameters, as Triton hands them to initialize.


def _parameters(fixed: object, per_item: object) -> dict[str, object]:
    return {FIXED_MS_PARAMETER: {"string_value": fixed}, PER_ITEM_MS_PARAMETER: {"string_value": per_item}}


def test_parameters_round_trip() -> None:
    latency = SimulatedLatency(50, 10.5)
    as_triton = {key: {"string_value": value} for key, value in latency.parameters().items()}
    assert latency_from_parameters(as_triton) == latency


@pytest.mark.parametrize(
    ("parameters", "key"),
    [
        ({}, FIXED_MS_PARAMETER),
        ({FIXED_MS_PARAMETER: {"string_value": "5"}}, PER_ITEM_MS_PARAMETER),
        (_parameters("fast", "1"), FIXED_MS_PARAMETER),
        (_parameters("5", "nan"), PER_ITEM_MS_PARAMETER),
        (_parameters("-1", "1"), FIXED_MS_PARAMETER),
        (_parameters("5", "inf"), PER_ITEM_MS_PARAMETER),
        ({FIXED_MS_PARAMETER: "5", PER_ITEM_MS_PARAMETER: {"string_value": "1"}}, FIXED_MS_PARAMETER),
    ],
)
def test_parameters_reject_junk_naming_the_key(parameters: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        latency_from_parameters(parameters)


# One request's inputs.


def _unet_inputs(rows: int = 2) -> dict[str, np.ndarray | None]:
    return {
        "sample": np.ones((rows, 4, 8, 12), np.float32),
        "timestep": np.ones(rows, np.float32),
        "encoder_hidden_states": np.zeros((rows, 77, 32), np.float32),
    }


def test_checked_sample_returns_the_sample() -> None:
    inputs = _unet_inputs(rows=3)
    assert checked_sample(inputs) is inputs["sample"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"timestep": None}, "timestep"),
        ({"encoder_hidden_states": None}, "encoder_hidden_states"),
        ({"sample": np.ones((2, 4, 8), np.float32)}, "sample"),
        ({"sample": np.ones((0, 4, 8, 12), np.float32)}, "sample"),
        ({"timestep": np.ones(3, np.float32)}, "timestep"),
    ],
)
def test_checked_sample_rejects_a_bad_request_naming_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError, match=field) as error:
        checked_sample({**_unet_inputs(), **change})
    assert error.value.field == field


def test_zero_noise_pred_has_the_sample_shape_and_the_output_dtype() -> None:
    noise_pred = zero_noise_pred(np.ones((2, 4, 8, 12), np.float64))
    assert noise_pred.shape == (2, 4, 8, 12)
    assert noise_pred.dtype == np.dtype(UNET.tensor("noise_pred").numpy_dtype)
    assert not noise_pred.any()


# The repository copy.


def test_simulated_config_keeps_tensors_and_batching_and_adds_the_latency() -> None:
    source = parse_config_text(COMMITTED_UNET_CONFIG.read_text())
    config = parse_config_text(simulated_unet_config_text(config_text(source), SimulatedLatency(50, 10)))

    assert config.name == UNET.model_name
    assert list(config.input) == list(source.input)
    assert list(config.output) == list(source.output)
    assert config.max_batch_size == source.max_batch_size
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching == source.dynamic_batching
    assert config.backend == "python"
    assert {key: value.string_value for key, value in config.parameters.items()} == {
        FIXED_MS_PARAMETER: "50",
        PER_ITEM_MS_PARAMETER: "10",
        COMPONENT_FAMILY_PARAMETER: "sd",
    }


def test_simulated_config_of_a_gpu_onnxruntime_unet_runs_python_on_the_cpu() -> None:
    source = parse_config_text(COMMITTED_UNET_CONFIG.read_text())
    source.backend = "onnxruntime"
    source.default_model_filename = ONNX_FILE_NAME
    source.instance_group[0].kind = mc.ModelInstanceGroup.KIND_GPU
    source.instance_group[0].gpus.append(0)

    config = parse_config_text(simulated_unet_config_text(config_text(source), SimulatedLatency(1, 1)))

    assert config.backend == "python"
    assert config.default_model_filename == ""
    assert [(group.kind, list(group.gpus)) for group in config.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, [])]


def test_model_file_reexports_the_adapter_class() -> None:
    tree = ast.parse(simulated_model_file_text())
    (import_from,) = [node for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert [(alias.name, alias.asname) for alias in import_from.names] == [("SimulatedUNetModel", "TritonPythonModel")]
    # The adapter imports pb_utils, so it is read here, not imported.
    module_spec = importlib.util.find_spec(import_from.module or "")
    assert module_spec is not None and module_spec.origin is not None
    adapter = ast.parse(Path(module_spec.origin).read_text())
    assert "SimulatedUNetModel" in {node.name for node in adapter.body if isinstance(node, ast.ClassDef)}


def _fake_repository(root: Path) -> Path:
    for model in ("unet", "vae_decoder", "tokenizer"):
        (root / model / "1").mkdir(parents=True)
        (root / model / CONFIG_FILE_NAME).write_text(config_text(mc.ModelConfig(name=model, backend="python")))
        (root / model / "1" / MODEL_FILE_NAME).write_text("# the real adapter\n")
    (root / "unet" / CONFIG_FILE_NAME).write_text(COMMITTED_UNET_CONFIG.read_text())
    (root / "unet" / "1" / ONNX_FILE_NAME).write_bytes(b"unet weights")
    (root / "unet" / "1" / f"{ONNX_FILE_NAME}.data").write_bytes(b"unet external weights")
    (root / "vae_decoder" / "1" / ONNX_FILE_NAME).write_bytes(b"\0" * _BIG_FILE_BYTES)
    (root / "tokenizer" / "1" / "tokenizer").mkdir()
    (root / "tokenizer" / "1" / "tokenizer" / "vocab.json").write_text("{}")
    return root


def test_simulated_repository_swaps_only_the_unet(tmp_path: Path) -> None:
    source = _fake_repository(tmp_path / "repository")

    target = simulated_repository(source, tmp_path / "simulated", SimulatedLatency(50, 10))

    assert sorted(path.name for path in target.iterdir()) == ["tokenizer", "unet", "vae_decoder"]
    vae_weights = target / "vae_decoder" / "1" / ONNX_FILE_NAME
    assert vae_weights.is_symlink() and vae_weights.resolve() == (source / "vae_decoder" / "1" / ONNX_FILE_NAME)
    assert not (target / "vae_decoder" / "1" / MODEL_FILE_NAME).is_symlink()
    assert (target / "tokenizer" / "1" / "tokenizer" / "vocab.json").read_text() == "{}"
    assert sorted(path.name for path in (target / "unet" / "1").iterdir()) == [MODEL_FILE_NAME]
    assert (target / "unet" / "1" / MODEL_FILE_NAME).read_text() == simulated_model_file_text()
    config = parse_config_text((target / "unet" / CONFIG_FILE_NAME).read_text())
    assert config.parameters[FIXED_MS_PARAMETER].string_value == "50"
    # The source is untouched.
    assert (source / "unet" / "1" / MODEL_FILE_NAME).read_text() == "# the real adapter\n"
    assert FIXED_MS_PARAMETER not in (source / "unet" / CONFIG_FILE_NAME).read_text()


def test_simulated_repository_copies_only_the_named_models(tmp_path: Path) -> None:
    source = _fake_repository(tmp_path / "repository")
    target = simulated_repository(source, tmp_path / "simulated", SimulatedLatency(1, 1), models=("unet",))
    assert [path.name for path in target.iterdir()] == ["unet"]


def test_simulated_repository_refuses_bad_arguments(tmp_path: Path) -> None:
    source = _fake_repository(tmp_path / "repository")
    latency = SimulatedLatency(1, 1)
    with pytest.raises(ValueError, match="unet"):
        simulated_repository(source, tmp_path / "a", latency, models=("vae_decoder",))
    with pytest.raises(FileNotFoundError, match="text_encoder"):
        simulated_repository(source, tmp_path / "b", latency, models=("unet", "text_encoder"))
    with pytest.raises(FileNotFoundError, match="unet"):
        simulated_repository(tmp_path / "b", tmp_path / "c", latency)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("")
    with pytest.raises(FileExistsError):
        simulated_repository(source, occupied, latency)
