"""The real CLIP BPE tokenizer, built from the vocabulary file that ``open_clip`` ships, and a small T5 tokenizer.

No hub is reachable here, so the tokenizer of every model made here is assembled from
``open_clip/bpe_simple_vocab_16e6.txt.gz`` exactly as OpenAI's CLIP builds its vocabulary (byte tokens,
their end-of-word forms, the merges, then the two special tokens): 49408 entries, the same ids as
``openai/clip-vit-large-patch14``. open_clip itself is never imported (it would pull in torchvision);
the file is found through its package spec.

The T5 tokenizer (SD 3's ``tokenizer_3``) is transformers' own ``T5Tokenizer`` (``T5TokenizerFast``: the same
class in transformers 5), which builds T5's SentencePiece-equivalent pipeline (a Unigram model, whitespace
split, the ``▁`` metaspace, ``</s>`` appended, ``<extra_id_N>`` specials) from a list of (piece, log-probability)
pairs. Its pieces here are CLIP's first whole words in merge order, then single characters, so no SentencePiece
model is trained: the same list, hence the same files, every time, and no dependency beyond ``tokenizers``.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer, T5Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_VOCAB_SIZE = 49408
CLIP_MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (its first line is a version header).
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
# T5's special tokens and their ids (pad 0, eos 1, unk 2), and the sentinel tokens at the end of its vocabulary.
T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
T5_EXTRA_IDS = 100
T5_WORD_PIECES = 1000
_METASPACE = "\u2581"
_CLIP_WORD_END = "</w>"
# Unigram log-probabilities: a whole word (one piece) always beats spelling it out in characters.
_WORD_SCORE, _WORD_SCORE_STEP, _CHARACTER_SCORE = -2.0, -1e-3, -10.0


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


def _clip_bpe_lines() -> list[str]:
    return gzip.decompress(find_clip_bpe_file().read_bytes()).decode("utf-8").split("\n")


def build_clip_tokenizer(*, model_max_length: int = CLIP_MODEL_MAX_LENGTH, pad_token: str = EOS_TOKEN) -> CLIPTokenizer:
    """Builds the CLIP BPE tokenizer used by Stable Diffusion 1.x (SDXL's second one pads with ``"!"``)."""
    lines = _clip_bpe_lines()
    merges = [tuple(line.split()) for line in lines[1 : 1 + _NUM_MERGES]]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [token + "</w>" for token in byte_tokens]
    tokens += ["".join(merge) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"built a CLIP vocabulary of {len(vocab)} entries, expected {CLIP_VOCAB_SIZE}")
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length, pad_token=pad_token)


def t5_vocabulary(*, word_pieces: int = T5_WORD_PIECES) -> list[tuple[str, float]]:
    """T5's vocabulary layout (specials, pieces, sentinels from ``<extra_id_99>`` down) over CLIP's first
    ``word_pieces`` alphabetic whole words (``▁word``) and every printable ASCII character, alone and word-initial."""
    words: list[str] = []
    for line in _clip_bpe_lines()[1 : 1 + _NUM_MERGES]:
        token = "".join(line.split())
        word = token.removesuffix(_CLIP_WORD_END)
        if token.endswith(_CLIP_WORD_END) and word.isascii() and word.isalpha() and len(word) > 1:
            words.append(word)
            if len(words) == word_pieces:
                break
    characters = [chr(code) for code in range(0x21, 0x7F)]
    pieces = [(special, 0.0) for special in T5_SPECIAL_TOKENS]
    pieces += [(_METASPACE + word, _WORD_SCORE + _WORD_SCORE_STEP * rank) for rank, word in enumerate(words)]
    pieces += [(_METASPACE, _CHARACTER_SCORE)]
    pieces += [(prefix + character, _CHARACTER_SCORE) for prefix in (_METASPACE, "") for character in characters]
    pieces += [(f"<extra_id_{index}>", 0.0) for index in reversed(range(T5_EXTRA_IDS))]
    return pieces


def build_t5_tokenizer(*, model_max_length: int) -> T5Tokenizer:
    """A small T5 tokenizer (``T5TokenizerFast``) with T5's special tokens and layout, built without training."""
    pad, eos, unk = T5_SPECIAL_TOKENS
    return T5Tokenizer(
        vocab=t5_vocabulary(),
        eos_token=eos,
        unk_token=unk,
        pad_token=pad,
        extra_ids=T5_EXTRA_IDS,
        model_max_length=model_max_length,
    )
