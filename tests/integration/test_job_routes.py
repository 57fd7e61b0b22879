"""``/v1/jobs`` as users call it: real ``sdtriton gateway`` processes in front of the real tritonserver of the tiny
model, called over plain HTTP. A job's image equals the project's client's for the same seed (which
test_parity.py proves equal to diffusers'); events stream progress with previews; a cancel stops the engine; a
webhook reaches a local receiver signed; jobs outlive a gateway restart (SQLite) and are shared by two gateways
over one Redis."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx2 as httpx
import numpy as np
import pytest
from PIL import Image

from sdtriton.client import StableDiffusionClient
from sdtriton.gateway.process import GatewayProcess
from sdtriton.gateway.webhooks import SIGNATURE_HEADER, verify_signature
from tests.integration.oracle import start_picture

pytestmark = pytest.mark.integration

PROMPT = "a green triangle on a white background"
KEY = "test-key-jobs"
OTHER_KEY = "test-key-jobs-other"
SECRET = "test-webhook-secret"
SIZE = 64
# Few steps: the tiny model's images differ by seed at any step count, and each costs little.
STEPS = 4
# Past the runner's preview period (5): the stream carries a preview; long enough to be followed from its start.
# Enough that the events stream opens mid-run even on a fast host (12 steps had nearly ended by then: CI23).
EVENT_STEPS = 40
# Long enough to be cancelled or stopped mid-run.
LONG_STEPS = 150
WAIT_S = 60.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("job_routes")
    (folder / "api_keys").write_text(f"{KEY}\n{OTHER_KEY}\n")
    return folder


@pytest.fixture(scope="module")
def gateway(grpc_url: str, folder: Path) -> Iterator[GatewayProcess]:
    """One gateway process over a SQLite job store, webhooks signed and allowed to a local receiver."""
    options = ["--data-dir", str(folder / "data"), "--api-keys-file", str(folder / "api_keys")]
    options += ["--jobs-store", f"sqlite://{folder / 'jobs.sqlite3'}", "--job-workers", "2"]
    options += ["--webhook-secret", SECRET, "--webhook-allow-private"]
    with GatewayProcess(grpc_url, options, folder / "gateway.log").running() as process:
        yield process


@pytest.fixture(scope="module")
def client(grpc_url: str) -> Iterator[StableDiffusionClient]:
    with StableDiffusionClient(grpc_url) as client:
        yield client


def _headers(key: str = KEY, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def _submit(url: str, body: dict, *, key: str = KEY, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=body, headers=_headers(key, **headers), timeout=30)


def _body(**changes: object) -> dict:
    return {"prompt": PROMPT, "size": f"{SIZE}x{SIZE}", "num_inference_steps": STEPS, "scheduler": "ddim"} | changes


def _get(url: str, job_id: str, *, key: str = KEY) -> httpx.Response:
    return httpx.get(f"{url}/v1/jobs/{job_id}", headers=_headers(key), timeout=30)


def _until(url: str, job_id: str, done, *, key: str = KEY) -> dict:
    """The job once ``done(job)`` holds."""
    deadline = time.monotonic() + WAIT_S
    while True:
        job = _get(url, job_id, key=key).json()
        if done(job):
            return job
        assert time.monotonic() < deadline, f"timed out; the job is {job}"
        time.sleep(0.05)


def _finished(url: str, job_id: str, *, key: str = KEY) -> dict:
    return _until(url, job_id, lambda job: job["status"] in ("succeeded", "failed", "cancelled"), key=key)


def _pixels(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def _events(url: str, job_id: str) -> list[tuple[str, dict]]:
    """Every server-sent event of the job until the stream ends: (event name, data)."""
    events, name = [], None
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=_headers(), timeout=WAIT_S) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def _metric(metrics_url: str, pattern: str) -> float:
    text = httpx.get(metrics_url, timeout=10).text
    return sum(float(value) for value in re.findall(rf"^{pattern} (\S+)$", text, re.MULTILINE))


def _engine_ended(triton_server, state: str) -> float:
    return _metric(
        triton_server.address.metrics_url, rf'sdtriton_requests_ended_total\{{[^}}]*state="{state}"[^}}]*\}}'
    )


def test_a_job_is_queued_then_succeeds_with_the_clients_image(gateway, client: StableDiffusionClient) -> None:
    answer = _submit(gateway.url, _body(seed=31, n=2))
    assert answer.status_code == 202, answer.text
    queued = answer.json()
    assert (queued["object"], queued["status"], queued["model"]) == ("job", "queued", "stable_diffusion")
    assert isinstance(queued["queue_position"], int) and queued["data"] == [] and queued["error"] is None
    assert answer.headers["location"] == f"/v1/jobs/{queued['id']}"
    job = _finished(gateway.url, queued["id"])
    assert job["status"] == "succeeded", job
    assert (job["step"], job["total_steps"], job["queue_position"]) == (STEPS, STEPS, None)
    assert job["created"] <= job["started"] <= job["finished"]
    assert [image["seed"] for image in job["data"]] == [31, 32]
    expected = client.generate(PROMPT, seed=32, num_inference_steps=STEPS, scheduler="ddim", width=SIZE, height=SIZE)
    download = httpx.get(gateway.url + job["data"][1]["url"], timeout=10)  # no key: the job id is the capability
    assert download.headers["content-type"] == "image/png"
    assert np.array_equal(_pixels(download.content), np.asarray(expected.image))
    listed = httpx.get(f"{gateway.url}/v1/jobs?limit=1", headers=_headers(), timeout=10).json()
    assert listed["object"] == "list" and [listed_job["id"] for listed_job in listed["data"]] == [job["id"]]
    # Another key's jobs are not this key's: unknown to it, and not listed.
    assert _get(gateway.url, job["id"], key=OTHER_KEY).status_code == 404
    others = httpx.get(f"{gateway.url}/v1/jobs", headers=_headers(OTHER_KEY), timeout=10).json()
    assert job["id"] not in [other["id"] for other in others["data"]]


def test_an_idempotent_resubmit_answers_the_same_job_run_once(gateway, triton_server) -> None:
    finished_before = _engine_ended(triton_server, "finished")
    body, key = _body(seed=41), {"Idempotency-Key": "order-41"}
    first, again = _submit(gateway.url, body, **key), _submit(gateway.url, body, **key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    job = _finished(gateway.url, first.json()["id"])
    assert job["status"] == "succeeded" and job["attempts"] == 1
    assert _submit(gateway.url, body, **key).json()["id"] == job["id"]  # finished: still the same job
    other = _submit(gateway.url, body, key=OTHER_KEY, **key)  # another key's idempotency keys are its own
    assert other.status_code == 202 and other.json()["id"] != job["id"]
    _finished(gateway.url, other.json()["id"], key=OTHER_KEY)
    assert _engine_ended(triton_server, "finished") == finished_before + 2  # one run each


def test_events_stream_progress_with_a_preview_then_done(gateway) -> None:
    job_id = _submit(gateway.url, _body(seed=51, num_inference_steps=EVENT_STEPS)).json()["id"]
    events = _events(gateway.url, job_id)
    names = [name for name, _ in events]
    assert names[0] == "status" and names[-1] == "done" and "done" not in names[:-1], names
    progress = [data for name, data in events if name == "progress"]
    steps = [data["step"] for data in progress]
    assert steps == sorted(set(steps)) and steps[-1] == EVENT_STEPS and progress[0]["total_steps"] == EVENT_STEPS
    previews = [data["preview"] for data in progress if "preview" in data]
    assert previews, "a preview every 5 steps"
    header, encoded = previews[0].split(",", 1)
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "PNG"
    final = events[-1][1]
    assert final["status"] == "succeeded" and final["id"] == job_id and len(final["data"]) == 1
    # A finished job's stream is its final event alone.
    assert [name for name, _ in _events(gateway.url, job_id)] == ["done"]


def test_delete_cancels_a_running_job_in_the_engine(gateway, triton_server) -> None:
    cancelled_before = _engine_ended(triton_server, "cancelled")
    job_id = _submit(gateway.url, _body(seed=61, num_inference_steps=LONG_STEPS)).json()["id"]
    _until(gateway.url, job_id, lambda job: job["step"] >= 2)
    answer = httpx.delete(f"{gateway.url}/v1/jobs/{job_id}", headers=_headers(), timeout=30)
    assert answer.status_code == 200
    job = answer.json()
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled" and job["data"] == []
    deadline = time.monotonic() + WAIT_S
    while _engine_ended(triton_server, "cancelled") == cancelled_before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _engine_ended(triton_server, "cancelled") == cancelled_before + 1, "the engine ended it as cancelled"
    time.sleep(0.5)
    assert _get(gateway.url, job_id).json()["step"] == job["step"] < LONG_STEPS  # the steps stopped
    assert httpx.get(f"{gateway.url}/v1/jobs/{job_id}/images/0", timeout=10).status_code == 404


def test_unknown_jobs_are_404(gateway) -> None:
    missing = "job_" + "0" * 32
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/events")):
        answer = httpx.request(method, f"{gateway.url}/v1/jobs/{missing}{path}", headers=_headers(), timeout=10)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["error"]["code"] == "job_not_found" and answer.json()["error"]["param"] == "job_id"
    image = httpx.get(f"{gateway.url}/v1/jobs/{missing}/images/0", timeout=10)
    assert image.status_code == 404 and image.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{gateway.url}/v1/jobs/{missing}", timeout=10).status_code == 401  # no key


@pytest.mark.parametrize(
    ("change", "param", "said"),
    [
        ({"size": "64"}, "size", "WIDTHxHEIGHT"),
        ({"n": 9}, "n", "n: must be in 1..8"),  # the model's max_batch_size, checked at submit
        ({"num_steps": 4}, "num_steps", "Extra inputs are not permitted"),
        ({"model": "dall-e-3"}, "model", "is not served here"),
        ({"webhook": "ftp://127.0.0.1/hook"}, "webhook", "must be an http:// or https:// URL"),
        ({"webhook": "http:///hook"}, "webhook", "must name a host"),
        # Images are decoded and checked at submit.
        ({"image": "bm90IGEgcG5n"}, "image", "image: must be a PNG file"),
        ({"image": "START", "size": "32x32"}, "size", f"size: must be the image's size {SIZE}x{SIZE} or auto"),
        ({"mask": "START"}, "mask", "mask: needs an image"),
    ],
)
def test_a_bad_body_is_refused_at_submit_naming_the_field(gateway, change: dict, param: str, said: str) -> None:
    change = {name: _base64_png(_start()) if value == "START" else value for name, value in change.items()}
    answer = _submit(gateway.url, _body(**change))
    assert answer.status_code in (400, 404), answer.text
    error = answer.json()["error"]
    assert error["param"] == param and said in error["message"], error


def _start() -> Image.Image:
    return start_picture(SIZE, SIZE)


def _base64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_a_job_with_an_image_is_the_clients_img2img(gateway, client: StableDiffusionClient) -> None:
    """A job takes generations' image fields (a base64 PNG and the strength): its image is the client's
    image-to-image for the same seed, and its stored request does not grow past the job limit."""
    job_id = _submit(gateway.url, _body(seed=51, image=_base64_png(_start()), strength=0.5)).json()["id"]
    job = _finished(gateway.url, job_id)
    assert job["status"] == "succeeded", job
    assert job["total_steps"] == STEPS // 2  # strength 0.5 runs half the steps
    expected = client.generate(PROMPT, image=_start(), strength=0.5, seed=51, num_inference_steps=STEPS,
                               scheduler="ddim")  # fmt: skip
    download = httpx.get(gateway.url + job["data"][0]["url"], timeout=10)
    assert np.array_equal(_pixels(download.content), np.asarray(expected.image))


def test_a_job_with_a_mask_is_the_clients_inpainting(gateway, client: StableDiffusionClient) -> None:
    """A job's mask (base64 PNG, OpenAI's convention: alpha 0 is redrawn) is the client's inpainting ``mask=``."""
    alpha = np.full((SIZE, SIZE), 255, dtype=np.uint8)
    alpha[SIZE // 4 : SIZE // 2, :] = 0
    openai_mask = Image.fromarray(np.dstack([np.zeros((SIZE, SIZE, 3), np.uint8), alpha]), "RGBA")
    body = _body(seed=52, image=_base64_png(_start()), mask=_base64_png(openai_mask), strength=0.75)
    job = _finished(gateway.url, _submit(gateway.url, body).json()["id"])
    assert job["status"] == "succeeded", job
    mask_image = Image.fromarray(np.where(alpha == 0, 255, 0).astype(np.uint8), "L")
    expected = client.generate(PROMPT, image=_start(), mask=mask_image, strength=0.75, seed=52,
                               num_inference_steps=STEPS, scheduler="ddim")  # fmt: skip
    download = httpx.get(gateway.url + job["data"][0]["url"], timeout=10)
    assert np.array_equal(_pixels(download.content), np.asarray(expected.image))


def test_an_engine_refusal_fails_the_job_with_the_synchronous_routes_error(gateway) -> None:
    """The engine's own range checks (here the size step) come after submit: the job fails with the inner error the
    generations route would have answered, naming the field."""
    body = _body(size="65x64")
    synchronous = httpx.post(f"{gateway.url}/v1/images/generations", json=body, headers=_headers(), timeout=30)
    assert synchronous.status_code == 400
    job = _finished(gateway.url, _submit(gateway.url, body).json()["id"])
    assert job["status"] == "failed" and job["data"] == []
    assert job["error"] == synchronous.json()["error"] and job["error"]["param"] == "size"


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_finished_job_is_posted_to_its_webhook_signed(gateway) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    delivered_before = _metric(
        f"{gateway.url}/metrics", r'sdtriton_gateway_webhook_deliveries_total\{outcome="delivered"\}'
    )
    try:
        hook = f"http://127.0.0.1:{server.server_address[1]}/hook"
        job_id = _submit(gateway.url, _body(seed=71, webhook=hook)).json()["id"]
        job = _until(gateway.url, job_id, lambda job: job["webhook_delivered"])
    finally:
        server.shutdown()
        server.server_close()
    ((headers, body),) = _Receiver.received
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
    assert not verify_signature("another secret", headers[SIGNATURE_HEADER], body)
    posted = json.loads(body)
    assert (posted["id"], posted["status"], posted["webhook"]) == (job_id, "succeeded", hook)
    assert posted["data"] == job["data"] and job["webhook_deliveries"] == 1
    delivered = _metric(f"{gateway.url}/metrics", r'sdtriton_gateway_webhook_deliveries_total\{outcome="delivered"\}')
    assert delivered == delivered_before + 1
    assert re.search(r'^sdtriton_gateway_jobs\{state="queued"\} 0', httpx.get(f"{gateway.url}/metrics").text, re.M)


def test_jobs_survive_a_gateway_restart_over_sqlite(gateway, client: StableDiffusionClient) -> None:
    """Two long jobs keep both workers busy and a short one waits in the queue; stopped, the gateway hands the
    running ones back to its SQLite queue. The next gateway on the same file runs them again from their first step
    (then they are cancelled), and the queued one after them: the client's image for the seed fixed at submit."""
    longs = [_submit(gateway.url, _body(seed=seed, num_inference_steps=LONG_STEPS)).json()["id"] for seed in (1, 2)]
    for job_id in longs:
        _until(gateway.url, job_id, lambda job: job["step"] >= 1)
    short = _submit(gateway.url, _body(seed=81)).json()
    assert short["status"] == "queued"
    gateway.stop()
    log = gateway.log_path.read_text()
    assert all(f"job {job_id} handed back to the queue" in log for job_id in longs)
    gateway.start().wait_ready()
    for job_id in longs:
        again = _until(gateway.url, job_id, lambda job: job["status"] == "running" and job["step"] >= 1)
        assert again["attempts"] == 1  # a hand-back does not count as an attempt
        assert httpx.delete(f"{gateway.url}/v1/jobs/{job_id}", headers=_headers(), timeout=30).json()["status"] == (
            "cancelled"
        )
    job = _finished(gateway.url, short["id"])
    assert job["status"] == "succeeded", job
    expected = client.generate(PROMPT, seed=81, num_inference_steps=STEPS, scheduler="ddim", width=SIZE, height=SIZE)
    download = httpx.get(gateway.url + job["data"][0]["url"], timeout=10)
    assert np.array_equal(_pixels(download.content), np.asarray(expected.image))


def test_two_gateways_on_one_redis_share_their_jobs(
    grpc_url: str, redis_server, folder: Path, client: StableDiffusionClient
) -> None:
    """One gateway runs jobs (1 worker), the other only queues and serves them (0 workers): a job submitted to the
    second is run by the first, followed to its end and downloaded through either. Webhook hosts on private
    addresses are refused by a gateway that does not allow them."""
    common = ["--api-keys-file", str(folder / "api_keys"), "--jobs-store", redis_server.url]
    common += ["--webhook-secret", SECRET]
    runner, front = (
        GatewayProcess(
            grpc_url, [*common, "--data-dir", str(folder / name), "--job-workers", workers], folder / f"{name}.log"
        )
        for name, workers in (("runner", "1"), ("front", "0"))
    )
    runner.start(), front.start()
    try:
        runner.wait_ready(), front.wait_ready()
        refused = _submit(front.url, _body(webhook="http://127.0.0.1:9/hook"))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "webhook"
        assert "--webhook-allow-private" in refused.json()["error"]["message"]
        # The job carries an image through the Redis store: the runner draws the client's image-to-image.
        job_id = _submit(front.url, _body(seed=91, image=_base64_png(_start()), strength=0.5)).json()["id"]
        events = _events(front.url, job_id)
        assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
        seen = _get(runner.url, job_id).json()
        assert seen == events[-1][1]
        assert job_id in [job["id"] for job in httpx.get(f"{runner.url}/v1/jobs", headers=_headers()).json()["data"]]
        front_image = httpx.get(front.url + seen["data"][0]["url"], timeout=10).content
        assert front_image == httpx.get(runner.url + seen["data"][0]["url"], timeout=10).content
        expected = client.generate(PROMPT, image=_start(), strength=0.5, seed=91, num_inference_steps=STEPS,
                                   scheduler="ddim")  # fmt: skip
        assert np.array_equal(_pixels(front_image), np.asarray(expected.image))
    finally:
        runner.stop(), front.stop()
