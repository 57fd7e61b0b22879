"""The trained default model through Triton gives diffusers' image for every scheduler.

Its scheduler config is not SD 1.5's (explicit zero-terminal-SNR betas, v-prediction, trailing spacing), so
this holds the served loop to diffusers on a second schedule and parametrisation besides the tiny model's.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.interface import SCHEDULER_NAMES
from tests.integration.oracle import MAX_PIXEL_DIFFERENCE, diffusers_image, max_pixel_difference

pytestmark = pytest.mark.integration

PROMPT = "an orange triangle on a blue background"


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_shapes_model_matches_diffusers_for_every_scheduler(
    shapes_server, shapes_diffusers_pipeline, scheduler: str
) -> None:
    kwargs = {"seed": 21, "num_inference_steps": 12, "scheduler": scheduler}
    with StableDiffusionClient(shapes_server.address.grpc_url) as client:
        result = client.generate(PROMPT, **kwargs)
    expected = diffusers_image(shapes_diffusers_pipeline, PROMPT, **kwargs)
    assert max_pixel_difference(np.asarray(result.image), expected) <= MAX_PIXEL_DIFFERENCE
    other = diffusers_image(shapes_diffusers_pipeline, PROMPT, **{**kwargs, "seed": 22})
    assert max_pixel_difference(np.asarray(result.image), other) > 20
