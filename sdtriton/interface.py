"""The public interface of the entry model ``stable_diffusion``: the one place its tensors are defined.

The ensemble config, the pipeline's validation, the client and the tests all read this module, so a
field's name, type, default and allowed range are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ENTRY_MODEL_NAME = "stable_diffusion"
# The decoupled twin of the entry (gRPC streaming): progress after every denoising step, previews, then the image.
STREAM_ENTRY_MODEL_NAME = "stable_diffusion_stream"
# The internal model both entries forward to: the diffusion engine.
PIPELINE_MODEL_NAME = "pipeline"


def stream_entry_name(entry_name: str) -> str:
    """The streaming twin of an entry (``export --model-prefix p`` names them p + both names)."""
    return entry_name + STREAM_ENTRY_MODEL_NAME.removeprefix(ENTRY_MODEL_NAME)


# Defaults of an export's request limits (sdtriton export --max-prompt-bytes, --max-steps).
MAX_PROMPT_BYTES = 2000
MIN_INFERENCE_STEPS = 1
MAX_INFERENCE_STEPS = 150
MIN_GUIDANCE_SCALE = 0.0
MAX_GUIDANCE_SCALE = 30.0
DEFAULT_GUIDANCE_SCALE = 7.5
MIN_SEED = 0
MAX_SEED = 2**63 - 1
MAX_PREVIEW_EVERY = MAX_INFERENCE_STEPS
# Scheduler names a request may send, by the model's kind; sdtriton.schedulers maps each to its diffusers class.
# SD 1.x/2.x and SDXL (noise prediction):
SCHEDULER_NAMES: tuple[str, ...] = ("ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "unipc", "lms", "heun")
# SD 3 / 3.5 (flow matching); FLUX offers those of them FluxPipeline runs on its scheduler config:
FLOW_SCHEDULER_NAMES: tuple[str, ...] = ("flow_euler", "flow_heun", "dpmpp_2m", "unipc")
# Every name some family accepts, each once: what a client offers before it knows the model (a refusal names those
# the model takes).
ACCEPTED_SCHEDULER_NAMES: tuple[str, ...] = tuple(dict.fromkeys((*SCHEDULER_NAMES, *FLOW_SCHEDULER_NAMES)))


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
SCHEDULER = PublicTensor(
    "scheduler",
    "BYTES",
    (1,),
    True,
    f"SD 1.x/2.x, SDXL: one of {', '.join(SCHEDULER_NAMES)}; SD 3: one of {', '.join(FLOW_SCHEDULER_NAMES)} "
    "(flow_heun not with dynamic shifting); "
    "FLUX: those of these its pipeline runs on the model's scheduler config (named in a refusal)",
)
# SDXL base + refiner (diffusers' ensemble of experts): the base denoises down to denoising_end = 1 - fraction,
# the refiner from there (denoising_start); 0 keeps the refiner off.
REFINER_FRACTION = PublicTensor(
    "refiner_fraction",
    "FP32",
    (1,),
    True,
    "0 (off, the default) or a number above 0 and below 1: the share of the denoising (the low-noise end) the "
    "refiner does; only on a repository exported with a refiner",
)

# FLUX's true classifier-free guidance (FluxPipeline's true_cfg_scale): above 1, with a negative prompt sent, each
# image adds a negative row, combined as negative + scale * (prompt - negative). At most the guidance scale's maximum.
DEFAULT_TRUE_CFG_SCALE = 1.0
TRUE_CFG_SCALE = PublicTensor(
    "true_cfg_scale",
    "FP32",
    (1,),
    True,
    f"FLUX: a finite number in {MIN_GUIDANCE_SCALE:g}..{MAX_GUIDANCE_SCALE:g}, above 1 with a negative_prompt sent "
    f"turns true classifier-free guidance on; other families: {DEFAULT_TRUE_CFG_SCALE:g} only",
)
# SD 3.5's skip-layer guidance (StableDiffusion3Pipeline's skip_layer_guidance_*), on a repository exported with
# --skip-guidance-layers: with classifier-free guidance, the evaluations i with steps * start < i < steps * stop add a
# third row, the prompt through the transformer without those blocks, and add scale * (prompt - that row).
# Start and stop default to the pipeline's own; they are checked everywhere and used only with a scale above 0.
DEFAULT_SKIP_LAYER_GUIDANCE_START = 0.01
DEFAULT_SKIP_LAYER_GUIDANCE_STOP = 0.2


def in_skip_layer_guidance_window(evaluation: int, steps: int, *, start: float, stop: float) -> bool:
    """Whether the transformer evaluation ``evaluation`` (from 0) of a request for ``steps`` steps adds skip-layer
    guidance's row: ``StableDiffusion3Pipeline.__call__``'s ``steps * start < i < steps * stop``."""
    return steps * start < evaluation < steps * stop


SKIP_LAYER_GUIDANCE_SCALE = PublicTensor(
    "skip_layer_guidance_scale",
    "FP32",
    (1,),
    True,
    f"0 (off, the default) or a finite number up to {MAX_GUIDANCE_SCALE:g}; above 0 only on an SD 3 repository "
    "exported with --skip-guidance-layers",
)
SKIP_LAYER_GUIDANCE_START = PublicTensor(
    "skip_layer_guidance_start",
    "FP32",
    (1,),
    True,
    f"a number in 0..1 (default {DEFAULT_SKIP_LAYER_GUIDANCE_START:g}): the share of the steps before the skip-layer "
    "row starts",
)
SKIP_LAYER_GUIDANCE_STOP = PublicTensor(
    "skip_layer_guidance_stop",
    "FP32",
    (1,),
    True,
    f"a number in 0..1 (default {DEFAULT_SKIP_LAYER_GUIDANCE_STOP:g}): the share of the steps where it stops",
)

# Tiled VAE decoding, as diffusers' vae.enable_tiling(): overlapping tiles of the VAE's sample_size, blended.
VAE_TILING = PublicTensor(
    "vae_tiling",
    "BOOL",
    (1,),
    True,
    "true: decode (and encode an input_image) in tiles (as diffusers' vae.enable_tiling()); false: in one call, "
    "only up to the export's "
    "--vae-tile-above size; omitted: tiles above that size",
)

# LoRA adapters exported into the networks (sdtriton export --lora NAME=PATH): each image names at most one, with its
# weight (diffusers' set_adapters([name], [scale])); images of different adapters and scales share a network call.
MIN_LORA_SCALE = -4.0
MAX_LORA_SCALE = 4.0
DEFAULT_LORA_SCALE = 1.0
LORA = PublicTensor(
    "lora",
    "BYTES",
    (1,),
    True,
    "the name of one adapter the repository was exported with (export --lora NAME=PATH); absent or empty: none",
)
LORA_SCALE = PublicTensor(
    "lora_scale",
    "FP32",
    (1,),
    True,
    f"a finite number in {MIN_LORA_SCALE:g}..{MAX_LORA_SCALE:g} (default {DEFAULT_LORA_SCALE:g}): the adapter's "
    "weight, as diffusers' set_adapters",
)

# The inputs of one value per prompt (text-to-image); the entry takes these and IMAGE_INPUTS (ENTRY_INPUTS).
PUBLIC_INPUTS: tuple[PublicTensor, ...] = (
    PROMPT,
    NEGATIVE_PROMPT,
    NUM_INFERENCE_STEPS,
    GUIDANCE_SCALE,
    SEED,
    WIDTH,
    HEIGHT,
    SCHEDULER,
    REFINER_FRACTION,
    TRUE_CFG_SCALE,
    SKIP_LAYER_GUIDANCE_SCALE,
    SKIP_LAYER_GUIDANCE_START,
    SKIP_LAYER_GUIDANCE_STOP,
    VAE_TILING,
    LORA,
    LORA_SCALE,
)
# Inputs the ensemble hands unchanged to the pipeline model.
GENERATION_INPUTS: tuple[PublicTensor, ...] = PUBLIC_INPUTS[2:]

# Image-to-image (StableDiffusionImg2ImgPipeline and its kin): the image to start from, each item its own, and how much
# of the denoising is redone (diffusers' strength: the steps run are int(steps x strength), noise added to match).
# The output has the input's size.
DEFAULT_STRENGTH = 0.8
INPUT_IMAGE = PublicTensor(
    "input_image",
    "UINT8",
    (-1, -1, 3),
    True,
    "RGB pixels [height, width, 3], each side a multiple of the model's size step within its size limits; "
    "the image is drawn at this size",
)
STRENGTH = PublicTensor(
    "strength",
    "FP32",
    (1,),
    True,
    f"with an input_image only: a number above 0 and at most 1 (default {DEFAULT_STRENGTH:g}; with a mask_image, "
    "the inpainting pipeline's: SD 1, SDXL 0.9999, SD 3 and FLUX 0.6), large enough that at least one step runs",
)
# Inpainting (StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline): which pixels of the input image are
# redrawn. Binarized as diffusers' mask processor does (value / 255 >= 0.5: 128 and above repaint); a dedicated
# inpainting model (a 9-channel UNet) takes the mask and the masked image, any other model keeps the unmasked latents
# of the input image (re-noised to each step) and denoises the rest. With it, strength defaults to the inpainting
# pipeline's (SD 1.0, SDXL 0.9999, SD 3 and FLUX 0.6).
MASK_BINARIZE_AT = 128
MASK_IMAGE = PublicTensor(
    "mask_image",
    "UINT8",
    (-1, -1, 1),
    True,
    f"with an {INPUT_IMAGE.name} of the same height and width only: [height, width, 1] gray pixels, "
    f"{MASK_BINARIZE_AT}..255 repaint, 0..{MASK_BINARIZE_AT - 1} keep; every family (required by an SD or SDXL "
    "inpainting model, a 9-channel UNet); not with the SDXL refiner",
)
IMAGE_INPUTS: tuple[PublicTensor, ...] = (INPUT_IMAGE, MASK_IMAGE, STRENGTH)
# Every input of the entry: the per-item scalars, then the images.
ENTRY_INPUTS: tuple[PublicTensor, ...] = (*PUBLIC_INPUTS, *IMAGE_INPUTS)

IMAGE = PublicTensor("image", "UINT8", (-1, -1, 3), False, "RGB pixels, [height, width, 3]")
USED_SEED = PublicTensor("used_seed", "INT64", (1,), False, "the seed the image was drawn with")
PUBLIC_OUTPUTS: tuple[PublicTensor, ...] = (IMAGE, USED_SEED)

# Tensors only the entries send to the internal ``pipeline`` model (the engine), besides the public inputs.
REQUEST_KEY = PublicTensor("request_key", "INT64", (1,), True, "the entry's key of the request, for cancel_key")
SEND_PROGRESS = PublicTensor("send_progress", "BOOL", (1,), True, "whether to answer progress after every step")
# A control request: end the request of this key as cancelled at the next step (answered at once, no outputs).
CANCEL_KEY = PublicTensor("cancel_key", "INT64", (1,), True, "the request_key of a request to cancel")
INTERNAL_INPUTS: tuple[PublicTensor, ...] = (REQUEST_KEY, SEND_PROGRESS, CANCEL_KEY)
# How the pipeline tells an entry that a request failed: a BLS stream's error response loses its status code
# on this Triton (an INVALID_ARG arrives as INTERNAL), so the code travels as a tensor and the entry answers it.
ERROR_CODE = PublicTensor("error_code", "INT32", (1,), False, "Triton error code (pb_utils.TritonError)")
ERROR_MESSAGE = PublicTensor("error_message", "BYTES", (1,), False, "the error's message")
INTERNAL_OUTPUTS: tuple[PublicTensor, ...] = (ERROR_CODE, ERROR_MESSAGE)

# The streaming entry takes the entry's inputs and one more.
PREVIEW_EVERY = PublicTensor(
    "preview_every",
    "INT32",
    (1,),
    True,
    f"0 (no previews, the default) or 1..{MAX_PREVIEW_EVERY}: a preview every k steps",
)
STREAM_INPUTS: tuple[PublicTensor, ...] = (*ENTRY_INPUTS, PREVIEW_EVERY)

# Each response of the stream carries the progress of every item; the last one carries image and used_seed too.
STEP = PublicTensor("step", "INT32", (1,), False, "network evaluations done for this item")
TOTAL_STEPS = PublicTensor("total_steps", "INT32", (1,), False, "network evaluations this item takes in all")
ELAPSED_MS = PublicTensor("elapsed_ms", "FP32", (1,), False, "milliseconds since the server took the request")
PREVIEW = PublicTensor(
    "preview", "UINT8", (-1, -1, 3), False, "RGB preview at latent resolution, [height/f, width/f, 3]"
)
PROGRESS_OUTPUTS: tuple[PublicTensor, ...] = (STEP, TOTAL_STEPS, ELAPSED_MS)
STREAM_OUTPUTS: tuple[PublicTensor, ...] = (*PROGRESS_OUTPUTS, PREVIEW, *PUBLIC_OUTPUTS)


@dataclass(frozen=True)
class ModelDescription:
    """What an exported model offers a caller, beyond its tensors: written by ``sdtriton export`` as parameters of
    both entries' configs, read back through Triton's model config by the gateway (``GET /v1/models``), whose
    callers (the playground) offer the schedulers and sizes the model takes.

    Attributes:
        family: the model family (``sd``, ``sdxl``, ``sd3``, ``flux``).
        scheduler_names: the ``scheduler`` values a request may send.
        default_width / default_height: the size of a request without one.
        size_multiple: width and height are multiples of this.
        default_num_inference_steps / max_inference_steps: the steps of a request without any, and the most.
    """

    family: str
    scheduler_names: tuple[str, ...]
    default_width: int
    default_height: int
    size_multiple: int
    default_num_inference_steps: int
    max_inference_steps: int

    def parameters(self) -> dict[str, str]:
        """The entry configs' parameters (Triton's are strings): the field names, the schedulers comma-separated."""
        return {
            _DESCRIPTION_PARAMETERS[name]: ",".join(value) if isinstance(value, tuple) else str(value)
            for name, value in vars(self).items()
        }

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> ModelDescription | None:
        """The description in an entry config's parameters; None for a repository exported before they were written
        (or one whose entries lack any of them).

        Raises:
            ValueError: a number that is not one.
        """
        values = {name: parameters.get(key) for name, key in _DESCRIPTION_PARAMETERS.items()}
        if any(value is None for value in values.values()):
            return None
        return cls(
            family=str(values["family"]),
            scheduler_names=tuple(name for name in str(values["scheduler_names"]).split(",") if name),
            **{name: int(str(value)) for name, value in values.items() if name not in ("family", "scheduler_names")},
        )


# Each ModelDescription field's parameter key ("family" alone would clash with the component models' own parameter).
_DESCRIPTION_PARAMETERS = {
    "family": "model_family",
    "scheduler_names": "scheduler_names",
    "default_width": "default_width",
    "default_height": "default_height",
    "size_multiple": "size_multiple",
    "default_num_inference_steps": "default_num_inference_steps",
    "max_inference_steps": "max_inference_steps",
}
