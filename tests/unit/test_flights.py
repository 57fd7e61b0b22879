"""An entry's request in flight: the forwarding thread's progress and the watcher's final answer never cross."""

from __future__ import annotations

import threading
import time

from sdtriton.serving.flights import ENTRY_DEADLINE_GRACE_S, Flight

FINAL = 2


class RecordingSender:
    """A response sender that notes every send and, as Triton's does, refuses any send after the final one. Each
    send yields the GIL halfway, so an unserialized send from another thread lands in between."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.after_final: list[str] = []

    def send(self, response: str, flags: int = 0) -> None:
        closed = bool(self.sent) and self.sent[-1] == "final"
        time.sleep(0)
        (self.after_final if closed else self.sent).append(response)


def _send_progress_until_answered(flight: Flight, started: threading.Barrier) -> None:
    started.wait()
    while flight.send_progress("progress"):
        pass


def test_no_progress_follows_the_final_answer_sent_from_another_thread():
    for _ in range(200):
        sender = RecordingSender()
        flight = Flight(request=None, sender=sender, started_s=0.0, budget_s=1.0)
        started = threading.Barrier(2)

        forwarding = threading.Thread(target=_send_progress_until_answered, args=(flight, started))
        forwarding.start()
        started.wait()
        time.sleep(0.0005)
        assert flight.send_final("final", FINAL)
        forwarding.join(timeout=5)
        assert sender.after_final == []
        assert sender.sent[-1] == "final" and sender.sent.count("final") == 1


def test_the_final_answer_goes_once_and_progress_after_it_goes_nowhere():
    sender = RecordingSender()
    flight = Flight(request=None, sender=sender, started_s=0.0, budget_s=None)
    assert flight.send_progress("progress")
    assert flight.send_final("final", FINAL)
    assert not flight.send_final("second final", FINAL)
    assert not flight.send_progress("late progress")
    assert sender.sent == ["progress", "final"] and sender.after_final == []


def test_overdue_only_past_the_budget_and_its_grace():
    flight = Flight(request=None, sender=RecordingSender(), started_s=100.0, budget_s=1.0)
    assert not flight.overdue(100.0 + 1.0 + ENTRY_DEADLINE_GRACE_S - 0.01)
    assert flight.overdue(100.0 + 1.0 + ENTRY_DEADLINE_GRACE_S + 0.01)
    assert not Flight(request=None, sender=RecordingSender(), started_s=0.0, budget_s=None).overdue(1e9)
