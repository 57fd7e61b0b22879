"""``sdtriton.client``: a typed Python client of the ``stable_diffusion`` model over HTTP and gRPC."""

from sdtriton.client.client import (
    AsyncStableDiffusionClient,
    GenerationResult,
    PendingGeneration,
    Progress,
    RetryPolicy,
    StableDiffusionClient,
    is_retryable,
    parse_url,
)
from sdtriton.client.exceptions import (
    InferenceError,
    InvalidRequestError,
    RequestCancelledError,
    RequestTimeoutError,
    RetriesExhaustedError,
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
    "RetriesExhaustedError",
    "RetryPolicy",
    "SdTritonError",
    "ServerBusyError",
    "ServerUnavailableError",
    "StableDiffusionClient",
    "is_retryable",
    "parse_url",
]
