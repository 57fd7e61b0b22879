"""The diffusion engine's loop with fake networks and a fake clock: batching, joining, cancel, deadlines, limits."""

from __future__ import annotations

import dataclasses
import gc
import logging
import weakref
from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler

from sdtriton.interface import SCHEDULER_NAMES
from sdtriton.pipeline_config import PipelineConfig, SdxlConfig, SdxlRefinerConfig
from sdtriton.serving.conditioning import stages_for
from sdtriton.serving.denoise import ImageDenoiser, encode_image_text, generate_image, preprocess_image
from sdtriton.serving.engine import (
    DiffusionEngine,
    EngineLimits,
    EngineRequest,
    Finished,
    ImageRequest,
    Progress,
)
from sdtriton.serving.errors import DeadlineExceededError, RequestCancelledError, ServerBusyError
from sdtriton.serving.validation import GenerationParams

TOKENS = 8
HIDDEN = 4
CONFIG = PipelineConfig(
    latent_channels=4,
    vae_scale_factor=2,
    size_multiple=8,
    default_height=16,
    default_width=16,
    max_height=32,
    max_width=32,
    vae_scaling_factor=0.5,
    text_max_length=TOKENS,
    text_hidden_size=HIDDEN,
    scheduler_config={
        **PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True).config,
        "_class_name": "PNDMScheduler",
    },
    latent_rgb_projection=[[0.1, 0.2, 0.3]] * 4 + [[0.5, 0.5, 0.5]],
)


SDXL_CONFIG = dataclasses.replace(
    CONFIG,
    text_hidden_size=2 * HIDDEN,
    sdxl=SdxlConfig(
        text_hidden_sizes=(HIDDEN, HIDDEN),
        pooled_size=3,
        refiner=SdxlRefinerConfig(
            text_hidden_size=HIDDEN,
            time_ids=5,
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
            scheduler_config=CONFIG.scheduler_config,
        ),
    ),
)


def _states(input_ids: np.ndarray, offset: float) -> np.ndarray:
    ids = input_ids.astype(np.float32)[:, :, None]
    return np.tanh(ids / 50.0 + offset + np.arange(HIDDEN, dtype=np.float32)) * np.ones((1, TOKENS, HIDDEN), np.float32)


class FakeNetworks:
    """Row-wise deterministic stand-ins: a row's answer depends on that row alone, as a real network's does.

    They answer as SD's text encoder and UNet, and as SDXL's two encoders, base UNet and refiner UNet.
    """

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.unet_batches: list[int] = []
        self.unet_calls: list[tuple[str, int]] = []
        self.text_batches: list[int] = []
        self.vae_batches: list[int] = []
        self.encoder_batches: list[int] = []
        self.fail_unet = False

    def encode_text(
        self, encoder: str, input_ids: torch.Tensor, lora_scales: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        self.text_batches.append(len(input_ids))
        input_ids = input_ids.numpy()
        if encoder == "text_encoder":
            states = _states(input_ids, 0.0)
            return {
                "last_hidden_state": torch.from_numpy(states),
                "penultimate_hidden_state": torch.from_numpy(-states),
            }
        states = _states(input_ids, 1.0)
        pooled = np.ascontiguousarray(states.mean(axis=2)[:, :3])
        return {"penultimate_hidden_state": torch.from_numpy(states), "text_embeds": torch.from_numpy(pooled)}

    def predict_noise(self, unet: str, inputs) -> torch.Tensor:
        if self.fail_unet:
            raise RuntimeError("unet down")
        inputs = {name: value.numpy() for name, value in inputs.items()}
        sample, timestep = inputs["sample"], inputs["timestep"]
        # An inpainting UNet's sample carries the mask and the masked image's latents after the latents.
        sample, extra = sample[:, : CONFIG.latent_channels], sample[:, CONFIG.latent_channels :]
        self.unet_batches.append(len(sample))
        self.unet_calls.append((unet, len(sample)))
        text = inputs["encoder_hidden_states"].mean(axis=(1, 2))
        for name in ("text_embeds", "time_ids"):
            if name in inputs:
                text = text + 0.01 * inputs[name].mean(axis=1)
        if unet == "refiner_unet":
            text = -text
        noise = 0.3 * sample + 0.001 * timestep[:, None, None, None] + text[:, None, None, None]
        if extra.shape[1]:
            noise = noise + 0.1 * extra.mean(axis=1, keepdims=True)
        return torch.from_numpy(noise.astype(np.float32))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        self.vae_batches.append(len(latents))
        pixels = np.tanh(latents.numpy()[:, :3]).repeat(2, axis=2).repeat(2, axis=3)
        return torch.from_numpy(pixels.astype(np.float32))

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's 2x2 average (the VAE scale factor) as the mean of 4 channels, a small std."""
        self.encoder_batches.append(len(image))
        pooled = torch.nn.functional.avg_pool2d(image, 2)
        mean = torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1)
        return mean, 0.05 + 0.01 * mean.abs()


