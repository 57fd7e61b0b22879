"""A gateway killed with SIGKILL in the middle of its jobs loses none of them: real ``sdtriton gateway`` processes in
front of the real tritonserver of the tiny model. Over SQLite a second gateway started on the same file, over Redis
the other gateway sharing it, finishes every job once the dead one's leases have run out: each job succeeds with
the project's client's image for the seed fixed at submit, a job the dead gateway was running is run again (its
second attempt) and the engine finishes each job once (the dead gateway's runs are cancelled in the engine when its
streams close)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import numpy as np
import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.gateway.jobs import open_store
from sdtriton.gateway.process import GatewayProcess
from sdtriton.gateway.store import RUNNING, Job
from tests.integration.test_job_routes import (
    KEY,
    PROMPT,
    SIZE,
    WAIT_S,
    _body,
    _engine_ended,
    _events,
    _finished,
    _metric,
    _pixels,
    _submit,
)

pytestmark = pytest.mark.integration

logger = logging.getLogger(__name__)

# Short: the dead gateway's jobs are taken over this long after its last renewal.
LEASE_S = 2.0
# Enough steps that a job is seen running (its progress reaches the store every 0.2 s) well before it ends, and that
# the dead gateway's runs are still running when their streams' close reaches the engine: with 6, under the load of
# two test workers, one of them was once seen at step 1 in the store and still finished in the engine.
STEPS = 30
JOBS = 6


def _gateway(grpc_url: str, folder: Path, name: str, store_url: str) -> GatewayProcess:
    """A gateway of 2 workers with short leases on ``store_url``, its log ``folder/name.log``."""
    options = ["--api-keys-file", str(folder / "api_keys"), "--data-dir", str(folder / name)]
    options += ["--jobs-store", store_url, "--job-workers", "2", "--job-lease-s", str(LEASE_S)]
    return GatewayProcess(grpc_url, options, folder / f"{name}.log")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "api_keys").write_text(f"{KEY}\n")
    return tmp_path


def _kill_mid_run(
    gateway: GatewayProcess, store_url: str, job_ids: list[str], owned: Callable[[Job], bool]
) -> dict[str, Job]:
    """SIGKILLs ``gateway`` once a job it runs (``owned(job)``) has done a step (its progress is in the store); returns
    the jobs as it left them in the store."""
    store = open_store(store_url)
    try:
        deadline = time.monotonic() + WAIT_S
        try:
            while True:
                jobs = [store.get(job_id) for job_id in job_ids]
                if any(job.status == RUNNING and job.step >= 1 and owned(job) for job in jobs):
                    break
                assert not all(job.finished for job in jobs), "every job ended before one was seen running"
                assert time.monotonic() < deadline, f"timed out; the jobs are {jobs}"
                time.sleep(0.02)
        finally:
            gateway.kill()
        return {job_id: store.get(job_id) for job_id in job_ids}
    finally:
        store.close()


def _engine_counts(triton_server) -> tuple[float, float]:
    return _engine_ended(triton_server, "finished"), _engine_ended(triton_server, "cancelled")


def _seed_of(index: int) -> dict:
    """Every other job has no seed: the gateway draws one at submit, and its second attempt must draw the same."""
    return {"seed": 100 + index} if index % 2 else {}


def _client_images(grpc_url: str, seeds: list[int]) -> list[np.ndarray]:
    """The client's image of each seed, all at once (one client a thread)."""

    def generate(seed: int) -> np.ndarray:
        with StableDiffusionClient(grpc_url) as client:
            result = client.generate(
                PROMPT, seed=seed, num_inference_steps=STEPS, scheduler="ddim", width=SIZE, height=SIZE
            )
        return np.asarray(result.image)

    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        return list(pool.map(generate, seeds))


def _every_job_succeeds(
    survivor: GatewayProcess, submitted: dict[str, dict], running_at_kill: set[str], killed_at: float
) -> dict[str, dict]:
    """Every job ends succeeded on ``survivor``: one the dead gateway was running after a second attempt, every other
    job after one. Returns the jobs."""
    jobs = {job_id: _finished(survivor.url, job_id) for job_id in submitted}
    logger.info("every job final %.1f s after the kill", time.monotonic() - killed_at)
    for job_id, job in jobs.items():
        assert job["status"] == "succeeded", job
        assert job["attempts"] == (2 if job_id in running_at_kill else 1), job
        assert (job["step"], job["total_steps"], len(job["data"])) == (STEPS, STEPS, 1), job
        assert job["data"][0]["seed"] == submitted[job_id].get("seed", job["data"][0]["seed"])
    return jobs


def _check_images(survivor: GatewayProcess, jobs: dict[str, dict], grpc_url: str) -> None:
    """Each job's image is the client's for the seed the job names (the one fixed at submit)."""
    images = [job["data"][0] for job in jobs.values()]
    expected = _client_images(grpc_url, [image["seed"] for image in images])
    for image, pixels in zip(images, expected, strict=True):
        download = httpx.get(survivor.url + image["url"], timeout=10)
        assert download.status_code == 200
        assert np.array_equal(_pixels(download.content), pixels), image


