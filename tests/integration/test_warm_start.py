""" "Ready" means warm: every network has run once before the server says ready (model_warmup in each component's
config, the image-to-image ``vae_encoder`` included), and the engine's own code has run a text-to-image and an
image-to-image request (``warm_up_engine_code``), so the first request of either kind after a start is as fast as the
ones after it."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.export.configs import CONFIG_FILE_NAME, parse_config_text
from sdtriton.server import ModelStats, process_group_cpu_s
from tests.conftest import serve
from tests.integration.oracle import start_picture

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

PROMPT = "a yellow star on a purple background"
WARM_REQUESTS = 5
# The goal is 1.2x (measured 1.01-1.17x on a quiet machine, 1.32x once under a loaded CI run: timing on 2
# shared cores is a benchmark's job, not a test's). The test holds a bound no warm server misses and a cold one
# would: without warm-up a GPU server's first request pays seconds of context and engine setup. It compares the CPU
# time the server's processes spend on each request, not wall time: beside the other test worker one request's wall
# time swung 0.66-1.59x the warm median (2.75x and 3.63x in runs that failed) while its CPU time stayed 0.81-1.15x.
MAX_FIRST_OVER_WARM = 2.0
COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def test_every_network_warms_up_before_ready(shapes_repository: Path) -> None:
    for model in COMPONENTS:
        config = parse_config_text((shapes_repository / model / CONFIG_FILE_NAME).read_text())
        (warmup,) = config.model_warmup
        assert warmup.batch_size == 2 and set(warmup.inputs) == {i.name for i in config.input}


def _executions(http_url: str) -> dict[str, int]:
    """Each component's executions so far, by Triton's model statistics (its model_warmup counts)."""
    return {model: ModelStats.fetch(http_url, model).executions for model in COMPONENTS}


def _first_and_warm_s(generate: Callable[[int], object], group: int) -> tuple[float, list[float], float, list[float]]:
    """Seconds of the first call of ``generate(seed)`` and of :data:`WARM_REQUESTS` after it, each as wall time and as
    the CPU time the server's process group (tritonserver and its stubs) spent on it."""
    times, cpu_times = [], []
    for seed in range(1, 2 + WARM_REQUESTS):
        began, began_cpu = time.perf_counter(), process_group_cpu_s(group)
        generate(seed)
        times.append(time.perf_counter() - began)
        cpu_times.append(process_group_cpu_s(group) - began_cpu)
    return times[0], times[1:], cpu_times[0], cpu_times[1:]


def test_the_first_request_after_ready_is_as_fast_as_the_next(
    shapes_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.perf_counter()
    server_run = serve(shapes_repository, tmp_path_factory)
    server = next(server_run)
    try:
        ready_s = time.perf_counter() - started
        # Before any request every network ran once, at load: the vae_encoder's ONNX Runtime session (a TensorRT
        # engine on a GPU) is not made by the first image-to-image request.
        assert _executions(server.address.http_url) == dict.fromkeys(COMPONENTS, 1)
        with StableDiffusionClient(server.address.grpc_url) as client:
            # The client's own first-call costs (connecting) are not the server's: connect first.
            assert client.is_ready()
            text = _first_and_warm_s(
                lambda seed: client.generate(PROMPT, seed=seed, num_inference_steps=20), server.pid
            )
            start_to_first_image_s = ready_s + text[0]
            picture = start_picture(*client.generate(PROMPT, seed=0, num_inference_steps=1).image.size)
            # The first image-to-image request, after text-to-image ones only.
            image = _first_and_warm_s(
                lambda seed: client.generate(PROMPT, seed=seed, num_inference_steps=20, image=picture, strength=0.6),
                server.pid,
            )
        log = server.log_path.read_text(errors="replace")
    finally:
        server_run.close()
    assert "code warmed up in" in log  # the engine's own code ran once before ready
    ratios = {}
    for kind, (first_s, warm_s, first_cpu_s, warm_cpu_s) in (("text", text), ("image", image)):
        ratios[kind] = first_cpu_s / statistics.median(warm_cpu_s)
        logger.warning(
            "%s-to-image: first request %.0f ms (CPU %.0f ms), warm median %.0f ms (CPU %.0f ms): wall %.2fx, "
            "CPU %.2fx",
            kind,
            first_s * 1000,
            first_cpu_s * 1000,
            statistics.median(warm_s) * 1000,
            statistics.median(warm_cpu_s) * 1000,
            first_s / statistics.median(warm_s),
            ratios[kind],
        )
    logger.info("start to ready %.1f s, to first image %.1f s", ready_s, start_to_first_image_s)
    for kind, ratio in ratios.items():
        assert ratio <= MAX_FIRST_OVER_WARM, f"the first {kind}-to-image request is {ratio:.2f}x a warm one"