class RecordingSink:
    def __init__(self) -> None:
        self.progress_events: list[Progress] = []
        self.result: Finished | None = None
        self.error: Exception | None = None
        self.endings = 0

    def progress(self, progress: Progress) -> None:
        self.progress_events.append(progress)

    def finish(self, result: Finished) -> None:
        self.result = result
        self.endings += 1

    def fail(self, error: Exception) -> None:
        self.error = error
        self.endings += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _ids(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 400, size=TOKENS).astype(np.int64)


def _image(
    *,
    seed: int,
    steps: int = 6,
    guidance: float = 7.5,
    size: int = 16,
    scheduler: str | None = None,
    refiner_fraction: float = 0.0,
    negative_given: bool = True,
    strength: float | None = None,
):
    params = GenerationParams(
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
        width=size,
        height=size,
        scheduler=scheduler,
        refiner_fraction=refiner_fraction,
        strength=strength,
    )
    pixels = None
    if strength is not None:
        pixels = np.random.default_rng(seed + 77).integers(0, 256, size=(size, size, 3)).astype(np.uint8)
    encoders = ("text_encoder", "text_encoder_2")
    return ImageRequest(
        params=params,
        prompt_ids={encoder: _ids(seed + index) for index, encoder in enumerate(encoders)},
        negative_ids={encoder: _ids(seed + 1000 + index) for index, encoder in enumerate(encoders)},
        negative_given=negative_given,
        input_image=pixels,
    )


def _alone(image: ImageRequest, config: PipelineConfig = CONFIG) -> np.ndarray:
    return generate_image(image=image, config=config, components=FakeNetworks())


def _request(key: int, *images: ImageRequest, **options) -> tuple[EngineRequest, RecordingSink]:
    sink = RecordingSink()
    return EngineRequest(key=key, images=images, sink=sink, **options), sink


def _serve_each(engine: DiffusionEngine, images: list[ImageRequest]) -> list[RecordingSink]:
    """Submits each image as a request of its own, runs the engine until all end; their sinks, in order."""
    sinks = _submit_each(engine, images)
    _run(engine)
    return sinks


def _submit_each(engine: DiffusionEngine, images: list[ImageRequest]) -> list[RecordingSink]:
    """Submits each image as a request of its own (keys 0, 1, ...); returns their sinks."""
    sinks = []
    for key, image in enumerate(images):
        request, sink = _request(key, image)
        engine.submit(request)
        sinks.append(sink)
    return sinks


def _run(engine: DiffusionEngine, limit: int = 1000) -> int:
    iterations = 0
    while engine.step():
        iterations += 1
        assert iterations < limit
    return iterations


