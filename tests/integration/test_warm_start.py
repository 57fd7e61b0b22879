""" "Ready" means warm: every network has run once before the server says ready (model_warmup in each component's
config), so the first request after a start is as fast as the ones after it."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import pytest

from sdtriton.client import StableDiffusionClient
from sdtriton.export.configs import CONFIG_FILE_NAME, parse_config_text
from tests.conftest import serve

pytestmark = pytest.mark.integration
logger = logging.getLogger(__name__)

PROMPT = "a yellow star on a purple background"
WARM_REQUESTS = 5
# The goal is 1.2x (measured 1.01-1.17x on a quiet machine, 1.32x once under a loaded CI run: timing on 2
# shared cores is a benchmark's job, not a test's). The test holds a bound no warm server misses and a cold one
# would: without warm-up a GPU server's first request pays seconds of context and engine setup.
MAX_FIRST_OVER_WARM = 2.0


def test_every_network_warms_up_before_ready(shapes_repository: Path) -> None:
    for model in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        config = parse_config_text((shapes_repository / model / CONFIG_FILE_NAME).read_text())
        (warmup,) = config.model_warmup
        assert warmup.batch_size == 2 and set(warmup.inputs) == {i.name for i in config.input}


def test_the_first_request_after_ready_is_as_fast_as_the_next(
    shapes_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    started = time.perf_counter()
    server_run = serve(shapes_repository, tmp_path_factory)
    server = next(server_run)
    try:
        ready_s = time.perf_counter() - started
        with StableDiffusionClient(server.address.grpc_url) as client:
            # The client's own first-call costs (connecting) are not the server's: connect first.
            assert client.is_ready()
            began = time.perf_counter()
            client.generate(PROMPT, seed=1, num_inference_steps=20)
            first_s = time.perf_counter() - began
            start_to_first_image_s = time.perf_counter() - started
            warm_s = []
            for seed in range(2, 2 + WARM_REQUESTS):
                began = time.perf_counter()
                client.generate(PROMPT, seed=seed, num_inference_steps=20)
                warm_s.append(time.perf_counter() - began)
        log = server.log_path.read_text(errors="replace")
    finally:
        server_run.close()
    assert "code warmed up in" in log  # the engine's own code ran once before ready
    ratio = first_s / statistics.median(warm_s)
    logger.info(
        "start to ready %.1f s, to first image %.1f s; first request %.0f ms, warm median %.0f ms (%.2fx)",
        ready_s,
        start_to_first_image_s,
        first_s * 1000,
        statistics.median(warm_s) * 1000,
        ratio,
    )
    assert ratio <= MAX_FIRST_OVER_WARM, f"first request {first_s:.3f} s is {ratio:.2f}x a warm one"
