"""The job store contract, the same tests over both stores: a real SQLite file and a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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


def run_role(job_store_spec: str, role: str, *args: str, **popen) -> subprocess.Popen[str]:
    """Starts ``tests/integration/job_processes.py`` in its own process."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.job_processes", role, job_store_spec, *args],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )


def image(seed: int, size: int = 1000) -> GeneratedImage:
    return GeneratedImage(bytes([seed % 256]) * size, "png", seed)


def test_create_and_idempotency(job_store: JobStore):
    first = job_store.create({"prompt": "a", "seed": 1}, scope="key-a", idempotency_key="k1", webhook="http://x/hook")
    assert first.created and first.job.status == QUEUED and first.job.id.startswith("job_")
    assert first.job.request == {"prompt": "a", "seed": 1} and first.job.webhook == "http://x/hook"
    again = job_store.create({"prompt": "other", "seed": 2}, scope="key-a", idempotency_key="k1")
    assert not again.created and again.job.id == first.job.id and again.job.request["prompt"] == "a"
    other_scope = job_store.create({"prompt": "a", "seed": 1}, scope="key-b", idempotency_key="k1")
    assert other_scope.created and other_scope.job.id != first.job.id
    no_key = [job_store.create({"prompt": "a", "seed": 1}, scope="key-a").job.id for _ in range(2)]
    assert len({*no_key, first.job.id}) == 3
    assert job_store.get(first.job.id) == first.job
    assert job_store.get("job_nothing") is None
    with pytest.raises(JobStoreError, match="JSON object"):
        job_store.create(["not", "an", "object"])


def test_queue_positions(job_store: JobStore):
    ids = [job_store.create({"prompt": str(i), "seed": i}).job.id for i in range(4)]
    assert [job_store.queue_position(job_id) for job_id in ids] == [0, 1, 2, 3]
    claim = job_store.claim("a", lease_s=60)
    assert claim.job.id == ids[0] and claim.job.status == RUNNING and claim.job.attempts == 1
    job_store.request_cancel(ids[2])
    assert [job_store.queue_position(job_id) for job_id in ids] == [None, 0, None, 1]
    assert job_store.count_active() == {QUEUED: 2, RUNNING: 1}
    assert job_store.queue_position("job_nothing") is None


def test_claim_is_atomic_across_threads_and_processes(job_store_spec: str, job_store: JobStore):
    """Two processes and three threads claim 200 jobs at once: each job is claimed exactly once."""
    ids = {job_store.create({"prompt": str(i), "seed": i}).job.id for i in range(200)}
    processes = [run_role(job_store_spec, "claim", "1.0", str(HOLD_S), stdin=subprocess.PIPE) for _ in range(2)]
    assert [process.stdout.readline() for process in processes] == ["ready\n"] * 2
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        own = open_spec(job_store_spec)
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
    assert all(job_store.get(job_id).status == SUCCEEDED for job_id in ids)


def test_expired_lease_is_reclaimed_and_the_stale_owner_cannot_finish(job_store: JobStore):
    job_id = job_store.create({"prompt": "p", "seed": 7}).job.id
    stale = job_store.claim("gateway-a", lease_s=SHORT_LEASE_S)
    assert job_store.claim("gateway-b", lease_s=60) is None  # the lease holds
    time.sleep(SHORT_LEASE_S * 1.5)
    fresh = job_store.claim("gateway-b", lease_s=60)
    assert fresh.job.id == job_id and fresh.token != stale.token
    assert fresh.job.attempts == 2 and fresh.job.owner == "gateway-b" and fresh.job.request["seed"] == 7
    assert fresh.job.started_at == stale.job.started_at
    assert not job_store.renew(job_id, stale.token, lease_s=60, step=3, total=4).held
    assert not job_store.finish(job_id, stale.token, status=SUCCEEDED, images=[image(1)])
    assert not job_store.release(job_id, stale.token)
    assert job_store.get(job_id).status == RUNNING and job_store.get(job_id).step == 0
    assert job_store.finish(job_id, fresh.token, status=SUCCEEDED, images=[image(7), image(8, 500)])
    assert not job_store.finish(job_id, fresh.token, status=FAILED)  # once only
    done = job_store.get(job_id)
    assert done.status == SUCCEEDED and done.finished_at >= done.started_at and done.error is None
    assert [(i.index, i.format, i.seed, i.size_bytes) for i in done.images] == [(0, "png", 7, 1000), (1, "png", 8, 500)]
    assert job_store.image(job_id, 1) == (image(8, 500).data, "png")
    assert job_store.image(job_id, 2) is None
    assert job_store.count_active() == {QUEUED: 0, RUNNING: 0}


