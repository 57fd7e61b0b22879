"""The gateway's pure parts: the error table, API keys and rate limits, settings, request bodies, the OpenAPI
document; and the app in process (FastAPI's TestClient) with a real backend whose Triton is not there."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError

from sdtriton import interface
from sdtriton.client import (
    InferenceError,
    InvalidRequestError,
    RequestCancelledError,
    RequestTimeoutError,
    RetriesExhaustedError,
    ServerBusyError,
    ServerUnavailableError,
)
from sdtriton.gateway import backend, errors, images, job_routes
from sdtriton.gateway.access import ApiKey, RateLimiter, find_key, parse_api_keys
from sdtriton.gateway.app import create_app
from sdtriton.gateway.backend import GenerationRequest
from sdtriton.gateway.errors import GatewayError, SettingsError
from sdtriton.gateway.jobs import JobManager
from sdtriton.gateway.schema import MAX_JOB_IMAGE_CHARS, ImageGenerationRequest, JobCreateRequest
from sdtriton.gateway.settings import GatewaySettings, JobSettings, Limits, check_exposure, load_settings
from sdtriton.gateway.sqlite_store import SqliteJobStore
from sdtriton.gateway.webhooks import webhook_url_problem
from sdtriton.server import free_port

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


@pytest.mark.parametrize(
    ("error", "status", "code", "param"),
    [
        (InvalidRequestError("width: must be a positive multiple of 8, got 9"), 400, "invalid_value", "size"),
        (InvalidRequestError("width x height: must be at most 1048576 pixels, got ..."), 400, "invalid_value", "size"),
        (InvalidRequestError("num_inference_steps: must be an integer in 1..150, got 0"), 400, "invalid_value",
         "num_inference_steps"),
        (InvalidRequestError("the engine said something else"), 400, "invalid_value", None),
        (RequestCancelledError("request cancelled"), 499, "request_cancelled", None),
        (RequestTimeoutError("timeout: the request's time budget of 500 ms ran out"), 504, "deadline_exceeded", None),
        (ServerBusyError("server busy: 8 requests running or queued"), 503, "server_busy", None),
        (ServerBusyError("server draining: it is shutting down"), 503, "server_draining", None),
        (ServerUnavailableError("cannot reach the server"), 503, "triton_unavailable", None),
        (InferenceError("pipeline: internal error (see the server log)"), 500, "inference_failed", None),
        (RuntimeError("a bug"), 500, "inference_failed", None),
    ],
)  # fmt: skip
def test_each_error_kind_has_its_status_and_openai_body(error, status, code, param) -> None:
    answer = errors.answer(error, retry_after_s=3)
    assert answer.status == status
    assert set(answer.body["error"]) == {"message", "type", "param", "code"}
    assert (answer.body["error"]["code"], answer.body["error"]["param"]) == (code, param)
    assert ("Retry-After" in answer.headers) == (status == 503)
    if status == 503:
        assert answer.headers["Retry-After"] == "3"
    if not isinstance(error, RuntimeError):
        assert answer.body["error"]["message"] == str(error)  # the engine's words, unchanged
    else:
        assert "a bug" not in answer.body["error"]["message"]  # never an internal detail
    assert errors.describe(error) == answer.body["error"]  # a failed job's error: the same inner body


def test_retries_exhausted_is_unavailable_and_a_gateway_error_keeps_its_retry_after() -> None:
    last = ServerBusyError("server busy: full")
    exhausted = RetriesExhaustedError("no time left", attempts=3, elapsed_s=1.0, last_error=last)
    assert errors.answer(exhausted, retry_after_s=1).status == 503
    limited = GatewayError(errors.RATE_LIMITED, "slow down", retry_after_s=7)
    answer = errors.answer(limited, retry_after_s=1)
    assert (answer.status, answer.headers) == (429, {"Retry-After": "7"})
    assert errors.answer(GatewayError(errors.INVALID_API_KEY, "no key"), retry_after_s=1).headers == {
        "WWW-Authenticate": "Bearer"
    }


def test_api_keys_file_lines_and_their_limits() -> None:
    keys = parse_api_keys("# comment\n\nalpha\nbeta rate_limit_per_s=0.5 rate_limit_burst=2  # slow\n", source="f")
    assert keys == [ApiKey("alpha"), ApiKey("beta", 0.5, 2)]
    assert find_key(keys, "beta") is keys[1]
    assert find_key(keys, "gamma") is None
    assert "beta" not in repr(keys[1]) and keys[1].key_id.startswith("key-")


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("alpha burst=2", "line 1: expected KEY"),
        ("alpha rate_limit_per_s=fast", "line 1: could not convert"),
        ("alpha rate_limit_per_s=0", "rate_limit_per_s must be a positive number"),
        ("alpha rate_limit_burst=0", "rate_limit_burst must be at least 1"),
    ],
)
def test_malformed_api_key_lines_are_refused_without_showing_the_key(line: str, said: str) -> None:
    with pytest.raises(SettingsError, match=said) as caught:
        parse_api_keys(line, source="keys")
    assert "alpha" not in str(caught.value)


def test_token_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    take = lambda caller: limiter.take(caller, rate_per_s=2.0, burst=3)  # noqa: E731
    assert [take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take("a") == pytest.approx(0.5)  # empty: one token takes 1/rate
    assert take("b") == 0.0  # each caller has its own bucket
    now[0] += 0.5
    assert take("a") == 0.0
    now[0] += 10  # never more than the burst
    assert [take("a") for _ in range(4)][-1] > 0


def test_settings_from_a_config_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[[models]]\nname = "sdxl_stable_diffusion"\naliases = ["sdxl"]\n[[models]]\nname = "stable_diffusion"\n'
        "[limits]\nmax_body_bytes = 100\nrate_limit_per_s = 0.5\ntimeout_s = 30\n"
        '[cors]\nallow_origins = ["http://a.test"]\n'
    )
    settings = load_settings(
        triton_url="grpc://127.0.0.1:8001",
        data_dir=tmp_path,
        config_file=config,
        environment={"SDTRITON_API_KEYS": "k1,k2"},
    )
    assert [model.name for model in settings.models] == ["sdxl_stable_diffusion", "stable_diffusion"]
    assert settings.models[0].aliases == ("sdxl",)
    assert settings.limits == Limits(max_body_bytes=100, rate_limit_per_s=0.5, timeout_s=30)
    assert [key.key for key in settings.api_keys] == ["k1", "k2"]
    assert settings.cors_origins == ("http://a.test",)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[limit]\n", "unknown table"),
        ("[limits]\nmax_body_byte = 1\n", "unknown key"),
        ("[limits]\nrate_limit_burst = 1.5\n", "must be an integer"),
        ("[limits]\ntimeout_s = -1\n", "timeout_s must be a positive number"),
        ("[[models]]\naliases = []\n", "needs a name"),
        ('[[models]]\nname = "a"\naliases = ["b"]\n[[models]]\nname = "b"\n', "repeated: b"),
        ('[cors]\nallow_origins = "*"\n', "cors.allow_origins must be an array"),
        ("models = [", "not valid TOML"),
    ],
)
def test_malformed_config_files_are_refused_naming_the_key(tmp_path: Path, text: str, said: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=said):
        load_settings(triton_url="grpc://127.0.0.1:8001", data_dir=tmp_path, config_file=config, environment={})


def test_the_triton_url_must_be_grpc(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="streams over gRPC"):
        load_settings(triton_url="http://127.0.0.1:8000", data_dir=tmp_path, environment={})


def test_without_keys_only_a_loopback_host_is_served() -> None:
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, [])
    for host in ("0.0.0.0", "10.0.0.1", "::", "gateway.example.com"):
        with pytest.raises(SettingsError, match="without API keys"):
            check_exposure(host, [])
        check_exposure(host, [ApiKey("k")])


def test_the_command_refuses_to_listen_openly_without_keys(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sdtriton.cli", "gateway", "--triton", "grpc://127.0.0.1:1", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in done.stderr


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("size", "512", "must be WIDTHxHEIGHT"),
        ("size", "0x64", "must be WIDTHxHEIGHT"),
        ("size", "123456x64", "must be WIDTHxHEIGHT"),
        ("n", 0, "greater than or equal to 1"),
        ("seed", interface.MAX_SEED + 1, "less than or equal to"),
        ("seed", -1, "greater than or equal to 0"),
        ("output_format", "gif", "'png', 'jpeg' or 'webp'"),
        ("refiner_fraction", 1.0, "less than 1"),
    ],
)
def test_request_body_checks_name_the_field(field: str, value: object, said: str) -> None:
    with pytest.raises(ValidationError, match=said) as caught:
        ImageGenerationRequest.model_validate({"prompt": "p", field: value})
    assert caught.value.errors()[0]["loc"] == (field,)


def test_a_body_becomes_the_backends_request() -> None:
    body = ImageGenerationRequest(
        prompt="p", n=3, size="64x48", seed=interface.MAX_SEED, scheduler="ddim", true_cfg_scale=2.0,
        skip_layer_guidance_scale=2.8, skip_layer_guidance_start=0.1, skip_layer_guidance_stop=0.3,
    )  # fmt: skip
    request = body.generation(model="stable_diffusion", preview_every=2)
    assert request == GenerationRequest(
        prompt="p", n=3, model="stable_diffusion", seed=interface.MAX_SEED, preview_every=2, inputs={
            "width": 64, "height": 48, "scheduler": "ddim", "true_cfg_scale": 2.0, "skip_layer_guidance_scale": 2.8,
            "skip_layer_guidance_start": 0.1, "skip_layer_guidance_stop": 0.3,
        },
    )  # fmt: skip
    assert request.item_seeds() == [interface.MAX_SEED, 0, 1]  # image i: seed + i, wrapped
    assert ImageGenerationRequest(prompt="p", size="auto").width_height() == (None, None)
    drawn = GenerationRequest(prompt="p", n=2).with_fixed_seed()
    assert drawn.seed is not None and drawn.with_fixed_seed() == drawn
    with pytest.raises(ValueError, match="not engine inputs: steps"):
        GenerationRequest(prompt="p", inputs={"steps": 4})


def test_every_engine_input_reaches_the_backend_from_a_body() -> None:
    """Each scalar input of the interface is a body field of its name that lands in the backend's request as it
    was sent: a new engine input without its field fails the gateway's import, one with it is carried."""
    values = {"bool": True, "str": "ddim", "int": 3, "float": 0.25}
    sent = {}
    for name in backend.ENGINE_INPUTS:
        if name in errors.REQUEST_FIELDS:
            continue
        annotation = str(ImageGenerationRequest.model_fields[name].annotation)
        sent[name] = next(value for kind, value in values.items() if kind in annotation)
    request = ImageGenerationRequest(prompt="p", seed=5, **sent).generation(model="m")
    assert request.inputs == sent and request.seed == 5


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_an_edit_mask_is_repainted_where_fully_transparent() -> None:
    """OpenAI's convention (alpha 0: edit) becomes the engine's mask_image (255: repaint, 0: keep); any alpha above 0
    keeps, whatever the colour."""
    alpha = np.array([[0, 1, 128], [255, 0, 0]], dtype=np.uint8)
    rgba = np.dstack([np.full((2, 3, 3), 200, dtype=np.uint8), alpha])
    expected = np.where(alpha == 0, 255, 0)
    for mask in (Image.fromarray(rgba, "RGBA"), Image.fromarray(rgba[..., [0, 3]], "LA")):
        converted = images.edit_mask(mask, size=(3, 2))
        assert converted.mode == "L" and np.array_equal(np.asarray(converted), expected)
    palette = Image.fromarray(np.array([[0, 1, 1], [1, 0, 1]], dtype=np.uint8), "P")
    palette.info["transparency"] = 0  # palette entry 0 is transparent
    decoded = images.decode_base64_png(_png(palette), field="mask")
    assert np.array_equal(np.asarray(images.edit_mask(decoded, size=(3, 2))), [[255, 0, 0], [0, 255, 0]])
    with pytest.raises(images.ImageInputError, match=r"^mask: must have the image's size 4x2, got 3x2$"):
        images.edit_mask(Image.fromarray(rgba, "RGBA"), size=(4, 2))
    with pytest.raises(images.ImageInputError, match=r"^mask: must have an alpha channel"):
        images.edit_mask(Image.new("RGB", (3, 2)), size=(3, 2))


