"""Bad input fails alone with INVALID_ARG naming the field and its range; the server stays up."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from sdtriton.client import InvalidRequestError, StableDiffusionClient

pytestmark = pytest.mark.integration

PROMPT = "a red square on a green background"


@pytest.fixture(scope="module", params=["http", "grpc"])
def client(request, http_url: str, grpc_url: str):
    with StableDiffusionClient(http_url if request.param == "http" else grpc_url) as client:
        yield client


BAD_INPUTS = [
    ({"num_inference_steps": 0}, "num_inference_steps", "1..150"),
    ({"num_inference_steps": 151}, "num_inference_steps", "1..150"),
    ({"guidance_scale": -0.5}, "guidance_scale", "0..30"),
    ({"guidance_scale": 30.5}, "guidance_scale", "0..30"),
    ({"guidance_scale": float("nan")}, "guidance_scale", "finite"),
    ({"guidance_scale": float("inf")}, "guidance_scale", "finite"),
    ({"seed": -1}, "seed", "0..9223372036854775807"),
    ({"width": 0}, "width", "multiple of 4"),
    ({"width": 66}, "width", "multiple of 4"),
    ({"height": 132}, "height", "4..128"),
    ({"height": -64}, "height", "multiple of 4"),
    ({"scheduler": "ddpm"}, "scheduler", "ddim, pndm, euler, euler_a, dpmpp_2m, unipc, lms, heun"),
    ({"scheduler": "__import__('os').system('true')"}, "scheduler", "one of"),
    ({"negative_prompt": "x" * 2001}, "negative_prompt", "2000 bytes"),
    ({"refiner_fraction": 1.0}, "refiner_fraction", "above 0 and below 1"),
    ({"refiner_fraction": -0.1}, "refiner_fraction", "above 0 and below 1"),
    ({"refiner_fraction": float("nan")}, "refiner_fraction", "above 0 and below 1"),
    ({"refiner_fraction": 0.3}, "refiner_fraction", "exported without a refiner"),
]


@pytest.mark.parametrize(("kwargs", "field", "allowed"), BAD_INPUTS)
def test_out_of_range_input_is_rejected_with_field_and_range(client, kwargs, field: str, allowed: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        client.generate(PROMPT, **{"num_inference_steps": 2, **kwargs})
    assert field in str(error.value)
    assert allowed in str(error.value)


def test_too_long_prompt_is_rejected(client) -> None:
    with pytest.raises(InvalidRequestError, match=r"prompt: must be at most 2000 bytes"):
        client.generate("é" * 1001, num_inference_steps=2)  # 2002 bytes of UTF-8


def test_invalid_utf8_prompt_is_rejected(client) -> None:
    with pytest.raises(InvalidRequestError, match=r"prompt: must be valid UTF-8"):
        client.generate([b"\xff\xfe not utf-8"], num_inference_steps=2)


def test_bad_item_fails_its_whole_request_only(client) -> None:
    with pytest.raises(InvalidRequestError, match="num_inference_steps"):
        client.generate([PROMPT, PROMPT], num_inference_steps=[2, 0])
    assert client.generate(PROMPT, num_inference_steps=2, seed=1).seed == 1


def _raw_http_inputs(*, with_prompt: bool, steps_dtype: str) -> list:
    inputs = []
    if with_prompt:
        prompt = httpclient.InferInput("prompt", [1, 1], "BYTES")
        prompt.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=object))
        inputs.append(prompt)
    steps = httpclient.InferInput("num_inference_steps", [1, 1], steps_dtype)
    steps.set_data_from_numpy(np.array([[2]], dtype=np.float32 if steps_dtype == "FP32" else np.int32))
    inputs.append(steps)
    return inputs


def test_missing_prompt_is_rejected_naming_it(http_url: str) -> None:
    client = httpclient.InferenceServerClient(http_url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as error:
        client.infer("stable_diffusion", _raw_http_inputs(with_prompt=False, steps_dtype="INT32"))
    assert error.value.status() == "400"
    assert "prompt" in error.value.message()


def test_wrong_type_is_rejected_naming_field_and_type(grpc_url: str) -> None:
    client = grpcclient.InferenceServerClient(grpc_url.removeprefix("grpc://"))
    prompt = grpcclient.InferInput("prompt", [1, 1], "BYTES")
    prompt.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=object))
    steps = grpcclient.InferInput("num_inference_steps", [1, 1], "FP32")
    steps.set_data_from_numpy(np.array([[2.0]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as error:
        client.infer("stable_diffusion", [prompt, steps])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "num_inference_steps" in error.value.message()
    assert "expects 'INT32'" in error.value.message()


def test_bad_request_does_not_disturb_one_in_flight(http_url: str, grpc_url: str) -> None:
    outcome: dict[str, object] = {}

    def good() -> None:
        with StableDiffusionClient(grpc_url) as client:
            outcome["good"] = client.generate(PROMPT, num_inference_steps=40, seed=5)

    worker = threading.Thread(target=good)
    worker.start()
    with StableDiffusionClient(http_url) as client:
        for _ in range(5):
            with pytest.raises(InvalidRequestError):
                client.generate(PROMPT, scheduler="nope")
    worker.join(timeout=120)
    assert outcome["good"].seed == 5
    with StableDiffusionClient(http_url) as client:
        assert client.is_ready()
