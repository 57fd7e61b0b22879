"""``export --backend tensorrt`` on the CPU: profiles, trtexec lines, fp16 ONNX and its parity with torch fp32.

The engine build itself needs TensorRT and a GPU and never runs here; everything up to it does: the dry run
reads the published SD 1.5 and SDXL configs (networks on the meta device, no weights), the full export of the tiny
models prepares fp16 graphs, checks them against torch and leaves trtexec lines for the GPU host.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sdtriton import cli
from sdtriton.components import LORA_SCALES_INPUT, UNET, component_spec, components_of
from sdtriton.export.configs import (
    CONFIG_FILE_NAME,
    ComponentBackend,
    RenderOptions,
    parse_config_text,
    render_all_configs,
)
from sdtriton.export.repository import (
    BUILD_SCRIPT_FILE_NAME,
    PREPARED_ONNX_FILE_NAME,
    TensorRtExportOptions,
    export_repository,
    load_source_pipeline,
    pipeline_config_of,
)
from sdtriton.export.tensorrt import FP16_CHECK_ATOL, FP16_CHECK_RTOL, check_prepared_onnx
from sdtriton.plan import ARCHITECTURES, Architecture
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.validation import parse_generation_params
from sdtriton.tiny import make_tiny_lora
from sdtriton.tokenizer_files import build_clip_tokenizer
from tests.unit.trtexec_lines import dry_run as _dry_run
from tests.unit.trtexec_lines import profile_shapes as _shapes

# The published schedulers of SD 1.5 (PNDM) and SDXL (Euler); the networks' configs are the planner's
# (sdtriton.plan.ARCHITECTURES, copied from the published config.json files).
_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
_SCHEDULERS = {
    "sd15": {"_class_name": "PNDMScheduler", **_SCHEDULER, "skip_prk_steps": True},
    "sdxl": {"_class_name": "EulerDiscreteScheduler", **_SCHEDULER},
}


def _write_config_only_pipeline(folder: Path, architecture: Architecture) -> Path:
    """A pipeline folder of configs and tokenizers only, as a user's download before its weights arrive."""
    files: dict[str, dict] = {
        "unet/config.json": {"_class_name": "UNet2DConditionModel", **architecture.denoiser},
        "vae/config.json": {"_class_name": "AutoencoderKL", **architecture.vae},
        "scheduler/scheduler_config.json": _SCHEDULERS[architecture.name],
    }
    index: dict = {
        "_class_name": "StableDiffusionXLPipeline" if architecture.name == "sdxl" else "StableDiffusionPipeline",
        "scheduler": ["diffusers", files["scheduler/scheduler_config.json"]["_class_name"]],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    for encoder in architecture.text_encoders:
        files[f"{encoder.role}/config.json"] = {"architectures": [encoder.class_name], **encoder.config}
        index[encoder.role] = ["transformers", encoder.class_name]
        tokenizer = encoder.role.replace("text_encoder", "tokenizer")
        index[tokenizer] = ["transformers", "CLIPTokenizer"]
        pad_token = "!" if tokenizer == "tokenizer_2" else "<|endoftext|>"  # as SDXL's second tokenizer
        build_clip_tokenizer(model_max_length=77, pad_token=pad_token).save_pretrained(folder / tokenizer)
    files["model_index.json"] = index
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return folder


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_config_only_pipeline(tmp_path_factory.mktemp("sd15"), ARCHITECTURES["sd15"])


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_config_only_pipeline(tmp_path_factory.mktemp("sdxl"), ARCHITECTURES["sdxl"])


def test_dry_run_of_sd15_gives_the_profiles_of_its_published_geometry(capsys, sd15_folder: Path) -> None:
    commands = _dry_run(capsys, sd15_folder)
    assert set(commands) == {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    unet = commands["unet"]
    # 512x512 native (64x64 latents, opt at one guided image), sides from 64 (the UNet's 3 downsamplings x the
    # VAE's 8) to 1024 (--max-size-factor 2); 16 rows = 8 running images x 2 with guidance.
    assert _shapes(unet, "min") == {"sample": "1x4x8x8", "timestep": "1", "encoder_hidden_states": "1x77x768"}
    assert _shapes(unet, "opt") == {"sample": "2x4x64x64", "timestep": "2", "encoder_hidden_states": "2x77x768"}
    assert _shapes(unet, "max") == {
        "sample": "16x4x128x128",
        "timestep": "16",
        "encoder_hidden_states": "16x77x768",
    }
    assert _shapes(commands["text_encoder"], "max") == {"input_ids": "16x77"}
    assert _shapes(commands["vae_decoder"], "opt") == {"latents": "2x4x64x64"}
    # fp16 networks; the VAE in fp32 as diffusers decodes it (its config's force_upcast defaults to true).
    assert "--fp16" in unet and "--fp16" in commands["text_encoder"]
    assert "--fp16" not in commands["vae_decoder"]
    # The encoder of image-to-image in fp32 too, its profile one tile's as the decoder's: images above the VAE's
    # sample_size (512 px) are encoded in tiles.
    assert _shapes(commands["vae_encoder"], "min") == {"image": "1x3x8x8"}
    assert _shapes(commands["vae_encoder"], "max") == {"image": "16x3x512x512"}
    assert "--fp16" not in commands["vae_encoder"]
    assert f"--saveEngine={Path('/srv/repo/unet/1/model.plan')}" in unet


def test_dry_run_of_sdxl_gives_both_encoders_and_the_micro_conditioned_unet(capsys, sdxl_folder: Path) -> None:
    commands = _dry_run(
        capsys,
        sdxl_folder,
        "--max-size-factor",
        "1",
        "--max-running-images",
        "2",
        "--max-batch-size",
        "2",
        "--model-prefix",
        "sdxl_",
    )
    assert set(commands) == {
        "sdxl_text_encoder",
        "sdxl_text_encoder_2",
        "sdxl_unet",
        "sdxl_vae_decoder",
        "sdxl_vae_encoder",
    }
    unet = commands["sdxl_unet"]
    # 1024x1024 native (128x128 latents) and nothing larger; sides from 32 (2 downsamplings x 8); 4 rows.
    assert _shapes(unet, "min") == {
        "sample": "1x4x4x4",
        "timestep": "1",
        "encoder_hidden_states": "1x77x2048",
        "text_embeds": "1x1280",
        "time_ids": "1x6",
    }
    assert _shapes(unet, "max") == {
        "sample": "4x4x128x128",
        "timestep": "4",
        "encoder_hidden_states": "4x77x2048",
        "text_embeds": "4x1280",
        "time_ids": "4x6",
    }
    assert _shapes(commands["sdxl_text_encoder_2"], "opt") == {"input_ids": "2x77"}
    assert "--fp16" in commands["sdxl_text_encoder_2"] and "--fp16" not in commands["sdxl_vae_decoder"]


def test_static_shapes_fix_the_image_size_and_keep_the_batch_dynamic(capsys, sd15_folder: Path) -> None:
    unet = _dry_run(capsys, sd15_folder, "--trt-static-shapes")["unet"]
    assert [_shapes(unet, which)["sample"] for which in ("min", "opt", "max")] == [
        "1x4x64x64",
        "2x4x64x64",
        "16x4x64x64",
    ]


def test_dry_run_profiles_are_the_component_specs(capsys, tiny_model_dir: Path) -> None:
    """The printed shapes are each spec's shape_range: one source for profiles, configs and validation."""
    config = pipeline_config_of(load_source_pipeline(tiny_model_dir, weights=False))
    options = RenderOptions()
    commands = _dry_run(capsys, tiny_model_dir)
    for spec in components_of(config):
        for tensor in spec.inputs:
            expected = tensor.shape_range(config, max_batch_size=options.component_max_batch_size)
            for which, shape in zip(("min", "opt", "max"), expected, strict=True):
                assert _shapes(commands[spec.model_name], which)[tensor.name] == "x".join(map(str, shape))


def test_dry_run_with_a_lora_profiles_its_scales_in_the_networks_it_adapts(
    capsys, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """An engine built without ``lora_scales`` in its profile would refuse the input the export gives those
    networks: the dry run (and so the trtexec lines it prints for a GPU host) loads the adapter as the export does."""
    lora = make_tiny_lora(tiny_model_dir, tmp_path / "glow", seed=1, text_encoders=("text_encoder",))
    plain = _dry_run(capsys, tiny_model_dir)
    adapted = _dry_run(capsys, tiny_model_dir, "--lora", f"glow={lora}")
    rows = RenderOptions().component_max_batch_size
    for name in ("unet", "text_encoder"):
        assert LORA_SCALES_INPUT not in _shapes(plain[name], "max")
        assert [_shapes(adapted[name], which)[LORA_SCALES_INPUT] for which in ("min", "max")] == ["1x1", f"{rows}x1"]
    assert LORA_SCALES_INPUT not in _shapes(adapted["vae_decoder"], "max")


def test_the_skeleton_reads_the_same_geometry_as_the_weights(tiny_model_dir: Path) -> None:
    with_weights = pipeline_config_of(load_source_pipeline(tiny_model_dir))
    assert pipeline_config_of(load_source_pipeline(tiny_model_dir, weights=False)) == with_weights


@pytest.mark.parametrize(
    "argv",
    [["--dry-run"], ["--trt-static-shapes"], ["--no-engine-build", "--onnx-dir", "x"]],
    ids=["dry-run", "static", "no-build"],
)
def test_tensorrt_flags_need_the_tensorrt_backend(argv: list[str], tiny_model_dir: Path) -> None:
    with pytest.raises(SystemExit, match="only with --backend tensorrt"):
        cli.main(["export", str(tiny_model_dir), "--output", "out", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-steps", "0"], "argument --max-steps: must be in 1..1000, got 0"),
        (["--default-steps", "0"], "argument --default-steps: must be in 1..1000, got 0"),
        (["--max-batch-size", "x"], "argument --max-batch-size: must be an integer at least 1, got 'x'"),
        (["--response-cache-mb", "-1"], "argument --response-cache-mb: must be at least 0, got -1"),
    ],
)
def test_export_refuses_numbers_out_of_range_by_flag(argv: list[str], message: str, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "unread", "--output", str(tmp_path / "out"), *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_default_above_the_step_limit(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--default-steps: 50 is above --max-steps 10"):
        cli.main(
            [
                "export",
                str(tiny_model_dir),
                "--output",
                str(tmp_path / "out"),
                "--default-steps",
                "50",
                "--max-steps",
                "10",
            ]
        )
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tensorrt_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    repository, onnx_dir = tmp_path_factory.mktemp("trt_repository"), tmp_path_factory.mktemp("trt_onnx")
    export_repository(
        tiny_model_dir,
        repository,
        options=RenderOptions(component_backend=ComponentBackend.TENSORRT, gpu=True),
        tensorrt=TensorRtExportOptions(onnx_dir=onnx_dir, build_engines=False),
        show_progress=False,
        fit_preview=False,
    )
    return repository, onnx_dir


def test_export_without_a_gpu_leaves_fp16_graphs_and_trtexec_lines_for_the_gpu_host(tensorrt_export) -> None:
    repository, onnx_dir = tensorrt_export
    script = (onnx_dir / BUILD_SCRIPT_FILE_NAME).read_text().splitlines()
    commands = [shlex.split(line) for line in script if line.startswith("trtexec")]
    assert len(commands) == 4  # text encoder, UNet, VAE decoder and encoder
    for command in commands:
        onnx_path = Path(next(a for a in command if a.startswith("--onnx=")).split("=", 1)[1])
        plan_path = Path(next(a for a in command if a.startswith("--saveEngine=")).split("=", 1)[1])
        # The plan lands in its model's version folder, which the export made.
        assert plan_path.parent.parent.parent == repository and plan_path.parent.is_dir()
        model = onnx.load(str(onnx_path))
        float_initializers = [
            t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT)
        ]
        half = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in float_initializers)
        if "--fp16" in command:
            # Weights stored in fp16 (at most a few fp32 scalars left), inputs and outputs still fp32.
            assert half >= len(float_initializers) - 2 and half > 10
            assert onnx_path.stat().st_size < 0.6 * (onnx_path.parent / "model.onnx").stat().st_size
        else:
            assert half == 0
        io_types = {t.type.tensor_type.elem_type for t in (*model.graph.input, *model.graph.output)}
        assert onnx.TensorProto.FLOAT16 not in io_types


def test_tensorrt_configs_parse_and_warm_up_at_the_opt_shape(tensorrt_export) -> None:
    repository, _ = tensorrt_export
    unet = parse_config_text((repository / "unet" / CONFIG_FILE_NAME).read_text())
    assert unet.platform == "tensorrt_plan" and unet.default_model_filename == "model.plan"
    warmup = unet.model_warmup[0]
    assert warmup.batch_size == 2
    assert list(warmup.inputs["sample"].dims) == [4, 32, 32] and warmup.inputs["sample"].zero_data
    assert list(warmup.inputs["timestep"].dims) == list(next(i for i in unet.input if i.name == "timestep").dims)
    # The Python-backend models that drive it are unchanged.
    assert parse_config_text((repository / "pipeline" / CONFIG_FILE_NAME).read_text()).backend == "python"


def test_fp16_unet_matches_torch_fp32_on_new_inputs(tensorrt_export, diffusers_pipeline) -> None:
    """Another batch, size and timestep than the export checked: the tolerance is a property of the graph."""
    _, onnx_dir = tensorrt_export
    rng = np.random.default_rng(7)
    inputs = {
        "sample": rng.standard_normal((3, 4, 24, 16)).astype(np.float32),
        "timestep": np.array([999.0, 500.0, 1.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((3, 77, 32)).astype(np.float32),
    }
    with torch.no_grad():
        expected = diffusers_pipeline.unet(
            *(torch.from_numpy(inputs[name]) for name in UNET.input_names), return_dict=False
        )[0].numpy()
    check = check_prepared_onnx(
        onnx_dir / "unet" / PREPARED_ONNX_FILE_NAME,
        model_name="unet",
        inputs=inputs,
        reference_outputs={"noise_pred": expected},
    )
    assert check.max_abs_error <= FP16_CHECK_RTOL * check.max_abs_reference + FP16_CHECK_ATOL
    # fp16 really rounds: the error is above fp32's (~1e-6) ...
    assert check.max_abs_error > 1e-5
    # ... and a reference that is off by more than the tolerance fails the check.
    with pytest.raises(RuntimeError, match="differs from torch fp32"):
        check_prepared_onnx(
            onnx_dir / "unet" / PREPARED_ONNX_FILE_NAME,
            model_name="unet",
            inputs=inputs,
            reference_outputs={"noise_pred": expected * 1.05},
        )


def test_onnxruntime_gpu_configs_use_the_tensorrt_provider_over_the_same_profile(tiny_model_dir: Path) -> None:
    config = pipeline_config_of(load_source_pipeline(tiny_model_dir, weights=False))
    options = RenderOptions(component_backend=ComponentBackend.ONNXRUNTIME, gpu=True)
    unet = render_all_configs(config, options)["unet"]
    accelerator = unet.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    sample = component_spec("sd", "unet").tensor("sample")
    max_shape = sample.shape_range(config, max_batch_size=options.component_max_batch_size)[2]
    assert f"sample:{'x'.join(map(str, max_shape))}" in accelerator.parameters["trt_profile_max_shapes"]
    assert len(unet.model_warmup) == 1
    # On CPU instances there is no accelerator.
    cpu = render_all_configs(config, RenderOptions(component_backend=ComponentBackend.ONNXRUNTIME))["unet"]
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator


def test_a_static_shape_repository_refuses_other_sizes_by_name(tiny_model_dir: Path) -> None:
    import dataclasses

    config = dataclasses.replace(
        pipeline_config_of(load_source_pipeline(tiny_model_dir, weights=False)), fixed_size=True
    )
    assert parse_generation_params(config=config, width=config.default_width).width == config.default_width
    with pytest.raises(InvalidInputError, match=rf"width: must be {config.default_width}: .* one image size"):
        parse_generation_params(config=config, width=config.default_width + config.size_multiple)
