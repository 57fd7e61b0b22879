"""The engine's caches with fake networks: the LRU's bounds, the response cache's key and its seeded-only rule,
the text-embedding cache's skipped rows, and images exactly equal to uncached ones."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sdtriton.serving.caches import RESPONSE_CACHE, TEXT_EMBEDDING_CACHE, LruCache, response_key, text_row_key
from sdtriton.serving.engine import DiffusionEngine, EngineLimits, EngineRequest
from sdtriton.serving.errors import ServerBusyError
from sdtriton.serving.metrics import NoObserver
from tests.unit.test_engine import CONFIG, SDXL_CONFIG, FakeNetworks, RecordingSink, _alone, _image, _run


class CountingObserver(NoObserver):
    """Records cache lookups, images and endings; every other report is ignored."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, bool]] = []
        self.images = 0
        self.ended: list[str] = []

    def image_finished(self, *, duration_s: float) -> None:
        self.images += 1

    def request_ended(self, *, state: str) -> None:
        self.ended.append(state)

    def cache_lookup(self, *, cache: str, hit: bool) -> None:
        self.lookups.append((cache, hit))

    def hits(self, cache: str) -> int:
        return sum(hit for name, hit in self.lookups if name == cache)

    def count(self, cache: str) -> int:
        return sum(name == cache for name, _ in self.lookups)


CACHED = EngineLimits(response_cache_bytes=2**20, text_cache_entries=64)


def _engine(limits: EngineLimits = CACHED, config=CONFIG):
    networks, observer = FakeNetworks(), CountingObserver()
    return DiffusionEngine(config=config, networks=networks, limits=limits, observer=observer), networks, observer


def _send(engine: DiffusionEngine, key: int, *images, **options) -> RecordingSink:
    sink = RecordingSink()
    engine.submit(EngineRequest(key=key, images=images, sink=sink, **options))
    _run(engine)
    assert sink.endings == 1 and sink.error is None
    return sink


# ---- the LRU ----------------------------------------------------------------------------------------------


def test_the_lru_holds_at_most_its_capacity_and_evicts_the_least_recently_used() -> None:
    cache: LruCache[str, bytes] = LruCache(capacity=10, cost=len)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # "a" is now more recent than "b"
    cache.put("c", b"1234")  # 12 > 10: the least recently used ("b") goes
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    assert cache.held == 8
    cache.put("d", b"123456789")  # 9: everything else goes
    assert len(cache) == 1 and cache.held == 9
    cache.put("e", b"12345678901")  # larger than the whole capacity: not stored, nothing evicted
    assert "e" not in cache and "d" in cache
    cache.put("d", b"1")  # replacing an entry replaces its cost
    assert cache.held == 1


def test_an_lru_of_capacity_0_is_off() -> None:
    cache: LruCache[str, int] = LruCache(capacity=0)
    cache.put("a", 1)
    assert not cache.enabled and cache.get("a") is None and len(cache) == 0
    with pytest.raises(ValueError, match="capacity"):
        LruCache(capacity=-1)


def test_the_response_key_holds_every_parameter_and_both_prompts() -> None:
    base = _image(seed=5)
    variants = [
        dataclasses.replace(base, params=dataclasses.replace(base.params, **change))
        for change in (
            {"seed": 6},
            {"num_inference_steps": 7},
            {"guidance_scale": 5.0},
            {"scheduler": "euler"},
            {"width": 32},
            {"refiner_fraction": 0.2},
        )
    ]
    variants.append(dataclasses.replace(base, negative_given=False))
    variants.append(
        dataclasses.replace(base, prompt_ids={**base.prompt_ids, "text_encoder": base.prompt_ids["text_encoder"] + 1})
    )
    variants.append(
        dataclasses.replace(
            base, negative_ids={**base.negative_ids, "text_encoder_2": base.negative_ids["text_encoder_2"] + 1}
        )
    )
    keys = {response_key([base]), *(response_key([variant]) for variant in variants)}
    assert len(keys) == 1 + len(variants)
    # Equal inputs (new arrays of the same ids) give the same key; images are keyed in order.
    same = dataclasses.replace(base, prompt_ids={name: ids.copy() for name, ids in base.prompt_ids.items()})
    assert response_key([same]) == response_key([base])
    assert response_key([base, variants[0]]) != response_key([variants[0], base])


# ---- the response cache -------------------------------------------------------------------------------------


