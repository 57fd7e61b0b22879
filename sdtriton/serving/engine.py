"""The diffusion engine: one loop owns every in-flight request and advances them together, step by step.

Each iteration (:meth:`DiffusionEngine.step`) is, in order:

1. retire: end the requests the client cancelled and those whose time budget ran out, queued or running;
2. admit: move queued requests into the running set while it has room for their images (FIFO);
3. start: encode the prompts of the admitted requests in one call per text encoder, the input images of the
   image-to-image ones (and an inpainting UNet's masked images) in one VAE-encoder call per image size, draw their
   latents;
4. denoise: one UNet call per UNet and latent size for every running image (per-image timesteps; guided images
   send two rows, unguided one), then each image's own scheduler step with its own generator; an SDXL
   image moves from the base UNet to the refiner's mid-way, and never shares a call with the other UNet;
5. report: progress (and previews) to the requests that asked for it;
6. finish: decode the finished images of all requests together (an image decoded in tiles, as diffusers'
   ``vae.enable_tiling()``, sends its tiles: tiles of one shape share calls, whichever images they come from),
   answer each finished request.

Requests join between steps and leave when done, cancelled or expired, so a 10-step request sent while a
150-step one runs finishes after its own 10 steps. Every image is computed by
:class:`~sdtriton.serving.denoise.ImageDenoiser`, the code that computes it alone, so batching changes no image
beyond the networks' own rounding. The engine is pure code: the networks, the clock and the answers go through
small interfaces; the Triton adapter feeds it requests and its sinks send responses. What it does (queue changes,
UNet calls, iterations, images, endings, refusals) it tells an :class:`~sdtriton.serving.metrics.EngineObserver`:
the server's metrics.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

import numpy as np
import torch

from sdtriton import interface
from sdtriton.components import VAE_ENCODER_MODEL_NAME, components_of, text_encoders_of
from sdtriton.pipeline_config import PipelineConfig, VaeTiling
from sdtriton.schedulers import image_to_image_noise_method
from sdtriton.serving.caches import (
    RESPONSE_CACHE,
    TEXT_EMBEDDING_CACHE,
    LruCache,
    images_nbytes,
    response_key,
    text_row_key,
)
from sdtriton.serving.conditioning import ImageRequest, lora_scales_for, stages_for, text_ids_for
from sdtriton.serving.denoise import (
    INPUT_PICTURE,
    MASKED_PICTURE,
    ImageDenoiser,
    LatentDistribution,
    pictures_to_encode,
    to_uint8_image,
)
from sdtriton.serving.errors import DeadlineExceededError, RequestCancelledError, ServerBusyError
from sdtriton.serving.metrics import EngineObserver, GuardedObserver, NoObserver
from sdtriton.serving.preview import latents_to_preview
from sdtriton.serving.requests import parse_request
from sdtriton.serving.tiling import TileGrid, cut_tiles, join_moments, join_tiles, tiling_of

logger = logging.getLogger(__name__)

# How long the idle loop sleeps between looks at the queue; submit() and cancel() wake it at once.
_IDLE_WAIT_S = 0.5
# A cancel that arrives before its request (two calls racing through the server) is kept this long.
_EARLY_CANCEL_KEEP_S = 60.0
# What a VAE call takes per image (pixels, denoisers) and answers (:meth:`DiffusionEngine._vae_calls`).
_Item = TypeVar("_Item")
_Answer = TypeVar("_Answer")


class RequestState(enum.Enum):
    """Where a request is; it changes only in :meth:`DiffusionEngine._end` and at admission."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"


