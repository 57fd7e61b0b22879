"""Prompt tokenization, exactly as diffusers' ``StableDiffusionPipeline.encode_prompt`` pads and truncates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import CLIPTokenizer, PreTrainedTokenizerBase

from sdtriton.components import TOKENIZER_DIRS, text_encoders_of
from sdtriton.pipeline_config import PipelineConfig


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> np.ndarray:
    """[N] prompts -> [N, model_max_length] int64 ids; tokens past the limit are truncated."""
    encoded = tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="np",
    )
    return encoded["input_ids"].astype(np.int64)


def load_tokenizers(directory: Path, config: PipelineConfig) -> dict[str, PreTrainedTokenizerBase]:
    """Text encoder model name -> its CLIP tokenizer, from ``directory/<tokenizer folder>`` (as export saves them)."""
    return {
        spec.model_name: CLIPTokenizer.from_pretrained(directory / TOKENIZER_DIRS[spec.model_name])
        for spec in text_encoders_of(config)
    }
