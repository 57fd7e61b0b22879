"""The engine's caches through a real server (the tiny repository, exported with both caches on by default):
a seeded request again is answered at once with the same bytes and counted, an unseeded one never is, a
repeated prompt skips the text encoder and gives the uncached image, and the stream still streams."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from sdtriton.client import GenerationResult, Progress, StableDiffusionClient
from tests.integration.test_metrics import Scrape

pytestmark = pytest.mark.integration

# Prompts of this file only: no other test of the session fills the caches with them.
PROMPT = "a cached teal square above a grey line"
# Seconds of work on this CPU, so that a hit's few milliseconds stand out.
SLOW = {"num_inference_steps": 20, "width": 128, "height": 128, "scheduler": "euler", "guidance_scale": 7.5}


def _counts(server, cache: str) -> tuple[float, float]:
    scrape = Scrape(server.address.metrics_url)
    return scrape.value("sdtriton_cache_lookups_total", cache=cache), scrape.value(
        "sdtriton_cache_hits_total", cache=cache
    )


def _png(result: GenerationResult) -> bytes:
    buffer = io.BytesIO()
    result.image.save(buffer, format="PNG")
    return buffer.getvalue()


def _timed(call) -> tuple[GenerationResult, float]:
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def test_a_seeded_request_again_is_a_counted_byte_identical_hit(triton_server, grpc_url, http_url):
    lookups, hits = _counts(triton_server, "response")
    with StableDiffusionClient(grpc_url) as client:
        first, miss_s = _timed(lambda: client.generate(PROMPT, seed=1234, **SLOW))
    assert _counts(triton_server, "response") == (lookups + 1, hits)
    with StableDiffusionClient(http_url) as client:  # the same entry over HTTP
        second, hit_s = _timed(lambda: client.generate(PROMPT, seed=1234, **SLOW))
    assert _counts(triton_server, "response") == (lookups + 2, hits + 1)
    assert np.asarray(second.image).tobytes() == np.asarray(first.image).tobytes()
    assert _png(second) == _png(first) and second.seed == first.seed == 1234
    print(f"response cache: miss {miss_s * 1000:.0f} ms, hit {hit_s * 1000:.1f} ms")
    assert hit_s < miss_s / 5


def test_an_unseeded_request_is_never_answered_from_the_cache(triton_server, grpc_url):
    import tritonclient.grpc as grpcclient

    from sdtriton.client.client import build_inputs, read_result, requested_outputs

    lookups, hits = _counts(triton_server, "response")
    client = grpcclient.InferenceServerClient(grpc_url.removeprefix("grpc://"))
    try:
        # No seed tensor at all (the client library draws one; a raw request need not).
        inputs = build_inputs(grpcclient, ["an unseeded cached circle"], num_inference_steps=4)
        results = [
            read_result(client.infer("stable_diffusion", inputs, outputs=requested_outputs(grpcclient)))
            for _ in range(2)
        ]
    finally:
        client.close()
    assert results[0].seeds != results[1].seeds
    assert np.asarray(results[0].images[0]).tobytes() != np.asarray(results[1].images[0]).tobytes()
    assert _counts(triton_server, "response") == (lookups, hits)  # not even looked up


def test_a_repeated_prompt_skips_the_text_encoder_and_the_stream_still_streams(triton_server, grpc_url):
    prompt = "a cached orange ring on white"
    kwargs = {"seed": 77, "num_inference_steps": 6, "scheduler": "euler", "guidance_scale": 7.5}
    text_lookups, text_hits = _counts(triton_server, "text_embedding")
    with StableDiffusionClient(grpc_url) as client:
        uncached = client.generate(prompt, **kwargs)  # both rows ([negative, prompt]) looked up
        after_first = _counts(triton_server, "text_embedding")
        # The prompt's row is new; the negative's ("") may be cached already by another request.
        assert after_first[0] == text_lookups + 2 and after_first[1] - text_hits <= 1
        response = _counts(triton_server, "response")
        # The same request through the stream: never answered from the response cache (it wants progress);
        # its two rows come from the text-embedding cache, and its image is the uncached one.
        events = list(client.stream(prompt, **kwargs))
        assert _counts(triton_server, "response") == response
        assert _counts(triton_server, "text_embedding") == (after_first[0] + 2, after_first[1] + 2)
        progress = [event for event in events if isinstance(event, Progress)]
        assert [event.steps_done[0] for event in progress] == list(range(1, kwargs["num_inference_steps"] + 1))
        (streamed,) = [event for event in events if isinstance(event, GenerationResult)]
        assert np.asarray(streamed.image).tobytes() == np.asarray(uncached.image).tobytes()
        # A new seed for the repeated prompt: text hits again, a new image.
        other = client.generate(prompt, **{**kwargs, "seed": 78})
    assert _counts(triton_server, "text_embedding") == (after_first[0] + 4, after_first[1] + 4)
    assert np.asarray(other.image).tobytes() != np.asarray(uncached.image).tobytes()