@pytest.mark.parametrize(
    ("change", "param", "said"),
    [
        ({"image": "not base64!"}, "image", "image: must be a base64 PNG file"),
        ({"image": base64.b64encode(b"GIF89a....").decode()}, "image", "image: must be a PNG file"),
        ({"mask": "PLACEHOLDER"}, "mask", "mask: needs an image"),
        ({"image": "PLACEHOLDER", "mask": "PLACEHOLDER"}, "mask", "mask: must have an alpha channel"),
        ({"image": "PLACEHOLDER", "size": "64x64"}, "size", "size: must be the image's size 32x16 or auto, got 64x64"),
    ],
)
def test_a_bodys_images_are_checked_naming_the_field(change: dict, param: str, said: str) -> None:
    png = _png(Image.new("RGB", (32, 16)))
    body = ImageGenerationRequest(prompt="p", **{name: png if value == "PLACEHOLDER" else value
                                                 for name, value in change.items()})  # fmt: skip
    with pytest.raises(images.ImageInputError) as caught:
        body.generation(model="m")
    answer = errors.answer(caught.value, retry_after_s=1)
    assert (answer.status, answer.body["error"]["param"]) == (400, param)
    assert str(caught.value).startswith(said)


def test_a_bodys_image_is_sent_as_rgb_pixels_and_its_mask_converted() -> None:
    rgba = Image.new("RGBA", (32, 16), (10, 20, 30, 0))
    mask = Image.new("LA", (32, 16), (0, 255))
    mask.paste((0, 0), (0, 0, 8, 16))  # the left quarter transparent: redrawn
    body = ImageGenerationRequest(prompt="p", image=_png(rgba), mask="data:image/png;base64," + _png(mask),
                                  size="32x16", strength=0.5)  # fmt: skip
    inputs = body.generation(model="m").inputs
    assert inputs["strength"] == 0.5 and (inputs["width"], inputs["height"]) == (32, 16)
    image = inputs[interface.INPUT_IMAGE.name]
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (10, 20, 30)
    repaint = np.asarray(inputs[interface.MASK_IMAGE.name])
    assert (repaint[:, :8] == 255).all() and (repaint[:, 8:] == 0).all()
    with pytest.raises(ValidationError, match="at most 1398104 characters") as caught:
        JobCreateRequest(prompt="p", image="A" * (MAX_JOB_IMAGE_CHARS + 1))
    assert caught.value.errors()[0]["loc"] == ("image",)


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://203.0.113.9/hook", "must be an http:// or https:// URL, got the scheme 'ftp'"),
        ("http:///hook", "must name a host"),
        ("http://203.0.113.9:99999/", "not a valid URL"),
        ("http://localhost:8000/hook", "not a public address"),
        ("http://127.0.0.1/hook", "not a public address"),
        ("http://10.1.2.3/hook", "not a public address"),
        ("http://192.168.0.1/hook", "not a public address"),
        ("http://169.254.169.254/latest/meta-data", "not a public address"),  # a cloud's metadata service
        ("http://[::1]/hook", "not a public address"),
        ("http://[::ffff:127.0.0.1]/hook", "not a public address"),
        ("http://0.0.0.0/hook", "not a public address"),
        ("http://224.0.0.1/hook", "not a public address"),
        ("https://8.8.8.8/hook", None),
    ],
)
def test_webhook_urls_must_be_http_to_public_addresses(url: str, said: str | None) -> None:
    problem = webhook_url_problem(url)
    assert problem is None if said is None else said in problem, problem
    if said == "not a public address":
        assert "--webhook-allow-private" in problem
        assert webhook_url_problem(url, allow_private=True) is None