def test_a_batched_request_gives_the_image_it_gives_alone_for_every_scheduler() -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=CONFIG, networks=networks, limits=EngineLimits(max_running_images=16))
    images = [
        _image(
            seed=index,
            steps=3 + index % 4,
            guidance=[7.5, 1.0][index % 2],
            size=[16, 24][(index // 2) % 2],
            scheduler=name,
        )
        for index, name in enumerate(SCHEDULER_NAMES)
    ]
    sinks = _serve_each(engine, images)
    for image, sink in zip(images, sinks, strict=True):
        assert sink.endings == 1 and sink.error is None
        assert np.array_equal(sink.result.images[0], _alone(image))
        assert sink.result.seeds == (image.params.seed,)
    # Requests of one latent size share one UNet call per step: far fewer calls than images x steps.
    assert len(networks.unet_batches) < sum(len(_steps(image)) for image in images) / 2
    assert max(networks.unet_batches) > 2


@pytest.mark.parametrize("config", [CONFIG, SDXL_CONFIG], ids=["sd", "sdxl"])
def test_image_to_image_requests_share_steps_with_text_ones_and_give_their_images_alone(config) -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=config, networks=networks, limits=EngineLimits(max_running_images=16))
    fraction = 0.3 if config.sdxl is not None else 0.0
    images = [
        _image(seed=1, steps=8, scheduler="euler"),
        _image(seed=2, steps=8, scheduler="heun", strength=0.5),
        _image(seed=3, steps=8, scheduler="dpmpp_2m", strength=0.8, refiner_fraction=fraction),
        _image(seed=4, steps=8, scheduler="ddim", strength=1.0, guidance=1.0),
        _image(seed=5, steps=8, size=24, scheduler="lms", strength=0.6),
    ]
    sinks = _serve_each(engine, images)
    for image, sink in zip(images, sinks, strict=True):
        assert sink.error is None
        assert np.array_equal(sink.result.images[0], _alone(image, config))
    # One encoder call per image size for the images admitted together; text and image rows in one UNet call.
    assert sorted(networks.encoder_batches) == [1, 3]
    assert networks.unet_batches[0] == 2 + 2 + 2 + 1
    # int(steps x strength) steps run (Heun: twice a step but the first), and the input image changes the image.
    assert len(_steps(images[1], config)) == 2 * 4 - 1
    other_pixels = dataclasses.replace(images[3], input_image=255 - images[3].input_image)
    assert not np.array_equal(_alone(images[3], config), _alone(other_pixels, config))


INPAINTING_CONFIG = dataclasses.replace(CONFIG, unet_in_channels=2 * CONFIG.latent_channels + 1)


def _inpainting(image: ImageRequest, *, shift: int = 0) -> ImageRequest:
    """``image`` (an image-to-image one) with a mask: its lower right part repainted, the block moved by ``shift``."""
    side = image.params.height
    mask = np.zeros((side, side, 1), dtype=np.uint8)
    mask[side // 4 + shift :, side // 3 :] = 255
    return dataclasses.replace(image, params=dataclasses.replace(image.params, inpaint=True), mask_image=mask)


@pytest.mark.parametrize("config", [CONFIG, INPAINTING_CONFIG], ids=["plain_unet", "inpainting_unet"])
def test_inpainting_requests_share_steps_and_give_their_images_alone(config) -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=config, networks=networks, limits=EngineLimits(max_running_images=16))
    images = [
        _inpainting(_image(seed=1, steps=8, scheduler="euler_a", strength=1.0)),
        _inpainting(_image(seed=2, steps=8, scheduler="heun", strength=0.5)),
        _inpainting(_image(seed=3, steps=8, scheduler="ddim", strength=0.8, guidance=1.0)),
    ]
    if not config.inpainting_unet:  # an inpainting UNet takes inpainting images only
        images += [_image(seed=4, steps=8, scheduler="lms"), _image(seed=5, steps=8, scheduler="unipc", strength=0.6)]
    sinks = _serve_each(engine, images)
    for image, sink in zip(images, sinks, strict=True):
        assert sink.error is None
        assert np.array_equal(sink.result.images[0], _alone(image, config))
    # Every image's rows in the first UNet call: inpainting, image-to-image and text images of one UNet and size.
    assert networks.unet_batches[0] == sum(2 if image.params.guidance_scale > 1 else 1 for image in images)
    # The mask changes the image.
    assert not np.array_equal(_alone(images[1], config), _alone(_inpainting(images[1], shift=4), config))


def _steps(image: ImageRequest, config: PipelineConfig = CONFIG) -> list:
    networks = FakeNetworks()
    encoded = encode_image_text(image, config, networks)
    input_latents = None
    if image.input_image is not None:
        input_latents = networks.encode_image(preprocess_image(image.input_image))
    stages = stages_for(image, config, encoded)
    return ImageDenoiser(params=image.params, config=config, stages=stages, input_latents=input_latents).timesteps


def test_sdxl_images_with_and_without_the_refiner_are_exact_batched_and_never_mix_unets() -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=SDXL_CONFIG, networks=networks, limits=EngineLimits(max_running_images=16))
    images = [
        _image(seed=index, steps=8, guidance=[7.5, 1.0][index % 2], scheduler=name, refiner_fraction=fraction)
        for index, (name, fraction) in enumerate(
            [("euler", 0.0), ("heun", 0.3), ("dpmpp_2m", 0.5), ("euler_a", 0.2), ("ddim", 0.0), ("lms", 0.25)]
        )
    ]
    images.append(_image(seed=40, steps=8, negative_given=False, refiner_fraction=0.3))
    sinks = _serve_each(engine, images)
    for image, sink in zip(images, sinks, strict=True):
        assert sink.error is None
        assert np.array_equal(sink.result.images[0], _alone(image, SDXL_CONFIG))
    unets = {unet for unet, _ in networks.unet_calls}
    assert unets == {"unet", "refiner_unet"}
    # the refiner stage changes the image: the same request without it gives another one
    refined = images[2]
    plain = _image(seed=2, steps=8, scheduler="dpmpp_2m")
    assert not np.array_equal(_alone(refined, SDXL_CONFIG), _alone(plain, SDXL_CONFIG))


