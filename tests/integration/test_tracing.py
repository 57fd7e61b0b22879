"""Triton's request tracing follows a request from the entry into the engine, and never crashes the server.

A Python model's request (with its trace) is released when ``execute`` returns. The entries answer later from
their own threads, so they start the BLS stream to ``pipeline`` inside ``execute`` (it returns at the pipeline's
acceptance): started afterwards, the child trace was spawned from a freed one and tritonserver 2.51 died with
SIGSEGV in ``TraceManager::TraceActivity`` (measured: in the first round of six concurrent requests). The engine's
network calls are not traced: one call serves many requests whose traces ended with their ``execute``.
Per-network time is in model statistics and the engine's metrics.
"""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sdtriton.client import GenerationResult, StableDiffusionClient
from sdtriton.server import trace_args
from tests.conftest import serve

STEPS = 3  # with DDIM: one UNet call (a batch of 2 for guidance) per step


@pytest.fixture
def traced_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    trace_file = tmp_path_factory.mktemp("trace") / "trace.json"
    arguments = tuple(trace_args(trace_file, rate=1))  # what `sdtriton serve --trace FILE --trace-rate 1` uses
    for server in serve(tiny_repository, tmp_path_factory, extra_args=arguments):
        yield server, trace_file


def _traces(trace_file: Path) -> dict[int, dict]:
    """Trace id -> {"model_name", "parent_id", "timestamps": {name: ns}} from Triton's trace file."""
    traces: dict[int, dict] = defaultdict(lambda: {"timestamps": {}})
    for entry in json.loads(trace_file.read_text()):
        trace = traces[entry["id"]]
        for key in ("model_name", "parent_id"):
            if key in entry:
                trace[key] = entry[key]
        for stamp in entry.get("timestamps", []):
            trace["timestamps"][stamp["name"]] = stamp["ns"]
    return traces


def test_a_request_is_traced_from_the_entry_into_the_engine(traced_server) -> None:
    server, trace_file = traced_server
    with StableDiffusionClient(server.address.grpc_url) as client:
        client.generate("a red circle on a blue background", num_inference_steps=STEPS, seed=5, scheduler="ddim")
    server.stop()  # the trace file is complete once the server has shut down
    traces = _traces(trace_file)
    (entry_id,) = [trace_id for trace_id, trace in traces.items() if trace.get("model_name") == "stable_diffusion"]
    (pipeline,) = [trace for trace in traces.values() if trace.get("model_name") == "pipeline"]
    assert pipeline.get("parent_id") == entry_id
    for trace in (traces[entry_id], pipeline):
        stamps = trace["timestamps"]
        assert stamps["REQUEST_START"] <= stamps["COMPUTE_START"] <= stamps["REQUEST_END"]


def _one_of_a_mix(url: str, index: int) -> str:
    """One request of a mixed traced load: an image, a stream, or a stream the client leaves (a cancel)."""
    with StableDiffusionClient(url) as client:
        kind = ("image", "stream", "cancel")[index % 3]
        if kind == "image":
            client.generate("a blue square", num_inference_steps=8, seed=index, scheduler="euler")
            return kind
        events = client.stream("a green star", num_inference_steps=8, seed=index, scheduler="euler")
        for event in events:
            if kind == "cancel":
                events.close()  # leaving the stream cancels the request on the server
                return kind
            if isinstance(event, GenerationResult):
                return kind
        raise AssertionError(f"request {index}: the stream ended without an image")


def test_a_traced_concurrent_mix_keeps_the_server_up_and_every_request_traced(traced_server) -> None:
    """The load that crashed the server in its first round: concurrent images, streams and cancels, traced."""
    server, trace_file = traced_server
    rounds, concurrency = 3, 6
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            kinds = list(pool.map(lambda i: _one_of_a_mix(server.address.grpc_url, i), range(concurrency)))
            assert server.running, "tritonserver died under tracing"
            assert sorted(kinds) == ["cancel", "cancel", "image", "image", "stream", "stream"]
    exit_code = server.stop()
    assert exit_code == 0
    traces = _traces(trace_file)
    entries = {i for i, t in traces.items() if t.get("model_name") in ("stable_diffusion", "stable_diffusion_stream")}
    children = [t for t in traces.values() if t.get("model_name") == "pipeline"]
    assert len(entries) == rounds * concurrency
    assert sorted(t.get("parent_id") for t in children) == sorted(entries)