def _check_engine_ran_each_job_once(triton_server, before: tuple[float, float], running_at_kill: set[str]) -> None:
    """The engine finished each job once: the dead gateway's runs ended cancelled when their streams closed, not run
    to completion beside their second attempts."""
    finished_before, cancelled_before = before
    finished, cancelled = _engine_counts(triton_server)
    assert finished - finished_before == JOBS
    assert cancelled - cancelled_before == len(running_at_kill)


def _check_stream(events: list[tuple[str, dict]], job: dict, taken_over: bool) -> None:
    """A job's event stream on the surviving gateway, opened before the kill: it ends with the job as ``GET`` answers
    it; a job taken over from the dead gateway has a status event of its second attempt, then that attempt's steps
    from the first on."""
    names = [name for name, _ in events]
    assert names[-1] == "done" and events[-1][1] == job, events
    if names == ["done"]:  # the job ended before the stream was open: a short one, never one run twice
        assert not taken_over, events
        return
    statuses = [index for index, name in enumerate(names) if name == "status"]
    last_status = events[statuses[-1]][1]
    assert last_status["attempts"] == (2 if taken_over else 1), events
    steps = [data["step"] for name, data in events[statuses[-1] :] if name == "progress"]
    assert steps == sorted(set(steps)), events
    if taken_over:  # run on this gateway: every step of the attempt came as it was done
        assert last_status["status"] == "running" and steps == list(range(1, STEPS + 1)), events


def _gauges_at_zero(gateway: GatewayProcess) -> None:
    for state in ("queued", "running"):
        assert _metric(f"{gateway.url}/metrics", rf'sdtriton_gateway_jobs\{{state="{state}"\}}') == 0


def test_a_sigkilled_gateway_loses_no_job_over_sqlite(grpc_url: str, triton_server, folder: Path) -> None:
    """Gateway A (2 workers) is killed while it runs two of six jobs; B, started on the same SQLite file, runs the
    queued ones at once and A's two after their leases ran out. A client that got no answer from A submits again to
    B with its Idempotency-Key and gets the same job."""
    store_url = f"sqlite://{folder / 'jobs.sqlite3'}"
    before = _engine_counts(triton_server)
    first = _gateway(grpc_url, folder, "a", store_url).start().wait_ready()
    retried = {"Idempotency-Key": "order-0"}
    submitted = {}
    for index in range(JOBS):
        body = _body(num_inference_steps=STEPS, **_seed_of(index))
        submitted[_submit(first.url, body, **(retried if index == 0 else {})).json()["id"]] = body
    left = _kill_mid_run(first, store_url, list(submitted), lambda job: True)
    killed_at = time.monotonic()
    running_at_kill = {job_id for job_id, job in left.items() if job.status == RUNNING}
    assert running_at_kill and any(job.status == "queued" for job in left.values()), left
    second = _gateway(grpc_url, folder, "b", store_url).start()
    try:
        second.wait_ready()
        logger.info("gateway B ready %.1f s after the kill", time.monotonic() - killed_at)
        (first_id, first_body), *_ = submitted.items()
        again = _submit(second.url, first_body, **retried)
        assert (again.status_code, again.json()["id"]) == (200, first_id)
        jobs = _every_job_succeeds(second, submitted, running_at_kill, killed_at)
        _check_engine_ran_each_job_once(triton_server, before, running_at_kill)
        _check_images(second, jobs, grpc_url)
        _gauges_at_zero(second)
    finally:
        second.stop()


def test_a_sigkilled_gateway_loses_no_job_over_redis(grpc_url: str, triton_server, redis_server, folder: Path) -> None:
    """Gateways A and B share one Redis (a database of their own), jobs submitted to both; A is killed while it runs
    jobs, B finishes its own, the queued ones, and A's once their leases ran out. Streams of every job followed on B
    through the kill end with the job."""
    store_url = redis_server.url.rsplit("/", 1)[0] + "/1"
    before = _engine_counts(triton_server)
    first, second = (_gateway(grpc_url, folder, name, store_url) for name in ("a", "b"))
    first.start(), second.start()
    try:
        first.wait_ready(), second.wait_ready()
        first_pid = str(first.pid)

        def owned_by_first(job: Job) -> bool:
            return job.owner is not None and job.owner.split(":")[1] == first_pid

        submitted = {}
        for index in range(JOBS):
            gateway = first if index % 3 else second  # four jobs to A, two to B
            body = _body(num_inference_steps=STEPS, **_seed_of(index))
            submitted[_submit(gateway.url, body).json()["id"]] = body
        with ThreadPoolExecutor(max_workers=JOBS) as pool:
            streams = {job_id: pool.submit(_events, second.url, job_id) for job_id in submitted}
            left = _kill_mid_run(first, store_url, list(submitted), owned_by_first)
            killed_at = time.monotonic()
            running_at_kill = {job_id for job_id, job in left.items() if job.status == RUNNING and owned_by_first(job)}
            assert running_at_kill, left
            jobs = _every_job_succeeds(second, submitted, running_at_kill, killed_at)
            for job_id, stream in streams.items():
                _check_stream(stream.result(timeout=WAIT_S), jobs[job_id], job_id in running_at_kill)
        _check_engine_ran_each_job_once(triton_server, before, running_at_kill)
        _check_images(second, jobs, grpc_url)
        _gauges_at_zero(second)
    finally:
        first.stop(), second.stop()
