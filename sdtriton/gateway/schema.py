"""The gateway's request and response bodies (pydantic): OpenAI's images API, with this engine's fields beside.

These models are the OpenAPI document (``docs/openapi.json``). Only cheap, model-independent checks live here
(``size``'s form, ``n``'s range, a seed that fits 64 bits, the most steps any model takes; input images decoded as PNG
files, a mask against its image, a size against the image); the engine checks every
range that depends on the model (steps, the size step, schedulers) and its refusal passes through naming the field.
The document also states the ranges the engine holds every model to (guidance scales, skip-layer guidance's
window), which the engine checks, so that it accepts nothing the gateway always refuses.
"""

from __future__ import annotations

import re
from typing import Literal

from fastapi import UploadFile
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdtriton import interface
from sdtriton.gateway.backend import ENGINE_INPUTS, GenerationRequest, ServedModel
from sdtriton.gateway.errors import REQUEST_FIELDS
from sdtriton.gateway.images import (
    ImageInputError,
    OutputFormat,
    decode_base64_png,
    decode_png,
    edit_mask,
    input_pixels,
)
from sdtriton.pipeline_config import HARD_MAX_INFERENCE_STEPS

# OpenAI's own bound on n; a model may allow fewer (its max_batch_size), which the gateway checks per model.
MAX_IMAGES = 10
# "WIDTHxHEIGHT" or auto; a side of at most 5 digits (it fits INT32) before the engine's own limits.
_SIZE = re.compile(r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$")


def _engine_range(low: float, high: float) -> dict[str, float]:
    """The document's bounds of a number the engine checks against ``low``..``high`` for every model (its message
    names the field and the range)."""
    return {"minimum": low, "maximum": high}


_GUIDANCE_RANGE = _engine_range(interface.MIN_GUIDANCE_SCALE, interface.MAX_GUIDANCE_SCALE)


class ImageRequest(BaseModel):
    """The fields every image route takes (generations, edits, jobs): OpenAI's, then this engine's (``extra_body``
    in OpenAI's SDK); each route adds its images."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description=f"What to draw ({interface.PROMPT.allowed}).")
    model: str | None = Field(
        None,
        description="A served model (its Triton entry name) or an alias from the gateway's config; "
        "default: the first served model.",
    )
    n: int = Field(1, ge=1, le=MAX_IMAGES, description="Images to generate (at most the model's max_batch_size).")
    size: str | None = Field(
        None,
        description="WIDTHxHEIGHT in pixels, e.g. 512x512 (multiples of the model's size step); 'auto' or "
        "omitted: the model's default size.",
        examples=["512x512"],
        json_schema_extra={"pattern": _SIZE.pattern},
    )
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="b64_json: the image in the answer; url: a link to it, kept by the gateway."
    )
    output_format: OutputFormat = Field("png", description="The image file's format.")
    output_compression: int | None = Field(
        None, ge=0, le=100, description="JPEG and WebP: 0 (best quality) .. 100 (smallest file)."
    )
    user: str | None = Field(None, description="An end-user id, for the caller's own tracing (not used).")
    negative_prompt: str | None = Field(None, description=f"What not to draw ({interface.NEGATIVE_PROMPT.allowed}).")
    num_inference_steps: int | None = Field(
        None,
        ge=interface.MIN_INFERENCE_STEPS,
        le=HARD_MAX_INFERENCE_STEPS,
        description=f"Denoising steps ({interface.NUM_INFERENCE_STEPS.allowed} by default; a model may be exported "
        f"with up to {HARD_MAX_INFERENCE_STEPS}).",
    )
    guidance_scale: float | None = Field(
        None,
        allow_inf_nan=False,
        json_schema_extra=_GUIDANCE_RANGE,
        description=f"Classifier-free guidance ({interface.GUIDANCE_SCALE.allowed}).",
    )
    seed: int | None = Field(
        None,
        ge=interface.MIN_SEED,
        le=interface.MAX_SEED,
        description="The first image's seed; image i gets seed + i. Omitted: drawn at random (each answer says).",
    )
    scheduler: str | None = Field(None, description=interface.SCHEDULER.allowed)
    refiner_fraction: float | None = Field(
        None, ge=0, lt=1, allow_inf_nan=False, description=interface.REFINER_FRACTION.allowed
    )
    true_cfg_scale: float | None = Field(
        None, allow_inf_nan=False, json_schema_extra=_GUIDANCE_RANGE, description=interface.TRUE_CFG_SCALE.allowed
    )
    skip_layer_guidance_scale: float | None = Field(
        None,
        allow_inf_nan=False,
        json_schema_extra=_engine_range(0, interface.MAX_GUIDANCE_SCALE),
        description=interface.SKIP_LAYER_GUIDANCE_SCALE.allowed,
    )
    skip_layer_guidance_start: float | None = Field(
        None,
        allow_inf_nan=False,
        json_schema_extra=_engine_range(0, 1),
        description=interface.SKIP_LAYER_GUIDANCE_START.allowed,
    )
    skip_layer_guidance_stop: float | None = Field(
        None,
        allow_inf_nan=False,
        json_schema_extra=_engine_range(0, 1),
        description=interface.SKIP_LAYER_GUIDANCE_STOP.allowed,
    )
    vae_tiling: bool | None = Field(None, description=interface.VAE_TILING.allowed)
    lora: str | None = Field(None, description=interface.LORA.allowed)
    lora_scale: float | None = Field(
        None,
        allow_inf_nan=False,
        json_schema_extra=_engine_range(interface.MIN_LORA_SCALE, interface.MAX_LORA_SCALE),
        description=interface.LORA_SCALE.allowed,
    )
    strength: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description=interface.STRENGTH.allowed)

    @field_validator("size")
    @classmethod
    def _size_form(cls, size: str | None) -> str | None:
        if size is not None and not _SIZE.fullmatch(size):
            raise ValueError(f"must be WIDTHxHEIGHT in pixels (e.g. 512x512) or auto, got {size!r}")
        return size

    def width_height(self) -> tuple[int | None, int | None]:
        """The size's width and height; None, None for the model's default."""
        if self.size is None or self.size == "auto":
            return None, None
        width, _, height = self.size.partition("x")
        return int(width), int(height)

    def input_images(self) -> tuple[Image.Image | None, Image.Image | None]:
        """The request's image and mask as sent (decoded PNG files); None where it has none.

        Raises:
            ImageInputError: a file that is not a PNG (400 naming the field).
        """
        return None, None

    def generation(self, *, model: str, preview_every: int | None = None) -> GenerationRequest:
        """The backend's request for this body, on the served model ``model`` (decoding its images: call it off
        the event loop).

        Raises:
            ImageInputError: an image that is not a PNG, a mask without an alpha channel or of another size than the
                image, a mask without an image, a ``size`` other than the image's (400 naming the field).
        """
        width, height = self.width_height()
        inputs = self.model_dump(include=set(_BODY_INPUTS), exclude_none=True)
        image, mask = self.input_images()
        if mask is not None and image is None:
            raise ImageInputError("mask", "needs an image: the mask says which part of the image to redraw")
        if image is not None:
            if width is not None and (width, height) != image.size:
                raise ImageInputError(
                    "size", f"must be the image's size {image.width}x{image.height} or auto, got {self.size}"
                )
            inputs[interface.INPUT_IMAGE.name] = input_pixels(image)
            if mask is not None:
                inputs[interface.MASK_IMAGE.name] = edit_mask(mask, size=image.size)
        if width is not None:
            inputs |= {interface.WIDTH.name: width, interface.HEIGHT.name: height}
        return GenerationRequest(
            prompt=self.prompt, n=self.n, model=model, seed=self.seed, inputs=inputs, preview_every=preview_every
        )


# The engine inputs a body carries in fields of their own name: all but those REQUEST_FIELDS maps to other fields (the
# size is "WxH", the images are files). Each needs its field (checked at import: a new input of the interface without
# one here would be dropped silently).
_BODY_INPUTS = tuple(name for name in ENGINE_INPUTS if name not in REQUEST_FIELDS)
_WITHOUT_FIELD = [name for name in (*_BODY_INPUTS, interface.SEED.name) if name not in ImageRequest.model_fields]
if _WITHOUT_FIELD:
    raise ImportError(f"engine inputs without a field in ImageRequest: {', '.join(_WITHOUT_FIELD)}")


def _decoded(text: str | None, *, field: str) -> Image.Image | None:
    return None if text is None else decode_base64_png(text, field=field)


_IMAGE_FIELD = (
    "Image-to-image: the PNG file to start from, base64 (a data:image/png;base64, URL too); the images "
    "have its size (its transparency is dropped)."
)
_MASK_FIELD = (
    "Inpainting, with image: a PNG file of the image's size, base64, whose fully transparent pixels (alpha "
    "0) are the area to redraw, as OpenAI's edits take masks."
)


class ImageGenerationRequest(ImageRequest):
    """``POST /v1/images/generations``: OpenAI's fields, then this engine's (``extra_body`` in OpenAI's SDK)."""

    image: str | None = Field(None, description=_IMAGE_FIELD)
    mask: str | None = Field(None, description=_MASK_FIELD)

    def input_images(self) -> tuple[Image.Image | None, Image.Image | None]:
        return _decoded(self.image, field="image"), _decoded(self.mask, field="mask")


class ImageEditRequest(ImageRequest):
    """``POST /v1/images/edits`` (multipart form): OpenAI's fields, then this engine's, as on generations."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image: UploadFile | None = Field(
        None,
        description="The PNG file to edit; the images have its size (its transparency is dropped). Required, here "
        "or as a one-file `image[]` list.",
    )
    image_list: list[UploadFile] | None = Field(
        None,
        alias="image[]",
        description="The PNG file to edit as OpenAI's SDK sends a list (`image=[file]`): one file, since the engine "
        "starts from one image.",
    )
    mask: UploadFile | None = Field(
        None,
        description="A PNG file of the image's size whose fully transparent pixels (alpha 0) are the area to edit "
        "(inpainting); omitted: the whole image is redrawn, as far as strength says (image-to-image).",
    )

    def input_images(self) -> tuple[Image.Image | None, Image.Image | None]:
        """The uploaded image (from ``image`` or a one-file ``image[]``) and mask.

        Raises:
            ImageInputError: no image, or more than one (the engine starts from one), or a file that is not a PNG.
        """
        uploads = [self.image] if self.image is not None else []
        uploads += self.image_list or []
        if len(uploads) != 1:
            raise ImageInputError(
                "image", f"takes one PNG file (as image, or an image[] list of one), got {len(uploads) or 'none'}"
            )
        # The uploads are spooled whole before the route runs: reading them here (off the event loop) waits on no one.
        image = _uploaded(uploads[0], field="image")
        return image, None if self.mask is None else _uploaded(self.mask, field="mask")


def _uploaded(upload: UploadFile, *, field: str) -> Image.Image:
    upload.file.seek(0)
    return decode_png(upload.file.read(), field=field)


class ImageData(BaseModel):
    """One generated image: inline (``b64_json``) or a link (``url``), and the seed it was drawn with."""

    b64_json: str | None = Field(None, description="The image file, base64 (response_format b64_json).")
    url: str | None = Field(None, description="Where to fetch the image file (response_format url).")
    revised_prompt: str | None = Field(None, description="Never set: prompts are used as sent.")
    seed: int = Field(description="The seed this image was drawn with: send it again for the same image.")


class ImagesResponse(BaseModel):
    """The answer of ``POST /v1/images/generations`` and ``/v1/images/edits``."""

    created: int = Field(description="Unix time (seconds) the images were made.")
    data: list[ImageData]
    model: str = Field(description="The served model that made them.")
    output_format: OutputFormat
    size: str = Field(description="WIDTHxHEIGHT of the images.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class ModelCard(BaseModel):
    """A served model, as OpenAI's ``GET /v1/models`` lists them."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sdtriton"
    aliases: list[str] = Field(default_factory=list, description="Other names a request's model may use.")
    max_images: int = Field(description="The most images (n) one request may ask for.")
    # What the export says of the model (absent for a repository exported before its entries carried it).
    family: str | None = Field(None, description="The model family: sd (SD 1.x/2.x), sdxl, sd3 or flux.")
    schedulers: list[str] | None = Field(None, description="The scheduler values a request may send to this model.")
    default_size: str | None = Field(None, description="WIDTHxHEIGHT of a request without a size.")
    size_step: int | None = Field(None, description="Width and height are multiples of this.")
    default_num_inference_steps: int | None = Field(None, description="The steps of a request without any.")
    max_num_inference_steps: int | None = Field(None, description="The most steps a request may ask for.")

    @classmethod
    def of(cls, model: ServedModel, *, created: int) -> ModelCard:
        """The card of a served model."""
        card = cls(id=model.name, created=created, aliases=list(model.aliases), max_images=model.max_batch_size)
        described = model.description
        if described is None:
            return card
        return card.model_copy(
            update={
                "family": described.family,
                "schedulers": list(described.scheduler_names),
                "default_size": f"{described.default_width}x{described.default_height}",
                "size_step": described.size_multiple,
                "default_num_inference_steps": described.default_num_inference_steps,
                "max_num_inference_steps": described.max_inference_steps,
            }
        )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ReadinessReport(BaseModel):
    ready: bool
    triton: bool = Field(description="Triton answers and is ready.")
    models: dict[str, bool] = Field(description="Each served model's streaming entry: ready or not.")


# A webhook URL's longest form (browsers' practical limit).
MAX_WEBHOOK_CHARS = 2048
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


# A job's request is kept in the job store and read back whenever the job is (listed, followed, run): a job's image
# and mask are each at most this much base64 text (about 1 MiB of PNG), so that a page of jobs stays cheap to read.
MAX_JOB_IMAGE_CHARS = 4 * (1024 * 1024 // 3 + 1)


class JobCreateRequest(ImageGenerationRequest):
    """``POST /v1/jobs``: a generations body (``response_format`` aside: a job's images are always URLs), and where
    to POST the finished job."""

    image: str | None = Field(
        None,
        max_length=MAX_JOB_IMAGE_CHARS,
        description=f"{_IMAGE_FIELD} At most {MAX_JOB_IMAGE_CHARS} characters: the job store keeps it.",
    )
    mask: str | None = Field(
        None,
        max_length=MAX_JOB_IMAGE_CHARS,
        description=f"{_MASK_FIELD} At most {MAX_JOB_IMAGE_CHARS} characters: the job store keeps it.",
    )

    webhook: str | None = Field(
        None,
        max_length=MAX_WEBHOOK_CHARS,
        description="An http(s) URL the finished job is POSTed to, signed with the gateway's webhook secret "
        "(Sdtriton-Signature: t=<unix seconds>,v1=<HMAC-SHA256 hex of '<t>.' + body>); hosts on loopback, private "
        "and link-local addresses are refused unless the gateway allows them.",
        examples=["https://app.example.com/hooks/sdtriton"],
    )

    def stored(self, *, model: str) -> dict[str, object]:
        """The job's request as stored: the generations body (no webhook), on the served model ``model``."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"webhook"}) | {"model": model}


class JobError(BaseModel):
    """Why a job failed or was cancelled: the inner error of OpenAI's error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class JobImage(BaseModel):
    url: str = Field(description="Where to fetch the image file (no API key: the job id is the capability).")
    seed: int = Field(description="The seed this image was drawn with.")
    output_format: str = Field(description="png, jpeg or webp.")


class JobObject(BaseModel):
    """A job, as ``/v1/jobs`` answers it."""

    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    model: str | None = Field(description="The served model that runs it.")
    created: int = Field(description="Unix time (seconds) it was submitted.")
    started: int | None = Field(description="Unix time it first started running.")
    finished: int | None = Field(description="Unix time it succeeded, failed or was cancelled.")
    step: int = Field(description="Denoising steps done (of its latest attempt).")
    total_steps: int = Field(description="Denoising steps in all; 0 until the first step.")
    queue_position: int | None = Field(description="Queued jobs ahead of it (0: next); null unless queued.")
    error: JobError | None = Field(description="Why it failed or was cancelled; null otherwise.")
    data: list[JobImage] = Field(description="The images, once it succeeded (empty before).")
    attempts: int = Field(description="Times it was started (a run taken over from a stopped gateway counts).")
    webhook: str | None = Field(description="Where the finished job is POSTed.")
    webhook_deliveries: int = Field(description="Webhook delivery attempts so far.")
    webhook_delivered: bool = Field(description="A webhook delivery was accepted (2xx).")


class JobProgress(BaseModel):
    """A ``progress`` event of ``GET /v1/jobs/{id}/events``."""

    step: int = Field(description="Denoising steps done.")
    total_steps: int = Field(description="Denoising steps in all.")
    preview: str | None = Field(
        None, description="A data: URL of a preview image, every few steps, on the gateway that runs the job."
    )


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
