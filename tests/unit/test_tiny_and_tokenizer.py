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
