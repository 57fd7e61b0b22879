"""make-tiny is byte-for-byte reproducible and loadable by diffusers; the CLIP tokenizer is the real one."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from sdtriton.cli import main
from sdtriton.tokenizer_files import CLIP_VOCAB_SIZE, build_clip_tokenizer


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_make_tiny_is_byte_for_byte_reproducible(tmp_path: Path) -> None:
    assert main(["make-tiny", str(tmp_path / "a")]) == 0
    assert main(["make-tiny", str(tmp_path / "b")]) == 0
    assert main(["make-tiny", str(tmp_path / "c"), "--seed", "1"]) == 0
    first, second, other = (_files(tmp_path / name) for name in "abc")
    assert first == second
    assert set(first) == set(other)
    assert first["unet/diffusion_pytorch_model.safetensors"] != other["unet/diffusion_pytorch_model.safetensors"]
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "a", torch_dtype=torch.float32)
    assert pipeline.tokenizer.model_max_length == 77
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size


def test_clip_tokenizer_gives_openai_clip_ids() -> None:
    tokenizer = build_clip_tokenizer()
    assert tokenizer.vocab_size == CLIP_VOCAB_SIZE
    # Ids of "a photo of a cat" in openai/clip-vit-large-patch14.
    assert tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_make_tiny_sdxl_base_and_refiner_are_reproducible_and_load_in_diffusers(tmp_path: Path) -> None:
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    for name in ("a", "b"):
        assert main(["make-tiny", str(tmp_path / f"base_{name}"), "--family", "sdxl"]) == 0
        assert main(["make-tiny", str(tmp_path / f"refiner_{name}"), "--family", "sdxl-refiner"]) == 0
    assert _files(tmp_path / "base_a") == _files(tmp_path / "base_b")
    assert _files(tmp_path / "refiner_a") == _files(tmp_path / "refiner_b")
    base = StableDiffusionXLPipeline.from_pretrained(tmp_path / "base_a", torch_dtype=torch.float32)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(tmp_path / "refiner_a", torch_dtype=torch.float32)
    assert base.unet.config.addition_embed_type == "text_time"
    assert base.unet.config.cross_attention_dim == (
        base.text_encoder.config.hidden_size + base.text_encoder_2.config.hidden_size
    )
    assert base.tokenizer_2.pad_token == "!" and base.tokenizer.pad_token == "<|endoftext|>"
    assert refiner.text_encoder is None and refiner.config.requires_aesthetics_score
    # The refiner shares the base's second encoder and VAE: the same weights, byte for byte.
    for part in ("text_encoder_2", "vae"):
        folder = "model.safetensors" if part == "text_encoder_2" else "diffusion_pytorch_model.safetensors"
        assert (tmp_path / "base_a" / part / folder).read_bytes() == (
            tmp_path / "refiner_a" / part / folder
        ).read_bytes()