def test_a_seeded_request_again_is_answered_at_once_with_the_same_bytes() -> None:
    engine, networks, observer = _engine()
    image = _image(seed=3, steps=5)
    first = _send(engine, 1, image, seeded=True)
    unet_calls = len(networks.unet_batches)
    sink = RecordingSink()
    engine.submit(EngineRequest(key=2, images=(image,), sink=sink, seeded=True))
    # Answered inside submit: nothing queued, no network called.
    assert sink.endings == 1 and engine.counts() == (0, 0)
    assert len(networks.unet_batches) == unet_calls
    assert sink.result.images[0].tobytes() == first.result.images[0].tobytes()
    assert sink.result.seeds == first.result.seeds == (3,)
    assert observer.lookups.count((RESPONSE_CACHE, True)) == 1 and observer.count(RESPONSE_CACHE) == 2
    # A hit is an answered request with its images in the metrics.
    assert observer.images == 2 and observer.ended == ["finished", "finished"]
    # What a sink does with its arrays never reaches the cache.
    sink.result.images[0][:] = 0
    again = RecordingSink()
    engine.submit(EngineRequest(key=3, images=(image,), sink=again, seeded=True))
    assert np.array_equal(again.result.images[0], first.result.images[0])


@pytest.mark.parametrize(
    "change",
    [{"seed": 4}, {"num_inference_steps": 6}, {"scheduler": "euler"}, {"guidance_scale": 3.0}],
)
def test_a_request_differing_in_any_parameter_misses(change: dict) -> None:
    engine, _, observer = _engine()
    image = _image(seed=3, steps=5)
    _send(engine, 1, image, seeded=True)
    other = dataclasses.replace(image, params=dataclasses.replace(image.params, **change))
    sink = _send(engine, 2, other, seeded=True)
    assert observer.hits(RESPONSE_CACHE) == 0
    assert np.array_equal(sink.result.images[0], _alone(other))


def test_a_different_negative_prompt_misses() -> None:
    engine, _, observer = _engine()
    image = _image(seed=3, steps=5)
    _send(engine, 1, image, seeded=True)
    other = dataclasses.replace(image, negative_ids={name: ids + 1 for name, ids in image.negative_ids.items()})
    _send(engine, 2, other, seeded=True)
    assert observer.hits(RESPONSE_CACHE) == 0


def test_an_unseeded_request_never_fills_and_is_never_answered_from_the_cache() -> None:
    engine, networks, observer = _engine()
    image = _image(seed=3, steps=5)
    _send(engine, 1, image)  # its seed was drawn by the server: not kept
    _send(engine, 2, image)
    assert observer.count(RESPONSE_CACHE) == 0
    _send(engine, 3, image, seeded=True)  # seeded: looked up (a miss, nothing was kept), then kept
    assert observer.lookups.count((RESPONSE_CACHE, False)) == 1 and observer.hits(RESPONSE_CACHE) == 0
    batches = len(networks.unet_batches)
    _send(engine, 4, image)  # unseeded, though an identical seeded one is kept: computed again
    assert len(networks.unet_batches) > batches and observer.hits(RESPONSE_CACHE) == 0


def test_a_streamed_request_fills_the_cache_but_is_never_answered_from_it() -> None:
    engine, _, observer = _engine()
    image = _image(seed=3, steps=5)
    streamed = _send(engine, 1, image, seeded=True, send_progress=True)
    again = _send(engine, 2, image, seeded=True, send_progress=True)
    # The stream wants its progress: computed again, every step reported, never looked up.
    assert len(again.progress_events) == len(streamed.progress_events) >= 5
    assert observer.count(RESPONSE_CACHE) == 0
    sink = RecordingSink()
    engine.submit(EngineRequest(key=3, images=(image,), sink=sink, seeded=True))
    assert sink.result.images[0].tobytes() == streamed.result.images[0].tobytes()
    assert observer.hits(RESPONSE_CACHE) == 1


def test_a_hit_is_answered_even_when_the_engine_is_full() -> None:
    limits = dataclasses.replace(CACHED, max_pending_requests=1)
    engine, _, observer = _engine(limits)
    image = _image(seed=3, steps=3)
    _send(engine, 1, image, seeded=True)
    engine.submit(EngineRequest(key=2, images=(_image(seed=9),), sink=RecordingSink(), seeded=True))  # holds it
    with pytest.raises(ServerBusyError):
        engine.submit(EngineRequest(key=3, images=(_image(seed=10),), sink=RecordingSink(), seeded=True))
    sink = RecordingSink()
    engine.submit(EngineRequest(key=4, images=(image,), sink=sink, seeded=True))
    assert sink.result is not None and observer.hits(RESPONSE_CACHE) == 1


