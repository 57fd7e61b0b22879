"""Images as the gateway answers them (encoded as PNG, JPEG or WebP and, for URL answers, kept in a folder), and the
PNG files it takes (an edit's image and mask, a generations or jobs body's base64 ones), decoded and checked."""

from __future__ import annotations

import base64
import io
import re
import secrets
from pathlib import Path
from typing import Literal

from PIL import Image

OutputFormat = Literal["png", "jpeg", "webp"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("png", "jpeg", "webp")
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
# An image id: 22 URL-safe characters (128 random bits), and nothing that could leave the folder.
_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_ID_BYTES = 16


def encode(image: Image.Image, output_format: OutputFormat, *, compression: int | None = None) -> bytes:
    """``image`` as a file of ``output_format``; ``compression`` 0..100 (OpenAI's ``output_compression``) sets
    JPEG's and WebP's loss (100: the most compressed), PNG is lossless whatever it is."""
    buffer = io.BytesIO()
    options = {}
    if output_format != "png" and compression is not None:
        options["quality"] = max(1, 100 - compression)
    image.save(buffer, format=_PIL_FORMATS[output_format], **options)
    return buffer.getvalue()


class ImageStore:
    """Encoded images under ``root``, each named by a random id that is its capability: whoever holds the URL
    may fetch it, as with a signed URL."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def save(self, data: bytes, output_format: OutputFormat) -> str:
        """Keeps ``data``; returns its id."""
        self.root.mkdir(parents=True, exist_ok=True)
        image_id = secrets.token_urlsafe(_ID_BYTES)
        partial = self.root / f".{image_id}.partial"
        partial.write_bytes(data)
        partial.rename(self.root / f"{image_id}.{output_format}")
        return image_id

    def find(self, image_id: str) -> tuple[Path, str] | None:
        """The file and media type of ``image_id``; None if there is none (or the id is malformed)."""
        if not _ID.fullmatch(image_id):
            return None
        for output_format, media_type in MEDIA_TYPES.items():
            path = self.root / f"{image_id}.{output_format}"
            if path.is_file():
                return path, media_type
        return None


class ImageInputError(ValueError):
    """An input image the gateway cannot take, or a field that does not fit it (answered 400 naming ``field``):
    the message starts with the field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


# The most pixels an input image may declare before it is decoded: far above any model's own limit (which the engine
# checks, naming the field), low enough that a small file of a huge image cannot make the gateway decode gigabytes.
MAX_INPUT_PIXELS = 4096 * 4096
# OpenAI's mask convention: the fully transparent pixels of the mask (alpha 0) are the area to edit. The engine's
# mask_image is 255 where it repaints and 0 where it keeps.
EDIT_ALPHA = 0
REPAINT, KEEP = 255, 0
_DATA_URL_PREFIX = "data:image/png;base64,"


def decode_png(data: bytes, *, field: str) -> Image.Image:
    """The PNG file ``data`` (an upload's bytes, or a JSON field's after base64), decoded.

    Raises:
        ImageInputError: not a PNG file, truncated, or declaring more than MAX_INPUT_PIXELS pixels.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageInputError(field, f"must be a PNG file ({error})") from error
    if image.format != "PNG":
        raise ImageInputError(field, f"must be a PNG file, got {image.format or 'an unknown format'}")
    width, height = image.size
    if width * height > MAX_INPUT_PIXELS:
        raise ImageInputError(field, f"must have at most {MAX_INPUT_PIXELS} pixels, got {width}x{height}")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageInputError(field, f"must be a whole PNG file ({error})") from error
    return image


def decode_base64_png(text: str, *, field: str) -> Image.Image:
    """A JSON field's PNG: base64 text, with or without a ``data:image/png;base64,`` prefix.

    Raises:
        ImageInputError: not base64, or not a PNG file (as :func:`decode_png`).
    """
    try:
        data = base64.b64decode(text.removeprefix(_DATA_URL_PREFIX), validate=True)
    except ValueError as error:
        raise ImageInputError(field, f"must be a base64 PNG file ({error})") from error
    return decode_png(data, field=field)


def input_pixels(image: Image.Image) -> Image.Image:
    """The RGB image the engine draws from (a PNG's transparency is dropped, as its colours stand)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def edit_mask(mask: Image.Image, *, size: tuple[int, int], field: str = "mask") -> Image.Image:
    """OpenAI's edit mask as the engine's ``mask_image``: a greyscale ("L") image, REPAINT where the mask is fully
    transparent, KEEP elsewhere.

    Raises:
        ImageInputError: the mask has no alpha channel (nothing would say what to edit), or its size is not the
            image's ``size`` (width, height).
    """
    if mask.size != size:
        raise ImageInputError(
            field, f"must have the image's size {size[0]}x{size[1]}, got {mask.size[0]}x{mask.size[1]}"
        )
    if not _has_alpha(mask):
        raise ImageInputError(
            field,
            "must have an alpha channel (a PNG with transparency): its fully transparent pixels are the area to edit",
        )
    alpha = mask.convert("RGBA").getchannel("A")
    return alpha.point([REPAINT if level == EDIT_ALPHA else KEEP for level in range(256)])


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info
