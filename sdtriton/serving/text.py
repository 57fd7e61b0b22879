"""Prompt tokenization, exactly as diffusers' ``StableDiffusionPipeline.encode_prompt`` pads and truncates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase


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
