"""Export reads every size and id from the source pipeline: SD pipelines of other geometry than ours, made here
(as diffusers' own tests make theirs), export, load and serve, and give diffusers' images.

- ``small_vocab``: a CLIP tokenizer of 520 entries (bytes, a few merges, the two special tokens), 32-token
  prompts, a 40-wide text encoder, a VAE scaling factor of 0.5;
- ``odd_channels``: 3 latent channels, UNet blocks of 24 and 48 channels (8 groups), a three-level VAE (scale
  factor 4, so 128x128 images from 32x32 latents) with a scaling factor of 0.7.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from sdtriton.client import StableDiffusionClient
from sdtriton.sd15 import SD15_SCHEDULER_CONFIG
from tests.conftest import UNTILED, serve
from tests.integration.oracle import MAX_PIXEL_DIFFERENCE, diffusers_image, max_pixel_difference

pytestmark = pytest.mark.integration

PROMPT = "a red star"
_MERGES = [("r", "e"), ("re", "d</w>"), ("s", "t"), ("st", "a"), ("sta", "r</w>")]


def _small_tokenizer(max_length: int) -> CLIPTokenizer:
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens] + ["".join(merge) for merge in _MERGES]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tokens += [f"<|unused{index}|>" for index in range(520 - len(tokens))]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=_MERGES, model_max_length=max_length)


def _text_encoder(tokenizer: CLIPTokenizer, *, hidden: int, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=hidden,
    )
    return CLIPTextModel(config).eval()


def _pipeline(name: str) -> StableDiffusionPipeline:
    if name == "small_vocab":
        tokenizer, hidden, latent, blocks, groups, vae_levels, scaling = (
            _small_tokenizer(32),
            40,
            4,
            (32, 64),
            32,
            2,
            0.5,
        )
    else:
        tokenizer, hidden, latent, blocks, groups, vae_levels, scaling = (
            _small_tokenizer(77),
            32,
            3,
            (24, 48),
            8,
            3,
            0.7,
        )
    text_encoder = _text_encoder(tokenizer, hidden=hidden, seed=1)
    torch.manual_seed(2)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=latent,
        out_channels=latent,
        block_out_channels=blocks,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden,
        attention_head_dim=8,
        norm_num_groups=groups,
    ).eval()
    torch.manual_seed(3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 32)[:vae_levels],
        down_block_types=("DownEncoderBlock2D",) * vae_levels,
        up_block_types=("UpDecoderBlock2D",) * vae_levels,
        latent_channels=latent,
        norm_num_groups=8,
        scaling_factor=scaling,
    ).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


GEOMETRIES = ("small_vocab", "odd_channels")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folders = {}
    for name in GEOMETRIES:
        folder = tmp_path_factory.mktemp(name)
        _pipeline(name).save_pretrained(folder, safe_serialization=True)
        folders[name] = folder
    return folders


@pytest.fixture(scope="module")
def server(pipelines, tmp_path_factory: pytest.TempPathFactory):
    """Both exported (each model named <geometry>_*) and served by one tritonserver; untiled, as the diffusers they are
    compared with decodes (their VAEs' tiles are smaller than the test's images)."""
    from sdtriton.export import RenderOptions, export_repository

    repositories = []
    for name in GEOMETRIES:
        repository = tmp_path_factory.mktemp(f"{name}_repository")
        export_repository(
            pipelines[name],
            repository,
            options=RenderOptions(model_prefix=f"{name}_"),
            show_progress=False,
            vae_tile_above_px=UNTILED,
        )
        repositories.append(repository)
    first, *others = repositories
    yield from serve(first, tmp_path_factory, extra_args=tuple(f"--model-repository={r}" for r in others))


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler_a"])
def test_other_geometry_exports_serves_and_matches_diffusers(server, pipelines, name: str, scheduler: str) -> None:
    oracle = StableDiffusionPipeline.from_pretrained(pipelines[name], torch_dtype=torch.float32)
    oracle.set_progress_bar_config(disable=True)
    kwargs = {"seed": 5, "num_inference_steps": 8, "scheduler": scheduler, "negative_prompt": "a star"}
    with StableDiffusionClient(server.address.grpc_url, model_name=f"{name}_stable_diffusion") as client:
        result = client.generate(PROMPT, **kwargs)
    expected = diffusers_image(oracle, PROMPT, **kwargs)
    native = oracle.unet.config.sample_size * oracle.vae_scale_factor
    assert result.image.size == (native, native)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE
