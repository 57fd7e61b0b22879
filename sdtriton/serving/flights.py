"""A request an entry model forwarded to the engine and has not answered yet (:class:`~sdtriton.serving.triton_models.
EntryModel`). Two threads may answer it: the forwarding thread (the stream's progress, then the image or the
engine's error) and the entry's watcher (past its budget, or the pipeline's process gone). Their sends go through
one lock, so that no progress response follows the final one on the same response sender.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

# The engine ends an expired request at its next step; past its budget by this much, the entry answers for it (an
# engine that cannot step: a stopped or hung process).
ENTRY_DEADLINE_GRACE_S = 2.0


@dataclass
class Flight:
    """``sender``: the request's response sender; ``started_s``: ``time.monotonic()`` at arrival; ``budget_s``: the
    client's timeout (None: none)."""

    request: Any
    sender: Any
    started_s: float
    budget_s: float | None
    answered: bool = False
    _send_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def overdue(self, now_s: float) -> bool:
        return self.budget_s is not None and now_s - self.started_s > self.budget_s + ENTRY_DEADLINE_GRACE_S

    def send_progress(self, response: Any) -> bool:
        """Sends a progress response unless the request was answered; False: it was, and ``response`` goes nowhere."""
        with self._send_lock:
            if self.answered:
                return False
            self.sender.send(response)
            return True

    def send_final(self, response: Any, flags: int) -> bool:
        """Sends the final response unless one went already; False: it did."""
        with self._send_lock:
            if self.answered:
                return False
            self.answered = True
            self.sender.send(response, flags=flags)
            return True