def test_job_settings_are_checked_and_default_to_a_sqlite_file_in_the_data_folder(tmp_path: Path) -> None:
    assert JobSettings().store_url_in(tmp_path) == f"sqlite://{tmp_path / 'jobs.sqlite3'}"
    assert JobSettings(store_url="redis://127.0.0.1:6379/0").store_url_in(tmp_path) == "redis://127.0.0.1:6379/0"
    assert "secret" not in repr(JobSettings(webhook_secret="secret"))
    for options, said in (
        ({"workers": -1}, "--job-workers"),
        ({"result_ttl_s": 0}, "--job-result-ttl-s"),
        ({"lease_s": 0.5}, "--job-lease-s must be a number of seconds >= 1, got 0.5"),
        ({"lease_s": float("inf")}, "--job-lease-s"),
        ({"webhook_secret": ""}, "--webhook-secret"),
    ):
        with pytest.raises(SettingsError, match=said):
            JobSettings(**options)


def test_jobs_in_process_without_triton(tmp_path: Path) -> None:
    """The job routes' answers that need no engine: a webhook without a secret, an unknown job, a submit while
    Triton is away (503: the model is resolved at submit), the jobs gauge."""
    with TestClient(create_app(_settings(tmp_path))) as http:
        hooked = http.post("/v1/jobs", json={"prompt": "p", "webhook": "https://8.8.8.8/hook"})
        assert hooked.status_code == 400 and hooked.json()["error"]["param"] == "webhook"
        assert "--webhook-secret" in hooked.json()["error"]["message"]
        unknown = http.get("/v1/jobs/job_" + "0" * 32)
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
        assert http.get("/v1/jobs/job_x/images/-1").json()["error"]["param"] == "index"
        assert http.post("/v1/jobs", json={"prompt": "p"}).status_code == 503
        assert http.get("/v1/jobs").json() == {"object": "list", "data": []}
        assert http.get("/v1/jobs?limit=0").json()["error"]["param"] == "limit"
        assert 'sdtriton_gateway_jobs{state="queued"} 0.0' in http.get("/metrics").text
    assert (tmp_path / "jobs.sqlite3").is_file()


