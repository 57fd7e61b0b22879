"""``sdtriton gateway`` as users run it: a real gateway process in front of the real tritonserver of the tiny model,
called with OpenAI's own SDK and plain HTTP; images equal the project's client's for the same seed (which
test_parity.py proves equal to diffusers')."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import numpy as np
import openai
import pytest
from PIL import Image

from sdtriton.client import RequestCancelledError, RequestTimeoutError, StableDiffusionClient
from sdtriton.gateway import errors
from sdtriton.gateway.backend import Backend, GenerationRequest
from sdtriton.gateway.process import GatewayProcess
from sdtriton.interface import PIPELINE_MODEL_NAME
from sdtriton.pipeline_config import PipelineConfig
from tests.integration.oracle import start_picture

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
KEY = "test-key-main"
LIMITED_KEY = "test-key-limited"
ALIAS = "tiny"
ORIGIN = "http://playground.test"
MAX_BODY_BYTES = 64 * 1024
# Few steps: the tiny model's images differ by seed at any step count, and each costs little.
STEPS = 4


@pytest.fixture(scope="module")
def gateway(grpc_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One gateway process for the module (two keys, one rate-limited; an alias; CORS; a body limit), stopped
    at the end; its base URL."""
    folder = tmp_path_factory.mktemp("gateway")
    keys = folder / "api_keys"
    keys.write_text(f"# test keys\n{KEY}\n{LIMITED_KEY} rate_limit_per_s=0.01 rate_limit_burst=2\n")
    config = folder / "gateway.toml"
    config.write_text(
        f'[[models]]\nname = "stable_diffusion"\naliases = ["{ALIAS}", "dall-e-2"]\n\n'
        f"[limits]\nmax_body_bytes = {MAX_BODY_BYTES}\nrate_limit_per_s = 100.0\nrate_limit_burst = 100\n\n"
        f'[cors]\nallow_origins = ["{ORIGIN}"]\n'
    )
    options = ["--data-dir", str(folder / "data"), "--api-keys-file", str(keys), "--config", str(config)]
    with GatewayProcess(grpc_url, options, folder / "gateway.log").running() as process:
        yield process.url


