"""The requests of the load tests, one :class:`RequestSpec` each, and the perf_analyzer ``--input-data`` files that
carry them: ``perf/input_data/`` is :data:`INPUT_DATA_FILES` rendered (a unit test keeps them equal), and every path,
the baselines too, reads them, so all are timed on the same parameters.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from sdtriton import interface
from sdtriton.shapes.world import Scene, render, render_mask

# Prompts in the default model's own words (a coloured shape on a plain background), then one long
# prompt past CLIP's 77 tokens, which the tokenizer truncates as diffusers does.
PROMPTS: tuple[str, ...] = (
    "a yellow star on a purple background",
    "a red circle on a white background",
    "blue square, orange background",
    "a green triangle against a black background",
    "white background with a purple cross",
    "an orange star on a blue background",
    "a black circle against a yellow background",
    "a purple square on a green background",
    (
        "a highly detailed studio photograph of a small red circle resting in the exact centre of a "
        "plain white background, soft diffuse lighting, sharp focus, high dynamic range, shot on a "
        "medium format camera with an 80mm lens at f/8, clean minimal composition, no shadows, no "
        "text, no watermark, award winning product photography, trending, 8k resolution"
    ),
)
NEGATIVE_PROMPTS: tuple[str, ...] = ("", "blurry, low quality", "text, watermark")
_SEED_BASE = 1000
# The default model's own scheduler (DPM-Solver++ 2M): one UNet call per step.
FIXED_SCHEDULER = "dpmpp_2m"
# The mixed inputs' picture: the base request's prompt drawn as the default model's world draws it.
_MIXED_SCENE = Scene("yellow", "star", "purple", span=40.0, centre_x=32.0, centre_y=32.0)
# The client's keywords of the image inputs (the others are named as their tensors).
_CLIENT_KEYWORDS = {interface.INPUT_IMAGE.name: "image", interface.MASK_IMAGE.name: "mask"}


@dataclass(frozen=True)
class RequestSpec:
    """One request of ``stable_diffusion``, fields named as its public inputs; every one is sent, on every path."""

    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    scheduler: str
    refiner_fraction: float = 0.0
    true_cfg_scale: float = interface.DEFAULT_TRUE_CFG_SCALE
    skip_layer_guidance_scale: float = 0.0
    skip_layer_guidance_start: float = interface.DEFAULT_SKIP_LAYER_GUIDANCE_START
    skip_layer_guidance_stop: float = interface.DEFAULT_SKIP_LAYER_GUIDANCE_STOP
    vae_tiling: bool | None = None  # omitted, as users leave it: one VAE call up to --vae-tile-above, tiles above
    lora: str = ""  # none
    lora_scale: float = interface.DEFAULT_LORA_SCALE
    # Image-to-image and inpainting, omitted when None: the pictures as base64 of their [height, width, channels]
    # uint8 pixels (perf_analyzer's ``b64`` items), and the strength.
    input_image: str | None = None
    mask_image: str | None = None
    strength: float | None = None

    @property
    def kind(self) -> str:
        """What the request asks for, as the mixed load counts it: inpaint, img2img, ``lora NAME`` or text."""
        if self.input_image:
            return "inpaint" if self.mask_image else "img2img"
        return f"lora {self.lora}" if self.lora else "text"

    def sent(self) -> dict[str, Any]:
        """Every input the request sends, by tensor name: a picture as its pixels, [height, width, channels]."""
        sent = {t: getattr(self, t.name) for t in interface.ENTRY_INPUTS if getattr(self, t.name) is not None}
        return {
            t.name: np.frombuffer(base64.b64decode(v), np.uint8).reshape(self.height, self.width, t.dims[-1])
            if t.triton_dtype == "UINT8"
            else v
            for t, v in sent.items()
        }

    def client_parameters(self) -> dict[str, Any]:
        """Every input it sends but the prompt, as keywords of ``StableDiffusionClient.generate``."""
        sent = self.sent()
        del sent[interface.PROMPT.name]
        return {_CLIENT_KEYWORDS.get(name, name): value for name, value in sent.items()}

    @classmethod
    def from_input_data_entry(cls, entry: Mapping[str, Any]) -> RequestSpec:
        """A request from an input-data entry (one item an input, a picture's ``b64``); numbers keep their JSON
        types; an input with a default here may be left out."""
        required = [field.name for field in dataclasses.fields(cls) if field.default is dataclasses.MISSING]
        if missing := [name for name in required if name not in entry]:
            raise ValueError(f"input-data entry has no {missing[0]!r} (it has {sorted(entry)})")
        items = {t.name: entry[t.name] for t in interface.ENTRY_INPUTS if t.name in entry}
        return cls(**{name: item["b64"] if "b64" in item else item["content"][0] for name, item in items.items()})

    def with_steps(self, num_inference_steps: int) -> RequestSpec:
        return dataclasses.replace(self, num_inference_steps=num_inference_steps)


def raw_inputs(request: RequestSpec) -> dict[str, np.ndarray]:
    """The inputs the request sends as the pipeline model reads them, one item each (``[1]``, a picture
    ``[1, height, width, channels]``)."""
    dtypes = {tensor.name: triton_to_np_dtype(tensor.triton_dtype) for tensor in interface.ENTRY_INPUTS}
    return {name: np.array([value], dtype=dtypes[name]) for name, value in request.sent().items()}


def input_data_text(requests: Sequence[RequestSpec]) -> str:
    """A perf_analyzer ``--input-data`` document (sent in this order, round robin), one request a line: each input
    it sends a ``[1]`` item, a picture ``b64`` with its shape."""
    if not requests:
        raise ValueError("an input-data file needs at least one request")
    entries = [
        {
            name: {"b64": getattr(r, name), "shape": list(value.shape)}
            if isinstance(value, np.ndarray)
            else {"content": [value], "shape": [1]}
            for name, value in r.sent().items()
        }
        for r in requests
    ]
    return '{"data": [\n' + ",\n".join("  " + json.dumps(entry, ensure_ascii=False) for entry in entries) + "\n]}\n"


def load_input_data(path: Path) -> tuple[RequestSpec, ...]:
    document = json.loads(path.read_text())
    entries = document.get("data") if isinstance(document, dict) else None
    if not entries:
        raise ValueError(f"{path} has no 'data' entries")
    return tuple(RequestSpec.from_input_data_entry(entry) for entry in entries)


def fixed_requests(*, size_px: int, num_inference_steps: int) -> tuple[RequestSpec, ...]:
    """One request sent again and again: the baselines' and the latency curves' workload."""
    return (
        RequestSpec(
            prompt=PROMPTS[0],
            negative_prompt=NEGATIVE_PROMPTS[1],
            num_inference_steps=num_inference_steps,
            guidance_scale=interface.DEFAULT_GUIDANCE_SCALE,
            seed=_SEED_BASE,
            width=size_px,
            height=size_px,
            scheduler=FIXED_SCHEDULER,
        ),
    )


def varied_requests(*, sizes_px: Sequence[int], steps: Sequence[int], count: int) -> tuple[RequestSpec, ...]:
    """Every prompt, scheduler, step count, size and guidance (1.0 turns guidance off), with distinct seeds."""
    guidance_scales = (interface.DEFAULT_GUIDANCE_SCALE, 5.0, 1.0)
    return tuple(
        RequestSpec(
            prompt=PROMPTS[index % len(PROMPTS)],
            negative_prompt=NEGATIVE_PROMPTS[index % len(NEGATIVE_PROMPTS)],
            num_inference_steps=steps[index % len(steps)],
            guidance_scale=guidance_scales[(index // len(interface.SCHEDULER_NAMES)) % len(guidance_scales)],
            seed=_SEED_BASE + index,
            width=sizes_px[(index // len(steps)) % len(sizes_px)],
            height=sizes_px[(index // len(steps)) % len(sizes_px)],
            scheduler=interface.SCHEDULER_NAMES[index % len(interface.SCHEDULER_NAMES)],
        )
        for index in range(count)
    )


def mixed_requests(
    base: RequestSpec, *, strengths: tuple[float, float], adapters: Sequence[tuple[str, float]]
) -> tuple[RequestSpec, ...]:
    """The mixed inputs: ``base`` (text only); image-to-image from the picture its prompt describes and inpainting of
    that picture's shape (a plain UNet: the unmasked latents blended back at each step), at ``strengths``; then
    ``base`` with each adapter at its scale."""
    picture = render(_MIXED_SCENE, size=base.width)
    shape = {name: getattr(_MIXED_SCENE, name) for name in ("centre_x", "centre_y", "span")}
    mask = render_mask(_MIXED_SCENE.shape, size=base.width, **shape) >= interface.MASK_BINARIZE_AT / 255
    image = dataclasses.replace(base, input_image=_b64(picture), strength=strengths[0])
    inpaint = dataclasses.replace(image, mask_image=_b64(mask.astype(np.uint8) * 255), strength=strengths[1])
    return (base, image, inpaint, *(dataclasses.replace(base, lora=n, lora_scale=s) for n, s in adapters))


def _b64(pixels: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).decode("ascii")


# The committed input-data files, by file name; `sdtriton perf` profiles name them in perf/scenarios.json.
INPUT_DATA_FILES: Mapping[str, tuple[RequestSpec, ...]] = {
    # The default model: 64x64 native, sizes up to 2x, the model's default steps around 20.
    "default_fixed.json": fixed_requests(size_px=64, num_inference_steps=20),
    "default_varied.json": varied_requests(sizes_px=(64, 96, 128), steps=(10, 20, 30), count=24),
    # Text only, image-to-image, inpainting and two adapters (perf/scenarios.json's mixed_inputs profile exports them).
    "default_mixed.json": mixed_requests(
        fixed_requests(size_px=64, num_inference_steps=20)[0],
        strengths=(0.6, 0.8),
        adapters=(("style", 1.0), ("detail", 0.6)),
    ),
    # The heavy profile (SD 1.5 shapes): 256x256 and few steps, to stay inside its time limit.
    "sd15_fixed.json": fixed_requests(size_px=256, num_inference_steps=4),
}


def write_input_data_files(directory: Path) -> None:
    """Renders :data:`INPUT_DATA_FILES` into ``directory`` (``perf/input_data/``)."""
    for name, requests in INPUT_DATA_FILES.items():
        (directory / name).write_text(input_data_text(requests))
