"""Draining: a server about to stop takes no new requests and lets those it holds finish.

Triton's own drain on SIGTERM (``--exit-timeout-secs``) does not cover this engine: its entries answer through
response senders after ``execute`` returns, so Triton counts none of their requests as in flight and unloads the
models at once, and it refuses the UNet calls a running request still needs ("Server not ready", measured on
2.51). So ``sdtriton serve`` drains first: it creates the file named by ``$SDTRITON_DRAIN_FILE`` (set for the
server it starts), the entries refuse every new request from then on (``UNAVAILABLE``, retry on another
replica), and it waits until the engines hold no request (their ``sdtriton_requests_running`` and
``sdtriton_requests_waiting`` gauges) before it stops tritonserver.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from sdtriton.serving.metrics import REQUESTS_RUNNING, REQUESTS_WAITING

DRAIN_FILE_ENVIRONMENT = "SDTRITON_DRAIN_FILE"
# The engine's gauges whose sum is the work a draining server still holds.
IN_FLIGHT_GAUGES = (REQUESTS_RUNNING.name, REQUESTS_WAITING.name)


class DrainSignal:
    """Whether the server is draining: true once the drain file exists, and from then on."""

    def __init__(self, path: str | None) -> None:
        self.path = path or None
        self._draining = False

    @classmethod
    def from_environment(cls) -> DrainSignal:
        return cls(os.environ.get(DRAIN_FILE_ENVIRONMENT))

    def draining(self) -> bool:
        if not self._draining and self.path is not None:
            self._draining = os.path.exists(self.path)
        return self._draining


def in_flight_requests(metrics_text: str, gauges: Iterable[str] = IN_FLIGHT_GAUGES) -> int:
    """The sum of ``gauges`` over every pipeline in a Prometheus text exposition (Triton's ``/metrics`` page).

    Raises:
        ValueError: none of the gauges is on the page (the engine exports no metrics: nothing to wait on).
    """
    names = set(gauges)
    total = 0.0
    seen = False
    for line in metrics_text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0 or line[:name_end] not in names:
            continue
        total += float(line.rsplit(" ", 1)[1])
        seen = True
    if not seen:
        raise ValueError(f"no {' / '.join(sorted(names))} on the metrics page")
    return round(total)