def test_the_refiner_stage_takes_the_low_noise_end_of_the_same_schedule() -> None:
    base_only = _steps(_image(seed=1, steps=10, scheduler="euler"), SDXL_CONFIG)
    refined = _steps(_image(seed=1, steps=10, scheduler="euler", refiner_fraction=0.2), SDXL_CONFIG)
    assert refined == base_only  # 8 base steps down to t >= 200, then the refiner's 2 below
    # A second-order scheduler: the refiner's share is made odd so that it ends after a step's second half
    # (diffusers' get_timesteps), which repeats the timestep where the base stopped.
    heun = _steps(_image(seed=1, steps=10, scheduler="heun", refiner_fraction=0.2), SDXL_CONFIG)
    assert len(heun) == len(_steps(_image(seed=1, steps=10, scheduler="heun"), SDXL_CONFIG)) + 1


def test_an_omitted_negative_prompt_is_zeros_only_where_the_pipeline_says_so() -> None:
    encoded = encode_image_text(_image(seed=3, negative_given=False), SDXL_CONFIG, FakeNetworks())
    base, refine = stages_for(_image(seed=3, negative_given=False, refiner_fraction=0.3), SDXL_CONFIG, encoded)
    assert not base.conditioning["encoder_hidden_states"][0].any()  # force_zeros_for_empty_prompt
    assert base.conditioning["encoder_hidden_states"][1].any()
    assert refine.conditioning["encoder_hidden_states"][0].any()  # the refiner encodes "" instead
    assert refine.conditioning["time_ids"].tolist() == [[16, 16, 0, 0, 2.5], [16, 16, 0, 0, 6.0]]
    assert base.conditioning["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 2


def test_a_request_joining_mid_flight_is_exact_and_shares_the_calls() -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=CONFIG, networks=networks)
    first_image, second_image = _image(seed=1, steps=10, scheduler="euler_a"), _image(seed=2, steps=4, guidance=1.0)
    first, first_sink = _request(1, first_image)
    engine.submit(first)
    for _ in range(3):
        engine.step()
    second, second_sink = _request(2, second_image)
    engine.submit(second)
    _run(engine)
    assert np.array_equal(first_sink.result.images[0], _alone(first_image))
    assert np.array_equal(second_sink.result.images[0], _alone(second_image))
    assert 3 in networks.unet_batches  # 2 guided rows + 1 unguided row in one call