@pytest.fixture(scope="module")
def sdk(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def client(grpc_url: str) -> Iterator[StableDiffusionClient]:
    with StableDiffusionClient(grpc_url) as client:
        yield client


def _pixels(b64_json: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(b64_json)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _post(gateway: str, body: object, *, key: str | None = KEY, timeout_s: float = 60) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway}/v1/images/generations", json=body, headers=headers, timeout=timeout_s)


def _counter(gateway: str, route: str, status: int, method: str = "POST") -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    labels = f'method="{method}",route="{route}",status="{status}"'
    match = re.search(rf"^sdtriton_gateway_requests_total\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def test_openai_sdk_gets_the_clients_image(sdk: openai.OpenAI, client: StableDiffusionClient) -> None:
    answer = sdk.images.generate(
        model=ALIAS,
        prompt=PROMPT,
        size="64x48",
        extra_body={"seed": 3, "num_inference_steps": STEPS, "scheduler": "ddim", "guidance_scale": 6.0},
    )
    expected = client.generate(
        PROMPT, seed=3, num_inference_steps=STEPS, scheduler="ddim", guidance_scale=6.0, width=64, height=48
    )
    (image,) = answer.data
    assert image.model_extra["seed"] == 3
    assert answer.size == "64x48"
    assert np.array_equal(_pixels(image.b64_json), np.asarray(expected.image))


def test_the_engines_newer_fields_reach_it(sdk: openai.OpenAI, client: StableDiffusionClient) -> None:
    """vae_tiling true tiles a 128x64 image (the tiny VAE's tile is 64 px): the client's tiled image, not the whole."""
    parameters = {"seed": 4, "num_inference_steps": STEPS, "scheduler": "ddim"}
    answer = sdk.images.generate(prompt=PROMPT, size="128x64", extra_body={**parameters, "vae_tiling": True})
    tiled = client.generate(PROMPT, width=128, height=64, vae_tiling=True, **parameters)
    whole = client.generate(PROMPT, width=128, height=64, **parameters)
    pixels = _pixels(answer.data[0].b64_json)
    assert np.array_equal(pixels, np.asarray(tiled.image)) and not np.array_equal(pixels, np.asarray(whole.image))


def test_n_images_have_their_own_seeds(sdk: openai.OpenAI, client: StableDiffusionClient) -> None:
    answer = sdk.images.generate(prompt=PROMPT, n=2, size="64x64", extra_body={"num_inference_steps": STEPS})
    seeds = [image.model_extra["seed"] for image in answer.data]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    second = client.generate(PROMPT, seed=seeds[1], num_inference_steps=STEPS, width=64, height=64)
    assert np.array_equal(_pixels(answer.data[1].b64_json), np.asarray(second.image))
    assert not np.array_equal(_pixels(answer.data[0].b64_json), _pixels(answer.data[1].b64_json))


def test_url_answer_downloads_the_image(sdk: openai.OpenAI) -> None:
    answer = sdk.images.generate(
        prompt=PROMPT, size="64x64", response_format="url", extra_body={"seed": 5, "num_inference_steps": STEPS}
    )
    (image,) = answer.data
    assert image.b64_json is None
    download = httpx.get(image.url, timeout=10)  # no key: the URL is the capability
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(download.content)).size == (64, 64)
    jpeg = sdk.images.generate(prompt=PROMPT, size="64x64", output_format="jpeg", extra_body={"num_inference_steps": 1})
    assert Image.open(io.BytesIO(base64.b64decode(jpeg.data[0].b64_json))).format == "JPEG"
    missing = httpx.get(image.url.rsplit("/", 1)[0] + "/" + "A" * 22, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("change", "param", "said"),
    [
        ({"size": "64"}, "size", "WIDTHxHEIGHT"),  # the gateway's check
        ({"size": "65x64"}, "size", "width: must be a positive multiple of"),  # the engine's, passed through
        ({"num_inference_steps": 1000}, "num_inference_steps", "num_inference_steps: must be an integer in 1..150"),
        ({"n": 11}, "n", "less than or equal to 10"),
        ({"n": 9}, "n", "n: must be in 1..8"),  # the model's max_batch_size
        ({"guidance_scale": 99}, "guidance_scale", "guidance_scale: must be a finite number in 0..30"),
        ({"num_steps": 4}, "num_steps", "Extra inputs are not permitted"),
        # The newer extras reach the engine, which refuses them on a model of another family.
        ({"true_cfg_scale": 2.0}, "true_cfg_scale", "true_cfg_scale: must be 1: true classifier-free guidance is"),
        ({"skip_layer_guidance_scale": 1.0}, "skip_layer_guidance_scale", "skip_layer_guidance_scale: must be 0"),
        # The tiny repository has no adapters and is exported untiled (tiling only on request).
        ({"lora": "style"}, "lora", "lora: must be empty: this repository was exported without LoRA"),
        ({"lora_scale": 9.0}, "lora_scale", "lora_scale: must be a finite number in -4..4"),
        ({"vae_tiling": "sometimes"}, "vae_tiling", "valid boolean"),
    ],
)
def test_bad_fields_are_400_naming_the_field(gateway: str, change: dict, param: str, said: str) -> None:
    answer = _post(gateway, {"prompt": PROMPT, "num_inference_steps": STEPS, **change})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["type"], error["code"]) == (param, "invalid_request_error", "invalid_value")
    assert said in error["message"]


