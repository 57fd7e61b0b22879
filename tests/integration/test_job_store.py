"""The job store contract, the same tests over both stores: a real SQLite file and a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from sdtriton.gateway.store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    GeneratedImage,
    JobStore,
    JobStoreError,
    WebhookDelivery,
)
from tests.integration.job_processes import WRITE_IMAGE_BYTES, open_spec

ROOT = Path(__file__).resolve().parents[2]
SHORT_LEASE_S = 0.2
# How long each claimer of the concurrency test holds a job: no one claimer can take them all.
HOLD_S = 0.005


@pytest.fixture(params=["sqlite", "redis"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh store lives: its own SQLite file, or its own key prefix in the session's redis-server."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'jobs.sqlite3'}"
    redis_server = request.getfixturevalue("redis_server")
    return f"redis:{redis_server.url}|test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def store(spec: str):
    opened = open_spec(spec)
    yield opened
    opened.close()


def run_role(spec: str, role: str, *args: str, **popen) -> subprocess.Popen[str]:
    """Starts ``tests/integration/job_processes.py`` in its own process."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.job_processes", role, spec, *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def image(seed: int, size: int = 1000) -> GeneratedImage:
    return GeneratedImage(bytes([seed % 256]) * size, "png", seed)


def test_create_and_idempotency(store: JobStore):
    first = store.create({"prompt": "a", "seed": 1}, scope="key-a", idempotency_key="k1", webhook="http://x/hook")
    assert first.created and first.job.status == QUEUED and first.job.id.startswith("job_")
    assert first.job.request == {"prompt": "a", "seed": 1} and first.job.webhook == "http://x/hook"
    again = store.create({"prompt": "other", "seed": 2}, scope="key-a", idempotency_key="k1")
    assert not again.created and again.job.id == first.job.id and again.job.request["prompt"] == "a"
    other_scope = store.create({"prompt": "a", "seed": 1}, scope="key-b", idempotency_key="k1")
    assert other_scope.created and other_scope.job.id != first.job.id
    no_key = [store.create({"prompt": "a", "seed": 1}, scope="key-a").job.id for _ in range(2)]
    assert len({*no_key, first.job.id}) == 3
    assert store.get(first.job.id) == first.job
    assert store.get("job_nothing") is None
    with pytest.raises(JobStoreError, match="JSON object"):
        store.create(["not", "an", "object"])


def test_queue_positions(store: JobStore):
    ids = [store.create({"prompt": str(i), "seed": i}).job.id for i in range(4)]
    assert [store.queue_position(job_id) for job_id in ids] == [0, 1, 2, 3]
    claim = store.claim("a", lease_s=60)
    assert claim.job.id == ids[0] and claim.job.status == RUNNING and claim.job.attempts == 1
    store.request_cancel(ids[2])
    assert [store.queue_position(job_id) for job_id in ids] == [None, 0, None, 1]
    assert store.count_active() == {QUEUED: 2, RUNNING: 1}
    assert store.queue_position("job_nothing") is None


def test_claim_is_atomic_across_threads_and_processes(spec: str, store: JobStore):
    """Two processes and three threads claim 200 jobs at once: each job is claimed exactly once."""
    ids = {store.create({"prompt": str(i), "seed": i}).job.id for i in range(200)}
    processes = [run_role(spec, "claim", "1.0", str(HOLD_S), stdin=subprocess.PIPE) for _ in range(2)]
    assert [process.stdout.readline() for process in processes] == ["ready\n"] * 2
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        own = open_spec(spec)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            claim = own.claim("thread", lease_s=60)
            if claim is None:
                time.sleep(0.005)
                continue
            quiet_since = time.monotonic()
            with lock:
                claimed.append(claim.job.id)
            time.sleep(HOLD_S)
            own.finish(claim.job.id, claim.token, status=SUCCEEDED)
        own.close()

    threads = [threading.Thread(target=claim_all) for _ in range(3)]
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    by_process = [out.split() for out in outs]
    claimed.extend(job_id for ids_of_one in by_process for job_id in ids_of_one)
    counts = Counter(claimed)
    assert all(by_process) and len(claimed) > sum(map(len, by_process)), "every process and the threads claimed some"
    assert set(counts) == ids and max(counts.values()) == 1, counts.most_common(3)
    assert all(store.get(job_id).status == SUCCEEDED for job_id in ids)


