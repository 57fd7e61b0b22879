"""Every scheduler with one and two steps through a real server: an image, or INVALID_ARG naming the minimum.

The tiny model ships SD 1.5's scheduler config (PNDM with ``skip_prk_steps``), so every scheduler takes one step.
A copy exported with ``skip_prk_steps`` false gives PNDM its Runge-Kutta warm-up, which needs four.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from diffusers.schedulers.scheduling_utils import SCHEDULER_CONFIG_NAME

from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.interface import SCHEDULER_NAMES
from tests.conftest import serve

pytestmark = pytest.mark.integration

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def prk_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from sdtriton.export import export_repository

    root = tmp_path_factory.mktemp("pndm_with_prk")
    model_dir = Path(shutil.copytree(tiny_model_dir, root / "tiny"))
    config_path = model_dir / "scheduler" / SCHEDULER_CONFIG_NAME
    config = json.loads(config_path.read_text())
    assert config["_class_name"] == "PNDMScheduler" and config["skip_prk_steps"] is True
    config_path.write_text(json.dumps({**config, "skip_prk_steps": False}))
    export_repository(model_dir, root / "repository", show_progress=False)
    yield from serve(root / "repository", tmp_path_factory)


@pytest.fixture(params=["http", "grpc"])
def prk_url(request, prk_server) -> str:
    return getattr(prk_server.address, f"{request.param}_url")


@pytest.mark.parametrize("steps", [1, 2])
def test_every_scheduler_takes_one_and_two_steps_on_the_tiny_model(http_url: str, steps: int) -> None:
    with StableDiffusionClient(http_url) as client:
        for scheduler in (None, *SCHEDULER_NAMES):
            result = client.generate(PROMPT, num_inference_steps=steps, scheduler=scheduler, seed=1)
            assert result.image.size == (64, 64), scheduler


def test_pndm_with_its_warm_up_refuses_fewer_than_four_steps_by_name(prk_url: str) -> None:
    with StableDiffusionClient(prk_url) as client:
        for steps in (1, 2, 3):
            with pytest.raises(InvalidRequestError) as named:
                client.generate(PROMPT, num_inference_steps=steps, scheduler="pndm", seed=1)
            assert str(named.value) == (
                f"num_inference_steps: must be at least 4 with scheduler 'pndm' on this model (its PRK warm-up), "
                f"got {steps}"
            )
            with pytest.raises(InvalidRequestError, match=r"at least 4 with this model's own scheduler 'pndm'"):
                client.generate(PROMPT, num_inference_steps=steps, seed=1)
        assert client.generate(PROMPT, num_inference_steps=4, scheduler="pndm", seed=1).image.size == (64, 64)
        assert client.generate(PROMPT, num_inference_steps=4, seed=1).image.size == (64, 64)


def test_the_other_schedulers_take_one_step_beside_pndm_with_its_warm_up(prk_server) -> None:
    with StableDiffusionClient(prk_server.address.grpc_url) as client:
        for scheduler in SCHEDULER_NAMES:
            if scheduler != "pndm":
                assert client.generate(PROMPT, num_inference_steps=1, scheduler=scheduler, seed=1).seed == 1
