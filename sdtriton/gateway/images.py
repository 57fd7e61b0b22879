"""Images as the gateway answers them: encoded (PNG, JPEG, WebP) and, for URL answers, kept in a folder."""

from __future__ import annotations

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
