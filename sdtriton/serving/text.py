"""Prompt tokenization, exactly as diffusers' pipelines pad and truncate: each CLIP tokenizer to its own
``model_max_length`` (``StableDiffusionPipeline.encode_prompt``), SD 3's and FLUX's T5 tokenizer to the exported
``max_sequence_length`` (``StableDiffusion3Pipeline._get_t5_prompt_embeds``, ``FluxPipeline._get_t5_prompt_embeds``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerBase

from sdtriton.components import TOKENIZER_DIRS, fixed_axis_size, is_t5_encoder, text_encoders_of
from sdtriton.pipeline_config import PipelineConfig


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> np.ndarray:
    """[N] prompts -> [N, model_max_length] int64 ids; tokens past the limit are truncated."""
    encoded = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        add_special_tokens=True,
        truncation=True,
        return_tensors="np",
    )
    return encoded["input_ids"].astype(np.int64)


def load_tokenizers(directory: Path, config: PipelineConfig) -> dict[str, PreTrainedTokenizerBase]:
    """Text encoder model name -> its tokenizer, from ``directory/<tokenizer folder>`` (as export saves them).

    A T5 tokenizer (SD 3, FLUX) gets ``model_max_length`` = the exported ``max_sequence_length``, the length its
    pipeline pads and truncates to (the tokenizer's own may differ)."""
    tokenizers: dict[str, PreTrainedTokenizerBase] = {}
    for spec in text_encoders_of(config):
        folder = directory / TOKENIZER_DIRS[spec.model_name]
        if is_t5_encoder(spec):
            tokenizers[spec.model_name] = AutoTokenizer.from_pretrained(
                folder, model_max_length=fixed_axis_size("t5_sequence", config)
            )
        else:
            tokenizers[spec.model_name] = CLIPTokenizer.from_pretrained(folder)
    return tokenizers
