"""FLUX.1: the tiny dev and schnell pipelines, the family's pipeline config, specs and validation, and the TensorRT
dry run of FLUX.1 dev and schnell from their published configs.

The ONNX files against diffusers: tests/integration/test_flux_export.py; served: test_flux_serving.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sdtriton import interface
from sdtriton.components import FLUX_UNGUIDED, TRANSFORMER_MODEL_NAME, component_table, components_of
from sdtriton.export.configs import RenderOptions, render_all_configs
from sdtriton.flux import FLUX_PIPELINES, FLUX_TEXT_ENCODER, FLUX_TEXT_ENCODER_2, FLUX_VAE
from sdtriton.pipeline_config import PipelineConfig
from sdtriton.sd3 import T5_MODEL_MAX_LENGTH
from sdtriton.serving.errors import InvalidInputError
from sdtriton.serving.validation import parse_generation_params
from sdtriton.tokenizer_files import build_clip_tokenizer, build_t5_tokenizer
from tests.unit.tiny_folders import config_of, file_digests, make_tiny_folders
from tests.unit.trtexec_lines import dry_run as _dry_run
from tests.unit.trtexec_lines import profile_shapes as _shapes


@pytest.fixture(scope="module")
def tiny_flux_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux_tiny")
    runs = {
        "dev": ["--family", "flux-dev"],
        "dev_again": ["--family", "flux-dev"],
        "dev_seed_1": ["--family", "flux-dev", "--seed", "1"],
        "schnell": ["--family", "flux-schnell"],
    }
    return make_tiny_folders(root, runs)


def test_make_tiny_flux_is_byte_for_byte_reproducible_and_loads_in_diffusers(
    tiny_flux_folders: dict[str, Path],
) -> None:
    from diffusers import FluxPipeline

    first, again, other = (file_digests(tiny_flux_folders[name]) for name in ("dev", "dev_again", "dev_seed_1"))
    assert first == again
    assert set(first) == set(other)
    for weights in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder_2/model.safetensors"):
        assert first[weights] != other[weights]
    for name, guidance_embeds in (("dev", True), ("schnell", False)):
        pipeline = FluxPipeline.from_pretrained(tiny_flux_folders[name], dtype=torch.float32)
        pipeline.set_progress_bar_config(disable=True)
        assert pipeline.transformer.config.guidance_embeds is guidance_embeds
        vae = pipeline.vae.config
        assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 0.3611, 0.1159)
        published = FLUX_PIPELINES[f"flux-{name}"][1]
        assert {key: pipeline.scheduler.config[key] for key in published} == published
        image = pipeline("a red circle", num_inference_steps=2, height=32, width=48, output_type="np").images
        assert image.shape == (1, 32, 48, 3)


def test_the_flux_pipeline_config_is_read_from_the_folder(tiny_flux_folders: dict[str, Path]) -> None:
    dev, schnell = config_of(tiny_flux_folders["dev"]), config_of(tiny_flux_folders["schnell"])
    for config in (dev, schnell):
        assert config.family == "flux" and config.flux is not None and config.sd3 is None
        # 16 channels; sides in steps of VAE factor x 2 (the packing); FluxPipeline's default_sample_size 128 x 2.
        assert (config.latent_channels, config.vae_scale_factor, config.size_multiple) == (16, 2, 4)
        assert (config.default_height, config.max_height) == (256, 512)
        assert (config.flux.pooled_size, config.flux.t5_hidden_size, config.flux.t5_max_length) == (32, 88, 512)
        assert config.flux.vae_shift_factor == FLUX_VAE["shift_factor"] and config.vae_scaling_factor == 0.3611
        assert not config.classifier_free_guidance and config.flow_matching
        assert PipelineConfig.from_json(config.to_json()) == config
    # dev: FluxPipeline.__call__'s 28 steps and 3.5; schnell: 4 steps (its model card), no guidance.
    assert (dev.default_num_inference_steps, dev.default_guidance_scale, dev.flux.guidance_embeds) == (28, 3.5, True)
    assert (schnell.default_num_inference_steps, schnell.default_guidance_scale) == (4, 0.0)
    # What FluxPipeline can run: FlowMatchHeun takes no sigmas; DPM-Solver takes mu only with dynamic shifting.
    assert dev.scheduler_names == ("flow_euler", "dpmpp_2m", "unipc")
    assert schnell.scheduler_names == ("flow_euler", "unipc")
    assert config_of(tiny_flux_folders["schnell"], max_sequence_length=256).flux.t5_max_length == 256
    with pytest.raises(ValueError, match=r"max_sequence_length: must be in 1\.\.512 \(FluxPipeline's limit\)"):
        config_of(tiny_flux_folders["dev"], max_sequence_length=513)


def test_flux_specs_take_the_shapes_diffusers_passes(tiny_flux_folders: dict[str, Path]) -> None:
    dev, schnell = config_of(tiny_flux_folders["dev"]), config_of(tiny_flux_folders["schnell"])
    specs = {spec.model_name: spec for spec in components_of(dev)}
    assert list(specs) == ["text_encoder", "text_encoder_2", "transformer", "vae_decoder", "vae_encoder"]

    def dims(config: PipelineConfig, model: str) -> dict[str, tuple[int, ...]]:
        spec = {spec.model_name: spec for spec in components_of(config)}[model]
        return {tensor.name: tensor.item_dims(config) for tensor in (*spec.inputs, *spec.outputs)}

    assert dims(dev, "text_encoder") == {"input_ids": (77,), "pooler_output": (32,)}
    assert dims(dev, "text_encoder_2") == {"input_ids": (512,), "last_hidden_state": (512, 88)}
    assert not specs["text_encoder_2"].fp16_safe  # T5 overflows fp16
    assert dims(dev, "transformer") == {
        "hidden_states": (-1, 64),  # packed: one token per 2x2 latent patch, 16 x 4 channels
        "encoder_hidden_states": (512, 88),
        "pooled_projections": (32,),
        "timestep": (),
        "img_ids": (-1, 3),
        "txt_ids": (512, 3),
        "guidance": (),
        "noise_pred": (-1, 64),
    }
    assert "guidance" not in dims(schnell, "transformer")
    assert (component_table(dev), component_table(schnell)) == ("flux", FLUX_UNGUIDED)
    rendered = render_all_configs(schnell, RenderOptions())
    assert rendered[TRANSFORMER_MODEL_NAME].parameters["family"].string_value == FLUX_UNGUIDED
    # Callers are told the family (not the component table) and the schedulers found at export.
    stream = rendered[interface.STREAM_ENTRY_MODEL_NAME].parameters
    described = interface.ModelDescription.from_parameters({key: value.string_value for key, value in stream.items()})
    assert described is not None and described.family == "flux"
    assert described.scheduler_names == schnell.scheduler_names


def test_flux_validation_defaults_schedulers_and_true_cfg_rows(tiny_flux_folders: dict[str, Path]) -> None:
    dev, schnell = config_of(tiny_flux_folders["dev"]), config_of(tiny_flux_folders["schnell"])
    defaults = parse_generation_params(config=dev, draw_seed=lambda: 1)
    assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.width) == (28, 3.5, 256)
    # Guidance is embedded (dev) or absent (schnell): one row at any scale, as FluxPipeline without true CFG.
    assert not parse_generation_params(config=dev, guidance_scale=7.0).uses_classifier_free_guidance
    assert parse_generation_params(config=schnell, draw_seed=lambda: 1).num_inference_steps == 4
    # True CFG (FluxPipeline's do_true_cfg): above 1 and a negative prompt sent ("" counts), else off.
    for config in (dev, schnell):
        on = parse_generation_params(config=config, true_cfg_scale=4.0, negative_given=True)
        assert on.uses_classifier_free_guidance and on.cfg_scale == 4.0
        for off in ({"true_cfg_scale": 4.0, "negative_given": False}, {"true_cfg_scale": 1.0}, {"true_cfg_scale": 0.5}):
            params = parse_generation_params(config=config, **off)
            assert not params.uses_classifier_free_guidance and params.true_cfg_scale == 1.0
    with pytest.raises(InvalidInputError, match=r"true_cfg_scale: must be a finite number in 0\.\.30, got 31"):
        parse_generation_params(config=dev, true_cfg_scale=31.0)
    with pytest.raises(InvalidInputError, match=r"scheduler: must be one of flow_euler, dpmpp_2m, unipc \(this flux"):
        parse_generation_params(config=dev, scheduler=b"flow_heun")
    with pytest.raises(InvalidInputError, match=r"scheduler: must be one of flow_euler, unipc \(this flux"):
        parse_generation_params(config=schnell, scheduler=b"dpmpp_2m")
    with pytest.raises(InvalidInputError, match=r"width: must be a positive multiple of 4 in 4\.\.512"):
        parse_generation_params(config=dev, width=66)


# FLUX.1 dev and schnell from their published configs alone (sdtriton/flux.py), as a download before its weights.
def _write_config_only_flux(folder: Path, published: str) -> Path:
    transformer, scheduler = FLUX_PIPELINES[published]
    files: dict[str, dict[str, Any]] = {
        "transformer/config.json": {"_class_name": "FluxTransformer2DModel", **transformer},
        "vae/config.json": {"_class_name": "AutoencoderKL", **FLUX_VAE},
        "scheduler/scheduler_config.json": {"_class_name": "FlowMatchEulerDiscreteScheduler", **scheduler},
        "text_encoder/config.json": {"architectures": ["CLIPTextModel"], **FLUX_TEXT_ENCODER},
        "text_encoder_2/config.json": {"architectures": ["T5EncoderModel"], **FLUX_TEXT_ENCODER_2},
        "model_index.json": {
            "_class_name": "FluxPipeline",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "transformer": ["diffusers", "FluxTransformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "tokenizer_2": ["transformers", "T5TokenizerFast"],
        },
    }
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    build_clip_tokenizer().save_pretrained(folder / "tokenizer")
    build_t5_tokenizer(model_max_length=T5_MODEL_MAX_LENGTH).save_pretrained(folder / "tokenizer_2")
    return folder


@pytest.mark.parametrize("published", ["flux-dev", "flux-schnell"])
def test_dry_run_of_flux_gives_the_profiles_of_its_published_geometry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, published: str
) -> None:
    folder = _write_config_only_flux(tmp_path / published, published)
    commands = _dry_run(capsys, folder, "--max-size-factor", "1")
    assert set(commands) == {"text_encoder", "text_encoder_2", "transformer", "vae_decoder", "vae_encoder"}
    transformer = commands["transformer"]
    # 1024x1024 native (128x128 latents = 64x64 packed tokens), sides from 16 px up to 1024; 512 T5 rows of 4096;
    # pooled 768; up to 16 rows, the components' batch limit of every family (FLUX's 8 running images send one row
    # each: no classifier-free rows).
    guidance = {"guidance": "1"} if published == "flux-dev" else {}
    assert _shapes(transformer, "min") == {
        "hidden_states": "1x1x64",
        "encoder_hidden_states": "1x512x4096",
        "pooled_projections": "1x768",
        "timestep": "1",
        "img_ids": "1x1x3",
        "txt_ids": "1x512x3",
        **guidance,
    }
    assert _shapes(transformer, "opt")["hidden_states"] == "2x4096x64"
    assert _shapes(transformer, "max")["img_ids"] == "16x4096x3"
    assert _shapes(commands["text_encoder_2"], "max") == {"input_ids": "16x512"}
    assert _shapes(commands["vae_decoder"], "opt") == {"latents": "2x16x128x128"}
    # T5 overflows fp16 and the FLUX VAE says force_upcast: both fp32; CLIP and the transformer in fp16.
    assert "--fp16" not in commands["text_encoder_2"] and "--fp16" not in commands["vae_decoder"]
    assert _shapes(commands["vae_encoder"], "opt") == {"image": "2x3x1024x1024"}
    assert "--fp16" not in commands["vae_encoder"]
    assert all("--fp16" in commands[name] for name in ("text_encoder", "transformer"))
    shorter = _dry_run(capsys, folder, "--max-sequence-length", "256")
    assert _shapes(shorter["transformer"], "opt")["encoder_hidden_states"] == "2x256x4096"
