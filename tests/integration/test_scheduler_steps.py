"""Every scheduler with one and two steps through a real server: an image, or INVALID_ARG naming the minimum.

The tiny model ships SD 1.5's scheduler config (PNDM with ``skip_prk_steps``), so every scheduler takes one step.
A copy of its repository with ``skip_prk_steps`` false gives PNDM its Runge-Kutta warm-up, which needs four.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.export.configs import MODEL_VERSION
from sdtriton.interface import PIPELINE_MODEL_NAME, SCHEDULER_NAMES
from sdtriton.pipeline_config import PIPELINE_CONFIG_FILE_NAME, PipelineConfig
from tests.conftest import serve

pytestmark = pytest.mark.integration

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def prk_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The tiny model's repository with ``skip_prk_steps`` false: a copy whose pipeline config, where the export writes
    the model's scheduler config (nothing else of an export reads it), says so."""
    repository = tmp_path_factory.mktemp("pndm_with_prk") / "repository"
    shutil.copytree(tiny_repository, repository, symlinks=True)
    pipeline_dir = repository / PIPELINE_MODEL_NAME / MODEL_VERSION
    config = PipelineConfig.load(pipeline_dir)
    scheduler = config.scheduler_config
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["skip_prk_steps"] is True
    (pipeline_dir / PIPELINE_CONFIG_FILE_NAME).unlink()  # never written through a link into tiny_repository
    dataclasses.replace(config, scheduler_config={**scheduler, "skip_prk_steps": False}).save(pipeline_dir)
    yield from serve(repository, tmp_path_factory)


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