def test_the_sdk_raises_its_own_error_for_a_bad_field(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(prompt=PROMPT, size="65x64", extra_body={"num_inference_steps": STEPS})
    assert caught.value.param == "size"


# Image inputs: not square (a swapped width and height would show), a multiple of the tiny model's size step.
EDIT_WIDTH, EDIT_HEIGHT = 64, 48
EDIT_STEPS = {"seed": 6, "num_inference_steps": STEPS, "scheduler": "ddim", "strength": 0.75}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _edit_mask() -> tuple[Image.Image, Image.Image]:
    """OpenAI's mask (the left third fully transparent: edited; the rest opaque or half transparent: kept) and the
    engine's mask_image it stands for (255 repaints)."""
    alpha = np.full((EDIT_HEIGHT, EDIT_WIDTH), 255, dtype=np.uint8)
    alpha[:, : EDIT_WIDTH // 3] = 0
    alpha[: EDIT_HEIGHT // 2, EDIT_WIDTH // 2 :] = 100  # partly transparent still keeps
    openai_mask = Image.fromarray(np.dstack([np.zeros((EDIT_HEIGHT, EDIT_WIDTH, 3), np.uint8), alpha]), "RGBA")
    return openai_mask, Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8), "L")


def test_openai_sdk_edits_an_image_as_the_clients_img2img(
    gateway: str, sdk: openai.OpenAI, client: StableDiffusionClient
) -> None:
    """``images.edit`` without a mask is image-to-image: the client's image for the same seed and strength (which
    test_img2img.py proves equal to diffusers'); n images get seeds seed + i; the same fields on generations."""
    start = start_picture(EDIT_WIDTH, EDIT_HEIGHT)
    answer = sdk.images.edit(image=("start.png", _png(start), "image/png"), prompt=PROMPT, n=2, extra_body=EDIT_STEPS)
    assert answer.size == f"{EDIT_WIDTH}x{EDIT_HEIGHT}"
    assert [image.model_extra["seed"] for image in answer.data] == [6, 7]
    expected = client.generate([PROMPT] * 2, image=start, **(EDIT_STEPS | {"seed": [6, 7]}))
    for image, wanted in zip(answer.data, expected.images, strict=True):
        assert np.array_equal(_pixels(image.b64_json), np.asarray(wanted))
    # A PNG with transparency is drawn from its colours; the JSON routes take the image as base64.
    body = {"prompt": PROMPT, "image": base64.b64encode(_png(start.convert("RGBA"))).decode(), **EDIT_STEPS}
    generated = _post(gateway, body)
    assert generated.status_code == 200, generated.text
    assert np.array_equal(_pixels(generated.json()["data"][0]["b64_json"]), np.asarray(expected.image))


def test_an_edit_with_a_mask_is_the_clients_inpainting(
    gateway: str, sdk: openai.OpenAI, client: StableDiffusionClient
) -> None:
    """With a mask, its fully transparent pixels are redrawn: the client's inpainting (``mask=``, 255 repaints) for
    the same seed and strength, through edits and through generations' JSON."""
    start = start_picture(EDIT_WIDTH, EDIT_HEIGHT)
    openai_mask, mask_image = _edit_mask()
    answer = sdk.images.edit(
        image=("start.png", _png(start), "image/png"),
        mask=("mask.png", _png(openai_mask), "image/png"),
        prompt=PROMPT,
        extra_body=EDIT_STEPS,
    )
    expected = client.generate(PROMPT, image=start, mask=mask_image, **EDIT_STEPS)
    assert np.array_equal(_pixels(answer.data[0].b64_json), np.asarray(expected.image))
    body = {"prompt": PROMPT, "image": base64.b64encode(_png(start)).decode(), **EDIT_STEPS}
    generated = _post(gateway, body | {"mask": base64.b64encode(_png(openai_mask)).decode()})
    assert generated.status_code == 200, generated.text
    assert np.array_equal(_pixels(generated.json()["data"][0]["b64_json"]), np.asarray(expected.image))


def test_an_image_list_of_one_is_that_image_and_of_two_is_refused_by_name(
    sdk: openai.OpenAI, client: StableDiffusionClient
) -> None:
    """OpenAI's SDK sends ``image=[file]`` as an ``image[]`` list (newer OpenAI models take several): one file there
    is the edit of that file; two are refused naming ``image``, since the engine starts from one image."""
    start = start_picture(EDIT_WIDTH, EDIT_HEIGHT)
    file = ("start.png", _png(start), "image/png")
    answer = sdk.images.edit(image=[file], prompt=PROMPT, extra_body=EDIT_STEPS)
    expected = client.generate(PROMPT, image=start, **EDIT_STEPS)
    assert np.array_equal(_pixels(answer.data[0].b64_json), np.asarray(expected.image))
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.edit(image=[file, file], prompt=PROMPT, extra_body=EDIT_STEPS)
    error = caught.value.body
    assert (error["param"], error["code"]) == ("image", "invalid_value")
    assert error["message"].startswith("image: takes one PNG file (as image, or an image[] list of one), got 2")


def _edit(gateway: str, fields: dict, files: dict) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(f"{gateway}/v1/images/edits", data=fields, files=files, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("fields", "files", "param", "said"),
    [
        ({}, {"image": b"GIF89a not a png"}, "image", "image: must be a PNG file"),
        ({}, {"image": "truncated"}, "image", "image: must be a"),
        ({}, {}, "image", "image: takes one PNG file (as image, or an image[] list of one), got none"),
        ({}, {"image": "start", "mask": "small"}, "mask", f"mask: must have the image's size {EDIT_WIDTH}x"),
        ({}, {"image": "start", "mask": "opaque"}, "mask", "mask: must have an alpha channel"),
        ({"size": "64x64"}, {"image": "start"}, "size", f"size: must be the image's size {EDIT_WIDTH}x{EDIT_HEIGHT}"),
        ({"strength": "0"}, {"image": "start"}, "strength", "strength: Input should be greater than 0"),
        ({"quality": "high"}, {"image": "start"}, "quality", "quality: Extra inputs are not permitted"),
        # The engine's own refusal of the image, passed through naming the request's field.
        ({}, {"image": "odd"}, "image", "input_image: its width must be a positive multiple of"),
    ],
)
def test_bad_edits_are_400_naming_the_field(gateway: str, fields: dict, files: dict, param: str, said: str) -> None:
    start = start_picture(EDIT_WIDTH, EDIT_HEIGHT)
    made = {
        "start": _png(start),
        "truncated": _png(start)[:100],
        "small": _png(start.resize((32, 24)).convert("RGBA")),
        "opaque": _png(start),
        "odd": _png(start.resize((EDIT_WIDTH - 2, EDIT_HEIGHT))),
    }
    files = {name: (f"{name}.png", made.get(value, value), "image/png") for name, value in files.items()}
    answer = _edit(gateway, {"prompt": PROMPT, "num_inference_steps": str(STEPS), **fields}, files)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["message"].startswith(said), error["message"]


def test_unknown_model_and_route_are_404(gateway: str) -> None:
    answer = _post(gateway, {"prompt": PROMPT, "model": "dall-e-3"})
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "model_not_found"
    assert "stable_diffusion" in answer.json()["error"]["message"]
    route = httpx.get(f"{gateway}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert route.status_code == 404 and route.json()["error"]["code"] == "not_found"


def test_models_are_listed_with_aliases(gateway: str, tiny_repository: Path) -> None:
    answer = httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert answer.status_code == 200
    (model,) = answer.json()["data"]
    assert (model["id"], model["aliases"], model["max_images"]) == ("stable_diffusion", [ALIAS, "dall-e-2"], 8)
    # What the export wrote of the model, read back through Triton's config of its entry.
    exported = PipelineConfig.load(tiny_repository / PIPELINE_MODEL_NAME / "1").description
    assert (model["family"], model["schedulers"]) == (exported.family, list(exported.scheduler_names))
    assert model["default_size"] == f"{exported.default_width}x{exported.default_height}"
    assert (model["size_step"], model["default_num_inference_steps"], model["max_num_inference_steps"]) == (
        exported.size_multiple,
        exported.default_num_inference_steps,
        exported.max_inference_steps,
    )


@pytest.mark.parametrize("key", [None, "not-a-key"])
def test_a_missing_or_unknown_key_is_401(gateway: str, key: str | None) -> None:
    answer = _post(gateway, {"prompt": PROMPT}, key=key)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json()["error"]["code"] == "invalid_api_key"


def test_a_keys_rate_limit_is_429_with_retry_after(gateway: str) -> None:
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    statuses = [httpx.get(f"{gateway}/v1/models", headers=headers, timeout=10) for _ in range(3)]
    assert [answer.status_code for answer in statuses] == [200, 200, 429]
    assert int(statuses[2].headers["retry-after"]) >= 1
    assert statuses[2].json()["error"]["code"] == "rate_limit_exceeded"
    # Another key has its own bucket.
    assert httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).status_code == 200


def test_a_body_over_the_limit_is_413(gateway: str) -> None:
    declared = _post(gateway, {"prompt": "x" * MAX_BODY_BYTES})
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off as it arrives
        yield b'{"prompt": "'
        for _ in range(MAX_BODY_BYTES // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'

    streamed = httpx.post(
        f"{gateway}/v1/images/generations",
        content=chunks(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "request_too_large"


def test_cors_allows_the_configured_origin_only(gateway: str) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{gateway}/v1/images/generations", headers={"Origin": ORIGIN, **preflight}, timeout=10)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(
        f"{gateway}/v1/images/generations", headers={"Origin": "http://elsewhere.test", **preflight}, timeout=10
    )
    assert "access-control-allow-origin" not in other.headers


def test_health_readiness_and_metrics(gateway: str) -> None:
    assert httpx.get(f"{gateway}/healthz", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(f"{gateway}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "triton": True, "models": {"stable_diffusion": True}}
    route = "/v1/images/generations"
    before = (_counter(gateway, route, 200), _counter(gateway, route, 400))
    assert _post(gateway, {"prompt": PROMPT, "size": "64x64", "num_inference_steps": STEPS}).status_code == 200
    assert _post(gateway, {"prompt": PROMPT, "n": 0}).status_code == 400
    assert (_counter(gateway, route, 200), _counter(gateway, route, 400)) == (before[0] + 1, before[1] + 1)
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    assert re.search(
        r'^sdtriton_gateway_request_duration_seconds_count\{method="POST",route="/v1/images/generations"\} '
        r"[1-9]",
        text,
        re.MULTILINE,
    )


def _engine_cancels(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    pattern = r'^sdtriton_requests_ended_total\{[^}]*state="cancelled"[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.MULTILINE))


def test_a_client_that_leaves_cancels_its_generation_in_the_engine(gateway: str, triton_server) -> None:
    route = "/v1/images/generations"
    before = (_counter(gateway, route, 499), _engine_cancels(triton_server.address.metrics_url))
    with pytest.raises(httpx.ReadTimeout):
        _post(gateway, {"prompt": PROMPT, "size": "128x128", "num_inference_steps": 150}, timeout_s=1.0)
    deadline = time.monotonic() + 30

    def now() -> tuple[float, float]:
        return _counter(gateway, route, 499), _engine_cancels(triton_server.address.metrics_url)

    while now() != (before[0] + 1, before[1] + 1) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert now() == (before[0] + 1, before[1] + 1), "answered 499, and the engine ended the request as cancelled"


def test_the_backend_streams_progress_and_previews_and_cancels_on_its_event(grpc_url: str, triton_server) -> None:
    """``Backend.generate`` as the job manager calls it: progress with previews, then the images; an event set
    mid-run cancels the request in the engine."""
    metrics_url = triton_server.address.metrics_url
    cancels_before = _engine_cancels(metrics_url)

    async def run() -> tuple[list, object]:
        backend = Backend(grpc_url)
        try:
            seen = []
            request = GenerationRequest(
                prompt=PROMPT,
                n=2,
                seed=11,
                inputs={"num_inference_steps": STEPS, "scheduler": "ddim", "width": 64, "height": 64},
                preview_every=1,
            )
            result = await backend.generate(request, on_progress=seen.append)
            cancelled = asyncio.Event()

            async def cancel_at_first_step(progress) -> None:  # an async callback is awaited
                cancelled.set()

            long = GenerationRequest(prompt=PROMPT, inputs={"num_inference_steps": 150, "width": 64, "height": 64})
            with pytest.raises(RequestCancelledError):
                await backend.generate(long, on_progress=cancel_at_first_step, cancelled=cancelled)
            return seen, result
        finally:
            await backend.close()

    seen, result = asyncio.run(run())
    assert result.seeds == [11, 12]
    assert [progress.steps_done for progress in seen] == [[step, step] for step in range(1, STEPS + 1)]
    previews = [progress for progress in seen if progress.previews is not None]
    # A preview every step but the last, which the image follows.
    assert [progress.steps_done[0] for progress in previews] == list(range(1, STEPS))
    assert len(previews[0].previews) == 2
    deadline = time.monotonic() + 30
    while _engine_cancels(metrics_url) == cancels_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _engine_cancels(metrics_url) == cancels_before + 1


def test_a_generation_over_its_time_budget_is_504(grpc_url: str) -> None:
    """The gateway's ``timeout_s`` is the engine's budget: the engine ends the work and says so, answered 504."""

    async def run() -> Exception:
        backend = Backend(grpc_url, timeout_s=0.5)
        try:
            long = GenerationRequest(prompt=PROMPT, inputs={"num_inference_steps": 150, "width": 128, "height": 128})
            with pytest.raises(RequestTimeoutError) as caught:
                await backend.generate(long)
            return caught.value
        finally:
            await backend.close()

    error = asyncio.run(run())
    answer = errors.answer(error, retry_after_s=1)
    assert (answer.status, answer.body["error"]["code"]) == (504, "deadline_exceeded")
    assert "time budget of 500 ms" in answer.body["error"]["message"]
