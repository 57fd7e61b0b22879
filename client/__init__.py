"""``sdtriton.client``: a typed Python client of the ``stable_diffusion`` model over HTTP and gRPC."""

from sdtriton.client.client import (
    AsyncStableDiffusionClient,
    GenerationResult,
    StableDiffusionClient,
    parse_url,
)
from sdtriton.client.exceptions import (
    InferenceError,
    InvalidRequestError,
    SdTritonError,
    ServerUnavailableError,
)

__all__ = [
    "AsyncStableDiffusionClient",
    "GenerationResult",
    "InferenceError",
    "InvalidRequestError",
    "SdTritonError",
    "ServerUnavailableError",
    "StableDiffusionClient",
    "parse_url",
]
