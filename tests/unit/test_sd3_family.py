"""SD 3 / 3.5: the tiny pipelines, the T5 tokenizer, the family's pipeline config, specs, schedulers and validation,
and the TensorRT dry run of SD 3.5 Medium and Large from their published configs.

The ONNX files against diffusers: tests/integration/test_sd3_export.py; served: test_sd3_serving.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sdtriton.components import T5_MODEL_NAME, TRANSFORMER_MODEL_NAME, component_spec, components_of
from sdtriton.export.configs import RenderOptions, render_all_configs
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.sd3 import (
    SD3_SCHEDULER_CONFIG,
    SD3_TEXT_ENCODER,
    SD3_TEXT_ENCODER_2,
    SD3_TEXT_ENCODER_3,
    SD3_TRANSFORMERS,
    SD3_VAE,
    T5_MODEL_MAX_LENGTH,
)
from sdtriton.tokenizer_files import build_clip_tokenizer, build_t5_tokenizer
from tests.unit.tiny_folders import config_of, file_digests, make_tiny_folders
from tests.unit.trtexec_lines import dry_run as _dry_run
from tests.unit.trtexec_lines import profile_shapes as _shapes


@pytest.fixture(scope="module")
def tiny_sd3_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sd3_tiny")
    runs = {
        "sd3": ["--family", "sd3"],
        "sd3_again": ["--family", "sd3"],
        "sd3_seed_1": ["--family", "sd3", "--seed", "1"],
        "sd35": ["--family", "sd35"],
        "sd3_no_t5": ["--family", "sd3", "--without-t5"],
    }
    return make_tiny_folders(root, runs)


# An SD 3 repository's networks, in call order.
SD3_MODELS = ["text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae_decoder", "vae_encoder"]


def test_make_tiny_sd3_is_byte_for_byte_reproducible(tiny_sd3_folders: dict[str, Path]) -> None:
    first, again, other = (file_digests(tiny_sd3_folders[name]) for name in ("sd3", "sd3_again", "sd3_seed_1"))
    assert first == again
    assert set(first) == set(other)
    for weights in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_3/model.safetensors"):
        assert first[weights] != other[weights]
    assert {"tokenizer_3/tokenizer.json", "text_encoder_3/model.safetensors"} <= set(first)
    assert not any(
        name.startswith(("text_encoder_3", "tokenizer_3")) for name in file_digests(tiny_sd3_folders["sd3_no_t5"])
    )


def test_make_tiny_sd35_loads_in_diffusers_and_draws_an_image(tiny_sd3_folders: dict[str, Path]) -> None:
    from diffusers import StableDiffusion3Pipeline

    pipeline = StableDiffusion3Pipeline.from_pretrained(tiny_sd3_folders["sd35"], dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    transformer = pipeline.transformer.config
    assert tuple(transformer.dual_attention_layers) == (0,) and transformer.qk_norm == "rms_norm"
    assert pipeline.vae.config.latent_channels == 16
    assert (pipeline.vae.config.scaling_factor, pipeline.vae.config.shift_factor) == (
        SD3_VAE["scaling_factor"],
        SD3_VAE["shift_factor"],
    )
    assert pipeline.scheduler.config.shift == SD3_SCHEDULER_CONFIG["shift"]
    image = pipeline("a red circle", num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


def test_t5_tokenizer_has_t5s_layout_and_words() -> None:
    tokenizer = build_t5_tokenizer(model_max_length=T5_MODEL_MAX_LENGTH)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_ids_to_tokens([len(tokenizer) - 1]) == ["<extra_id_0>"]
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=8).input_ids
    assert tokenizer.convert_ids_to_tokens(ids[:6]) == ["▁a", "▁photo", "▁of", "▁a", "▁cat", "</s>"]
    assert ids[6:] == [0, 0]
    # An unknown word is spelled out, never <unk>; the list is the same every time.
    assert tokenizer.unk_token_id not in tokenizer("zyzzyva 42").input_ids
    assert tokenizer.get_vocab() == build_t5_tokenizer(model_max_length=T5_MODEL_MAX_LENGTH).get_vocab()


def test_the_sd3_pipeline_config_is_read_from_the_folder(tiny_sd3_folders: dict[str, Path]) -> None:
    config = config_of(tiny_sd3_folders["sd35"])
    assert config.family == "sd3" and config.sd3 is not None
    assert (config.latent_channels, config.vae_scale_factor, config.size_multiple) == (16, 2, 4)
    # 64 px native; the position table (24 patches of 2 = 48 latents) bounds the side at 96 px, below 2x's 128.
    assert (config.default_height, config.max_height, config.max_width) == (64, 96, 96)
    # StableDiffusion3Pipeline.__call__'s defaults.
    assert (config.default_num_inference_steps, config.sd3.default_guidance_scale, config.sd3.t5_max_length) == (
        28,
        7.0,
        256,
    )
    assert config.sd3.vae_shift_factor == SD3_VAE["shift_factor"] and config.vae_scaling_factor == 1.5305
    assert config.sd3.pooled_projection_dim == 72 and config.sd3.t5_hidden_size == 88
    assert PipelineConfig.from_json(config.to_json()) == config
    shorter = config_of(tiny_sd3_folders["sd35"], max_sequence_length=77, default_num_inference_steps=10)
    assert (shorter.sd3.t5_max_length, shorter.default_num_inference_steps) == (77, 10)
    with pytest.raises(ValueError, match=r"max_sequence_length: must be in 1\.\.512"):
        config_of(tiny_sd3_folders["sd35"], max_sequence_length=513)


def test_max_sequence_length_is_refused_for_a_family_without_t5(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"max_sequence_length: a setting of SD 3's and FLUX's T5"):
        config_of(tiny_model_dir, max_sequence_length=77)


def test_sd3_specs_take_the_shapes_diffusers_passes(tiny_sd3_folders: dict[str, Path]) -> None:
    config = config_of(tiny_sd3_folders["sd3"])
    specs = {spec.model_name: spec for spec in components_of(config)}
    assert list(specs) == SD3_MODELS

    def dims(model: str) -> dict[str, tuple[int, ...]]:
        spec = specs[model]
        return {tensor.name: tensor.item_dims(config) for tensor in (*spec.inputs, *spec.outputs)}

    assert dims("text_encoder") == {"input_ids": (77,), "penultimate_hidden_state": (77, 32), "text_embeds": (32,)}
    assert dims("text_encoder_2") == {"input_ids": (77,), "penultimate_hidden_state": (77, 48), "text_embeds": (40,)}
    assert dims("text_encoder_3") == {"input_ids": (256,), "last_hidden_state": (256, 88)}
    # [CLIP states padded to 88; T5 states] = 77 + 256 rows, both CLIPs' pooled outputs, sigma x 1000 per row.
    assert dims("transformer") == {
        "hidden_states": (16, -1, -1),
        "encoder_hidden_states": (333, 88),
        "pooled_projections": (72,),
        "timestep": (),
        "noise_pred": (16, -1, -1),
    }
    assert specs["transformer"].tensor("timestep").triton_dtype == "FP32"
    assert dims("vae_decoder") == {"latents": (16, -1, -1), "image": (3, -1, -1)}
    assert dims("vae_encoder") == {"image": (3, -1, -1), "latent_mean": (16, -1, -1), "latent_std": (16, -1, -1)}
    # Without T5 its model is left out; the transformer still takes 256 (zero) T5 rows, as diffusers sends them.
    no_t5 = config_of(tiny_sd3_folders["sd3_no_t5"])
    assert T5_MODEL_NAME not in {spec.model_name for spec in components_of(no_t5)}
    assert component_spec("sd3", TRANSFORMER_MODEL_NAME).tensor("encoder_hidden_states").item_dims(no_t5) == (333, 88)
    # Rendered configs carry the family, so each component's stub reads the SD 3 spec of its name.
    rendered = render_all_configs(config, RenderOptions())
    assert rendered["text_encoder_3"].parameters["family"].string_value == "sd3"
    assert [tensor.name for tensor in rendered["transformer"].input] == [t.name for t in specs["transformer"].inputs]


# SD 3.5 Medium and Large from their published configs alone (sdtriton/sd3.py), as a download before its weights.
def _write_config_only_sd3(folder: Path, transformer: dict[str, Any]) -> Path:
    files: dict[str, dict[str, Any]] = {
        "transformer/config.json": {"_class_name": "SD3Transformer2DModel", **transformer},
        "vae/config.json": {"_class_name": "AutoencoderKL", **SD3_VAE},
        "scheduler/scheduler_config.json": {"_class_name": "FlowMatchEulerDiscreteScheduler", **SD3_SCHEDULER_CONFIG},
        "text_encoder/config.json": {"architectures": ["CLIPTextModelWithProjection"], **SD3_TEXT_ENCODER},
        "text_encoder_2/config.json": {"architectures": ["CLIPTextModelWithProjection"], **SD3_TEXT_ENCODER_2},
        "text_encoder_3/config.json": {"architectures": ["T5EncoderModel"], **SD3_TEXT_ENCODER_3},
    }
    files["model_index.json"] = {
        "_class_name": "StableDiffusion3Pipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "image_encoder": [None, None],
        "feature_extractor": [None, None],
    }
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    build_clip_tokenizer().save_pretrained(folder / "tokenizer")
    build_clip_tokenizer(pad_token="!").save_pretrained(folder / "tokenizer_2")
    build_t5_tokenizer(model_max_length=T5_MODEL_MAX_LENGTH).save_pretrained(folder / "tokenizer_3")
    return folder


@pytest.mark.parametrize("published", ["sd35-medium", "sd35-large"])
def test_dry_run_of_sd35_gives_the_profiles_of_its_published_geometry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, published: str
) -> None:
    folder = _write_config_only_sd3(tmp_path / published, SD3_TRANSFORMERS[published])
    commands = _dry_run(capsys, folder, "--max-size-factor", "1")
    assert set(commands) == set(SD3_MODELS)
    transformer = commands["transformer"]
    # 1024x1024 native (128x128 latents, opt at one guided image), sides from 16 px (patch 2 x VAE 8) up to 1024;
    # 77 CLIP + 256 T5 rows of 4096; pooled 768 + 1280; 16 rows = 8 running images x 2 with guidance.
    assert _shapes(transformer, "min") == {
        "hidden_states": "1x16x2x2",
        "encoder_hidden_states": "1x333x4096",
        "pooled_projections": "1x2048",
        "timestep": "1",
    }
    assert _shapes(transformer, "opt")["hidden_states"] == "2x16x128x128"
    assert _shapes(transformer, "max") == {
        "hidden_states": "16x16x128x128",
        "encoder_hidden_states": "16x333x4096",
        "pooled_projections": "16x2048",
        "timestep": "16",
    }
    assert _shapes(commands["text_encoder_3"], "max") == {"input_ids": "16x256"}
    assert _shapes(commands["vae_decoder"], "opt") == {"latents": "2x16x128x128"}
    # T5 overflows fp16 and the SD 3 VAE says force_upcast: both fp32; the CLIPs and the transformer in fp16.
    assert "--fp16" not in commands["text_encoder_3"] and "--fp16" not in commands["vae_decoder"]
    assert all("--fp16" in commands[name] for name in ("text_encoder", "text_encoder_2", "transformer"))
    # --max-sequence-length sets T5's rows, and the transformer's with them.
    shorter = _dry_run(capsys, folder, "--max-sequence-length", "128")
    assert _shapes(shorter["text_encoder_3"], "opt") == {"input_ids": "2x128"}
    assert _shapes(shorter["transformer"], "opt")["encoder_hidden_states"] == "2x205x4096"


def test_each_family_takes_its_own_schedulers_and_names_them_when_refusing(
    tiny_sd3_folders: dict[str, Path], tmp_path: Path
) -> None:
    from sdtriton.serving.errors import InvalidInputError
    from sdtriton.serving.validation import parse_generation_params
    from sdtriton.tiny import make_tiny

    sd3 = config_of(tiny_sd3_folders["sd35"])
    sd = config_of(make_tiny(tmp_path / "sd"))
    defaults = parse_generation_params(config=sd3, draw_seed=lambda: 1)
    assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.scheduler) == (28, 7.0, None)
    assert parse_generation_params(config=sd3, scheduler=b"flow_heun").scheduler == "flow_heun"
    with pytest.raises(InvalidInputError, match="scheduler: must be one of flow_euler, flow_heun, dpmpp_2m, unipc"):
        parse_generation_params(config=sd3, scheduler=b"euler")
    with pytest.raises(InvalidInputError, match="scheduler: must be one of ddim, pndm, euler"):
        parse_generation_params(config=sd, scheduler=b"flow_euler")


@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc"])
def test_the_multistep_solvers_run_on_the_models_flow_sigmas(tiny_sd3_folders: dict[str, Path], name: str) -> None:
    from sdtriton.schedulers import build_scheduler

    config = config_of(tiny_sd3_folders["sd35"]).scheduler_config
    scheduler = build_scheduler(config, name)
    scheduler.set_timesteps(10)
    unshifted = type(scheduler).from_config({**scheduler.config, "flow_shift": 1.0})
    unshifted.set_timesteps(10)
    assert scheduler.config.use_flow_sigmas and scheduler.config.prediction_type == "flow_prediction"
    assert scheduler.config.flow_shift == config["shift"] == 3.0
    # The model's shift keeps more of the schedule at high noise, as its own FlowMatchEuler does.
    assert (scheduler.timesteps[1:] > unshifted.timesteps[1:]).all()


def test_skip_guidance_layers_are_chosen_at_export_and_switched_on_per_request(
    tiny_sd3_folders: dict[str, Path], tiny_model_dir: Path
) -> None:
    from sdtriton.components import SD3_SKIP_LAYERS, SKIP_LAYERS_INPUT, component_table
    from sdtriton.export.repository import TensorRtExportOptions, _configured
    from sdtriton.serving.conditioning import Stage
    from sdtriton.serving.denoise import ImageDenoiser
    from sdtriton.serving.errors import InvalidInputError
    from sdtriton.serving.validation import parse_generation_params

    plain = config_of(tiny_sd3_folders["sd35"])
    slg = config_of(tiny_sd3_folders["sd35"], skip_guidance_layers=[1, 0, 1])
    assert slg.sd3.skip_guidance_layers == (0, 1) and PipelineConfig.from_json(slg.to_json()) == slg
    assert (component_table(plain), component_table(slg)) == ("sd3", SD3_SKIP_LAYERS)
    assert SKIP_LAYERS_INPUT in component_spec(component_table(slg), TRANSFORMER_MODEL_NAME).input_names
    with pytest.raises(ValueError, match=r"block indices in 0\.\.1 \(this transformer's 2 blocks\), got 2"):
        config_of(tiny_sd3_folders["sd35"], skip_guidance_layers=[2])
    with pytest.raises(ValueError, match="StableDiffusion3Pipeline"):
        config_of(tiny_model_dir, skip_guidance_layers=[0])
    with pytest.raises(ValueError, match="must hold them"):
        _configured(slg, RenderOptions(max_batch_size=1, max_running_images=1), TensorRtExportOptions())

    with pytest.raises(InvalidInputError, match="skip_layer_guidance_scale: must be 0: this repository was exported"):
        parse_generation_params(config=plain, skip_layer_guidance_scale=2.8)
    with pytest.raises(InvalidInputError, match=r"skip_layer_guidance_stop: must be a number in 0\.\.1"):
        parse_generation_params(config=plain, skip_layer_guidance_stop=1.5)
    # The pipeline's window, 0.01..0.2 of 12 steps: the third row at evaluations 1 and 2 only, the flag on it alone.
    params = parse_generation_params(config=slg, num_inference_steps=12, skip_layer_guidance_scale=2.8, seed=0)
    rows = slg.sd3.pooled_projection_dim
    stage = Stage(
        unet=TRANSFORMER_MODEL_NAME,
        conditioning={"pooled_projections": torch.arange(2 * rows, dtype=torch.float32).view(2, rows)},
        scheduler_config=slg.scheduler_config,
        scheduler_overrides={},
    )
    denoiser = ImageDenoiser(params=params, config=slg, stages=[stage])
    seen = []
    while not denoiser.done:
        inputs = denoiser.model_input()
        seen.append(inputs[SKIP_LAYERS_INPUT].tolist())
        assert len(inputs["hidden_states"]) == denoiser.rows == len(inputs["pooled_projections"])
        assert torch.equal(inputs["pooled_projections"][-1], stage.conditioning["pooled_projections"][1])
        denoiser.step(torch.zeros_like(inputs["hidden_states"]))
    assert seen == [[0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]] + [[0.0, 0.0]] * 9


@pytest.mark.parametrize(
    ("folder", "layers", "message"),
    [
        ("sd35", "7,x", "argument --skip-guidance-layers: must be block indices joined by commas, e.g. 7,8,9"),
        (
            "sd35",
            "1,99",
            "--skip-guidance-layers: must be block indices in 0..1 (this transformer's 2 blocks), got 1,99",
        ),
        (
            "sd",
            "7",
            "--skip-guidance-layers: SD 3's skip-layer guidance, for a StableDiffusion3Pipeline only; this is a "
            "StableDiffusionPipeline",
        ),
    ],
    ids=["not-a-list", "beyond-the-blocks", "sd-folder"],
)
def test_export_names_a_bad_skip_guidance_layers_in_one_line(
    tiny_sd3_folders: dict[str, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    folder: str,
    layers: str,
    message: str,
) -> None:
    """As the export command's other option errors, no traceback: argparse's own (status 2) for a value that is no
    list, one line naming the flag and the allowed range (SystemExit's message, status 1) for one the model refuses."""
    from sdtriton.cli import main

    source = tiny_model_dir if folder == "sd" else tiny_sd3_folders[folder]
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(source), "--output", str(tmp_path / "repository"), f"--skip-guidance-layers={layers}"])
    if isinstance(exit_.value.code, int):
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    else:
        assert exit_.value.code == message
    assert not (tmp_path / "repository").exists()


def test_flow_heun_is_not_offered_under_dynamic_shifting(tiny_sd3_folders: dict[str, Path]) -> None:
    from sdtriton.interface import FLOW_SCHEDULER_NAMES
    from sdtriton.schedulers import sd3_scheduler_names

    config = config_of(tiny_sd3_folders["sd35"])
    assert config.scheduler_names == sd3_scheduler_names(config.scheduler_config) == FLOW_SCHEDULER_NAMES
    dynamic = {**config.scheduler_config, "use_dynamic_shifting": True}
    assert sd3_scheduler_names(dynamic) == ("flow_euler", "dpmpp_2m", "unipc")
    # A pipeline_config.json written before the field: every flow scheduler, as then.
    values = json.loads(config.to_json())
    del values["sd3"]["scheduler_names"]
    assert PipelineConfig.from_json(json.dumps(values)).scheduler_names == FLOW_SCHEDULER_NAMES
