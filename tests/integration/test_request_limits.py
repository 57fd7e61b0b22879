"""Request limits set at export (steps, prompt bytes, pixels) are what the served entries enforce, by name."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdtriton import cli
from sdtriton.client import InvalidRequestError, StableDiffusionClient
from sdtriton.pipeline_config import PIPELINE_CONFIG_FILE_NAME, PipelineConfig
from tests.conftest import serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def limited_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    repository = tmp_path_factory.mktemp("limited") / "repository"
    # The CLI writes the limits into the exported pipeline config.
    argv = ["export", str(tiny_model_dir), "--output", str(repository), "--default-steps", "4"]
    assert cli.main([*argv, "--max-steps", "6", "--max-prompt-bytes", "24", "--max-pixels", str(64 * 80)]) == 0
    config = PipelineConfig.load(repository / "pipeline" / "1")
    assert (config.max_inference_steps, config.max_prompt_bytes, config.max_pixels) == (6, 24, 64 * 80)
    yield from serve(repository, tmp_path_factory)


@pytest.fixture(scope="module")
def client(limited_server) -> Iterator[StableDiffusionClient]:
    with StableDiffusionClient(limited_server.address.grpc_url) as client:
        yield client


def test_requests_within_the_limits_are_served(client) -> None:
    # The tiny model: 64 x 64 by default, sides in steps of 16.
    result = client.generate("a red circle", num_inference_steps=6, width=80, height=64, seed=1)
    assert result.image.size == (80, 64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 7}, r"num_inference_steps: must be an integer in 1\.\.6, got 7"),
        ({"prompt": "x" * 25}, r"prompt: must be at most 24 bytes of UTF-8, got 25 bytes"),
        ({"negative_prompt": "y" * 25}, r"negative_prompt: must be at most 24 bytes"),
        ({"width": 80, "height": 80}, r"width x height: must be at most 5120 pixels, got 80 x 80 = 6400"),
    ],
    ids=["steps", "prompt", "negative", "pixels"],
)
def test_requests_over_a_limit_are_refused_naming_it(client, kwargs: dict, message: str) -> None:
    prompt = kwargs.pop("prompt", "a red circle")
    with pytest.raises(InvalidRequestError, match=message):
        client.generate(prompt, seed=1, **kwargs)
    # The server stays up and serves the next request.
    assert client.generate("a red circle", num_inference_steps=2, seed=2).image.size[0] > 0


def test_a_repository_without_limits_keeps_the_defaults(tiny_repository: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pipeline"
    shutil.copytree(tiny_repository / "pipeline" / "1", copy)
    values = json.loads((copy / PIPELINE_CONFIG_FILE_NAME).read_text())
    for key in ("max_inference_steps", "max_prompt_bytes", "max_pixels"):
        values.pop(key, None)  # a repository exported before the limits existed
    (copy / PIPELINE_CONFIG_FILE_NAME).write_text(json.dumps(values))
    config = PipelineConfig.load(copy)
    assert (config.max_inference_steps, config.max_prompt_bytes) == (150, 2000)
    assert config.pixel_limit == config.max_width * config.max_height