def test_a_cancelled_request_leaves_at_the_next_step_and_its_neighbours_stay_exact() -> None:
    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks())
    kept_image = _image(seed=5, steps=8, scheduler="dpmpp_2m")
    kept, kept_sink = _request(1, kept_image)
    doomed, doomed_sink = _request(2, _image(seed=6, steps=8))
    engine.submit(kept)
    engine.submit(doomed)
    engine.step()
    engine.cancel(2)
    engine.step()
    assert isinstance(doomed_sink.error, RequestCancelledError) and doomed_sink.endings == 1
    _run(engine)
    assert np.array_equal(kept_sink.result.images[0], _alone(kept_image))


def test_a_polled_cancel_and_a_cancel_before_arrival_both_end_the_request() -> None:
    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks())
    flag = {"cancelled": False}
    polled, polled_sink = _request(1, _image(seed=1), is_cancelled=lambda: flag["cancelled"])
    engine.cancel(2)  # the cancel races ahead of its request
    early, early_sink = _request(2, _image(seed=2))
    engine.submit(polled)
    engine.submit(early)
    engine.step()
    assert isinstance(early_sink.error, RequestCancelledError)
    flag["cancelled"] = True
    _run(engine)
    assert isinstance(polled_sink.error, RequestCancelledError)


def test_deadlines_end_running_and_queued_requests_with_the_budget_named() -> None:
    clock = FakeClock()
    engine = DiffusionEngine(
        config=CONFIG, networks=FakeNetworks(), limits=EngineLimits(max_running_images=1), clock=clock
    )
    running, running_sink = _request(1, _image(seed=1, steps=20), timeout_s=2.0)
    queued, queued_sink = _request(2, _image(seed=2, steps=20), timeout_s=0.5)
    patient, patient_sink = _request(3, _image(seed=3, steps=3))
    for request in (running, queued, patient):
        engine.submit(request)
    engine.step()
    clock.now += 1.0
    engine.step()
    assert isinstance(queued_sink.error, DeadlineExceededError)
    assert "500 ms" in str(queued_sink.error) and "queued" in str(queued_sink.error)
    clock.now += 1.5
    engine.step()
    assert isinstance(running_sink.error, DeadlineExceededError)
    assert "2000 ms" in str(running_sink.error) and "at step" in str(running_sink.error)
    _run(engine)
    assert patient_sink.result is not None
    assert running_sink.endings == queued_sink.endings == patient_sink.endings == 1


def test_a_full_engine_refuses_at_once_and_frees_the_slot_when_a_request_ends() -> None:
    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks(), limits=EngineLimits(max_pending_requests=2))
    engine.submit(_request(1, _image(seed=1, steps=2))[0])
    engine.submit(_request(2, _image(seed=2, steps=2))[0])
    with pytest.raises(ServerBusyError, match="max_pending_requests 2"):
        engine.submit(_request(3, _image(seed=3))[0])
    _run(engine)
    engine.submit(_request(4, _image(seed=4, steps=2))[0])


class _Held:
    """Stands for the Triton request an adapter's frame holds while the engine refuses it."""


def test_a_refusal_leaves_no_reference_cycle_keeping_the_callers_frame() -> None:
    """A cycle through a refusal's traceback kept the pipeline's execute frame, and its Triton requests, until a full
    collection: at the stub's end, which crashed it (SIGSEGV in InferRequest::~InferRequest under Py_FinalizeEx)."""
    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks(), limits=EngineLimits(max_pending_requests=1))
    engine.submit(_request(1, _image(seed=1, steps=2))[0])

    def execute(refuse: Callable[[], None]) -> weakref.ref[_Held]:
        held = _Held()
        try:
            refuse()
        except ServerBusyError as error:
            assert "max_pending_requests 1" in str(error)
        else:
            raise AssertionError("not refused")
        return weakref.ref(held)

    gc.disable()
    try:
        # Refcounting alone frees the frame's objects once the refusal is handled: no cycle holds them.
        assert execute(engine.check_room)() is None
        assert execute(lambda: engine.submit(_request(2, _image(seed=2))[0]))() is None
    finally:
        gc.enable()
    _run(engine)