def _settings(tmp_path: Path, **changes) -> GatewaySettings:
    return GatewaySettings(triton_url=f"grpc://127.0.0.1:{free_port()}", data_dir=tmp_path, **changes)


def test_openapi_document_is_the_committed_one(tmp_path: Path) -> None:
    document = create_app(_settings(tmp_path)).openapi()
    committed = json.loads(OPENAPI.read_text())
    assert document == committed, (
        "docs/openapi.json differs from the app's document: regenerate it with "
        "`sdtriton gateway --write-openapi docs/openapi.json`"
    )


def test_without_triton_the_app_is_alive_not_ready_and_answers_503(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path))) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
        assert (ready.status_code, ready.json()["ready"], ready.json()["triton"]) == (503, False, False)
        answer = http.post("/v1/images/generations", json={"prompt": "p"})
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "triton_unavailable"
        assert answer.headers["retry-after"] == "1"


def test_malformed_bodies_and_routes_answer_in_openai_shape(tmp_path: Path) -> None:
    with TestClient(create_app(_settings(tmp_path, limits=Limits(max_body_bytes=50)))) as http:
        missing = http.post("/v1/images/generations", json={"n": 2})
        assert missing.status_code == 400
        assert missing.json()["error"] == {
            "message": "prompt: Field required",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "invalid_value",
        }
        not_json = http.post("/v1/images/generations", content=b"{", headers={"Content-Type": "application/json"})
        assert not_json.status_code == 400 and not_json.json()["error"]["param"] is None
        too_large = http.post("/v1/images/generations", json={"prompt": "x" * 50})
        assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "request_too_large"
        wrong_method = http.put("/v1/images/generations")
        assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
        assert http.get("/v1/images/..%2Fsecret").status_code == 404
        assert http.get("/v1/images/" + "A" * 22).json()["error"]["param"] == "image_id"
        assert http.get("/v1/nothing").status_code == 404
        metrics = http.get("/metrics").text
        for method, route, status in (
            ("POST", "/v1/images/generations", 413),
            ("GET", "/v1/images/{image_id}", 404),
            ("GET", "unmatched", 404),  # /v1/nothing, and the decoded path with a slash
        ):
            labels = f'method="{method}",route="{route}",status="{status}"'
            assert f"sdtriton_gateway_requests_total{{{labels}}}" in metrics