def test_renewals_keep_the_claim_and_record_progress(job_store: JobStore):
    job_id = job_store.create({"prompt": "p", "seed": 1}).job.id
    claim = job_store.claim("a", lease_s=SHORT_LEASE_S)
    for step in range(1, 6):
        time.sleep(SHORT_LEASE_S / 2)
        status = job_store.renew(job_id, claim.token, lease_s=SHORT_LEASE_S, step=step, total=5)
        assert status.held and not status.cancel_requested
        assert job_store.claim("b", lease_s=60) is None
    job = job_store.get(job_id)
    assert (job.step, job.total, job.owner) == (5, 5, "a") and job.lease_expires_at > time.time()


def test_a_job_interrupted_max_attempts_times_is_failed(job_store: JobStore):
    job_id = job_store.create({"prompt": "p", "seed": 1}).job.id
    for attempt in (1, 2):
        claim = job_store.claim(f"gateway-{attempt}", lease_s=0.05, max_attempts=2)
        assert claim.job.id == job_id and claim.job.attempts == attempt
        time.sleep(0.1)
    assert job_store.claim("gateway-3", lease_s=60, max_attempts=2) is None
    job = job_store.get(job_id)
    assert job.status == FAILED and job.error["code"] == "job_interrupted" and job.attempts == 2


def test_cancel_queued_and_running_jobs(job_store: JobStore):
    queued = job_store.create({"prompt": "q", "seed": 1}).job.id
    running = job_store.create({"prompt": "r", "seed": 2}).job.id
    orphan = job_store.create({"prompt": "o", "seed": 3}).job.id
    cancelled = job_store.request_cancel(queued)
    assert cancelled.status == CANCELLED and cancelled.error["code"] == "cancelled" and cancelled.finished_at
    claim = job_store.claim("a", lease_s=60)
    assert claim.job.id == running
    flagged = job_store.request_cancel(running)
    assert flagged.status == RUNNING and flagged.cancel_requested
    assert job_store.renew(running, claim.token, lease_s=60).cancel_requested
    assert job_store.finish(running, claim.token, status=CANCELLED, error={"message": "stopped", "code": "cancelled"})
    assert job_store.request_cancel(running).status == CANCELLED  # a finished job stays as it was
    # A running job asked to cancel whose owner died is cancelled by the next claim, not run again.
    orphan_claim = job_store.claim("b", lease_s=0.05)
    assert orphan_claim.job.id == orphan
    job_store.request_cancel(orphan)
    time.sleep(0.1)
    assert job_store.claim("c", lease_s=60) is None
    assert job_store.get(orphan).status == CANCELLED
    assert job_store.request_cancel("job_nothing") is None


def test_release_hands_the_job_back_at_its_place(job_store: JobStore):
    first, second = (job_store.create({"prompt": str(i), "seed": i}).job.id for i in range(2))
    claim = job_store.claim("a", lease_s=60)
    job_store.renew(first, claim.token, lease_s=60, step=2, total=4)
    assert job_store.release(first, claim.token)
    job = job_store.get(first)
    assert (job.status, job.attempts, job.step) == (QUEUED, 0, 0)
    assert job_store.queue_position(first) == 0 and job_store.queue_position(second) == 1
    assert not job_store.finish(first, claim.token, status=SUCCEEDED)
    again = job_store.claim("b", lease_s=60)
    assert again.job.id == first and again.job.attempts == 1
    job_store.request_cancel(first)
    assert job_store.release(first, again.token) and job_store.get(first).status == CANCELLED


def test_recent_jobs_and_webhook_deliveries(job_store: JobStore):
    ids = [job_store.create({"prompt": str(i), "seed": i}, scope="ab"[i % 2]).job.id for i in range(5)]
    assert [job.id for job in job_store.list_recent(limit=3)] == ids[::-1][:3]
    assert [job.id for job in job_store.list_recent(scope="b")] == [ids[3], ids[1]]
    deliveries = [
        WebhookDelivery(1, time.time(), 500, "HTTP 500", 0.01),
        WebhookDelivery(2, time.time(), 200, None, 0.02),
    ]
    for delivery in deliveries:
        assert job_store.record_delivery(ids[0], delivery)
    assert job_store.get(ids[0]).deliveries == tuple(deliveries)
    assert not job_store.record_delivery("job_nothing", deliveries[0])


