"""The trained 'shapes' model, served by its built-in name, draws what 32 fixed prompts say.

Thresholds sit 5 points under what the committed weights reached through Triton on 2026-11-24 (README), all
above the issue's floors (75% colour, 75% background, 60% shape), for seven of the eight schedulers; Heun and
LMS with the model's own settings for them (sdtriton.shapes.architecture.SCHEDULER_OVERRIDES).

The suite judges two schedulers through the server: dpmpp_2m (the default) and lms (the closest to the floors,
and one with the model's own settings). Every scheduler's served image equals diffusers' on these weights
(tests/integration/test_shapes_parity.py, with and without those settings), so the others' adherence is a
property of the committed weights and diffusers' schedulers, both fixed: it is measured with
`sdtriton eval-shapes --scheduler all` (about 2.5 minutes here) and recorded in MEASURED, not re-measured on
every run. One gap, stated here rather than hidden by a low threshold: PNDM does not draw this model at 20 steps
(colour and background near chance, FAILING), though it matches diffusers through Triton; no spacing or start
timestep mends it, see the README.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.interface import SCHEDULER_NAMES
from sdtriton.shapes.evaluate import evaluate_server
from sdtriton.shapes.world import PALETTE

pytestmark = pytest.mark.integration

# Measured (colour, background, shape) over the 32 prompts of prompt_seed 123, 20 steps, guidance 7.5 (again on
# 2026-12-05 through Triton, every scheduler at once: the same eight rows).
MEASURED = {
    "ddim": (1.000, 1.000, 0.906),
    "euler": (1.000, 1.000, 0.906),
    "euler_a": (0.938, 1.000, 0.938),
    "dpmpp_2m": (1.000, 1.000, 0.906),
    "unipc": (0.969, 1.000, 0.906),
    "lms": (0.938, 1.000, 0.750),
    "heun": (1.000, 1.000, 0.906),
}
# Measured the same way; under the floors (chance: colour / background 12.5%, shape 20%).
FAILING = {
    "pndm": (0.250, 0.312, 0.438),
}
MARGIN = 0.05
ISSUE_FLOORS = (0.75, 0.75, 0.60)


# Judged on every run (see the module's docstring for the others).
SUITE_SCHEDULERS = ("dpmpp_2m", "lms")


def test_thresholds_cover_every_scheduler_and_none_is_under_the_floors() -> None:
    assert sorted([*MEASURED, *FAILING]) == sorted(SCHEDULER_NAMES)
    for scheduler, measured in MEASURED.items():
        assert all(value - MARGIN >= floor for value, floor in zip(measured, ISSUE_FLOORS, strict=True)), scheduler


@pytest.mark.parametrize("scheduler", SUITE_SCHEDULERS)
def test_the_served_model_draws_what_the_prompt_says(shapes_server, scheduler: str) -> None:
    result = evaluate_server(
        shapes_server.address.grpc_url, count=32, prompt_seed=123, scheduler=scheduler, show_progress=False
    )
    colour, background, shape = (value - MARGIN for value in MEASURED[scheduler])
    assert result.colour >= colour, result
    assert result.background >= background, result
    assert result.shape >= shape, result


def test_native_picture_is_64_pixels_and_follows_the_background(shapes_server) -> None:
    with StableDiffusionClient(shapes_server.address.http_url) as client:
        result = client.generate("a yellow star on a purple background", seed=0, num_inference_steps=20)
    image = np.asarray(result.image)
    assert image.shape == (64, 64, 3)
    corner = image[:4, :4].reshape(-1, 3).mean(axis=0)
    assert np.linalg.norm(corner - np.array(PALETTE["purple"])) < 60