def test_expired_lease_is_reclaimed_and_the_stale_owner_cannot_finish(store: JobStore):
    job_id = store.create({"prompt": "p", "seed": 7}).job.id
    stale = store.claim("gateway-a", lease_s=SHORT_LEASE_S)
    assert store.claim("gateway-b", lease_s=60) is None  # the lease holds
    time.sleep(SHORT_LEASE_S * 1.5)
    fresh = store.claim("gateway-b", lease_s=60)
    assert fresh.job.id == job_id and fresh.token != stale.token
    assert fresh.job.attempts == 2 and fresh.job.owner == "gateway-b" and fresh.job.request["seed"] == 7
    assert fresh.job.started_at == stale.job.started_at
    assert not store.renew(job_id, stale.token, lease_s=60, step=3, total=4).held
    assert not store.finish(job_id, stale.token, status=SUCCEEDED, images=[image(1)])
    assert not store.release(job_id, stale.token)
    assert store.get(job_id).status == RUNNING and store.get(job_id).step == 0
    assert store.finish(job_id, fresh.token, status=SUCCEEDED, images=[image(7), image(8, 500)])
    assert not store.finish(job_id, fresh.token, status=FAILED)  # once only
    done = store.get(job_id)
    assert done.status == SUCCEEDED and done.finished_at >= done.started_at and done.error is None
    assert [(i.index, i.format, i.seed, i.size_bytes) for i in done.images] == [(0, "png", 7, 1000), (1, "png", 8, 500)]
    assert store.image(job_id, 1) == (image(8, 500).data, "png")
    assert store.image(job_id, 2) is None
    assert store.count_active() == {QUEUED: 0, RUNNING: 0}


def test_renewals_keep_the_claim_and_record_progress(store: JobStore):
    job_id = store.create({"prompt": "p", "seed": 1}).job.id
    claim = store.claim("a", lease_s=SHORT_LEASE_S)
    for step in range(1, 6):
        time.sleep(SHORT_LEASE_S / 2)
        status = store.renew(job_id, claim.token, lease_s=SHORT_LEASE_S, step=step, total=5)
        assert status.held and not status.cancel_requested
        assert store.claim("b", lease_s=60) is None
    job = store.get(job_id)
    assert (job.step, job.total, job.owner) == (5, 5, "a") and job.lease_expires_at > time.time()


def test_a_job_interrupted_max_attempts_times_is_failed(store: JobStore):
    job_id = store.create({"prompt": "p", "seed": 1}).job.id
    for attempt in (1, 2):
        claim = store.claim(f"gateway-{attempt}", lease_s=0.05, max_attempts=2)
        assert claim.job.id == job_id and claim.job.attempts == attempt
        time.sleep(0.1)
    assert store.claim("gateway-3", lease_s=60, max_attempts=2) is None
    job = store.get(job_id)
    assert job.status == FAILED and job.error["code"] == "job_interrupted" and job.attempts == 2


def test_cancel_queued_and_running_jobs(store: JobStore):
    queued = store.create({"prompt": "q", "seed": 1}).job.id
    running = store.create({"prompt": "r", "seed": 2}).job.id
    orphan = store.create({"prompt": "o", "seed": 3}).job.id
    cancelled = store.request_cancel(queued)
    assert cancelled.status == CANCELLED and cancelled.error["code"] == "cancelled" and cancelled.finished_at
    claim = store.claim("a", lease_s=60)
    assert claim.job.id == running
    flagged = store.request_cancel(running)
    assert flagged.status == RUNNING and flagged.cancel_requested
    assert store.renew(running, claim.token, lease_s=60).cancel_requested
    assert store.finish(running, claim.token, status=CANCELLED, error={"message": "stopped", "code": "cancelled"})
    assert store.request_cancel(running).status == CANCELLED  # a finished job stays as it was
    # A running job asked to cancel whose owner died is cancelled by the next claim, not run again.
    orphan_claim = store.claim("b", lease_s=0.05)
    assert orphan_claim.job.id == orphan
    store.request_cancel(orphan)
    time.sleep(0.1)
    assert store.claim("c", lease_s=60) is None
    assert store.get(orphan).status == CANCELLED
    assert store.request_cancel("job_nothing") is None


def test_release_hands_the_job_back_at_its_place(store: JobStore):
    first, second = (store.create({"prompt": str(i), "seed": i}).job.id for i in range(2))
    claim = store.claim("a", lease_s=60)
    store.renew(first, claim.token, lease_s=60, step=2, total=4)
    assert store.release(first, claim.token)
    job = store.get(first)
    assert (job.status, job.attempts, job.step) == (QUEUED, 0, 0)
    assert store.queue_position(first) == 0 and store.queue_position(second) == 1
    assert not store.finish(first, claim.token, status=SUCCEEDED)
    again = store.claim("b", lease_s=60)
    assert again.job.id == first and again.job.attempts == 1
    store.request_cancel(first)
    assert store.release(first, again.token) and store.get(first).status == CANCELLED