def test_the_response_cache_keeps_only_what_fits_its_bytes() -> None:
    one_image = 16 * 16 * 3  # FakeNetworks decode 16x16 pixels from the default 16x16 request's latents x2 /2
    limits = dataclasses.replace(CACHED, response_cache_bytes=2 * one_image)
    engine, _, observer = _engine(limits)
    images = [_image(seed=seed, steps=2) for seed in (1, 2, 3)]
    for key, image in enumerate(images):
        _send(engine, key, image, seeded=True)
    assert engine._responses.held == 2 * one_image  # the bound itself is what is tested
    _send(engine, 10, images[0], seeded=True)  # evicted by the third: computed again
    assert observer.hits(RESPONSE_CACHE) == 0
    hit = RecordingSink()
    engine.submit(EngineRequest(key=11, images=(images[2],), sink=hit, seeded=True))
    assert hit.result is not None and observer.hits(RESPONSE_CACHE) == 1


# ---- the text-embedding cache -------------------------------------------------------------------------------


def test_a_repeated_prompt_skips_the_text_encoder_and_gives_the_uncached_image() -> None:
    engine, networks, observer = _engine()
    image = _image(seed=3, steps=4)
    _send(engine, 1, image)
    assert sum(networks.text_batches) == 2  # guided: [negative, prompt]
    new_seed = dataclasses.replace(image, params=dataclasses.replace(image.params, seed=77))
    sink = _send(engine, 2, new_seed)
    assert sum(networks.text_batches) == 2  # both rows came from the cache
    assert observer.hits(TEXT_EMBEDDING_CACHE) == 2
    assert np.array_equal(sink.result.images[0], _alone(new_seed))


def test_a_common_negative_prompt_hits_across_prompts_and_repeats_in_one_call_are_encoded_once() -> None:
    engine, networks, observer = _engine()
    a, b, c = (_image(seed=seed, steps=3) for seed in (3, 4, 5))
    shared = a.negative_ids
    b, c = (dataclasses.replace(image, negative_ids=shared) for image in (b, c))
    _send(engine, 1, a)
    # b and c admitted together: their common negative is a hit; their prompts are misses, encoded in one call.
    engine.submit(EngineRequest(key=2, images=(b,), sink=(sink_b := RecordingSink())))
    engine.submit(EngineRequest(key=3, images=(c, c), sink=(sink_c := RecordingSink())))
    _run(engine)
    assert networks.text_batches == [2, 2]  # a's two rows, then b's and c's prompts (c's twice: once)
    # b's negative and c's two: hits; c's second prompt missed the cache too (it was in no cache before the call).
    assert observer.hits(TEXT_EMBEDDING_CACHE) == 3 and observer.count(TEXT_EMBEDDING_CACHE) == 2 + 6
    assert np.array_equal(sink_b.result.images[0], _alone(b))
    assert all(np.array_equal(image, _alone(c)) for image in sink_c.result.images)


def test_sdxl_rows_of_both_encoders_are_cached_and_exact() -> None:
    engine, networks, observer = _engine(config=SDXL_CONFIG)
    image = _image(seed=3, steps=3, negative_given=False)
    _send(engine, 1, image)
    again = dataclasses.replace(image, params=dataclasses.replace(image.params, seed=8))
    sink = _send(engine, 2, again)
    assert sum(networks.text_batches) == 4 and observer.hits(TEXT_EMBEDDING_CACHE) == 4
    assert np.array_equal(sink.result.images[0], _alone(again, SDXL_CONFIG))


def test_both_caches_off_at_0() -> None:
    engine, networks, observer = _engine(EngineLimits())
    image = _image(seed=3, steps=3)
    _send(engine, 1, image, seeded=True)
    sink = _send(engine, 2, image, seeded=True)
    assert sum(networks.text_batches) == 4 and len(networks.vae_batches) == 2
    assert observer.lookups == []
    assert np.array_equal(sink.result.images[0], _alone(image))


def test_a_text_row_key_carries_the_rows_adapter_and_scale() -> None:
    ids = np.arange(5)
    style = text_row_key("text_encoder", ids, np.array([0.5, 0.0], dtype=np.float32))
    assert style != text_row_key("text_encoder", ids, np.array([1.0, 0.0], dtype=np.float32))  # another scale
    assert style != text_row_key("text_encoder", ids, np.array([0.0, 0.5], dtype=np.float32))  # another adapter
    assert style == text_row_key("text_encoder", ids.astype(np.int32), np.array([0.5, 0.0]))  # the same row
