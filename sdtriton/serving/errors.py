"""Per-request failures the Triton adapters turn into status codes."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """A request input outside its allowed range (``INVALID_ARG``); the message names field and range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RequestCancelledError(Exception):
    """The client cancelled the request (``CANCELLED``); raised between denoising steps."""
