"""The engine's metrics on a real server's /metrics: counters move by exactly what was sent, the gauges show the
queue while long requests run, refusals, cancels and expiries are counted, latencies are histograms."""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from sdtriton.client import RequestCancelledError, RequestTimeoutError, ServerBusyError, StableDiffusionClient
from sdtriton.interface import ENTRY_MODEL_NAME, PIPELINE_MODEL_NAME, STREAM_ENTRY_MODEL_NAME
from sdtriton.serving.metrics import ENDED_STATES, ENGINE_METRICS, STEP_DURATION
from tests.conftest import ONE_IMAGE_MAX_PENDING, serve
from tests.integration.python_models import one_python_model

pytestmark = pytest.mark.integration

PROMPT = "a yellow star on a purple background"
# Long enough to hold the engine for the whole test (cancelled at its end): seconds a step on this CPU.
LONG = {"num_inference_steps": 150, "width": 128, "height": 128, "scheduler": "ddim", "guidance_scale": 7.5}
MAX_PENDING = ONE_IMAGE_MAX_PENDING
DASHBOARD = Path(__file__).resolve().parents[2] / "monitoring" / "grafana_dashboard.json"
_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Scrape:
    """One read of the server's /metrics: its samples and the kind of each family (``# TYPE`` lines)."""

    def __init__(self, url: str) -> None:
        with urllib.request.urlopen(url, timeout=10) as response:
            self.text = response.read().decode()
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.kinds: dict[str, str] = {}
        for line in self.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                self.kinds[name] = kind
            elif line and not line.startswith("#") and (match := _SAMPLE.match(line)):
                name, labels, value = match.groups()
                self.samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(
            value
            for sample, sample_labels, value in self.samples
            if sample == name and labels.items() <= sample_labels.items()
        )


@pytest.fixture(scope="module")
def server(one_image_server):
    """The tiny model denoising one image at a time and holding at most three requests (shared, tests/conftest.py)."""
    return one_image_server


def _scrape(server) -> Scrape:
    return Scrape(server.address.metrics_url)


def _wait_for(server, condition: Callable[[Scrape], bool], what: str, timeout_s: float = 20.0) -> Scrape:
    deadline = time.monotonic() + timeout_s
    while True:
        scrape = _scrape(server)
        if condition(scrape):
            return scrape
        assert time.monotonic() < deadline, f"{what} not seen within {timeout_s} s"
        time.sleep(0.05)


def _gauges(scrape: Scrape) -> tuple[float, float]:
    return (
        scrape.value("sdtriton_requests_running", model=PIPELINE_MODEL_NAME),
        scrape.value("sdtriton_requests_waiting", model=PIPELINE_MODEL_NAME),
    )


def test_every_metric_is_served_with_its_kind_and_the_limit(server):
    scrape = _scrape(server)
    # Those of a label value known only in use (a UNet, a cache) appear on first use; the others at load.
    for spec in ENGINE_METRICS:
        if not {"unet", "cache"} & set(spec.labels):
            assert scrape.kinds.get(spec.name) == spec.kind.value, spec.name
    # This Triton has histograms: every bucket (and +Inf), a sum and a count.
    buckets = [labels["le"] for name, labels, _ in scrape.samples if name == "sdtriton_step_duration_seconds_bucket"]
    assert [float(le) for le in buckets] == [*STEP_DURATION.buckets, float("inf")]
    assert {"sdtriton_step_duration_seconds_sum", "sdtriton_step_duration_seconds_count"} <= {
        name for name, _, _ in scrape.samples
    }
    assert scrape.value("sdtriton_requests_pending_limit", model=PIPELINE_MODEL_NAME) == MAX_PENDING


def test_counters_move_by_exactly_what_was_sent(server):
    before = _scrape(server)
    requests, steps = 2, 4
    with StableDiffusionClient(server.address.grpc_url) as client:
        for seed in range(requests):
            client.generate(PROMPT, seed=seed, num_inference_steps=steps, scheduler="euler", guidance_scale=7.5)
    after = _scrape(server)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, model=PIPELINE_MODEL_NAME, **labels) - before.value(
            name, model=PIPELINE_MODEL_NAME, **labels
        )

    assert moved("sdtriton_images_total") == requests
    assert moved("sdtriton_steps_total") == requests * steps
    assert moved("sdtriton_requests_ended_total", state="finished") == requests
    assert moved("sdtriton_image_duration_seconds_count") == requests
    # One image at a time: one iteration and one UNet call of two rows (guided) per step.
    assert moved("sdtriton_step_duration_seconds_count") == requests * steps
    assert moved("sdtriton_unet_batch_rows_count", unet="unet") == requests * steps
    assert moved("sdtriton_unet_batch_rows_sum", unet="unet") == 2 * requests * steps
    for latency in ("image_duration", "step_duration", "unet_call_duration"):
        assert moved(f"sdtriton_{latency}_seconds_sum") > 0, latency
    # Each image waits for its steps: its duration is at least the sum of its steps'.
    assert moved("sdtriton_image_duration_seconds_sum") >= moved("sdtriton_step_duration_seconds_sum")
    assert _gauges(after) == (0, 0)