@dataclass(frozen=True)
class EngineLimits:
    """How much the engine holds and how large its network calls may be.

    Attributes:
        max_running_images: images denoised together (one UNet call's items); 1 turns step batching off.
        max_pending_requests: running plus queued requests; one more is refused at once (``UNAVAILABLE``).
        max_unet_rows: rows of one UNet call (a guided image sends two); larger sets are split into calls.
        max_text_rows: rows of one text-encoder call.
        max_vae_rows: rows of one VAE-decoder (or VAE-encoder) call.
        response_cache_bytes: the most image bytes the response cache holds (0: off). A non-streaming request
            whose every seed was sent is answered from it when an identical one finished before.
        text_cache_entries: the most text-encoder rows the prompt-embedding cache holds (0: off); a row found
            there skips the text encoder.

    Both caches are off unless configured: ``sdtriton export`` turns them on (``RenderOptions``), so a repository
    exported before they existed serves as it did.
    """

    max_running_images: int = 8
    max_pending_requests: int = 32
    max_unet_rows: int = 16
    max_text_rows: int = 8
    max_vae_rows: int = 8
    response_cache_bytes: int = 0
    text_cache_entries: int = 0

    def __post_init__(self) -> None:
        for name in ("max_running_images", "max_pending_requests", "max_unet_rows", "max_text_rows", "max_vae_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("response_cache_bytes", "text_cache_entries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0 (0: off), got {getattr(self, name)}")
        if self.max_unet_rows < 2:
            raise ValueError("max_unet_rows must be at least 2: a guided image sends two rows")


class EngineNetworks(Protocol):
    """The networks, called with torch tensors on their ``device`` (a
    :class:`~sdtriton.serving.denoise.DiffusionComponents`): the engine's latents, text states and noise
    predictions stay there from the first step to the decoded image."""

    device: torch.device

    def encode_text(
        self, encoder: str, input_ids: torch.Tensor, lora_scales: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]: ...

    def predict_noise(self, unet: str, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor: ...

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor: ...

    def encode_image(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class Progress:
    """Progress of one request after a step: per image, network evaluations done and in all."""

    steps_done: tuple[int, ...]
    total_steps: tuple[int, ...]
    elapsed_s: float
    previews: tuple[np.ndarray, ...] | None = None  # [h, w, 3] uint8 per image, when one was due


@dataclass(frozen=True)
class Finished:
    """A request's answer: [H, W, 3] uint8 images and their seeds, in request order."""

    images: tuple[np.ndarray, ...]
    seeds: tuple[int, ...]


class ResponseSink(Protocol):
    """Where a request's answers go; ``finish`` or ``fail`` is called exactly once, last."""

    def progress(self, progress: Progress) -> None: ...

    def finish(self, result: Finished) -> None: ...

    def fail(self, error: Exception) -> None: ...


def _never() -> bool:
    return False


@dataclass(frozen=True)
class EngineRequest:
    """A request handed to the engine.

    Attributes:
        key: the caller's id of the request, for :meth:`DiffusionEngine.cancel`.
        images: the request's images (one size per request).
        sink: where its answers go.
        timeout_s: its time budget from arrival, queued and running; None: no budget.
        send_progress: whether to report progress after every step.
        preview_every: with progress, a preview of every image every this many steps (0: none).
        is_cancelled: polled at every step; True ends the request as cancelled.
        seeded: the client sent every image's seed, so the images are a function of the request: its result
            fills the response cache, and without progress it may be answered from there.
        request_id: Triton's request id (the client's; empty when it sent none), for log lines about the request.
    """

    key: int
    images: tuple[ImageRequest, ...]
    sink: ResponseSink
    timeout_s: float | None = None
    send_progress: bool = False
    preview_every: int = 0
    is_cancelled: Callable[[], bool] = _never
    seeded: bool = False
    request_id: str = ""


@dataclass(eq=False)
class _Active:
    request: EngineRequest
    arrived_s: float
    state: RequestState = RequestState.QUEUED
    denoisers: list[ImageDenoiser] = field(default_factory=list)
    iterations: int = 0

    @property
    def deadline_s(self) -> float | None:
        timeout_s = self.request.timeout_s
        return None if timeout_s is None else self.arrived_s + timeout_s

    @property
    def done(self) -> bool:
        return bool(self.denoisers) and all(d.done for d in self.denoisers)


def _chunks(pairs: Sequence[tuple[_Active, ImageDenoiser]], max_rows: int) -> Iterable[list]:
    """Splits (request, image) pairs into runs of at most ``max_rows`` UNet rows, never splitting an image."""
    chunk: list[tuple[_Active, ImageDenoiser]] = []
    rows = 0
    for pair in pairs:
        if chunk and rows + pair[1].rows > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(pair)
        rows += pair[1].rows
    if chunk:
        yield chunk


# (request, image or (image, picture), tile row, tile column, tile) by the tile's shape: the pieces that may share a
# VAE call.
_PiecesByShape = dict[tuple[int, ...], list[tuple[_Active, Hashable, tuple[int, int, torch.Tensor]]]]


def _group_by_shape(by_shape: _PiecesByShape, active: _Active, index: Hashable, tiles: TileGrid) -> None:
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            by_shape.setdefault(tuple(tile.shape[1:]), []).append((active, index, (i, j, tile)))


class DiffusionEngine:
    """Owns every in-flight request; :meth:`step` advances all of them by one network evaluation.

    ``submit`` and ``cancel`` may be called from any thread; ``step`` from one thread only (the loop thread
    that :meth:`start` runs, or a test).

    Args:
        config: the exported model's geometry, scheduler config and preview projection.
        networks: the text encoder, UNet and VAE decoder.
        limits: capacity and call sizes.
        clock: seconds, monotonic; tests pass a fake one.
        observer: told of queue changes, network calls, iterations, images, endings and refusals (the Triton
            adapter's metrics); its failures are logged, never passed on to a request.
    """

    def __init__(
        self,
        *,
        config: PipelineConfig,
        networks: EngineNetworks,
        limits: EngineLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: EngineObserver | None = None,
    ) -> None:
        self.config = config
        self.networks = networks
        self.limits = limits or EngineLimits()
        self._clock = clock
        self._observer = GuardedObserver(observer or NoObserver())
        self._lock = threading.Condition()
        # Orders the observer's count reports: each reads the counts inside it, so the last one sent is the latest.
        self._counts_report_lock = threading.Lock()
        self._waiting: deque[_Active] = deque()
        self._running: list[_Active] = []
        self._cancelled_keys: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._projection = (
            np.asarray(config.latent_rgb_projection, dtype=np.float32) if config.latent_rgb_projection else None
        )
        # Finished results of seeded requests (read-only images), by response_key; any thread reads it.
        self._responses: LruCache[Hashable, Finished] = LruCache(
            capacity=self.limits.response_cache_bytes, cost=lambda result: images_nbytes(result.images)
        )
        # One text-encoder output row per (encoder, token ids), on the networks' device; the loop thread's alone.
        self._text_rows: LruCache[Hashable, dict[str, torch.Tensor]] = LruCache(capacity=self.limits.text_cache_entries)

    # ---- called from any thread -------------------------------------------------------------------------

    def check_room(self) -> None:
        """Raises :class:`ServerBusyError` if a request submitted now would be refused (a cheap early look)."""
        with self._lock:
            refusal = self._refusal_locked()
        if refusal is not None:
            self._refuse(refusal)

    def _refusal_locked(self) -> ServerBusyError | None:
        if self._stopping:
            return ServerBusyError("the server is shutting down; send the request again to another replica")
        pending = len(self._waiting) + len(self._running)
        if pending >= self.limits.max_pending_requests:
            return ServerBusyError.full(pending, self.limits.max_pending_requests)
        return None

    def _refuse(self, refusal: ServerBusyError) -> NoReturn:
        # check_room's refusal is the request's refusal: the adapter submits only what check_room let through.
        self._observer.request_refused()
        # A copy that no frame holds: raising `refusal`, a local of this frame and its caller's, made a reference
        # cycle (frame -> error -> traceback -> frame) that kept the adapter's frames, and the Triton requests in
        # them, alive until a full garbage collection, which came at the stub's end and crashed it (see
        # triton_common.release_triton_objects).
        raise ServerBusyError(*refusal.args)

    def may_answer_from_cache(self, *, seeded: bool, send_progress: bool) -> bool:
        """Whether a request like this is looked up in the response cache (and so never refused for room)."""
        return self._responses.enabled and seeded and not send_progress

    def submit(self, request: EngineRequest) -> None:
        """Queues a request, or raises :class:`ServerBusyError` at once when the engine is full.

        A seeded request without progress that an identical earlier request answered is answered here, at once,
        from the response cache: never queued, never refused for room (it takes none).
        """
        if not request.images:
            raise ValueError("a request needs at least one image")
        if self._answer_from_cache(request):
            return
        with self._lock:
            refusal = self._refusal_locked()
            if refusal is None:
                self._waiting.append(_Active(request=request, arrived_s=self._clock()))
                self._lock.notify()
        if refusal is not None:
            self._refuse(refusal)
        self._report_counts()

    def _answer_from_cache(self, request: EngineRequest) -> bool:
        if not self.may_answer_from_cache(seeded=request.seeded, send_progress=request.send_progress):
            return False
        cached = self._responses.get(response_key(request.images))
        self._observer.cache_lookup(cache=RESPONSE_CACHE, hit=cached is not None)
        if cached is None:
            return False
        # A hit is an answered request like any other in the metrics (its images' durations are ~0), with no steps.
        for _ in cached.images:
            self._observer.image_finished(duration_s=0.0)
        self._observer.request_ended(state=RequestState.FINISHED.value)
        # Copies: the cached arrays stay untouched whatever the sink does with its own.
        result = Finished(images=tuple(image.copy() for image in cached.images), seeds=cached.seeds)
        try:
            request.sink.finish(result)
        except Exception:
            logger.exception("answering request %s from the response cache failed", request.key)
        return True

    def _remember(self, request: EngineRequest, result: Finished) -> None:
        """Keeps a seeded request's result for the response cache; streamed ones too: their images are the same."""
        if not (request.seeded and self._responses.enabled):
            return
        images = []
        for image in result.images:
            kept = image.copy()
            kept.flags.writeable = False
            images.append(kept)
        self._responses.put(response_key(request.images), Finished(images=tuple(images), seeds=result.seeds))

    def cancel(self, key: int) -> None:
        """Ends the request ``key`` as cancelled at the next step (queued or running)."""
        with self._lock:
            self._cancelled_keys[key] = self._clock()
            self._lock.notify()

    def counts(self) -> tuple[int, int]:
        """(running, queued) requests."""
        with self._lock:
            return len(self._running), len(self._waiting)

    def _report_counts(self) -> None:
        with self._counts_report_lock:
            running, waiting = self.counts()
            self._observer.requests_changed(running=running, waiting=waiting)

    def start(self) -> None:
        """Runs the loop on a thread of its own until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="diffusion-engine", daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stops the loop; requests still held end with :class:`ServerBusyError`."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        for active in [*self._running, *self._waiting]:
            self._end(active, RequestState.FAILED, ServerBusyError("the server is shutting down"))

    # ---- the loop ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                # Early cancels alone are no work: they wait for their request (or expire) without a busy loop.
                if not self._waiting and not self._running:
                    self._lock.wait(_IDLE_WAIT_S)
                    continue
            try:
                self.step()
            except Exception:
                # A bug in a phase must not stop the loop: fail what it held and go on.
                logger.exception("diffusion engine: step failed; failing the running requests")
                for active in list(self._running):
                    self._end(active, RequestState.FAILED, RuntimeError("internal error in the diffusion engine"))

    def step(self) -> bool:
        """One iteration of every phase; returns True while requests remain."""
        started_s = self._clock()
        self._retire()
        admitted = self._admit()
        if admitted:
            self._report_counts()
            self._start(admitted)
        if self._running:
            steps = self._denoise()
            if steps:
                # Reported before any answer of this iteration goes out (decoding is in the images' durations).
                self._observer.iteration_done(steps=steps, duration_s=self._clock() - started_s)
            self._report()
            self._finish()
        with self._lock:
            return bool(self._waiting or self._running)

    # 1. retire
    def _retire(self) -> None:
        now = self._clock()
        with self._lock:
            cancelled = self._cancelled_keys
            held = [*self._running, *self._waiting]
        matched = set()
        for active in held:
            request = active.request
            if request.key in cancelled or request.is_cancelled():
                matched.add(request.key)
                self._end(active, RequestState.CANCELLED, RequestCancelledError())
                continue
            deadline_s = active.deadline_s
            if deadline_s is not None and now >= deadline_s:
                where = (
                    f"at step {min(d.steps_done for d in active.denoisers)} of "
                    f"{max(d.total_steps for d in active.denoisers)}"
                    if active.denoisers
                    else "while queued"
                )
                error = DeadlineExceededError(budget_s=request.timeout_s, elapsed_s=now - active.arrived_s, where=where)
                self._end(active, RequestState.EXPIRED, error)
        with self._lock:
            for key in matched:
                self._cancelled_keys.pop(key, None)
            for key, when in list(self._cancelled_keys.items()):
                if now - when > _EARLY_CANCEL_KEEP_S:
                    del self._cancelled_keys[key]

    # 2. admit
    def _admit(self) -> list[_Active]:
        admitted = []
        with self._lock:
            running_images = sum(len(active.request.images) for active in self._running)
            while self._waiting:
                images = len(self._waiting[0].request.images)
                # A request larger than the whole capacity still runs, alone.
                if running_images and running_images + images > self.limits.max_running_images:
                    break
                active = self._waiting.popleft()
                active.state = RequestState.RUNNING
                self._running.append(active)
                admitted.append(active)
                running_images += images
        return admitted

    # 3. start
    def _start(self, admitted: list[_Active]) -> None:
        images = [(active, index, image) for active in admitted for index, image in enumerate(active.request.images)]
        # encoded[(id(active), index)][encoder] = that encoder's outputs for the image's rows
        encoded: dict[tuple[int, int], dict[str, dict[str, torch.Tensor]]] = {
            (id(active), index): {} for active, index, _ in images
        }
        for spec in text_encoders_of(self.config):
            self._encode(spec.model_name, images, encoded)
        pictures = self._encode_pictures(images)
        for active in admitted:
            if active.state is not RequestState.RUNNING:
                continue
            try:
                active.denoisers = [
                    ImageDenoiser(
                        params=image.params,
                        config=self.config,
                        stages=stages_for(image, self.config, encoded[(id(active), index)]),
                        device=self.networks.device,
                        input_latents=pictures.get((id(active), (index, INPUT_PICTURE))),
                        mask=image.mask_image,
                        masked_latents=pictures.get((id(active), (index, MASKED_PICTURE))),
                    )
                    for index, image in enumerate(active.request.images)
                ]
            except Exception as error:
                logger.exception("preparing latents failed")
                self._end(active, RequestState.FAILED, error)

    def _encode_pictures(
        self, images: list[tuple[_Active, int, ImageRequest]]
    ) -> dict[tuple[int, tuple[int, str]], LatentDistribution]:
        """The latent distribution of every picture the admitted images send through the VAE encoder (an
        image-to-image image's input image, an inpainting UNet's masked image: ``pictures_to_encode``), by
        (id(active), (index, picture)): each picture whole, or in the tiles diffusers' ``_tiled_encode`` cuts; one
        VAE-encoder call per piece shape (of any picture, image, request) and ``max_vae_rows`` pieces."""
        tilings: dict[tuple[int, tuple[int, str]], VaeTiling | None] = {}
        grids: dict[tuple[int, tuple[int, str]], list[list[LatentDistribution]]] = {}
        by_shape: _PiecesByShape = {}
        for active, index, image in images:
            if active.state is not RequestState.RUNNING:
                continue
            for name, pixels in pictures_to_encode(image, self.config, self.networks.device).items():
                tiling = tiling_of(image.params, self.config, pixels, encode=True)
                tiles = cut_tiles(pixels, tiling, encode=True)
                tilings[(id(active), (index, name))] = tiling
                # Each tile's place, its (mean, std) once encoded.
                grids[(id(active), (index, name))] = [[(tile, tile) for tile in row] for row in tiles]
                _group_by_shape(by_shape, active, (index, name), tiles)

        def encode(pieces: list[tuple[int, int, torch.Tensor]]) -> LatentDistribution:
            return self.networks.encode_image(torch.cat([tile for _, _, tile in pieces]))

        for chunk, (mean, std) in self._vae_calls(by_shape.values(), encode, network="VAE encoder"):
            for row, (active, index, (i, j, _)) in enumerate(chunk):
                grids[(id(active), index)][i][j] = (mean[row : row + 1], std[row : row + 1])
        # A request still running had every piece answered (a failed call ends the requests of its pieces).
        running = {id(active) for active, _, _ in images if active.state is RequestState.RUNNING}
        return {key: join_moments(grid, tilings[key]) for key, grid in grids.items() if key[0] in running}

    def _vae_calls(
        self,
        groups: Iterable[list[tuple[_Active, int, _Item]]],
        call: Callable[[list[_Item]], _Answer],
        *,
        network: str,
    ) -> Iterator[tuple[list[tuple[_Active, int, _Item]], _Answer]]:
        """``call`` on each group's (one size's) items of requests still running, ``max_vae_rows`` at a time; yields
        each chunk with its answer. A failed call ends the requests of its chunk."""
        for triples in groups:
            for start in range(0, len(triples), self.limits.max_vae_rows):
                chunk = [
                    t for t in triples[start : start + self.limits.max_vae_rows] if t[0].state is RequestState.RUNNING
                ]
                if not chunk:
                    continue
                try:
                    answer = call([item for _, _, item in chunk])
                except Exception as error:
                    logger.exception("%s call failed", network)
                    for active in {id(a): a for a, _, _ in chunk}.values():
                        self._end(active, RequestState.FAILED, error)
                    continue
                yield chunk, answer

    def _encode(
        self,
        encoder: str,
        images: list[tuple[_Active, int, ImageRequest]],
        encoded: dict[tuple[int, int], dict[str, dict[str, torch.Tensor]]],
    ) -> None:
        """Each image's rows from the text-embedding cache, the others in one call of ``encoder`` per
        ``max_text_rows`` rows of all the admitted images (a row wanted twice is encoded once)."""
        caching = self._text_rows.enabled
        # rows[(id(active), index)] = the image's rows, each its cached outputs or the index of a row to encode
        rows: dict[tuple[int, int], list[dict[str, torch.Tensor] | int]] = {}
        # (ids, LoRA weights or None, key, requests waiting on it)
        wanted: list[tuple[np.ndarray, np.ndarray | None, Hashable, list[_Active]]] = []
        position: dict[Hashable, int] = {}
        for active, index, image in images:
            image_rows: list[dict[str, torch.Tensor] | int] = []
            scales = lora_scales_for(image, self.config, encoder)
            for row, ids in enumerate(text_ids_for(image, encoder)):
                row_scales = None if scales is None else scales[row]
                key = text_row_key(encoder, ids, row_scales) if caching else len(wanted)
                cached = self._text_rows.get(key) if caching else None
                if caching:
                    self._observer.cache_lookup(cache=TEXT_EMBEDDING_CACHE, hit=cached is not None)
                if cached is not None:
                    image_rows.append(cached)
                    continue
                if key not in position:
                    position[key] = len(wanted)
                    wanted.append((ids, row_scales, key, []))
                wanted[position[key]][3].append(active)
                image_rows.append(position[key])
            rows[(id(active), index)] = image_rows
        computed: list[dict[str, torch.Tensor] | None] = [None] * len(wanted)
        for start in range(0, len(wanted), self.limits.max_text_rows):
            chunk = range(start, min(start + self.limits.max_text_rows, len(wanted)))
            if not any(a.state is RequestState.RUNNING for row in chunk for a in wanted[row][3]):
                continue
            try:
                ids = torch.from_numpy(np.stack([wanted[row][0] for row in chunk])).to(self.networks.device)
                lora = None
                if wanted[chunk[0]][1] is not None:
                    lora = torch.from_numpy(np.stack([wanted[row][1] for row in chunk])).to(self.networks.device)
                outputs = self.networks.encode_text(encoder, ids, lora)
            except Exception as error:
                logger.exception("text encoder %s call failed", encoder)
                for active in {id(a): a for row in chunk for a in wanted[row][3]}.values():
                    self._end(active, RequestState.FAILED, error)
                continue
            for offset, row in enumerate(chunk):
                # A clone: a slice would keep the whole call's outputs alive in the cache.
                computed[row] = {name: value[offset : offset + 1].clone() for name, value in outputs.items()}
                if caching:
                    self._text_rows.put(wanted[row][2], computed[row])
        for active, index, _ in images:
            if active.state is not RequestState.RUNNING:
                continue
            parts = [computed[part] if isinstance(part, int) else part for part in rows[(id(active), index)]]
            if any(part is None for part in parts):
                continue  # a call it needed failed and ended it
            # cat copies: the conditioning never aliases a cached row.
            encoded[(id(active), index)][encoder] = {
                name: torch.cat([part[name] for part in parts]) for name in parts[0]
            }

    # 4. denoise
    def _denoise(self) -> int:
        """Advances every running image by one network evaluation; returns how many images it advanced."""
        steps = 0
        by_call: dict[tuple[str, tuple[int, int]], list[tuple[_Active, ImageDenoiser]]] = {}
        for active in self._running:
            for denoiser in active.denoisers:
                if not denoiser.done:
                    by_call.setdefault((denoiser.unet, denoiser.latent_size), []).append((active, denoiser))
        for (unet, _size), pairs in by_call.items():
            for chunk in _chunks(pairs, self.limits.max_unet_rows):
                steps += self._denoise_chunk(unet, chunk)
        for active in self._running:
            active.iterations += 1
        return steps

    def _denoise_chunk(self, unet: str, chunk: list[tuple[_Active, ImageDenoiser]]) -> int:
        live = [(active, d) for active, d in chunk if active.state is RequestState.RUNNING]
        if not live:
            return 0
        inputs = [d.model_input() for _, d in live]
        latent_input = live[0][1].latent_input
        try:
            batch = {name: torch.cat([item[name] for item in inputs]) for name in inputs[0]}
            called_s = self._clock()
            noise_pred = self.networks.predict_noise(unet, batch)
        except Exception as error:
            logger.exception("UNet call failed")
            for active in {id(a): a for a, _ in live}.values():
                self._end(active, RequestState.FAILED, error)
            return 0
        self._observer.unet_called(unet=unet, rows=len(batch[latent_input]), duration_s=self._clock() - called_s)
        steps = 0
        offset = 0
        for (active, denoiser), item in zip(live, inputs, strict=True):
            rows = item[latent_input].shape[0]
            part = noise_pred[offset : offset + rows]
            offset += rows
            if active.state is not RequestState.RUNNING:
                continue
            try:
                denoiser.step(part)
            except Exception as error:
                logger.exception("scheduler step failed")
                self._end(active, RequestState.FAILED, error)
                continue
            steps += 1
        return steps

    # 5. report
    def _report(self) -> None:
        now = self._clock()
        for active in list(self._running):
            request = active.request
            if not request.send_progress or not active.denoisers:
                continue
            previews = None
            every = request.preview_every
            if every and self._projection is not None and active.iterations % every == 0 and not active.done:
                previews = tuple(self._preview(d) for d in active.denoisers)
            progress = Progress(
                steps_done=tuple(d.steps_done for d in active.denoisers),
                total_steps=tuple(d.total_steps for d in active.denoisers),
                elapsed_s=now - active.arrived_s,
                previews=previews,
            )
            try:
                request.sink.progress(progress)
            except Exception:
                logger.exception("sending progress failed; cancelling the request")
                self._end(active, RequestState.CANCELLED, RequestCancelledError())

    def _preview(self, denoiser: ImageDenoiser) -> np.ndarray:
        return latents_to_preview(denoiser.preview_latents()[0].cpu().numpy(), self._projection)

    # 6. finish
    def _finish(self) -> None:
        finished = [active for active in self._running if active.done]
        if not finished:
            return
        # Each image's latents whole, or in the tiles diffusers' tiled_decode cuts; every piece of one shape (of any
        # image, any request) may share a VAE call: (request, image, tile row, tile column, latents) by shape.
        tilings: dict[tuple[int, int], VaeTiling | None] = {}
        grids: dict[tuple[int, int], TileGrid] = {}
        by_shape: _PiecesByShape = {}
        for active in finished:
            for index, denoiser in enumerate(active.denoisers):
                latents = denoiser.scaled_latents()
                tiling = tiling_of(denoiser.params, self.config, latents)
                tiles = cut_tiles(latents, tiling)
                tilings[(id(active), index)] = tiling
                grids[(id(active), index)] = [list(row) for row in tiles]
                _group_by_shape(by_shape, active, index, tiles)

        def decode(pieces: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
            return self.networks.decode_latents(torch.cat([tile for _, _, tile in pieces]))

        for chunk, decoded in self._vae_calls(by_shape.values(), decode, network="VAE decoder"):
            for row, (active, index, (i, j, _)) in enumerate(chunk):
                # A copy: the blend writes into its tiles, never into the call's output.
                grids[(id(active), index)][i][j] = decoded[row : row + 1].clone()
        for active in finished:
            if active.state is not RequestState.RUNNING:
                continue
            result = Finished(
                images=tuple(
                    to_uint8_image(join_tiles(grids[(id(active), index)], tilings[(id(active), index)]))
                    for index in range(len(active.denoisers))
                ),
                seeds=tuple(image.params.seed for image in active.request.images),
            )
            self._end(active, RequestState.FINISHED, result)

    # the one place a request ends
    def _log_end(self, active: _Active, state: RequestState, outcome: Finished | Exception) -> None:
        """One line per request that did not finish (debug for those that did): Triton's request id (the client's,
        "-" when it sent none), the engine's key, the time, and the error's class and message (which name fields and
        sizes, never prompt text)."""
        request = active.request
        elapsed_s = self._clock() - active.arrived_s
        level = logging.DEBUG if state is RequestState.FINISHED else logging.INFO
        if state is RequestState.FAILED:
            level = logging.WARNING
        detail = "" if isinstance(outcome, Finished) else f": {type(outcome).__name__}: {outcome}"
        name = request.request_id or "-"
        logger.log(level, "request %s (key %d) %s after %.3f s%s", name, request.key, state.value, elapsed_s, detail)

    def _end(self, active: _Active, state: RequestState, outcome: Finished | Exception) -> None:
        with self._lock:
            if active.state not in (RequestState.QUEUED, RequestState.RUNNING):
                return
            active.state = state
            if active in self._running:
                self._running.remove(active)
            elif active in self._waiting:
                self._waiting.remove(active)
        # Reported before the answer goes out: a client that reads the metrics after its answer sees its request.
        if isinstance(outcome, Finished):
            elapsed_s = self._clock() - active.arrived_s
            for _ in outcome.images:
                self._observer.image_finished(duration_s=elapsed_s)
            self._remember(active.request, outcome)
        self._observer.request_ended(state=state.value)
        self._report_counts()
        self._log_end(active, state, outcome)
        try:
            if isinstance(outcome, Finished):
                active.request.sink.finish(outcome)
            else:
                active.request.sink.fail(outcome)
        except Exception:
            logger.exception("answering request %s failed", active.request.key)


def warm_up_engine_code(
    *, config: PipelineConfig, tokenizers: Mapping[str, Any], device: torch.device | str = "cpu"
) -> float:
    """Runs the engine's own code once per scheduler, without networks: tokenizing and validating a request, drawing
    latents, each scheduler's setup and steps (zeros for the noise), the conditioning, the image conversion; and,
    where the repository has a ``vae_encoder``, an image-to-image request too on every scheduler that takes one (the
    input image's preprocessing, its latents drawn from the encoder's moments and noised by the scheduler's
    ``add_noise`` / ``scale_noise`` at the strength's first timestep). The networks warm up through their configs'
    ``model_warmup`` (the ``vae_encoder`` included: its ONNX Runtime session or TensorRT engine is made before
    ready); this spares the first request of either kind the first-call costs of Python, torch and the schedulers
    here (and of the tiles' blend). Returns the seconds it took."""
    started = time.perf_counter()
    encodes = any(spec.model_name == VAE_ENCODER_MODEL_NAME for spec in components_of(config))
    for scheduler in (None, *config.scheduler_names):
        _warm_up_request(config, tokenizers, device, scheduler=scheduler, image_to_image=False)
        # (An inpainting UNet's requests are all image requests: the first one was one.)
        if encodes and not config.inpainting_unet and image_to_image_noise_method(config.scheduler_config, scheduler):
            _warm_up_request(config, tokenizers, device, scheduler=scheduler, image_to_image=True)
    if config.vae_tiling is not None:
        # The blend is diffusers' (its models package costs a second to import): two tiles side by side, each way.
        tiling = config.vae_tiling
        side, latent_side = tiling.sample_size, tiling.latent_size
        join_tiles([[torch.zeros((1, 3, side, side), device=device) for _ in range(2)]], tiling)
        mean = torch.zeros((1, config.latent_channels, latent_side, latent_side), device=device)
        join_moments([[(mean, torch.ones_like(mean))] * 2], tiling)
    return time.perf_counter() - started


def _warm_up_request(
    config: PipelineConfig,
    tokenizers: Mapping[str, Any],
    device: torch.device | str,
    *,
    scheduler: str | None,
    image_to_image: bool,
) -> None:
    """One request of :func:`warm_up_engine_code` through the engine's code, zeros where networks would answer."""
    raw: dict[str, np.ndarray] = {
        interface.PROMPT.name: np.array([b"warm up"], dtype=np.object_),
        interface.SEED.name: np.array([0], dtype=np.int64),
        # 4: the fewest PNDM with Runge-Kutta warm-up steps (skip_prk_steps false) can set up.
        interface.NUM_INFERENCE_STEPS.name: np.array([4], dtype=np.int32),
    }
    if scheduler is not None:
        raw[interface.SCHEDULER.name] = np.array([scheduler.encode()], dtype=np.object_)
    if config.inpainting_unet:
        # An inpainting model takes inpainting requests only: a blank picture, repainted whole.
        size = (1, config.default_height, config.default_width)
        raw[interface.INPUT_IMAGE.name] = np.zeros((*size, 3), dtype=np.uint8)
        raw[interface.MASK_IMAGE.name] = np.full((*size, 1), 255, dtype=np.uint8)
    elif image_to_image:
        # Strength 1: every one of the four steps runs, whichever scheduler (a cut could leave PNDM too few). The
        # smallest image the repository takes (the code is the same at any size; the default's latents would double
        # the warm-up of a large model, measured 3.6 -> 11 s on the tiny FLUX under load).
        height = config.default_height if config.fixed_size else config.min_size
        width = config.default_width if config.fixed_size else config.min_size
        raw[interface.INPUT_IMAGE.name] = np.zeros((1, height, width, 3), dtype=np.uint8)
        raw[interface.STRENGTH.name] = np.array([1.0], dtype=np.float32)
    (image,) = parse_request(raw, config=config, tokenizers=tokenizers).images
    rows = 2 if image.params.uses_classifier_free_guidance else 1
    encoded = {
        spec.model_name: {
            tensor.name: torch.zeros((rows, *tensor.shape_range(config, max_batch_size=rows)[1][1:]), device=device)
            for tensor in spec.outputs
        }
        for spec in text_encoders_of(config)
    }
    # The VAE encoder's moments where it would answer (mean 0, std 1) for every picture the request encodes.
    mean = torch.zeros(config.latent_shape(height=image.params.height, width=image.params.width), device=device)
    pictures = {name: (mean, torch.ones_like(mean)) for name in pictures_to_encode(image, config, device)}
    denoiser = ImageDenoiser(
        params=image.params,
        config=config,
        stages=stages_for(image, config, encoded),
        device=device,
        input_latents=pictures.get(INPUT_PICTURE),
        mask=image.mask_image,
        masked_latents=pictures.get(MASKED_PICTURE),
    )
    while not denoiser.done:
        sample = denoiser.model_input()[denoiser.latent_input]
        # The UNet answers for the latents alone (an inpainting UNet's sample has the mask's channels too).
        denoiser.step(torch.zeros_like(sample[:, : config.latent_channels] if config.inpainting_unet else sample))
    height, width = image.params.height, image.params.width
    to_uint8_image(torch.zeros((1, 3, height, width), device=device) + denoiser.scaled_latents().mean())
