"""``sdtriton.client``: a typed Python client of the ``stable_diffusion`` model over HTTP and gRPC."""

from sdtriton.client.client import (
    AsyncStableDiffusionClient,
    GenerationResult,
    PendingGeneration,
    Progress,
    StableDiffusionClient,
    parse_url,
)
from sdtriton.client.exceptions import (
    InferenceError,
    InvalidRequestError,
    RequestCancelledError,
    RequestTimeoutError,
    SdTritonError,
    ServerBusyError,
    ServerUnavailableError,
)

__all__ = [
    "AsyncStableDiffusionClient",
    "GenerationResult",
    "InferenceError",
    "InvalidRequestError",
    "PendingGeneration",
    "Progress",
    "RequestCancelledError",
    "RequestTimeoutError",
    "SdTritonError",
    "ServerBusyError",
    "ServerUnavailableError",
    "StableDiffusionClient",
    "parse_url",
]