def test_finished_jobs_expire_after_the_result_ttl(job_store_spec: str):
    ttl_s = 0.5
    job_store = open_spec(job_store_spec, result_ttl_s=ttl_s)
    waiting = job_store.create({"prompt": "waits", "seed": 0}).job.id
    done = job_store.create({"prompt": "done", "seed": 1}, idempotency_key="same").job.id
    job_store.create({"prompt": "placeholder", "seed": 2})
    claim = job_store.claim("a", lease_s=60)
    assert claim.job.id == waiting and job_store.release(waiting, claim.token)
    job_store.request_cancel(waiting)  # finished now: it expires too
    kept = job_store.create({"prompt": "kept queued", "seed": 3}).job.id
    while (claim := job_store.claim("a", lease_s=60)).job.id != done:
        job_store.release(claim.job.id, claim.token)
    job_store.finish(done, claim.token, status=SUCCEEDED, images=[image(1)], error=None)
    job_store.record_delivery(done, WebhookDelivery(1, time.time(), 200, None, 0.01))
    assert job_store.image(done, 0) is not None
    time.sleep(ttl_s * 1.5)
    assert job_store.get(done) is None and job_store.image(done, 0) is None and job_store.get(waiting) is None
    assert job_store.get(kept).status == QUEUED  # queued jobs never expire
    assert done not in [job.id for job in job_store.list_recent()]
    resubmitted = job_store.create({"prompt": "done", "seed": 1}, idempotency_key="same")
    assert resubmitted.created and resubmitted.job.id != done
    job_store.close()


def test_jobs_outlive_the_store_and_another_process_sees_them(job_store_spec: str):
    job_store = open_spec(job_store_spec)
    job_id = job_store.create({"prompt": "kept", "seed": 5}, idempotency_key="k").job.id
    claim = job_store.claim("a", lease_s=60)
    job_store.finish(job_id, claim.token, status=SUCCEEDED, images=[image(5)])
    job_store.close()
    reader = run_role(job_store_spec, "read", job_id)
    out, _ = reader.communicate(timeout=60)
    seen = json.loads(out)
    assert seen["status"] == SUCCEEDED and seen["images"] == [{"index": 0, "format": "png", "seed": 5}]
    reopened = open_spec(job_store_spec)
    assert reopened.image(job_id, 0) == (image(5).data, "png")
    assert not reopened.create({"prompt": "again", "seed": 6}, idempotency_key="k").created
    reopened.close()


def test_a_process_killed_mid_write_leaves_every_job_whole(job_store_spec: str, job_store: JobStore):
    """A writer creating and finishing jobs with two 256 KiB images each, SIGKILLed mid-stream: every job it left
    is either not finished (and runnable) or finished with both its images whole."""
    writer = run_role(job_store_spec, "write", start_new_session=True)
    try:
        for _ in range(8):
            assert writer.stdout.readline()
        time.sleep(0.013)
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait()
    jobs = job_store.list_recent(limit=1000)
    assert len(jobs) >= 8
    for job in jobs:
        if job.status == SUCCEEDED:
            assert [i.size_bytes for i in job.images] == [WRITE_IMAGE_BYTES] * 2
            assert all(len(job_store.image(job.id, index)[0]) == WRITE_IMAGE_BYTES for index in (0, 1))
        else:
            assert job.status in (QUEUED, RUNNING) and not job.images
    # The store is usable at once: a fresh job is claimed and finished.
    fresh = job_store.create({"prompt": "after", "seed": 0}).job.id
    while (claim := job_store.claim("after", lease_s=60)) is not None and claim.job.id != fresh:
        job_store.finish(claim.job.id, claim.token, status=SUCCEEDED)
    assert claim is not None and job_store.finish(fresh, claim.token, status=SUCCEEDED)


def test_a_run_shorter_than_one_renewal_finishes_with_its_steps(job_store: JobStore):
    """A job that ends before its first progress write (renew) still shows its steps: the total travels with the
    final state, and a succeeded job's step is its total."""
    job_id = job_store.create({"prompt": "p"}).job.id
    claim = job_store.claim("gateway-a", lease_s=60)
    assert job_store.get(job_id).total == 0
    assert job_store.finish(job_id, claim.token, status=SUCCEEDED, images=[image(1)], total=2)
    done = job_store.get(job_id)
    assert (done.step, done.total) == (2, 2)
