"""What the engine reports to its observer (the server's metrics), with fake networks and a fake clock."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest

from sdtriton.serving.engine import DiffusionEngine, EngineLimits, RequestState
from sdtriton.serving.errors import ServerBusyError
from sdtriton.serving.metrics import ENDED_STATES, ENGINE_METRICS, MetricKind
from tests.unit.test_engine import CONFIG, FakeClock, FakeNetworks, _alone, _image, _request, _run

# What one fake UNet call takes on the fake clock.
UNET_CALL_S = 0.25


class ClockedNetworks(FakeNetworks):
    """The fake networks, each UNet call taking UNET_CALL_S on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def predict_noise(self, unet, inputs):
        self.clock.now += UNET_CALL_S
        return super().predict_noise(unet, inputs)


class RecordingObserver:
    def __init__(self) -> None:
        self.counts: list[tuple[int, int]] = []
        self.refusals = 0
        self.unet_calls: list[tuple[str, int, float]] = []
        self.iterations: list[tuple[int, float]] = []
        self.images: list[float] = []
        self.ended: Counter[str] = Counter()
        self.cache_lookups: list[tuple[str, bool]] = []

    def requests_changed(self, *, running: int, waiting: int) -> None:
        self.counts.append((running, waiting))

    def request_refused(self) -> None:
        self.refusals += 1

    def unet_called(self, *, unet: str, rows: int, duration_s: float) -> None:
        self.unet_calls.append((unet, rows, duration_s))

    def iteration_done(self, *, steps: int, duration_s: float) -> None:
        self.iterations.append((steps, duration_s))

    def image_finished(self, *, duration_s: float) -> None:
        self.images.append(duration_s)

    def request_ended(self, *, state: str) -> None:
        self.ended[state] += 1

    def cache_lookup(self, *, cache: str, hit: bool) -> None:
        self.cache_lookups.append((cache, hit))


def test_images_steps_unet_calls_and_endings_are_reported_as_they_happened() -> None:
    clock = FakeClock()
    networks = ClockedNetworks(clock)
    observer = RecordingObserver()
    engine = DiffusionEngine(config=CONFIG, networks=networks, clock=clock, observer=observer)
    pair, pair_sink = _request(1, _image(seed=1, steps=5, scheduler="ddim"), _image(seed=2, steps=5, scheduler="ddim"))
    single, single_sink = _request(2, _image(seed=3, steps=3, scheduler="euler", guidance=1.0))
    arrived_s = clock.now
    engine.submit(pair)
    engine.submit(single)
    iterations = _run(engine) + 1
    assert pair_sink.result is not None and single_sink.result is not None

    assert len(observer.images) == 3
    assert sum(steps for steps, _ in observer.iterations) == 5 + 5 + 3
    assert observer.ended == {"finished": 2}
    # Every UNet call, with its rows (two per guided image) and its time on the clock.
    assert [(unet, rows) for unet, rows, _ in observer.unet_calls] == networks.unet_calls
    assert sum(rows for _, rows, _ in observer.unet_calls) == 2 * 5 + 2 * 5 + 1 * 3
    assert all(seconds == UNET_CALL_S for _, _, seconds in observer.unet_calls)
    assert len(observer.iterations) == iterations == 5
    assert all(seconds == UNET_CALL_S for _, seconds in observer.iterations)
    # The 3-step request answers after 3 UNet calls, the pair after 5; each image counts from its arrival.
    assert sorted(observer.images) == [3 * UNET_CALL_S, 5 * UNET_CALL_S, 5 * UNET_CALL_S]
    assert clock.now - arrived_s == 5 * UNET_CALL_S
    assert observer.counts[-1] == (0, 0) == engine.counts()


def test_running_and_waiting_counts_follow_admission_and_endings() -> None:
    observer = RecordingObserver()
    engine = DiffusionEngine(
        config=CONFIG, networks=FakeNetworks(), limits=EngineLimits(max_running_images=1), observer=observer
    )
    for key in range(3):
        engine.submit(_request(key, _image(seed=key, steps=2, scheduler="ddim"))[0])
    assert observer.counts == [(0, 1), (0, 2), (0, 3)]
    engine.step()
    assert observer.counts[-1] == (1, 2) == engine.counts()
    engine.step()  # the first request's last step: it ends, the next is admitted at the next step
    assert observer.counts[-1] == (0, 2) == engine.counts()
    engine.step()
    assert observer.counts[-1] == (1, 1)
    _run(engine)
    assert observer.counts[-1] == (0, 0)
    assert observer.ended == {"finished": 3}


def test_cancelled_expired_failed_and_refused_requests_are_counted_once_each() -> None:
    clock = FakeClock()
    networks = FakeNetworks()
    observer = RecordingObserver()
    engine = DiffusionEngine(
        config=CONFIG,
        networks=networks,
        clock=clock,
        limits=EngineLimits(max_running_images=1, max_pending_requests=3),
        observer=observer,
    )
    engine.submit(_request(1, _image(seed=1, steps=20))[0])
    engine.submit(_request(2, _image(seed=2, steps=20), timeout_s=0.5)[0])
    engine.submit(_request(3, _image(seed=3, steps=20))[0])
    with pytest.raises(ServerBusyError):
        engine.check_room()
    with pytest.raises(ServerBusyError):
        engine.submit(_request(4, _image(seed=4))[0])
    assert observer.refusals == 2
    engine.step()
    engine.cancel(3)
    clock.now += 1.0
    engine.step()  # request 3 cancelled while queued, request 2 expired while queued
    assert observer.ended == {"cancelled": 1, "expired": 1}
    networks.fail_unet = True
    engine.step()
    assert observer.ended == {"cancelled": 1, "expired": 1, "failed": 1}
    assert observer.counts[-1] == (0, 0)
    engine.stop()
    with pytest.raises(ServerBusyError):
        engine.submit(_request(5, _image(seed=5))[0])
    assert observer.refusals == 3
    assert observer.images == []


def test_a_failing_observer_changes_no_answer_and_is_logged_once_per_report(caplog) -> None:
    class BrokenObserver(RecordingObserver):
        def __getattribute__(self, name: str):
            if name.startswith("_"):
                return super().__getattribute__(name)
            raise RuntimeError("metrics down")

    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks(), observer=BrokenObserver())
    image = _image(seed=7, steps=4)
    request, sink = _request(1, image)
    with caplog.at_level(logging.ERROR, logger="sdtriton.serving.metrics"):
        engine.submit(request)
        _run(engine)
    assert sink.endings == 1 and np.array_equal(sink.result.images[0], _alone(image))
    failed = [record.getMessage().split(":")[1].split()[0] for record in caplog.records]
    assert sorted(failed) == sorted(
        ["requests_changed", "unet_called", "iteration_done", "image_finished", "request_ended"]
    )


def test_the_ended_states_are_the_engine_final_states_and_every_metric_name_is_unique() -> None:
    final = tuple(state.value for state in RequestState if state not in (RequestState.QUEUED, RequestState.RUNNING))
    assert ENDED_STATES == final
    series = [name for spec in ENGINE_METRICS for name in spec.series_names]
    assert len(series) == len(set(series))
    assert all(spec.buckets for spec in ENGINE_METRICS if spec.kind is MetricKind.HISTOGRAM)
