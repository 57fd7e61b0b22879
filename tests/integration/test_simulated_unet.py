"""The simulated UNet in a real tritonserver: zeros of the sample's shape, after the modelled time, no CPU burnt.

The server holds the stand-in ``unet`` alone, so that these tests depend on no other model of the repository.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from sdtriton.components import UNET
from sdtriton.export.configs import CONFIG_FILE_NAME, parse_config_text
from sdtriton.export.variants import simulated_repository
from sdtriton.server import ModelStats
from sdtriton.serving.simulated import SimulatedLatency
from tests.conftest import serve
from tests.integration.processes import server_cpu_s

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

LATENCY = SimulatedLatency(fixed_ms=50, per_item_ms=10)
# Loopback HTTP, the server's queue and the shared-memory copies of a few small tensors cost milliseconds;
# a stand-in that burnt CPU or slept per request would be off by far more.
_OVERHEAD_LIMIT_S = 0.25
_LATENT_SIZE = 8  # latent height and width of the test requests (dynamic axes)
_CPU_CALLS = 6
_CPU_CALL_ROWS = 4
# The server's and stub's CPU time over a few calls, as a share of the time the stand-in slept.
_CPU_SHARE_LIMIT = 0.25
_CONCURRENT_REQUESTS = 8


@pytest.fixture(scope="module")
def simulated_server(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    repository = tmp_path_factory.mktemp("simulated") / "repository"
    simulated_repository(tiny_repository, repository, LATENCY, models=(UNET.model_name,))
    yield from serve(repository, tmp_path_factory)


@pytest.fixture(scope="module")
def client(simulated_server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(
        simulated_server.address.http_url.removeprefix("http://"), concurrency=_CONCURRENT_REQUESTS
    )
    yield client
    client.close()


@pytest.fixture(scope="module")
def item_shapes(simulated_server) -> dict[str, list[int]]:
    """Each UNet input's shape of one item, read from the served config (dynamic axes set to the test's size)."""
    config = parse_config_text((simulated_server.repository / UNET.model_name / CONFIG_FILE_NAME).read_text())
    shapes = {}
    for model_input in config.input:
        if model_input.HasField("reshape"):  # a per-item scalar travels as [batch, 1]
            shapes[model_input.name] = list(model_input.dims)
        else:
            shapes[model_input.name] = [_LATENT_SIZE if dim == -1 else dim for dim in model_input.dims]
    return shapes


def _inputs(item_shapes: dict[str, list[int]], rows: int) -> list[httpclient.InferInput]:
    rng = np.random.default_rng(rows)
    inputs = []
    for tensor in UNET.inputs:
        shape = [rows, *item_shapes[tensor.name]]
        value = httpclient.InferInput(tensor.name, shape, tensor.triton_dtype)
        value.set_data_from_numpy(rng.standard_normal(shape).astype(tensor.numpy_dtype))
        inputs.append(value)
    return inputs


def _timed_call(client: httpclient.InferenceServerClient, inputs: list[httpclient.InferInput]) -> tuple[object, float]:
    started = time.perf_counter()
    result = client.infer(UNET.model_name, inputs)
    return result, time.perf_counter() - started


@pytest.mark.parametrize("rows", [1, 4])
def test_answers_zeros_after_the_modelled_time(client, item_shapes, rows: int) -> None:
    inputs = _inputs(item_shapes, rows)
    _timed_call(client, inputs)  # the first call of a connection pays for setting it up

    result, elapsed_s = _timed_call(client, inputs)

    noise_pred = result.as_numpy(UNET.outputs[0].name)
    assert noise_pred.shape == (rows, *item_shapes["sample"])
    assert noise_pred.dtype == np.float32
    assert not noise_pred.any()
    modelled_s = LATENCY.call_s(rows)
    logger.info("%d rows: %.4f s measured, %.4f s modelled", rows, elapsed_s, modelled_s)
    assert modelled_s <= elapsed_s < modelled_s + _OVERHEAD_LIMIT_S, f"{rows} rows: {elapsed_s:.3f} s"


def test_sleeps_without_burning_cpu(simulated_server, client, item_shapes) -> None:
    inputs = _inputs(item_shapes, _CPU_CALL_ROWS)
    _timed_call(client, inputs)
    cpu_before_s = server_cpu_s(simulated_server.repository)
    assert cpu_before_s > 0, "found no tritonserver process by its repository"

    for _ in range(_CPU_CALLS):
        _timed_call(client, inputs)

    cpu_s = server_cpu_s(simulated_server.repository) - cpu_before_s
    slept_s = _CPU_CALLS * LATENCY.call_s(_CPU_CALL_ROWS)
    logger.info("%.3f s of server and stub CPU over %.3f s slept in %d calls", cpu_s, slept_s, _CPU_CALLS)
    assert cpu_s < _CPU_SHARE_LIMIT * slept_s, f"{cpu_s:.3f} s of CPU over {slept_s:.3f} s slept"


def test_joins_queued_requests_into_one_sleep(simulated_server, client, item_shapes) -> None:
    http_url = simulated_server.address.http_url
    inputs = _inputs(item_shapes, 1)
    before = ModelStats.fetch(http_url, UNET.model_name)

    started = time.perf_counter()
    pending = [client.async_infer(UNET.model_name, inputs) for _ in range(_CONCURRENT_REQUESTS)]
    results = [request.get_result() for request in pending]
    elapsed_s = time.perf_counter() - started

    delta = ModelStats.fetch(http_url, UNET.model_name).minus(before)
    logger.info("%d concurrent requests: %d calls, %.3f s", delta.requests, delta.executions, elapsed_s)
    assert all(not result.as_numpy(UNET.outputs[0].name).any() for result in results)
    assert delta.requests == _CONCURRENT_REQUESTS
    # Requests that queued while a call slept ran together: fewer calls, less time than one call each.
    assert delta.executions < _CONCURRENT_REQUESTS
    assert elapsed_s < _CONCURRENT_REQUESTS * LATENCY.call_s(1)
