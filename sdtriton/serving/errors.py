"""Per-request failures the Triton adapters turn into status codes."""

from __future__ import annotations


class InvalidInputError(ValueError):
    """A request input outside its allowed range (``INVALID_ARG``); the message names field and range."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class RequestCancelledError(Exception):
    """The client cancelled the request (``CANCELLED``); raised between denoising steps."""


class DeadlineExceededError(Exception):
    """The request's time budget ran out, queued or running (``UNAVAILABLE``); the message names the budget."""

    def __init__(self, *, budget_s: float, elapsed_s: float, where: str) -> None:
        super().__init__(
            f"timeout: the request's time budget of {budget_s * 1000:.0f} ms ran out after "
            f"{elapsed_s * 1000:.0f} ms, {where}; send a larger timeout or fewer steps"
        )
        self.budget_s = budget_s


class ServerBusyError(Exception):
    """The engine holds as many requests as it may (``UNAVAILABLE``); the request was refused before any work."""

    @classmethod
    def full(cls, pending: int, limit: int) -> ServerBusyError:
        """The one message of a full server, whether the engine or an entry refuses."""
        return cls(
            f"server busy: {pending} requests running or queued, the most it holds "
            f"(max_pending_requests {limit}); retry later"
        )

    @classmethod
    def draining(cls) -> ServerBusyError:
        """The message of a server that is shutting down: it finishes what it holds and takes nothing new."""
        return cls("server draining: it is shutting down and takes no new requests; retry on another replica")


class ComponentDiedError(Exception):
    """A model's process died (``UNAVAILABLE``): a request in it is lost, and nothing new is taken until the server
    restarts; safe to send again."""

    def __init__(self, model_name: str, pid: int, *, in_flight: bool) -> None:
        what = "with this request in it, nothing of it is kept" if in_flight else "and the server takes no requests"
        super().__init__(
            f"model process died: {model_name} (pid {pid}) ended {what}; retry it "
            "(the server needs a restart: sdtriton serve --restart-on-crash does it)"
        )
        self.model_name = model_name
        self.pid = pid
