"""A job's run: a generations body (as a dict, its seed fixed) through :meth:`Backend.generate`, answered as
encoded files, with progress and previews as a job manager wants them.

:func:`job_runner` makes the ``run(request, on_progress, cancelled)`` coroutine function a job manager calls::

    run = job_runner(backend, preview_every=5)
    files = await run({"prompt": "a red circle", "seed": 7, "n": 2}, on_progress, cancelled_event)
    # [(png_bytes, "png", 7), (png_bytes, "png", 8)]; on_progress(step, total, preview=png_bytes | None, "png")
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from sdtriton.client import GenerationResult, Progress
from sdtriton.gateway.backend import Backend
from sdtriton.gateway.images import encode
from sdtriton.gateway.jobs import ProgressCallback, Runner
from sdtriton.gateway.schema import ImageGenerationRequest, ImageRequest

# Previews are small (latent resolution): PNG keeps them exact and costs little.
PREVIEW_FORMAT = "png"
DEFAULT_PREVIEW_EVERY = 5


def job_runner(backend: Backend, *, preview_every: int | None = DEFAULT_PREVIEW_EVERY) -> Runner:
    """The run of one job on ``backend``.

    The returned coroutine function validates ``request`` as a ``POST /v1/images/generations`` body (pydantic's
    ``ValidationError`` for a malformed one), generates it, calls ``on_progress(step, total, preview,
    preview_format)`` after every step (``preview``: the first image's, every ``preview_every`` steps, else None),
    and returns each image as ``(file bytes, output_format, seed)``. It raises what
    :meth:`Backend.generate` raises, :class:`~sdtriton.client.RequestCancelledError` once ``cancelled`` is set.
    """

    async def run(
        request: Mapping[str, Any], on_progress: ProgressCallback, cancelled: asyncio.Event
    ) -> list[tuple[bytes, str, int]]:
        body = ImageGenerationRequest.model_validate(dict(request))
        model = await backend.resolve(body.model)

        def progressed(progress: Progress) -> None:
            preview = None
            if progress.previews:
                preview = encode(progress.previews[0], PREVIEW_FORMAT)
            on_progress(progress.steps_done[0], progress.total_steps[0], preview, PREVIEW_FORMAT)

        # Off the event loop: the body's images are decoded here.
        generation = await asyncio.to_thread(body.generation, model=model.name, preview_every=preview_every)
        result = await backend.generate(generation, on_progress=progressed, cancelled=cancelled)
        files = await encode_images(result, body)
        return [(file, body.output_format, seed) for file, seed in zip(files, result.seeds, strict=True)]

    return run


async def encode_images(result: GenerationResult, body: ImageRequest) -> list[bytes]:
    """``result``'s images as files of the body's ``output_format`` (in a thread: encoding takes the CPU)."""
    return await asyncio.to_thread(
        lambda: [encode(image, body.output_format, compression=body.output_compression) for image in result.images]
    )
