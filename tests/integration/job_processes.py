"""The other processes of the job tests (``python -m tests.integration.job_processes ROLE STORE ...``) and the
deterministic runner they share with the tests.

``STORE`` is ``sqlite:<path>`` or ``redis:<url>|<key prefix>``. Roles:

- ``claim QUIET_S HOLD_S``: prints ``ready``, waits for a line on stdin, then claims jobs (holding each
  ``HOLD_S``, then finishing it) until none came for ``QUIET_S``; prints their ids.
- ``read JOB_ID``: prints the job's JSON (``null`` when none).
- ``write``: creates and finishes jobs with a large image each, for ever (killed mid-write by a test).
- ``manager LEASE_S RUNS_LOG``: a JobManager with :func:`deterministic_run`, until killed; logs each run's start
  and end to ``RUNS_LOG``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdtriton.gateway.jobs import JobManager, ProgressCallback
from sdtriton.gateway.redis_store import RedisJobStore
from sdtriton.gateway.sqlite_store import SqliteJobStore
from sdtriton.gateway.store import SUCCEEDED, GeneratedImage, JobStore

WRITE_IMAGE_BYTES = 256 * 1024


def new_spec(kind: str, folder: Path, redis_url: str | None) -> str:
    """A fresh store's spec: its own SQLite file in ``folder``, or its own key prefix in the Redis at ``redis_url``."""
    if kind == "sqlite":
        return f"sqlite:{folder / 'jobs.sqlite3'}"
    return f"redis:{redis_url}|test-{uuid.uuid4().hex[:12]}:"


def open_spec(spec: str, *, result_ttl_s: float | None = None) -> JobStore:
    """The store a spec names (the tests hand the same spec to the processes they start)."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite":
        return SqliteJobStore(Path(rest), result_ttl_s=result_ttl_s)
    url, _, prefix = rest.partition("|")
    return RedisJobStore(url, prefix=prefix, result_ttl_s=result_ttl_s)


def image_of(request: dict[str, Any], index: int) -> bytes:
    """The deterministic "image" of a request: a function of its prompt, seed and index only."""
    seed = int(request["seed"]) + index
    return hashlib.sha256(f"{request['prompt']}|{seed}".encode()).digest() * 64


async def deterministic_run(
    request: dict[str, Any], on_progress: ProgressCallback, cancelled: asyncio.Event, *, runs_log: Path | None = None
) -> Sequence[tuple[bytes, str, int]]:
    """Sleeps ``step_s`` per step for ``num_inference_steps`` steps, reporting each (a preview every step), and
    stops at the step after ``cancelled`` is set; ``fail`` in the request makes it raise."""
    steps = int(request.get("num_inference_steps", 4))
    if runs_log is not None:
        _log(runs_log, "start", request)
    for step in range(1, steps + 1):
        await asyncio.sleep(float(request.get("step_s", 0.01)))
        if cancelled.is_set():
            raise RuntimeError("cancelled")
        if request.get("fail"):
            raise ValueError(request["fail"])
        on_progress(step, steps, preview=f"preview {step}".encode())
    images = [(image_of(request, i), "png", int(request["seed"]) + i) for i in range(int(request.get("n", 1)))]
    if runs_log is not None:
        _log(runs_log, "end", request)
    return images


def _log(path: Path, what: str, request: dict[str, Any]) -> None:
    with path.open("a") as log:
        log.write(json.dumps({"what": what, "prompt": request["prompt"], "seed": request["seed"]}) + "\n")


def _claim(store: JobStore, quiet_s: float, hold_s: float) -> None:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        claim = store.claim("claimer", lease_s=60)
        if claim is None:
            time.sleep(0.005)
            continue
        last = time.monotonic()
        time.sleep(hold_s)
        store.finish(claim.job.id, claim.token, status=SUCCEEDED)
        sys.stdout.write(claim.job.id + "\n")
    sys.stdout.flush()


def _write(store: JobStore) -> None:
    for index in range(10**9):
        job = store.create({"prompt": f"write {index}", "seed": index}).job
        claim = store.claim("writer", lease_s=60)
        data = hashlib.sha256(str(index).encode()).digest() * (WRITE_IMAGE_BYTES // 32)
        store.finish(claim.job.id, claim.token, status=SUCCEEDED, images=[GeneratedImage(data, "png", index)] * 2)
        sys.stdout.write(job.id + "\n")
        sys.stdout.flush()


async def _manage(store: JobStore, lease_s: float, runs_log: Path) -> None:
    async def run(request, on_progress, cancelled):
        return await deterministic_run(request, on_progress, cancelled, runs_log=runs_log)

    async with JobManager(store, run, owner_id="doomed", lease_s=lease_s, poll_s=0.05):
        await asyncio.Event().wait()


def main(argv: Sequence[str]) -> int:
    role, spec, *rest = argv
    store = open_spec(spec)
    if role == "claim":
        _claim(store, float(rest[0]), float(rest[1]))
    elif role == "read":
        job = store.get(rest[0])
        sys.stdout.write(json.dumps(job.to_dict() if job else None))
    elif role == "write":
        _write(store)
    elif role == "manager":
        asyncio.run(_manage(store, float(rest[0]), Path(rest[1])))
    else:
        raise SystemExit(f"unknown role {role!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
