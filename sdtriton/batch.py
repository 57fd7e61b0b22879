"""Batch jobs: one image per line of a JSON Lines file, each written beside its parameters; resumable.

Each line is a JSON object: ``prompt`` and any other public input of the entry model (the names of
:data:`sdtriton.interface.PUBLIC_INPUTS`), and an optional ``id`` (default: the line number) that names the
line's files in the output folder:

- ``<id>.png``: the image;
- ``<id>.json``: the parameters sent (with the seed, drawn here when the line has none), the seed the server
  used, the image size, the model, and the time the line took;
- ``<id>.error.json``: a line that failed: the error's class and the server's message (a later run retries it).

Every file is written whole or not at all (a temporary file, then a rename) and the JSON last, so a line is
done exactly when both its PNG and its JSON exist, whenever the run was killed. A run skips done lines, so a
killed run started again writes nothing twice. One run per output folder at a time.

The whole file is checked before any work (JSON, keys, value types, ids), and any problem stops the run with
every bad line named: a malformed file is fixed before hours are spent. Values in range is the server's
check: a line it refuses fails alone, recorded in its error file, and the run goes on.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import queue
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from sdtriton import interface

logger = logging.getLogger(__name__)

ID_KEY = "id"
PNG_SUFFIX = ".png"
JSON_SUFFIX = ".json"
ERROR_SUFFIX = ".error.json"
_TEMP_SUFFIX = ".tmp"
# Ids become file names: no path separators, no leading dot (temporary files start with one).
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")
_INPUTS: dict[str, interface.PublicTensor] = {tensor.name: tensor for tensor in interface.PUBLIC_INPUTS}
_FILE_MODE = 0o644
# How many bad lines a BatchFileError names before it stops counting them out.
_MAX_PROBLEMS_SHOWN = 20
_READY_POLL_S = 0.5


class BatchFileError(ValueError):
    """The prompts file has lines that cannot be run; nothing was started.

    Attributes:
        problems: (line number, what is wrong) for every bad line.
    """

    def __init__(self, path: Path, problems: Sequence[tuple[int, str]]) -> None:
        shown = [f"  line {line}: {message}" for line, message in problems[:_MAX_PROBLEMS_SHOWN]]
        if len(problems) > _MAX_PROBLEMS_SHOWN:
            shown.append(f"  ... and {len(problems) - _MAX_PROBLEMS_SHOWN} more")
        plural = "" if len(problems) == 1 else "s"
        super().__init__(f"{path}: {len(problems)} bad line{plural}, nothing run:\n" + "\n".join(shown))
        self.problems = list(problems)


@dataclass(frozen=True)
class BatchJob:
    """One line of the prompts file.

    Attributes:
        line: its line number, from 1.
        job_id: the name of its files.
        parameters: ``prompt`` and the other inputs as the line gives them (never changed).
    """

    line: int
    job_id: str
    parameters: Mapping[str, Any]

    def png_path(self, out_dir: Path) -> Path:
        return out_dir / f"{self.job_id}{PNG_SUFFIX}"

    def json_path(self, out_dir: Path) -> Path:
        return out_dir / f"{self.job_id}{JSON_SUFFIX}"

    def error_path(self, out_dir: Path) -> Path:
        return out_dir / f"{self.job_id}{ERROR_SUFFIX}"


def _type_problem(name: str, value: Any) -> str | None:
    """What is wrong with the type of ``value`` for input ``name``; None if nothing (ranges are the server's)."""
    if value is None:
        return "prompt: is required" if name == interface.PROMPT.name else None
    dtype = _INPUTS[name].triton_dtype
    if dtype == "BYTES":
        ok = isinstance(value, str)
        wanted = "a string"
    elif dtype in ("INT32", "INT64"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        wanted = "an integer"
    elif dtype == "BOOL":
        ok = isinstance(value, bool)
        wanted = "true or false"
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        wanted = "a number"
    return None if ok else f"{name}: must be {wanted}, got {json.dumps(value)[:40]}"


def parse_line(text: str, line: int) -> BatchJob:
    """One line of the prompts file as a job.

    Raises:
        ValueError: not a JSON object, an unknown key, a missing prompt, a value of the wrong type, a bad id.
    """
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(record, dict):
        raise ValueError(f"must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(_INPUTS) - {ID_KEY})
    if unknown:
        raise ValueError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"(allowed: {ID_KEY}, {', '.join(_INPUTS)})"
        )
    if interface.PROMPT.name not in record:
        record[interface.PROMPT.name] = None
    for name in _INPUTS:
        if name in record and (problem := _type_problem(name, record[name])) is not None:
            raise ValueError(problem)
    job_id = record.pop(ID_KEY, None)
    if job_id is None:
        job_id = str(line)
    elif isinstance(job_id, int) and not isinstance(job_id, bool):
        job_id = str(job_id)
    if not isinstance(job_id, str) or not _ID_PATTERN.fullmatch(job_id) or job_id.endswith(".error"):
        raise ValueError(
            f"id: must be up to 100 letters, digits, '_', '-' or '.' (not first, no '.error' ending), "
            f"got {json.dumps(job_id)[:40]}"
        )
    return BatchJob(line=line, job_id=job_id, parameters=record)


def read_jobs(path: Path) -> list[BatchJob]:
    """Every job of the prompts file (blank lines skipped), checked all together before anything runs.

    Raises:
        BatchFileError: names every bad line and every id used twice.
        OSError: the file cannot be read.
    """
    jobs: list[BatchJob] = []
    problems: list[tuple[int, str]] = []
    first_line_of: dict[str, int] = {}
    with path.open(encoding="utf-8-sig") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            try:
                job = parse_line(text, number)
            except ValueError as error:
                problems.append((number, str(error)))
                continue
            if job.job_id in first_line_of:
                problems.append((number, f"id {job.job_id!r} is already used by line {first_line_of[job.job_id]}"))
                continue
            first_line_of[job.job_id] = number
            jobs.append(job)
    if problems:
        raise BatchFileError(path, problems)
    return jobs


@dataclass(frozen=True)
class BatchPlan:
    """What a run does: the jobs to run, and those done before (skipped)."""

    to_run: tuple[BatchJob, ...]
    skipped: tuple[BatchJob, ...]


def _done_before(job: BatchJob, out_dir: Path) -> bool:
    """Both files there, and the JSON records this line's parameters (the line may have changed since)."""
    if not (job.png_path(out_dir).is_file() and job.json_path(out_dir).is_file()):
        return False
    try:
        recorded = json.loads(job.json_path(out_dir).read_text(encoding="utf-8"))["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("line %d: %s is unreadable; running the line again", job.line, job.json_path(out_dir).name)
        return False
    wanted = dict(job.parameters)
    if wanted.get(interface.SEED.name) is None:
        # The seed was drawn for this line: any recorded one matches.
        wanted[interface.SEED.name] = recorded.get(interface.SEED.name)
    if recorded != wanted:
        logger.warning("line %d changed since %s was written; running it again", job.line, job.png_path(out_dir).name)
        return False
    return True


def plan_batch(jobs: Sequence[BatchJob], out_dir: Path) -> BatchPlan:
    """Splits ``jobs`` into those to run and those done before: a PNG and a JSON of the same parameters exist."""
    done = [_done_before(job, out_dir) for job in jobs]
    return BatchPlan(
        to_run=tuple(job for job, is_done in zip(jobs, done, strict=True) if not is_done),
        skipped=tuple(job for job, is_done in zip(jobs, done, strict=True) if is_done),
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` whole or not at all: a temporary file beside it, flushed, then renamed."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_json_atomically(path: Path, record: Mapping[str, Any]) -> None:
    write_atomically(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def remove_temporary_files(out_dir: Path) -> int:
    """Removes what a killed run left half-written (never a finished file); returns how many."""
    removed = 0
    for path in out_dir.glob(f".*{_TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


class ImageClient(Protocol):
    """What a batch needs of a client: :class:`sdtriton.client.StableDiffusionClient` is one."""

    def generate(self, prompt: str, **parameters: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class LineOutcome:
    """How one line went: ``error`` is None when it was done."""

    job: BatchJob
    elapsed_s: float
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def run_job(client: ImageClient, job: BatchJob, out_dir: Path, *, metadata: Mapping[str, Any]) -> LineOutcome:
    """Generates one line and writes its files; a failure is written to its error file, never raised.

    Args:
        metadata: written into the line's JSON (e.g. the model and the server's URL).
    """
    parameters = dict(job.parameters)
    if parameters.get(interface.SEED.name) is None:
        # Drawn here and recorded, so the JSON names the seed before the server is asked, and retries repeat it.
        parameters[interface.SEED.name] = secrets.randbelow(interface.MAX_SEED + 1)
    prompt = parameters.pop(interface.PROMPT.name)
    started = time.monotonic()
    try:
        result = client.generate(prompt, **{name: value for name, value in parameters.items() if value is not None})
    except Exception as error:
        elapsed_s = time.monotonic() - started
        logger.debug("line %d failed", job.line, exc_info=True)
        message = str(error)
        write_json_atomically(
            job.error_path(out_dir),
            {
                **metadata,
                "id": job.job_id,
                "line": job.line,
                "parameters": {interface.PROMPT.name: prompt, **parameters},
                "error": type(error).__name__,
                "message": message,
                "elapsed_s": round(elapsed_s, 3),
                "failed_at": _now(),
            },
        )
        return LineOutcome(job=job, elapsed_s=elapsed_s, error=f"{type(error).__name__}: {message}")
    elapsed_s = time.monotonic() - started
    image = result.image
    png = io.BytesIO()
    image.save(png, format="PNG")
    write_atomically(job.png_path(out_dir), png.getvalue())
    # Last: its presence is what marks the line done.
    write_json_atomically(
        job.json_path(out_dir),
        {
            **metadata,
            "id": job.job_id,
            "line": job.line,
            "parameters": {interface.PROMPT.name: prompt, **parameters},
            "seed": result.seed,
            "width": image.width,
            "height": image.height,
            "elapsed_s": round(elapsed_s, 3),
            "finished_at": _now(),
        },
    )
    with contextlib.suppress(FileNotFoundError):
        job.error_path(out_dir).unlink()
    return LineOutcome(job=job, elapsed_s=elapsed_s)


@dataclass(frozen=True)
class BatchSummary:
    done: int
    skipped: int
    failed: int
    out_dir: Path

    @property
    def total(self) -> int:
        return self.done + self.skipped + self.failed

    def describe(self) -> str:
        return f"done {self.done}, skipped {self.skipped}, failed {self.failed} ({self.total} lines) in {self.out_dir}"


def wait_until_ready(client: Any, *, timeout_s: float) -> bool:
    """Polls ``client.is_ready()`` (server live, model ready) for up to ``timeout_s``; True once it is."""
    deadline = time.monotonic() + timeout_s
    while not client.is_ready():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_READY_POLL_S)
    return True


def run_batch(
    plan: BatchPlan,
    out_dir: Path,
    *,
    client_factory: Callable[[], ImageClient],
    concurrency: int = 1,
    metadata: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    on_outcome: Callable[[LineOutcome], None] | None = None,
) -> BatchSummary:
    """Runs ``plan.to_run`` on ``concurrency`` threads, one client each; a failed line does not stop the others.

    Interrupted (Ctrl-C), it stops handing out lines and raises ``KeyboardInterrupt``; lines being generated
    then are not written, and the next run does them.
    """
    from tqdm.auto import tqdm

    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    out_dir.mkdir(parents=True, exist_ok=True)
    if removed := remove_temporary_files(out_dir):
        logger.info("removed %d half-written file(s) a killed run left in %s", removed, out_dir)
    work: queue.SimpleQueue[BatchJob] = queue.SimpleQueue()
    for job in plan.to_run:
        work.put(job)
    outcomes: queue.SimpleQueue[LineOutcome | None] = queue.SimpleQueue()
    stop = threading.Event()
    workers = min(concurrency, len(plan.to_run))
    clients = [client_factory() for _ in range(workers)]

    def work_on(client: ImageClient) -> None:
        try:
            while not stop.is_set():
                try:
                    job = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcome = run_job(client, job, out_dir, metadata=metadata or {})
                except Exception as error:  # the output folder, not the request: still this line's failure only
                    logger.exception("line %d: writing its files failed", job.line)
                    outcome = LineOutcome(job=job, elapsed_s=0.0, error=f"{type(error).__name__}: {error}")
                outcomes.put(outcome)
        finally:
            outcomes.put(None)

    threads = [
        threading.Thread(target=work_on, args=(client,), daemon=True, name=f"batch-{i}")
        for i, client in enumerate(clients)
    ]
    done = failed = 0
    with tqdm(total=len(plan.to_run), unit="image", desc="batch", disable=not show_progress) as bar:
        try:
            for thread in threads:
                thread.start()
            running = len(threads)
            while running:
                try:
                    # A timeout, so that Ctrl-C reaches this thread while it waits.
                    outcome = outcomes.get(timeout=_READY_POLL_S)
                except queue.Empty:
                    continue
                if outcome is None:
                    running -= 1
                    continue
                if outcome.failed:
                    failed += 1
                    logger.warning("line %d (%s) failed: %s", outcome.job.line, outcome.job.job_id, outcome.error)
                else:
                    done += 1
                bar.set_postfix(failed=failed, skipped=len(plan.skipped), refresh=False)
                bar.update()
                if on_outcome is not None:
                    on_outcome(outcome)
        except BaseException:
            stop.set()
            raise
        finally:
            for client in clients:
                with contextlib.suppress(Exception):
                    client.close()
    return BatchSummary(done=done, skipped=len(plan.skipped), failed=failed, out_dir=out_dir)