def test_a_short_request_is_not_starved_by_a_long_one() -> None:
    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks())
    long_request, long_sink = _request(1, _image(seed=1, steps=150, scheduler="ddim"))
    engine.submit(long_request)
    engine.step()
    short_request, short_sink = _request(2, _image(seed=2, steps=10, scheduler="ddim"))
    engine.submit(short_request)
    iterations = 0
    while short_sink.result is None:
        engine.step()
        iterations += 1
    assert iterations <= 11
    assert long_sink.result is None
    _run(engine)
    assert long_sink.result is not None


def test_progress_comes_once_per_step_in_order_with_previews_when_asked() -> None:
    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks())
    request, sink = _request(
        1,
        _image(seed=1, steps=6, scheduler="euler"),
        _image(seed=2, steps=6, scheduler="euler"),
        send_progress=True,
        preview_every=2,
    )
    quiet, quiet_sink = _request(2, _image(seed=3, steps=6))
    engine.submit(request)
    engine.submit(quiet)
    _run(engine)
    assert [event.steps_done for event in sink.progress_events] == [(i, i) for i in range(1, 7)]
    assert all(event.total_steps == (6, 6) for event in sink.progress_events)
    previews = [event.previews for event in sink.progress_events]
    assert [p is not None for p in previews] == [False, True, False, True, False, False]
    assert previews[1][0].shape == (8, 8, 3) and previews[1][0].dtype == np.uint8
    assert quiet_sink.progress_events == []
    assert len(sink.result.images) == 2


def test_a_network_failure_fails_the_requests_it_served_and_the_engine_goes_on() -> None:
    networks = FakeNetworks()
    engine = DiffusionEngine(config=CONFIG, networks=networks)
    request, sink = _request(1, _image(seed=1))
    engine.submit(request)
    networks.fail_unet = True
    engine.step()
    assert isinstance(sink.error, RuntimeError) and sink.endings == 1
    networks.fail_unet = False
    later_image = _image(seed=2, steps=3)
    later, later_sink = _request(2, later_image)
    engine.submit(later)
    _run(engine)
    assert np.array_equal(later_sink.result.images[0], _alone(later_image))


def test_the_loop_thread_serves_requests_and_stop_ends_what_it_holds() -> None:
    import threading

    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks())
    engine.start()
    try:
        image = _image(seed=1, steps=4)
        done = threading.Event()

        class Sink(RecordingSink):
            def finish(self, result: Finished) -> None:
                super().finish(result)
                done.set()

        sink = Sink()
        engine.submit(EngineRequest(key=1, images=(image,), sink=sink))
        assert done.wait(10)
        assert np.array_equal(sink.result.images[0], _alone(image))
    finally:
        engine.stop()
    with pytest.raises(ServerBusyError):
        engine.submit(_request(2, _image(seed=2))[0])


def test_log_lines_name_the_request_by_tritons_id(caplog: pytest.LogCaptureFixture) -> None:
    engine = DiffusionEngine(config=CONFIG, networks=FakeNetworks())
    cancelled, _ = _request(7, _image(seed=1, steps=4), request_id="client-id-42")
    engine.submit(cancelled)
    engine.step()
    with caplog.at_level(logging.DEBUG, logger="sdtriton.serving.engine"):
        engine.cancel(7)
        _run(engine)
        unnamed, _ = _request(8, _image(seed=2, steps=2))
        engine.submit(unnamed)
        _run(engine)
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("request client-id-42 (key 7) cancelled after") for line in lines), lines
    assert any(line.startswith("request - (key 8) finished after") for line in lines), lines
    assert {r.levelno for r in caplog.records if "key 7" in r.getMessage()} == {logging.INFO}
