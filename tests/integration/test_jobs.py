"""The JobManager over both real stores, with a deterministic runner (tests/integration/job_processes.py): events,
cancel across replicas, failures, graceful hand-back, and a gateway SIGKILLed mid-job whose job another finishes
exactly once with the same seed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from functools import partial
from pathlib import Path

import pytest

from sdtriton.gateway.jobs import JobEvent, JobManager, UnknownJobError, fix_seed, open_store
from sdtriton.gateway.sqlite_store import SqliteJobStore
from sdtriton.gateway.store import CANCELLED, FAILED, QUEUED, SUCCEEDED, JobStore
from tests.integration.job_processes import deterministic_run, image_of
from tests.integration.test_job_store import run_role

POLL_S = 0.05
LEASE_S = 0.5
EVENTS_TIMEOUT_S = 20.0


def manager(job_store: JobStore, *, workers: int = 1, runs_log: Path | None = None, **options) -> JobManager:
    return JobManager(
        job_store,
        partial(deterministic_run, runs_log=runs_log),
        workers=workers,
        lease_s=LEASE_S,
        poll_s=POLL_S,
        progress_interval_s=0.02,
        **options,
    )


async def follow(manager: JobManager, job_id: str) -> list[JobEvent]:
    """Every event of the job up to its final one."""

    async def collect() -> list[JobEvent]:
        return [event async for event in manager.events(job_id)]

    return await asyncio.wait_for(collect(), EVENTS_TIMEOUT_S)


async def until(predicate, *, timeout_s: float = EVENTS_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_progress_events_in_order_here_and_on_another_replica(job_store: JobStore):
    """The replica that runs the job sends every step with its preview; one that does not (no workers) follows
    it through the store; both end with the result, whose image is the one of the seed fixed at submit."""

    async def scenario() -> None:
        async with manager(job_store) as runner, manager(job_store, workers=0) as watcher:
            submitted = await runner.submit({"prompt": "a red square", "num_inference_steps": 6, "step_s": 0.05})
            job = submitted.job
            assert submitted.created and job.status == QUEUED and isinstance(job.request["seed"], int)
            here, there = await asyncio.gather(follow(runner, job.id), follow(watcher, job.id))
            final = await runner.get(job.id)
            assert final.status == SUCCEEDED and (final.step, final.total) == (6, 6)
            assert await runner.image(job.id, 0) == (image_of(dict(job.request), 0), "png")
            assert final.images[0].seed == job.request["seed"]
            for events in (here, there):
                assert events[0].kind == "status" and events[-1].kind == "final" and events[-1].job == final
                assert all(event.kind != "final" for event in events[:-1])
                steps = [event.step for event in events if event.kind == "progress"]
                assert steps == sorted(set(steps)) and steps and steps[-1] <= 6
            assert [(e.step, e.total, e.preview) for e in here if e.kind == "progress"] == [
                (step, 6, f"preview {step}".encode()) for step in range(1, 7)
            ]
            assert all(event.preview is None for event in there)
            assert [recent.id for recent in await watcher.recent(limit=1)] == [job.id]
            with pytest.raises(UnknownJobError):
                await follow(watcher, "job_nothing")

    asyncio.run(scenario())


def test_a_subscriber_joining_mid_run_gets_the_latest_preview_at_once(job_store: JobStore):
    """A client that opens the events after some steps (a page loaded late, a reconnect) sees the run's latest preview
    right away, not only at the next step's."""

    async def scenario() -> None:
        async with manager(job_store) as runner:
            submitted = await runner.submit({"prompt": "a red square", "num_inference_steps": 4, "step_s": 1.0})
            job_id = submitted.job.id

            def steps_done() -> int:
                running = runner._running.get(job_id)  # the run as this manager tracks it
                return running.step if running is not None else 0

            await until(lambda: steps_done() >= 2)
            events = await follow(runner, job_id)
            progress = [(event.step, event.preview) for event in events if event.kind == "progress"]
            assert progress[0] == (2, b"preview 2"), progress  # step 3 comes a second after step 2
            assert [step for step, _ in progress] == [2, 3, 4]

    asyncio.run(scenario())


