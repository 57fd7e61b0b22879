"""Triton's per-model statistics (``GET /v2/models/<name>/stats``), as differences between two readings."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NS_PER_MS = 1e6
_STATS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ModelStats:
    """Cumulative counters of one model version; subtract an earlier reading to get one interval's.

    ``requests`` counts successful requests (a BLS call is one); ``executions`` counts the batches they ran in.
    Times are summed over requests, in nanoseconds.
    """

    name: str
    requests: int
    failures: int
    executions: int
    queue_ns: int
    compute_input_ns: int
    compute_infer_ns: int
    compute_output_ns: int

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ModelStats:
        """Reads the first entry of a ``/v2/models/<name>/stats`` answer."""
        (stats, *_) = document["model_stats"]
        inference = stats["inference_stats"]
        return cls(
            name=str(stats["name"]),
            requests=int(inference["success"]["count"]),
            failures=int(inference["fail"]["count"]),
            executions=int(stats["execution_count"]),
            queue_ns=int(inference["queue"]["ns"]),
            compute_input_ns=int(inference["compute_input"]["ns"]),
            compute_infer_ns=int(inference["compute_infer"]["ns"]),
            compute_output_ns=int(inference["compute_output"]["ns"]),
        )

    def minus(self, earlier: ModelStats) -> ModelStats:
        if earlier.name != self.name:
            raise ValueError(f"cannot subtract stats of {earlier.name!r} from {self.name!r}")
        return ModelStats(
            name=self.name,
            requests=self.requests - earlier.requests,
            failures=self.failures - earlier.failures,
            executions=self.executions - earlier.executions,
            queue_ns=self.queue_ns - earlier.queue_ns,
            compute_input_ns=self.compute_input_ns - earlier.compute_input_ns,
            compute_infer_ns=self.compute_infer_ns - earlier.compute_infer_ns,
            compute_output_ns=self.compute_output_ns - earlier.compute_output_ns,
        )

    def _per_request_ms(self, ns: int) -> float:
        if self.requests <= 0:
            raise ValueError(f"{self.name}: no successful requests in this interval")
        return ns / self.requests / _NS_PER_MS

    @property
    def queue_ms_per_request(self) -> float:
        return self._per_request_ms(self.queue_ns)

    @property
    def compute_infer_ms_per_request(self) -> float:
        return self._per_request_ms(self.compute_infer_ns)

    @property
    def server_ms_per_request(self) -> float:
        """Queue and compute (input, infer, output): the model's whole time inside the server per request."""
        compute_ns = self.compute_input_ns + self.compute_infer_ns + self.compute_output_ns
        return self._per_request_ms(self.queue_ns + compute_ns)


def fetch_model_stats(http_url: str, model_name: str) -> ModelStats:
    """Reads one model's statistics from a server's HTTP endpoint (``http://host:port``)."""
    with urllib.request.urlopen(f"{http_url}/v2/models/{model_name}/stats", timeout=_STATS_TIMEOUT_S) as response:
        return ModelStats.from_json(json.load(response))
