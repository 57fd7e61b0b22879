"""The requests of the load tests, one :class:`RequestSpec` each, and the perf_analyzer ``--input-data`` files that
carry them: ``perf/input_data/`` is :data:`INPUT_DATA_FILES` rendered (a unit test keeps them equal), and every path,
the baselines too, reads them, so all are timed on the same parameters.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from sdtriton import interface

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
    # One VAE call for the image: perf's sizes are the model's native ones, which no export tiles (--vae-tile-above).
    vae_tiling: bool = False
    lora: str = ""  # none
    lora_scale: float = interface.DEFAULT_LORA_SCALE

    def client_parameters(self) -> dict[str, Any]:
        """Every public input but the prompt, as keywords of ``StableDiffusionClient.generate``."""
        return {tensor.name: getattr(self, tensor.name) for tensor in interface.PUBLIC_INPUTS[1:]}

    @classmethod
    def from_input_data_entry(cls, entry: Mapping[str, Any]) -> RequestSpec:
        """A request from an input-data entry (one item an input); numbers keep their JSON types."""
        if missing := [tensor.name for tensor in interface.PUBLIC_INPUTS if tensor.name not in entry]:
            raise ValueError(f"input-data entry has no {missing[0]!r} (it has {sorted(entry)})")
        return cls(**{tensor.name: entry[tensor.name]["content"][0] for tensor in interface.PUBLIC_INPUTS})

    def with_steps(self, num_inference_steps: int) -> RequestSpec:
        return dataclasses.replace(self, num_inference_steps=num_inference_steps)


def raw_inputs(request: RequestSpec) -> dict[str, np.ndarray]:
    """The request's public inputs as the pipeline model reads them, ``[1]`` arrays."""
    return {
        tensor.name: np.array([getattr(request, tensor.name)], dtype=triton_to_np_dtype(tensor.triton_dtype))
        for tensor in interface.PUBLIC_INPUTS
    }


def input_data_text(requests: Sequence[RequestSpec]) -> str:
    """A perf_analyzer ``--input-data`` document (sent in this order, round robin), one request a line: each input
    a ``[1]`` item."""
    if not requests:
        raise ValueError("an input-data file needs at least one request")
    tensors = interface.PUBLIC_INPUTS
    entries = [{t.name: {"content": [getattr(r, t.name)], "shape": list(t.dims)} for t in tensors} for r in requests]
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


# The committed input-data files, by file name; `sdtriton perf` profiles name them in perf/scenarios.json.
INPUT_DATA_FILES: Mapping[str, tuple[RequestSpec, ...]] = {
    # The default model: 64x64 native, sizes up to 2x, the model's default steps around 20.
    "default_fixed.json": fixed_requests(size_px=64, num_inference_steps=20),
    "default_varied.json": varied_requests(sizes_px=(64, 96, 128), steps=(10, 20, 30), count=24),
    # The heavy profile (SD 1.5 shapes): 256x256 and few steps, to stay inside its time limit.
    "sd15_fixed.json": fixed_requests(size_px=256, num_inference_steps=4),
}


def write_input_data_files(directory: Path) -> None:
    """Renders :data:`INPUT_DATA_FILES` into ``directory`` (``perf/input_data/``)."""
    for name, requests in INPUT_DATA_FILES.items():
        (directory / name).write_text(input_data_text(requests))
