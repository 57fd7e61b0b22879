"""Loads sent over gRPC with sdtriton's own client, one record a request.

perf_analyzer gives one latency distribution per run; these loads need one per request class (short and
long requests at once) or the answer of every request of a burst, so each sender keeps its own records. Classes
are client threads (:class:`sdtriton.client.StableDiffusionClient`) sending back to back; a burst is asyncio
clients (:class:`sdtriton.client.AsyncStableDiffusionClient`) released together. Each has its own gRPC channel,
connected before the load starts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from sdtriton.client import AsyncStableDiffusionClient, SdTritonError, StableDiffusionClient
from sdtriton.perf.engine_results import BURST, Outcome, RequestRecord, classify_error
from sdtriton.perf.workload import RequestSpec

# How long a thread waits for its first connection before the load.
_CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ClientClass:
    """Threads sending one kind of request back to back.

    Attributes:
        name: the request class (``short``, ``long``).
        request: what each of them sends.
        clients: threads.
        requests_per_client: requests each thread sends; None: until every bounded class is done.
        timeout_s: each request's time budget (the server ends it, the client gives up a little later); a
            request whose answer is lost then fails instead of holding its thread for ever. None: no budget.
    """

    name: str
    request: RequestSpec
    clients: int
    requests_per_client: int | None
    timeout_s: float | None = None


def _connected_client(url: str, timeout_s: float | None) -> StableDiffusionClient:
    client = StableDiffusionClient(url, timeout_s=timeout_s)
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    while not client.is_ready():
        if time.monotonic() > deadline:
            client.close()
            raise SdTritonError(f"{url} is not ready after {_CONNECT_TIMEOUT_S:.0f} s")
        time.sleep(0.1)
    return client


# A request's outcome, the error's message and the error's class name.
_Answer = tuple[Outcome, str, str]
_IMAGE: _Answer = (Outcome.OK, "", "")


def _failure(error: Exception) -> _Answer:
    """What a request that raised ``error`` ended in: the server's typed errors by their message; any other
    exception is a bug on the client side, a failed request of the load (not a hang)."""
    if isinstance(error, SdTritonError):
        return classify_error(str(error)), str(error), type(error).__name__
    return Outcome.FAILED, repr(error), type(error).__name__


def _record(
    load: str, request_class: str, client: int, origin: float, sent_at: float, answer: _Answer
) -> RequestRecord:
    """The record of a request sent at ``sent_at`` (``perf_counter``) and answered now; start times from ``origin``."""
    outcome, message, error_type = answer
    return RequestRecord(
        load=load,
        request_class=request_class,
        client=client,
        started_s=sent_at - origin,
        latency_ms=(time.perf_counter() - sent_at) * 1000.0,
        outcome=outcome,
        message=message,
        error_type=error_type,
    )


def _send(client: StableDiffusionClient, request: RequestSpec) -> _Answer:
    """Sends one request and waits for its answer."""
    try:
        client.generate(request.prompt, **request.client_parameters())
    except Exception as error:
        return _failure(error)
    return _IMAGE


async def _send_async(client: AsyncStableDiffusionClient, request: RequestSpec) -> _Answer:
    """:func:`_send` over the asyncio client."""
    try:
        await client.generate(request.prompt, **request.client_parameters())
    except Exception as error:
        return _failure(error)
    return _IMAGE


def _connected_clients(url: str, timeouts_s: Sequence[float | None]) -> list[StableDiffusionClient]:
    clients: list[StableDiffusionClient] = []
    try:
        for timeout_s in timeouts_s:
            clients.append(_connected_client(url, timeout_s))
    except BaseException:
        for client in clients:
            client.close()
        raise
    return clients


def run_classes(
    url: str, classes: Sequence[ClientClass], *, load: str, show_progress: bool = True
) -> tuple[list[RequestRecord], float]:
    """Runs every class's threads at once; returns their records and the load's duration (s).

    Threads of a class with ``requests_per_client`` None keep sending until the bounded classes are done
    (their last request may end after that). At least one class must be bounded.
    """
    bounded = [c for c in classes if c.requests_per_client is not None]
    if not bounded:
        raise ValueError("at least one class needs requests_per_client")
    threads_of = [(c, index) for c in classes for index in range(c.clients)]
    clients = _connected_clients(url, [c.timeout_s for c, _ in threads_of])
    records: list[RequestRecord] = []
    lock = threading.Lock()
    bounded_left = threading.Semaphore(0)
    stop = threading.Event()
    start = threading.Barrier(len(threads_of) + 1)
    total = sum(c.clients * (c.requests_per_client or 0) for c in bounded)
    progress = tqdm(total=total, desc=load, unit="request", disable=not show_progress)
    started = 0.0

    def work(client_class: ClientClass, client: StableDiffusionClient, client_index: int) -> None:
        try:
            send_all(client_class, client, client_index)
        finally:
            if client_class.requests_per_client is not None:
                bounded_left.release()

    def send_all(client_class: ClientClass, client: StableDiffusionClient, client_index: int) -> None:
        start.wait()
        sent = 0
        while True:
            if client_class.requests_per_client is None and stop.is_set():
                break
            if client_class.requests_per_client is not None and sent >= client_class.requests_per_client:
                break
            sent_at = time.perf_counter()
            answer = _send(client, client_class.request)
            record = _record(load, client_class.name, client_index, started, sent_at, answer)
            with lock:
                records.append(record)
                if client_class.requests_per_client is not None:
                    progress.update()
            sent += 1

    threads = [
        threading.Thread(target=work, args=(c, client, number), name=f"{load}-{c.name}-{index}", daemon=True)
        for number, ((c, index), client) in enumerate(zip(threads_of, clients, strict=True))
    ]
    try:
        for thread in threads:
            thread.start()
        started = time.perf_counter()
        start.wait()
        for _ in range(sum(c.clients for c in bounded)):
            bounded_left.acquire()
        stop.set()
        for thread in threads:
            thread.join()
        duration_s = time.perf_counter() - started
    finally:
        stop.set()
        progress.close()
        for client in clients:
            client.close()
    records.sort(key=lambda record: record.started_s)
    return records, duration_s


def run_burst(
    url: str,
    request: RequestSpec,
    *,
    count: int,
    timeout_s: float | None = None,
    load: str = BURST,
    show_progress: bool = True,
) -> list[RequestRecord]:
    """Sends ``count`` requests at once; returns one record each, by start time.

    Each request has its own asyncio client (its own gRPC channel, connected first), all on one event loop
    released together: a burst is many independent clients, and threads of one Python process would queue on its
    GIL to build and send their requests (measured: 24 threads spread their sends over 8-25 ms), which a user's
    separate clients never do. Each latency runs from that request's own call to its answer.
    """
    return asyncio.run(_burst(url, request, count=count, timeout_s=timeout_s, load=load, show_progress=show_progress))


async def _connected_async_client(url: str, timeout_s: float | None) -> AsyncStableDiffusionClient:
    client = AsyncStableDiffusionClient(url, timeout_s=timeout_s)
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    while not await client.is_ready():
        if time.monotonic() > deadline:
            await client.close()
            raise SdTritonError(f"{url} is not ready after {_CONNECT_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.1)
    return client


async def _burst(
    url: str, request: RequestSpec, *, count: int, timeout_s: float | None, load: str, show_progress: bool
) -> list[RequestRecord]:
    clients: list[AsyncStableDiffusionClient] = []
    records: list[RequestRecord] = []
    progress = tqdm(total=count, desc=load, unit="request", disable=not show_progress)
    release = asyncio.Event()
    origin = time.perf_counter()

    async def one(client: AsyncStableDiffusionClient, index: int) -> None:
        await release.wait()
        sent_at = time.perf_counter()
        answer = await _send_async(client, request)
        records.append(_record(load, BURST, index, origin, sent_at, answer))
        progress.update()

    try:
        for _ in range(count):
            clients.append(await _connected_async_client(url, timeout_s))
        tasks = [asyncio.create_task(one(client, index)) for index, client in enumerate(clients)]
        await asyncio.sleep(0)  # every task waits on the release
        origin = time.perf_counter()
        release.set()
        await asyncio.gather(*tasks)
    finally:
        progress.close()
        for client in clients:
            await client.close()
    records.sort(key=lambda record: record.started_s)
    return records
