"""The public interface of the entry model ``stable_diffusion``: the one place its tensors are defined.

The ensemble config, the pipeline's validation, the client and the tests all read this module, so a
field's name, type, default and allowed range are written once.
"""

from __future__ import annotations

from dataclasses import dataclass

ENTRY_MODEL_NAME = "stable_diffusion"

MAX_PROMPT_BYTES = 2000
MIN_INFERENCE_STEPS = 1
MAX_INFERENCE_STEPS = 150
MIN_GUIDANCE_SCALE = 0.0
MAX_GUIDANCE_SCALE = 30.0
DEFAULT_GUIDANCE_SCALE = 7.5
MIN_SEED = 0
MAX_SEED = 2**63 - 1
# Scheduler names a request may send; sdtriton.schedulers maps each to its diffusers class.
SCHEDULER_NAMES: tuple[str, ...] = ("ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "unipc", "lms", "heun")


@dataclass(frozen=True)
class PublicTensor:
    """One tensor of the entry model, each item of shape ``dims`` (the batch axis is implicit)."""

    name: str
    triton_dtype: str
    dims: tuple[int, ...]
    optional: bool
    allowed: str


# Declared optional so that a request without it reaches the tokenizer, which names it in its error
# (a 2.51 ensemble answers a missing required input with "unexpected deadlock" instead).
PROMPT = PublicTensor("prompt", "BYTES", (1,), True, f"UTF-8 text of at most {MAX_PROMPT_BYTES} bytes")
NEGATIVE_PROMPT = PublicTensor(
    "negative_prompt", "BYTES", (1,), True, f"UTF-8 text of at most {MAX_PROMPT_BYTES} bytes"
)
NUM_INFERENCE_STEPS = PublicTensor(
    "num_inference_steps", "INT32", (1,), True, f"{MIN_INFERENCE_STEPS}..{MAX_INFERENCE_STEPS}"
)
GUIDANCE_SCALE = PublicTensor(
    "guidance_scale", "FP32", (1,), True, f"a finite number in {MIN_GUIDANCE_SCALE:g}..{MAX_GUIDANCE_SCALE:g}"
)
SEED = PublicTensor("seed", "INT64", (1,), True, f"{MIN_SEED}..2^63-1")
WIDTH = PublicTensor("width", "INT32", (1,), True, "a positive multiple of the model's size step")
HEIGHT = PublicTensor("height", "INT32", (1,), True, "a positive multiple of the model's size step")
SCHEDULER = PublicTensor("scheduler", "BYTES", (1,), True, "one of " + ", ".join(SCHEDULER_NAMES))

PUBLIC_INPUTS: tuple[PublicTensor, ...] = (
    PROMPT,
    NEGATIVE_PROMPT,
    NUM_INFERENCE_STEPS,
    GUIDANCE_SCALE,
    SEED,
    WIDTH,
    HEIGHT,
    SCHEDULER,
)
# Inputs the ensemble hands unchanged to the pipeline model.
GENERATION_INPUTS: tuple[PublicTensor, ...] = PUBLIC_INPUTS[2:]

IMAGE = PublicTensor("image", "UINT8", (-1, -1, 3), False, "RGB pixels, [height, width, 3]")
USED_SEED = PublicTensor("used_seed", "INT64", (1,), False, "the seed the image was drawn with")
PUBLIC_OUTPUTS: tuple[PublicTensor, ...] = (IMAGE, USED_SEED)

# Tensors between the tokenizer and the pipeline model.
INPUT_IDS = PublicTensor("input_ids", "INT64", (-1,), False, "token ids of the prompt")
NEGATIVE_INPUT_IDS = PublicTensor("negative_input_ids", "INT64", (-1,), False, "token ids of the negative prompt")
