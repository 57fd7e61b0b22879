"""Triton's request tracing follows a request from the entry into the engine.

The engine's network calls are not traced: Triton traces a BLS call only as the child of a live request's
trace, and a decoupled model's request (with its trace) is released when ``execute`` returns, long before the
engine's batched calls for it (passing it later crashed this Triton). Per-network time is in model statistics.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from sdtriton.client import StableDiffusionClient
from tests.conftest import serve

STEPS = 3  # with DDIM: one UNet call (a batch of 2 for guidance) per step


@pytest.fixture(scope="module")
def traced_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory):
    trace_file = tmp_path_factory.mktemp("trace") / "trace.json"
    arguments = (
        f"--trace-config=triton,file={trace_file}",
        "--trace-config=rate=1",
        "--trace-config=level=TIMESTAMPS",
        "--trace-config=triton,log-frequency=0",
    )
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
