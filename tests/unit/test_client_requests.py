"""Both clients build the same request from ``generate``'s arguments: every input but the prompt, by name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from PIL import Image

from sdtriton import interface
from sdtriton.client import AsyncStableDiffusionClient, RetryPolicy, StableDiffusionClient
from sdtriton.client import client as client_module

# Nothing listens here: the request is caught before it is sent.
URL = "http://127.0.0.1:9"
ARGUMENTS: dict[str, Any] = {
    "negative_prompt": "blurry",
    "num_inference_steps": 3,
    "guidance_scale": 2.5,
    "seed": 7,
    "width": 64,
    "height": 96,
    "scheduler": "ddim",
    "refiner_fraction": 0.0,
    "true_cfg_scale": 1.0,
    "skip_layer_guidance_scale": 0.0,
    "skip_layer_guidance_start": 0.01,
    "skip_layer_guidance_stop": 0.2,
    "vae_tiling": True,
    "input_image": Image.new("RGB", (64, 96), (10, 20, 30)),
    "mask_image": Image.new("L", (64, 96), 255),
    "strength": 0.6,
    "lora": "style",
    "lora_scale": 0.5,
}


class _SentError(Exception):
    """Stops ``generate`` where it would send."""


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = []

    def prepare(triton: Any, endpoint: Any, timeout_s: Any, prompt: Any, **parameters: Any) -> Any:
        requests.append(parameters)
        raise _SentError

    monkeypatch.setattr(client_module, "_prepare", prepare)
    return requests


def _generate_both(arguments: dict[str, Any], *, retry: RetryPolicy | None = None) -> None:
    # generate() takes the input image as ``image``, the mask as ``mask``.
    renamed = {interface.INPUT_IMAGE.name: "image", interface.MASK_IMAGE.name: "mask"}
    arguments = {renamed.get(name, name): value for name, value in arguments.items()}
    with StableDiffusionClient(URL, retry=retry) as client, pytest.raises(_SentError):
        client.generate("a red star", **arguments)

    async def generate_async() -> None:
        async with AsyncStableDiffusionClient(URL, retry=retry) as client:
            await client.generate("a red star", **arguments)

    with pytest.raises(_SentError):
        asyncio.run(generate_async())


def test_sync_and_async_clients_send_every_public_input_the_same(sent: list[dict[str, Any]]) -> None:
    _generate_both(ARGUMENTS)
    assert [list(request) for request in sent] == [[tensor.name for tensor in interface.ENTRY_INPUTS[1:]]] * 2
    assert sent == [ARGUMENTS, ARGUMENTS]


def test_omitted_arguments_are_sent_as_none_and_a_retry_policy_draws_the_seed(sent: list[dict[str, Any]]) -> None:
    _generate_both({})
    _generate_both({}, retry=RetryPolicy())
    assert sent[0] == sent[1] == dict.fromkeys(ARGUMENTS)
    for drawn in sent[2:]:
        assert 0 <= drawn["seed"] <= interface.MAX_SEED
        assert {**drawn, "seed": None} == dict.fromkeys(ARGUMENTS)


def test_generate_command_reads_lora_as_name_and_optional_scale() -> None:
    import argparse

    from sdtriton.client.commands import _lora_choice

    assert _lora_choice("style") == {"lora": "style"}
    assert _lora_choice("style:0.5") == {"lora": "style", "lora_scale": 0.5}
    assert _lora_choice("my.lora:-1") == {"lora": "my.lora", "lora_scale": -1.0}
    for bad in (":0.5", "style:strong"):
        with pytest.raises(argparse.ArgumentTypeError):
            _lora_choice(bad)
