"""Running a soak: the plan's requests on many threads, each one's end recorded, the server killed and
restarted part-way in restart mode, and its memory sampled after the warm-up and at the end."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sdtriton import interface
from sdtriton.ops.soak.memory import MemoryComparison, sample_memory
from sdtriton.ops.soak.plan import (
    ALLOWED_OUTCOMES,
    CANCEL_STREAM,
    IMAGE,
    KINDS,
    OUTAGE_OUTCOMES,
    PROMPTS,
    STREAM_CLOSED,
    Kind,
    SoakMix,
    SoakRequest,
)

if TYPE_CHECKING:
    from sdtriton.ops.supervisor import ServerSupervisor

logger = logging.getLogger(__name__)

DEFAULT_ANSWER_TIMEOUT_S = 300.0
_POLL_S = 0.25
_CLIENT_LOGGER = "sdtriton.client.client"


@dataclass(frozen=True)
class RequestRecord:
    """How one planned request ended.

    Attributes:
        outcome: ``image``, ``stream_closed``, the client exception's class name, or ``lost`` (no answer in time).
        expected: whether ``outcome`` is one its kind allows (or, for one the client could not retry that met
            the restart, one of :data:`OUTAGE_OUTCOMES`).
        started_s, ended_s: seconds from the run's start.
        retryable: whether the client could retry it (a RetryPolicy over generate, or a stream before its first
            event); submit and a stream past its first event cannot be.
        message: the error's message, cut short.
    """

    index: int
    kind: Kind
    outcome: str
    expected: bool
    started_s: float
    ended_s: float | None
    retryable: bool = True
    message: str = ""
    cancel_mode: str | None = None
    bad_input: str | None = None

    @property
    def latency_s(self) -> float | None:
        return None if self.ended_s is None else self.ended_s - self.started_s


LOST = "lost"


class _Attempt:
    """What a worker learns while a request runs (read by the watchdog and the record)."""

    def __init__(self) -> None:
        self.delivered_events = False


def _outcome_of(error: BaseException) -> str:
    from sdtriton.client import SdTritonError

    name = type(error).__name__
    return name if isinstance(error, SdTritonError) else f"untyped:{name}"


def run_request(client: Any, request: SoakRequest, attempt: _Attempt, *, answer_timeout_s: float) -> tuple[str, str]:
    """Sends ``request`` as its kind says; returns (outcome, message). Never raises for the request's own errors.

    Raises:
        TimeoutError: a submitted request got no answer within ``answer_timeout_s`` (the caller counts it lost).
    """
    parameters = request.parameters()
    try:
        if request.kind is Kind.STREAM or (request.kind is Kind.CANCEL and request.cancel_mode == CANCEL_STREAM):
            for event in client.stream(request.prompt, **parameters):
                attempt.delivered_events = True
                if request.kind is Kind.CANCEL:
                    return STREAM_CLOSED, ""  # leaving the loop cancels the request on the server
                if hasattr(event, "images"):
                    return IMAGE, ""
            return "untyped:EmptyStream", "the stream ended without an image"
        if request.kind is Kind.CANCEL:
            pending = client.submit(request.prompt, **parameters)
            time.sleep(request.cancel_after_s or 0.0)
            pending.cancel()
            pending.result(timeout_s=answer_timeout_s)  # TimeoutError: no answer at all
            return IMAGE, ""
        client.generate(request.prompt, **parameters)
        return IMAGE, ""
    except TimeoutError:
        raise
    except Exception as error:
        return _outcome_of(error), str(error)[:200]


def _is_expected(request: SoakRequest, outcome: str, *, retryable: bool, met_outage: bool) -> bool:
    if outcome in ALLOWED_OUTCOMES[request.kind]:
        return True
    return met_outage and not retryable and outcome in OUTAGE_OUTCOMES


@dataclass
class RestartTimes:
    """When the server was killed and when its successor was ready (seconds from the run's start)."""

    killed_s: float | None = None
    started_s: float | None = None
    ready_s: float | None = None
    error: str | None = None

    @property
    def downtime_s(self) -> float | None:
        if self.killed_s is None or self.ready_s is None:
            return None
        return self.ready_s - self.killed_s


class _RetryCounter(logging.Handler):
    """Counts the client's "retrying in" warnings."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.count = 0
        self._lock_count = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying in" in record.getMessage():
            with self._lock_count:
                self.count += 1


@contextlib.contextmanager
def _counting_retries() -> Iterator[_RetryCounter]:
    counter = _RetryCounter()
    client_logger = logging.getLogger(_CLIENT_LOGGER)
    client_logger.addHandler(counter)
    # Counted into the report instead: one warning per retry would bury the progress bar during an outage.
    propagate, client_logger.propagate = client_logger.propagate, False
    try:
        yield counter
    finally:
        client_logger.removeHandler(counter)
        client_logger.propagate = propagate


@dataclass(frozen=True)
class SoakResult:
    """Everything a soak run measured."""

    plan: tuple[SoakRequest, ...]
    records: tuple[RequestRecord, ...]
    duration_s: float
    retries: int
    memory: MemoryComparison | None = None
    restart: RestartTimes | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def lost(self) -> list[RequestRecord]:
        return [record for record in self.records if record.outcome == LOST]

    @property
    def unexpected(self) -> list[RequestRecord]:
        return [record for record in self.records if record.outcome != LOST and not record.expected]

    def outcomes_by_kind(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {kind.value: Counter() for kind in KINDS}
        for record in self.records:
            table[record.kind.value][record.outcome] += 1
        return {kind: dict(sorted(counts.items())) for kind, counts in table.items()}

    def latency_by_kind_ms(self) -> dict[str, dict[str, float | int]]:
        table = {}
        for kind in KINDS:
            latencies = [1000 * r.latency_s for r in self.records if r.kind is kind and r.latency_s is not None]
            if latencies:
                table[kind.value] = {
                    "count": len(latencies),
                    "p50_ms": round(float(np.percentile(latencies, 50)), 1),
                    "p99_ms": round(float(np.percentile(latencies, 99)), 1),
                }
        return table

    def during_outage(self) -> list[RequestRecord]:
        """Requests sent while the server was down (after the kill, before its successor was ready)."""
        restart = self.restart
        if restart is None or restart.killed_s is None:
            return []
        ready_s = math.inf if restart.ready_s is None else restart.ready_s
        return [r for r in self.records if restart.killed_s <= r.started_s < ready_s]

    def to_json(self) -> dict[str, Any]:
        memory = self.memory
        outage = self.during_outage()
        return {
            "settings": dict(self.settings),
            "requests": len(self.plan),
            "answered": sum(record.outcome != LOST for record in self.records),
            "duration_s": round(self.duration_s, 2),
            "client_retries": self.retries,
            "lost": [record.index for record in self.lost],
            "unexpected": [
                {"index": r.index, "kind": r.kind.value, "outcome": r.outcome, "message": r.message}
                for r in self.unexpected
            ],
            "outcomes_by_kind": self.outcomes_by_kind(),
            "latency_by_kind": self.latency_by_kind_ms(),
            "memory": None
            if memory is None
            else {
                "processes": memory.rows(),
                "total_after_warmup_kib": memory.total_after_warmup_kib,
                "total_at_end_kib": memory.total_at_end_kib,
                "growth_percent": None if memory.growth_percent is None else round(memory.growth_percent, 2),
            },
            "restart": None
            if self.restart is None
            else {
                **asdict(self.restart),
                "downtime_s": self.restart.downtime_s,
                "sent_during_outage": len(outage),
                "outage_outcomes": dict(Counter(r.outcome for r in outage)),
                "outage_retried_to_image": sum(r.outcome == IMAGE for r in outage),
                "outage_retries_exhausted": sum(r.outcome == "RetriesExhaustedError" for r in outage),
                "not_retryable_failed": sum((not r.retryable) and r.outcome in OUTAGE_OUTCOMES for r in self.records),
            },
            "records": [
                {
                    "index": r.index,
                    "kind": r.kind.value,
                    "outcome": r.outcome,
                    "expected": r.expected,
                    "retryable": r.retryable,
                    "latency_ms": None if r.latency_s is None else round(1000 * r.latency_s, 1),
                    "started_s": round(r.started_s, 3),
                    "cancel_mode": r.cancel_mode,
                    "bad_input": r.bad_input,
                    "message": r.message,
                }
                for r in self.records
            ],
        }


def run_plan(
    plan: Sequence[SoakRequest],
    *,
    client_factory: Callable[[float | None], Any],
    concurrency: int,
    answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S,
    before_send: Callable[[int], None] | None = None,
    restart: RestartTimes | None = None,
    origin_s: float | None = None,
    show_progress: bool = True,
) -> tuple[list[RequestRecord], float]:
    """Runs ``plan`` on ``concurrency`` threads; returns the records in plan order and the seconds taken.

    Args:
        client_factory: a client for a time budget (None: none); called per thread, and per deadline request.
        answer_timeout_s: a request with no answer after this long is recorded lost (its thread is left behind).
        before_send: called with the number of the request about to be sent, 1 for the first (restart mode kills
            the server there, so that this request is sent while it is down).
        restart: filled in by the restarter; decides which requests met the outage.
        origin_s: the ``time.monotonic()`` that times are counted from (default: now).
    """
    from tqdm.auto import tqdm

    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    started = time.monotonic() if origin_s is None else origin_s

    def now() -> float:
        return time.monotonic() - started

    work: queue.SimpleQueue[SoakRequest] = queue.SimpleQueue()
    for request in plan:
        work.put(request)
    records: dict[int, RequestRecord] = {}
    in_flight: dict[int, tuple[SoakRequest, float]] = {}
    lock = threading.Lock()
    sent = 0
    finished = threading.Event()

    def record(request: SoakRequest, outcome: str, message: str, began_s: float, attempt: _Attempt) -> None:
        ended_s = now()
        retryable = request.cancel_mode is None or (
            request.cancel_mode == CANCEL_STREAM and not attempt.delivered_events
        )
        if request.kind is Kind.STREAM and attempt.delivered_events and outcome != IMAGE:
            retryable = False
        met_outage = (
            restart is not None
            and restart.killed_s is not None
            and began_s <= (restart.ready_s if restart.ready_s is not None else math.inf)
            and ended_s >= restart.killed_s
        )
        with lock:
            in_flight.pop(request.index, None)
            if request.index in records:  # already recorded lost
                return
            records[request.index] = RequestRecord(
                index=request.index,
                kind=request.kind,
                outcome=outcome,
                expected=_is_expected(request, outcome, retryable=retryable, met_outage=met_outage),
                started_s=began_s,
                ended_s=ended_s,
                retryable=retryable,
                message=message,
                cancel_mode=request.cancel_mode,
                bad_input=request.bad_input,
            )

    def work_on() -> None:
        nonlocal sent
        client = client_factory(None)
        try:
            while not finished.is_set():
                try:
                    request = work.get_nowait()
                except queue.Empty:
                    return
                with lock:
                    sent += 1
                    count = sent
                if before_send is not None:
                    before_send(count)
                began_s = now()
                with lock:
                    in_flight[request.index] = (request, began_s)
                attempt = _Attempt()
                own = client_factory(request.timeout_s) if request.timeout_s is not None else None
                try:
                    outcome, message = run_request(own or client, request, attempt, answer_timeout_s=answer_timeout_s)
                except TimeoutError as error:
                    outcome, message = LOST, str(error)
                except Exception as error:  # the client itself broke: still this request's outcome only
                    logger.exception("request %d: the client failed", request.index)
                    outcome, message = _outcome_of(error), str(error)[:200]
                finally:
                    if own is not None:
                        with contextlib.suppress(Exception):
                            own.close()
                record(request, outcome, message, began_s, attempt)
        finally:
            with contextlib.suppress(Exception):
                client.close()

    threads = [
        threading.Thread(target=work_on, daemon=True, name=f"soak-{i}") for i in range(min(concurrency, len(plan)))
    ]
    with tqdm(total=len(plan), unit="request", desc="soak", disable=not show_progress) as bar:
        try:
            for thread in threads:
                thread.start()
            shown = 0
            while True:
                time.sleep(_POLL_S)
                with lock:
                    for index, (request, began_s) in list(in_flight.items()):
                        if now() - began_s > answer_timeout_s:
                            logger.error("request %d got no answer in %.0f s", index, answer_timeout_s)
                            records[index] = RequestRecord(
                                index=index,
                                kind=request.kind,
                                outcome=LOST,
                                expected=False,
                                started_s=began_s,
                                ended_s=None,
                                cancel_mode=request.cancel_mode,
                                bad_input=request.bad_input,
                            )
                            del in_flight[index]
                    done = len(records)
                    unexpected = sum(not r.expected for r in records.values())
                if done > shown:
                    bar.set_postfix(unexpected=unexpected, refresh=False)
                    bar.update(done - shown)
                    shown = done
                alive = any(thread.is_alive() for thread in threads)
                if done >= len(plan) or (not alive and not in_flight):
                    break
        finally:
            finished.set()
    duration_s = now()
    with lock:
        for request in plan:  # never started (a worker died): lost too
            if request.index not in records:
                records[request.index] = RequestRecord(
                    index=request.index, kind=request.kind, outcome=LOST, expected=False, started_s=0.0, ended_s=None
                )
        ordered = [records[request.index] for request in plan]
    return ordered, duration_s


@dataclass(frozen=True)
class SoakOptions:
    """How a soak runs (the plan apart)."""

    concurrency: int = 8
    warmup_requests: int | None = None  # None: one per thread
    settle_s: float = 3.0
    answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S
    restart_at: float | None = None  # share of the requests sent before the server is killed
    restart_timeout_s: float = 300.0  # the supervisor's successor must be ready this long after the kill
    retry_deadline_s: float = 120.0
    show_progress: bool = True


def _warm_up(client_factory: Callable[[float | None], Any], mix: SoakMix, count: int, concurrency: int) -> None:
    warmup = [
        SoakRequest(
            index=i,
            kind=Kind.OK,
            prompt=PROMPTS[i % len(PROMPTS)],
            seed=i,
            width=mix.sides_px[i % len(mix.sides_px)],
            height=mix.sides_px[i % len(mix.sides_px)],
            num_inference_steps=mix.min_steps,
            scheduler=mix.schedulers[i % len(mix.schedulers)],
        )
        for i in range(count)
    ]
    records, _ = run_plan(warmup, client_factory=client_factory, concurrency=concurrency, show_progress=False)
    failed = [r for r in records if r.outcome != IMAGE]
    if failed:
        raise RuntimeError(f"the warm-up failed: {failed[0].outcome}: {failed[0].message}")


def run_soak(
    plan: Sequence[SoakRequest],
    mix: SoakMix,
    *,
    grpc_url: str,
    model_name: str = interface.ENTRY_MODEL_NAME,
    options: SoakOptions = SoakOptions(),
    server: ServerSupervisor | None = None,
    server_pid: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> SoakResult:
    """Warms the server up, samples its memory, runs ``plan``, waits, samples again.

    Args:
        server: the supervisor of a server this process started: its processes are found from its pid, and
            restart mode SIGKILLs tritonserver and waits for the supervisor to restart it (``restart_on_crash``).
        server_pid: the server's pid when it was started elsewhere (memory only); None and no ``server``: no memory.
    """
    from sdtriton.client import RetryPolicy, StableDiffusionClient

    if options.restart_at is not None and (server is None or not server.restart_on_crash):
        raise ValueError("restart mode needs a server started here (--repository) that restarts on a crash")
    policy = RetryPolicy(deadline_s=options.retry_deadline_s, initial_backoff_s=0.2, max_backoff_s=1.0)

    def client_factory(timeout_s: float | None) -> StableDiffusionClient:
        return StableDiffusionClient(grpc_url, model_name=model_name, timeout_s=timeout_s, retry=policy)

    def root_pid() -> int | None:
        if server is not None:
            return server.server.pid
        return server_pid

    warmup = options.concurrency if options.warmup_requests is None else options.warmup_requests
    if warmup:
        logger.info("warming up with %d requests", warmup)
        _warm_up(client_factory, mix, warmup, options.concurrency)
    time.sleep(options.settle_s)
    pid = root_pid()
    after_warmup = sample_memory(pid) if pid is not None else []

    restart = RestartTimes() if options.restart_at is not None else None
    kill_after = None if options.restart_at is None else max(1, round(options.restart_at * len(plan)))
    restarter: threading.Thread | None = None
    run_started = time.monotonic()

    def kill_server() -> None:
        assert restart is not None and server is not None
        pid = server.server.pid
        logger.warning("killing tritonserver (pid %d) with SIGKILL; its supervisor restarts it", pid)
        # Before the signal: requests cut off by it fail while this thread still waits for the restart.
        restart.killed_s = time.monotonic() - run_started
        os.kill(pid, signal.SIGKILL)

    def wait_for_restart() -> None:
        assert restart is not None and server is not None
        if server.wait_restarted(1, timeout_s=options.restart_timeout_s):
            restart.started_s = server.started_at_s - run_started
            restart.ready_s = time.monotonic() - run_started
            logger.warning("the server is back after %.1f s", restart.downtime_s)
        else:
            restart.error = f"not back within {options.restart_timeout_s:.0f} s: " + "; ".join(
                end.describe().splitlines()[0] for end in server.ends
            )
            logger.error("the server did not come back: %s", restart.error)

    def before_send(count: int) -> None:
        nonlocal restarter
        if kill_after is not None and count == kill_after:
            # Here, before the request goes out: it is sent while the server is down, and is retried.
            kill_server()
            restarter = threading.Thread(target=wait_for_restart, name="soak-restart", daemon=True)
            restarter.start()

    with _counting_retries() as retries:
        records, duration_s = run_plan(
            plan,
            client_factory=client_factory,
            concurrency=options.concurrency,
            answer_timeout_s=options.answer_timeout_s,
            before_send=before_send,
            restart=restart,
            origin_s=run_started,
            show_progress=options.show_progress,
        )
    if restarter is not None:
        restarter.join()
    memory = None
    if pid is not None:
        time.sleep(options.settle_s)
        end_pid = root_pid()
        memory = MemoryComparison(
            after_warmup=tuple(after_warmup), at_end=tuple(sample_memory(end_pid) if end_pid is not None else [])
        )
    return SoakResult(
        plan=tuple(plan),
        records=tuple(records),
        duration_s=duration_s,
        retries=retries.count,
        memory=memory,
        restart=restart,
        settings=dict(settings or {}),
    )
