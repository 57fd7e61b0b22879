"""``sdtriton eval-shapes``: prompt adherence of a served ``shapes`` model, judged without a learned model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from sdtriton.client import StableDiffusionClient
from sdtriton.shapes.judge import judge
from sdtriton.shapes.world import PromptCase, evaluation_prompts

logger = logging.getLogger(__name__)
ATTRIBUTES = ("colour", "background", "shape")


@dataclass(frozen=True)
class Adherence:
    """Share of prompts judged right, per attribute, over all prompts and over the held-out pairs."""

    count: int
    colour: float
    background: float
    shape: float
    all_correct: float
    held_out_count: int
    held_out_all_correct: float

    def as_row(self) -> dict[str, float]:
        return {
            "colour": self.colour,
            "background": self.background,
            "shape": self.shape,
            "all": self.all_correct,
            "held_out_all": self.held_out_all_correct,
        }


def score(pairs: list[tuple[np.ndarray, PromptCase]]) -> Adherence:
    right = {attribute: 0 for attribute in ATTRIBUTES}
    all_correct = held_out = held_out_correct = 0
    for image, case in pairs:
        verdict = judge(image)
        hits = {
            "colour": verdict.colour == case.colour,
            "background": verdict.background == case.background,
            "shape": verdict.shape == case.shape,
        }
        for attribute, hit in hits.items():
            right[attribute] += hit
        all_correct += all(hits.values())
        if case.held_out:
            held_out += 1
            held_out_correct += all(hits.values())
    count = len(pairs)
    return Adherence(
        count=count,
        colour=right["colour"] / count,
        background=right["background"] / count,
        shape=right["shape"] / count,
        all_correct=all_correct / count,
        held_out_count=held_out,
        held_out_all_correct=held_out_correct / held_out if held_out else float("nan"),
    )


def generate_cases(
    generate: Callable[[list[str], list[int]], list[np.ndarray]],
    cases: list[PromptCase],
    *,
    seed: int,
    batch_size: int,
    show_progress: bool = True,
) -> list[tuple[np.ndarray, PromptCase]]:
    pairs = []
    with tqdm(total=len(cases), desc="eval-shapes", disable=not show_progress) as progress:
        for start in range(0, len(cases), batch_size):
            batch = cases[start : start + batch_size]
            seeds = [seed + start + offset for offset in range(len(batch))]
            images = generate([case.prompt for case in batch], seeds)
            pairs.extend(zip(images, batch, strict=True))
            progress.update(len(batch))
    return pairs


def evaluate_server(
    url: str,
    *,
    count: int = 200,
    prompt_seed: int = 0,
    image_seed: int = 0,
    scheduler: str | None = "dpmpp_2m",
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    batch_size: int = 8,
    show_progress: bool = True,
) -> Adherence:
    """Generates ``count`` fixed prompts through the server and judges every picture."""
    cases = evaluation_prompts(count, seed=prompt_seed)
    with StableDiffusionClient(url) as client:

        def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
            result = client.generate(
                prompts,
                seed=seeds,
                scheduler=scheduler,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
            )
            return [np.asarray(image) for image in result.images]

        pairs = generate_cases(generate, cases, seed=image_seed, batch_size=batch_size, show_progress=show_progress)
    return score(pairs)