def test_an_idle_event_stream_sends_heartbeats_until_the_job_ends(tmp_path: Path, monkeypatch) -> None:
    """The event stream of a queued job that nothing runs (a gateway with no workers): its status, heartbeat
    comments while nothing happens, then ``done`` once it is cancelled, and the stream ends."""
    monkeypatch.setattr(job_routes, "HEARTBEAT_S", 0.05)

    async def never(request, on_progress, cancelled):
        raise AssertionError("no worker runs it")

    async def scenario() -> tuple[list[str], list[str]]:
        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
        try:
            async with JobManager(store, never, workers=0, poll_s=0.02) as manager:
                job = (await manager.submit({"prompt": "p"})).job
                stream = job_routes._event_stream(manager, job.id)
                start = [await anext(stream) for _ in range(3)]
                await manager.cancel(job.id)
                return start, [chunk async for chunk in stream]
        finally:
            store.close()

    start, rest = asyncio.run(scenario())
    assert start[0].startswith("event: status\ndata: ") and '"queue_position":0' in start[0]
    assert start[1:] == [": heartbeat\n\n"] * 2
    assert rest[-1].startswith("event: done\ndata: ") and '"status":"cancelled"' in rest[-1]
    assert set(rest[:-1]) <= {": heartbeat\n\n"}
