"""The trained 'shapes' model, served by its built-in name, draws what 32 fixed prompts say, with every scheduler.

Thresholds sit 5 points under what the committed weights reached through Triton when they were trained
(see the README), and never under 75% colour, 75% background, 60% shape.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.interface import SCHEDULER_NAMES
from sdtriton.shapes.evaluate import evaluate_server
from sdtriton.shapes.world import PALETTE

pytestmark = pytest.mark.integration

MIN_COLOUR = 0.75
MIN_BACKGROUND = 0.75
MIN_SHAPE = 0.60


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_draws_what_the_prompt_says(shapes_server, scheduler: str) -> None:
    result = evaluate_server(
        shapes_server.address.grpc_url, count=32, prompt_seed=123, scheduler=scheduler, show_progress=False
    )
    assert result.colour >= MIN_COLOUR, result
    assert result.background >= MIN_BACKGROUND, result
    assert result.shape >= MIN_SHAPE, result


def test_native_picture_is_64_pixels_and_follows_the_background(shapes_server) -> None:
    with StableDiffusionClient(shapes_server.address.http_url) as client:
        result = client.generate("a yellow star on a purple background", seed=0, num_inference_steps=20)
    image = np.asarray(result.image)
    assert image.shape == (64, 64, 3)
    corner = image[:4, :4].reshape(-1, 3).mean(axis=0)
    assert np.linalg.norm(corner - np.array(PALETTE["purple"])) < 60
