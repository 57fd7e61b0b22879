"""The real CLIP BPE tokenizer, built from the vocabulary file that ``open_clip`` ships.

No hub is reachable here, so the tokenizer of every model made here is assembled from
``open_clip/bpe_simple_vocab_16e6.txt.gz`` exactly as OpenAI's CLIP builds its vocabulary (byte tokens,
their end-of-word forms, the merges, then the two special tokens): 49408 entries, the same ids as
``openai/clip-vit-large-patch14``. open_clip itself is never imported (it would pull in torchvision);
the file is found through its package spec.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_VOCAB_SIZE = 49408
CLIP_MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (its first line is a version header).
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2


def find_clip_bpe_file() -> Path:
    """Returns the path of open_clip's BPE vocabulary file without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "open_clip is not installed; install open_clip_torch==3.3.0 with --no-deps for its CLIP vocabulary"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _VOCAB_FILE_NAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{_VOCAB_FILE_NAME} not found in the open_clip package")


def build_clip_tokenizer(*, model_max_length: int = CLIP_MODEL_MAX_LENGTH, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """Builds the CLIP BPE tokenizer used by Stable Diffusion 1.x (SDXL's second one pads with ``"!"``)."""
    lines = gzip.decompress(find_clip_bpe_file().read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens]
    tokens += ["".join(merge) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"built a CLIP vocabulary of {len(vocab)} entries, expected {CLIP_VOCAB_SIZE}")
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)