def test_recent_jobs_and_webhook_deliveries(store: JobStore):
    ids = [store.create({"prompt": str(i), "seed": i}, scope="ab"[i % 2]).job.id for i in range(5)]
    assert [job.id for job in store.list_recent(limit=3)] == ids[::-1][:3]
    assert [job.id for job in store.list_recent(scope="b")] == [ids[3], ids[1]]
    deliveries = [
        WebhookDelivery(1, time.time(), 500, "HTTP 500", 0.01),
        WebhookDelivery(2, time.time(), 200, None, 0.02),
    ]
    for delivery in deliveries:
        assert store.record_delivery(ids[0], delivery)
    assert store.get(ids[0]).deliveries == tuple(deliveries)
    assert not store.record_delivery("job_nothing", deliveries[0])


def test_finished_jobs_expire_after_the_result_ttl(spec: str):
    ttl_s = 0.5
    store = open_spec(spec, result_ttl_s=ttl_s)
    waiting = store.create({"prompt": "waits", "seed": 0}).job.id
    done = store.create({"prompt": "done", "seed": 1}, idempotency_key="same").job.id
    store.create({"prompt": "placeholder", "seed": 2})
    claim = store.claim("a", lease_s=60)
    assert claim.job.id == waiting and store.release(waiting, claim.token)
    store.request_cancel(waiting)  # finished now: it expires too
    kept = store.create({"prompt": "kept queued", "seed": 3}).job.id
    while (claim := store.claim("a", lease_s=60)).job.id != done:
        store.release(claim.job.id, claim.token)
    store.finish(done, claim.token, status=SUCCEEDED, images=[image(1)], error=None)
    store.record_delivery(done, WebhookDelivery(1, time.time(), 200, None, 0.01))
    assert store.image(done, 0) is not None
    time.sleep(ttl_s * 1.5)
    assert store.get(done) is None and store.image(done, 0) is None and store.get(waiting) is None
    assert store.get(kept).status == QUEUED  # queued jobs never expire
    assert done not in [job.id for job in store.list_recent()]
    resubmitted = store.create({"prompt": "done", "seed": 1}, idempotency_key="same")
    assert resubmitted.created and resubmitted.job.id != done
    store.close()


def test_jobs_outlive_the_store_and_another_process_sees_them(spec: str):
    store = open_spec(spec)
    job_id = store.create({"prompt": "kept", "seed": 5}, idempotency_key="k").job.id
    claim = store.claim("a", lease_s=60)
    store.finish(job_id, claim.token, status=SUCCEEDED, images=[image(5)])
    store.close()
    reader = run_role(spec, "read", job_id)
    out, _ = reader.communicate(timeout=60)
    seen = json.loads(out)
    assert seen["status"] == SUCCEEDED and seen["images"] == [{"index": 0, "format": "png", "seed": 5}]
    reopened = open_spec(spec)
    assert reopened.image(job_id, 0) == (image(5).data, "png")
    assert not reopened.create({"prompt": "again", "seed": 6}, idempotency_key="k").created
    reopened.close()


def test_a_process_killed_mid_write_leaves_every_job_whole(spec: str, store: JobStore):
    """A writer creating and finishing jobs with two 256 KiB images each, SIGKILLed mid-stream: every job it left
    is either not finished (and runnable) or finished with both its images whole."""
    writer = run_role(spec, "write", start_new_session=True)
    try:
        for _ in range(8):
            assert writer.stdout.readline()
        time.sleep(0.013)
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait()
    jobs = store.list_recent(limit=1000)
    assert len(jobs) >= 8
    for job in jobs:
        if job.status == SUCCEEDED:
            assert [i.size_bytes for i in job.images] == [WRITE_IMAGE_BYTES] * 2
            assert all(len(store.image(job.id, index)[0]) == WRITE_IMAGE_BYTES for index in (0, 1))
        else:
            assert job.status in (QUEUED, RUNNING) and not job.images
    # The store is usable at once: a fresh job is claimed and finished.
    fresh = store.create({"prompt": "after", "seed": 0}).job.id
    while (claim := store.claim("after", lease_s=60)) is not None and claim.job.id != fresh:
        store.finish(claim.job.id, claim.token, status=SUCCEEDED)
    assert claim is not None and store.finish(fresh, claim.token, status=SUCCEEDED)