def test_queue_refusals_cancels_and_expiries_show_as_they_happen(server):
    url = server.address.grpc_url
    before = _scrape(server)
    with StableDiffusionClient(url) as client, StableDiffusionClient(url, timeout_s=0.5) as hurried:
        held = [client.submit(PROMPT, seed=100 + index, **LONG) for index in range(MAX_PENDING)]
        try:
            # One image runs at a time: one request running, the others waiting.
            _wait_for(server, lambda scrape: _gauges(scrape) == (1, MAX_PENDING - 1), "1 running, 2 waiting")
            # stable_diffusion holds three: it refuses the fourth itself. The stream entry holds none and forwards,
            # and the engine, holding three, refuses.
            with pytest.raises(ServerBusyError):
                client.generate(PROMPT, seed=200, num_inference_steps=2)
            with pytest.raises(ServerBusyError):
                list(client.stream(PROMPT, seed=201, num_inference_steps=2))
            # A queued request cancelled leaves the queue; one with too short a budget expires in it.
            held[-1].cancel()
            with pytest.raises(RequestCancelledError):
                held[-1].result(timeout_s=10)
            _wait_for(server, lambda scrape: _gauges(scrape) == (1, 1), "1 running, 1 waiting after the cancel")
            with pytest.raises(RequestTimeoutError):
                hurried.generate(PROMPT, seed=202, num_inference_steps=2)
        finally:
            for pending in held:
                pending.cancel()
        for pending in held:
            with pytest.raises(RequestCancelledError):
                pending.result(timeout_s=10)
    after = _wait_for(server, lambda scrape: _gauges(scrape) == (0, 0), "an empty engine")

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("sdtriton_rejections_total", model=ENTRY_MODEL_NAME) == 1
    assert moved("sdtriton_rejections_total", model=PIPELINE_MODEL_NAME) == 1
    assert moved("sdtriton_rejections_total", model=STREAM_ENTRY_MODEL_NAME) == 0
    ended = {state: moved("sdtriton_requests_ended_total", state=state) for state in ENDED_STATES}
    assert ended == {"finished": 0, "cancelled": MAX_PENDING, "expired": 1, "failed": 0}
    assert moved("sdtriton_steps_total") > 0 and moved("sdtriton_images_total") == 0


def test_every_metric_the_dashboard_queries_is_on_the_server(server):
    from tests.unit.gateway_series import gateway_exposition
    from tests.unit.promql import metric_names

    with StableDiffusionClient(server.address.grpc_url) as client:
        client.generate(PROMPT, seed=300, num_inference_steps=2)  # every UNet's series exists once it was called
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set().union(*(metric_names(t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])))
    served = {name for name, _, _ in _scrape(server).samples}
    # The caches' counters have no series until a cache reports (there is none yet); the gateway's row is the
    # gateway's own /metrics (its series from the real app: tests/unit/test_monitoring_rules.py checks those).
    pending = {name for spec in ENGINE_METRICS if "cache" in spec.labels for name in spec.series_names}
    assert queried - served - pending - gateway_exposition().series == set()


# A Python model that updates one counter and one histogram from four threads at once, through the helpers every
# sdtriton adapter uses. Triton 2.51 dies with SIGSEGV at the first such request unless the calls are serialized
# (the engine updates its metrics from its own thread and from execute's; a clean-clone CI run crashed so).
_THREADED_METRICS_MODEL = """
import threading

import numpy as np
import triton_python_backend_utils as pb_utils

from sdtriton.serving.metrics import MetricKind, MetricSpec
from sdtriton.serving.triton_common import release_triton_objects, metric_families, new_metric

COUNTER = MetricSpec("sdtriton_threaded_updates_total", MetricKind.COUNTER, "updates")
HISTOGRAM = MetricSpec("sdtriton_threaded_update_values", MetricKind.HISTOGRAM, "values", buckets=(1.0,))


class TritonPythonModel:
    def initialize(self, args):
        self.families = metric_families((COUNTER, HISTOGRAM))
        self.counter = new_metric(self.families, COUNTER, "threaded")
        self.histogram = new_metric(self.families, HISTOGRAM, "threaded")

    def _update(self, count):
        for _ in range(count):
            self.counter.increment(1)
            self.histogram.observe(0.5)

    def execute(self, requests):
        responses = []
        for request in requests:
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            threads = [threading.Thread(target=self._update, args=(count,)) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("COUNT", np.array([count], np.int32))]))
        return responses

    def finalize(self):
        release_triton_objects(self.families, [self.counter, self.histogram])
"""


def test_metrics_updated_from_several_threads_at_once_keep_the_server_up(tmp_path_factory: pytest.TempPathFactory):
    import numpy as np
    import tritonclient.http as triton_http

    repository = one_python_model(
        tmp_path_factory.mktemp("threaded_metrics"), "threaded", _THREADED_METRICS_MODEL, tensor="COUNT"
    )
    requests, count = 5, 500
    with contextlib.closing(serve(repository, tmp_path_factory)) as servers:
        server = next(servers)
        client = triton_http.InferenceServerClient(server.address.http_url.removeprefix("http://"))
        try:
            for _ in range(requests):
                value = triton_http.InferInput("COUNT", [1], "INT32")
                value.set_data_from_numpy(np.array([count], np.int32))
                assert client.infer("threaded", [value]).as_numpy("COUNT")[0] == count
        finally:
            client.close()
        scrape = _scrape(server)
        assert server.running
        assert scrape.value("sdtriton_threaded_updates_total", model="threaded") == requests * 4 * count
        assert scrape.value("sdtriton_threaded_update_values_count", model="threaded") == requests * 4 * count
