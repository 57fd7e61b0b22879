"""Webhooks to a real local HTTP receiver (http.server in a thread) that checks every signature and refuses the
first tries: the retries, their backoff and the store's delivery records, over both stores."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sdtriton.gateway.jobs import JobManager
from sdtriton.gateway.store import SUCCEEDED, Job, JobStore, WebhookDelivery
from sdtriton.gateway.webhooks import (
    JOB_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookPolicy,
    WebhookSender,
    sign,
    verify_signature,
    webhook_url_problem,
)
from sdtriton.server import free_port
from tests.integration.job_processes import deterministic_run

SECRET = "test-webhook-secret"
FIRST_DELAY_S = 0.05
BACKOFF = 2.0


@dataclass
class Receiver:
    """What the receiver got; it answers ``refusals`` tries with ``refusal_status``, then 204."""

    url: str
    refusals: int = 0
    refusal_status: int = 503
    received: list[tuple[dict[str, str], bytes, bool]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            verified = verify_signature(SECRET, self.headers[SIGNATURE_HEADER], body)
            state.received.append((dict(self.headers), body, verified))
            refused = len(state.received) <= state.refusals
            self.send_response(state.refusal_status if refused else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def test_signatures_verify_and_refuse_what_they_should():
    body = b'{"id":"job_1"}'
    now = int(time.time())
    header = sign(SECRET, body, timestamp=now)
    assert header.startswith(f"t={now},v1=") and verify_signature(SECRET, header, body)
    assert not verify_signature("another secret", header, body)
    assert not verify_signature(SECRET, header, body + b" ")
    assert not verify_signature(SECRET, sign(SECRET, body, timestamp=now - 301), body)  # a replay
    assert verify_signature(SECRET, sign(SECRET, body, timestamp=now - 301), body, tolerance_s=600)
    for broken in (None, "", "v1=abc", "t=x,v1=abc", f"t={now}"):
        assert not verify_signature(SECRET, broken, body)
    with pytest.raises(ValueError, match="empty"):
        WebhookSender("")
    with pytest.raises(ValueError, match="attempts"):
        WebhookPolicy(attempts=0)


def test_a_webhook_is_retried_with_backoff_until_accepted(job_store: JobStore, receiver: Receiver):
    """The receiver refuses two tries with 503: the third is accepted; the store records all three, spaced by the
    policy's backoff, and every try carried a valid signature over the finished job's JSON."""
    receiver.refusals = 2
    sender = WebhookSender(SECRET, policy=WebhookPolicy(attempts=5, first_delay_s=FIRST_DELAY_S, backoff=BACKOFF))

    async def scenario() -> Job:
        async with JobManager(job_store, partial(deterministic_run), poll_s=0.05, webhooks=sender) as manager:
            job = (await manager.submit({"prompt": "hooked"}, webhook=receiver.url)).job
            deadline = time.monotonic() + 20
            while len((await manager.get(job.id)).deliveries) < 3:
                assert time.monotonic() < deadline, "the deliveries were not recorded"
                await asyncio.sleep(0.02)
            return await manager.get(job.id)

    job = asyncio.run(scenario())
    assert job.status == SUCCEEDED
    assert [(d.attempt, d.status_code, d.error) for d in job.deliveries] == [
        (1, 503, "HTTP 503"),
        (2, 503, "HTTP 503"),
        (3, 204, None),
    ]
    gaps = [later.at - earlier.at for earlier, later in zip(job.deliveries, job.deliveries[1:], strict=False)]
    assert gaps[0] >= FIRST_DELAY_S and gaps[1] >= FIRST_DELAY_S * BACKOFF
    assert [verified for _, _, verified in receiver.received] == [True] * 3
    headers, body, _ = receiver.received[-1]
    assert headers[JOB_ID_HEADER] == job.id and headers["Content-Type"] == "application/json"
    sent = json.loads(body)
    assert sent["id"] == job.id and sent["status"] == SUCCEEDED and sent["images"][0]["seed"] == job.request["seed"]


def test_a_webhook_gives_up_after_its_attempts(receiver: Receiver):
    """Always refused (and a receiver that is not there at all): ``attempts`` tries, each recorded, then False."""
    receiver.refusals, receiver.refusal_status = 100, 500
    policy = WebhookPolicy(attempts=3, first_delay_s=0.01, backoff=1.0)
    sender = WebhookSender(SECRET, policy=policy, payload=lambda job: {**job.to_dict(), "url": "/v1/jobs/" + job.id})
    job = _succeeded("job_x", receiver.url)
    recorded: list[WebhookDelivery] = []
    assert not asyncio.run(sender.deliver(job, recorded.append))
    assert [(d.attempt, d.status_code) for d in recorded] == [(1, 500), (2, 500), (3, 500)]
    assert json.loads(receiver.received[0][1])["url"] == "/v1/jobs/job_x"
    nowhere = Job(**{**job.__dict__, "webhook": f"http://127.0.0.1:{free_port()}/hook"})
    recorded.clear()
    assert not asyncio.run(sender.deliver(nowhere, recorded.append))
    assert len(recorded) == 3 and all(d.status_code is None and "refused" in d.error for d in recorded)


def test_the_url_is_checked_again_at_delivery(receiver: Receiver):
    """A host that resolves to a refused address when the job is delivered (DNS can change after submit) is not
    POSTed to: the attempt is recorded blocked. The same check allowing private hosts lets it through."""
    job = _succeeded("job_y", receiver.url)
    policy = WebhookPolicy(attempts=2, first_delay_s=0.01)
    for allow_private, delivered in ((False, False), (True, True)):
        seen: list[WebhookDelivery] = []
        sender = WebhookSender(
            SECRET,
            policy=policy,
            on_attempt=seen.append,
            url_problem=partial(webhook_url_problem, allow_private=allow_private),
        )
        recorded: list[WebhookDelivery] = []
        assert asyncio.run(sender.deliver(job, recorded.append)) is delivered
        assert seen == recorded
        if not delivered:
            assert len(recorded) == 2 and all(d.error.startswith("blocked: ") for d in recorded)
            assert "not a public address" in recorded[0].error and receiver.received == []
    assert [verified for _, _, verified in receiver.received] == [True]


def _succeeded(job_id: str, webhook: str) -> Job:
    """A succeeded job to deliver, as the store would hand it over."""
    return Job(
        id=job_id,
        status=SUCCEEDED,
        request={"prompt": "p", "seed": 1},
        scope="",
        idempotency_key=None,
        webhook=webhook,
        created_at=time.time(),
        started_at=None,
        finished_at=None,
        step=0,
        total=0,
        error=None,
    )
