"""The trained default model through Triton gives diffusers' image for every scheduler.

Its scheduler config is not SD 1.5's (explicit zero-terminal-SNR betas, v-prediction, trailing spacing), so
this holds the served loop to diffusers on a second schedule and parametrisation besides the tiny model's.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.interface import SCHEDULER_NAMES
from sdtriton.shapes import architecture
from tests.integration.oracle import MAX_PIXEL_DIFFERENCE, diffusers_image, max_pixel_difference

pytestmark = pytest.mark.integration

PROMPT = "an orange triangle on a blue background"


def _served(server, **kwargs) -> np.ndarray:
    with StableDiffusionClient(server.address.grpc_url) as client:
        return np.asarray(client.generate(PROMPT, **kwargs).image)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_shapes_model_matches_diffusers_for_every_scheduler(
    shapes_server, shapes_diffusers_pipeline, scheduler: str
) -> None:
    kwargs = {"seed": 21, "num_inference_steps": 12, "scheduler": scheduler}
    served = _served(shapes_server, **kwargs)
    expected = diffusers_image(shapes_diffusers_pipeline, PROMPT, **kwargs)
    assert max_pixel_difference(served, expected) <= MAX_PIXEL_DIFFERENCE
    other = diffusers_image(shapes_diffusers_pipeline, PROMPT, **{**kwargs, "seed": 22})
    assert max_pixel_difference(served, other) > 20


@pytest.mark.parametrize("scheduler", sorted(architecture.SCHEDULER_OVERRIDES))
def test_the_model_own_scheduler_settings_take_effect_through_triton(
    shapes_server, shapes_diffusers_pipeline, scheduler: str
) -> None:
    kwargs = {"seed": 21, "num_inference_steps": 12, "scheduler": scheduler}
    without = diffusers_image(shapes_diffusers_pipeline, PROMPT, **kwargs, model_scheduler_settings=False)
    assert max_pixel_difference(_served(shapes_server, **kwargs), without) > 20