def test_cancel_through_another_replica_stops_the_run(job_store: JobStore):
    async def scenario() -> None:
        async with manager(job_store) as runner, manager(job_store, workers=0) as other:
            job = (await runner.submit({"prompt": "p", "num_inference_steps": 200, "step_s": 0.02})).job
            events = asyncio.create_task(follow(runner, job.id))
            await until(lambda: job_store.get(job.id).step >= 2)
            asked = time.monotonic()
            assert (await other.cancel(job.id)).cancel_requested
            final = (await events)[-1].job
            stopped_s = time.monotonic() - asked
            assert final.status == CANCELLED and final.error["code"] == "cancelled" and final.step < 200
            assert stopped_s < 1.0, f"stopped {stopped_s:.2f} s after the cancel"
            # A queued job is cancelled at once, on any replica.
            queued = (await other.submit({"prompt": "never", "seed": 1})).job
            await runner.stop()
            cancelled = await other.cancel(queued.id)
            assert cancelled.status == CANCELLED
            assert [event.kind for event in await follow(other, queued.id)] == ["final"]

    asyncio.run(scenario())


def test_a_failing_run_fails_its_job_with_the_described_error(job_store: JobStore):
    def describe(error: BaseException) -> dict:
        return {"message": str(error), "type": "invalid_request_error", "param": "prompt", "code": None}

    async def scenario() -> None:
        async with manager(job_store, describe_error=describe) as runner:
            job = (await runner.submit({"prompt": "p", "fail": "prompt is too long"})).job
            final = (await follow(runner, job.id))[-1].job
            assert final.status == FAILED and final.error == describe(ValueError("prompt is too long"))
            again = await runner.submit({"prompt": "p", "seed": 3}, scope="k", idempotency_key="once")
            same = await runner.submit({"prompt": "other"}, scope="k", idempotency_key="once")
            assert same.job.id == again.job.id and not same.created
            with pytest.raises(ValueError, match="webhook"):
                await runner.submit({"prompt": "p"}, webhook="http://127.0.0.1:1/")

    asyncio.run(scenario())


def test_a_stopping_gateway_hands_its_job_back(job_store: JobStore):
    async def scenario() -> None:
        first = manager(job_store)
        await first.start()
        job = (await first.submit({"prompt": "p", "num_inference_steps": 40, "step_s": 0.02})).job
        await until(lambda: job_store.get(job.id).step >= 2)
        await first.stop()
        handed_back = job_store.get(job.id)
        assert (handed_back.status, handed_back.attempts) == (QUEUED, 0)
        async with manager(job_store) as second:
            final = (await follow(second, job.id))[-1].job
        assert final.status == SUCCEEDED and final.attempts == 1 and final.owner == second.owner_id

    asyncio.run(scenario())


def test_a_killed_gateways_job_is_finished_once_by_the_next(job_store_spec: str, job_store: JobStore, tmp_path: Path):
    """A gateway process SIGKILLed mid-job: the next gateway takes the job over when its lease runs out and runs
    it to the end with the seed fixed at submit; the job finishes once, with that seed's image."""
    runs_log = tmp_path / "runs.jsonl"
    request = fix_seed({"prompt": "survivor", "num_inference_steps": 20, "step_s": 0.05})
    job_id = job_store.create(request).job.id
    doomed = run_role(job_store_spec, "manager", str(LEASE_S), str(runs_log), start_new_session=True)
    try:
        deadline = time.monotonic() + EVENTS_TIMEOUT_S
        while (job := job_store.get(job_id)).step < 3:
            assert time.monotonic() < deadline and doomed.poll() is None, "the first gateway did not start the job"
            time.sleep(0.02)
        assert job.owner == "doomed"
    finally:
        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()

    async def take_over() -> list[JobEvent]:
        async with manager(job_store, runs_log=runs_log) as survivor:
            return await follow(survivor, job_id)

    events = asyncio.run(take_over())
    final = events[-1].job
    assert final.status == SUCCEEDED and final.attempts == 2 and final.owner != "doomed"
    assert job_store.image(job_id, 0) == (image_of(request, 0), "png")
    assert [event.job.attempts for event in events if event.kind == "status"][-1] == 2
    runs = [json.loads(line) for line in runs_log.read_text().splitlines()]
    assert [run["what"] for run in runs] == ["start", "start", "end"]
    assert {run["seed"] for run in runs} == {request["seed"]}


def test_open_store_by_url(tmp_path: Path, redis_server):
    sqlite = open_store(f"sqlite://{tmp_path / 'a.sqlite3'}")
    assert isinstance(sqlite, SqliteJobStore) and sqlite.path == tmp_path / "a.sqlite3"
    redis_store = open_store(redis_server.url, result_ttl_s=5, prefix="url-test:")
    assert redis_store.result_ttl_s == 5 and redis_store.create({"prompt": "p", "seed": 1}).created
    for opened in (sqlite, redis_store):
        opened.close()
