"""A message off the jobs queue, and the one job running from it (shared by the loop and the worker)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pika

from funasr_fleet import envelope


@dataclass(frozen=True)
class Delivery:
    """One message off the jobs queue, as the worker sees it."""

    body: bytes
    properties: pika.BasicProperties
    delivery_tag: int
    redelivered: bool
    generation: int  # the consume channel it came from (BrokerLink.generation): settles on a newer one are impossible
    exchange: str = ""  # where it was published (the jobs exchange, or the delay tiers' via dead-lettering)
    routing_key: str = ""  # jobs_routing_key or intake_routing_key

    @property
    def attempt(self) -> int:
        """1-based attempt number (our retry header; crash redeliveries keep the same attempt)."""
        return envelope.attempt_of(self.properties.headers)


@dataclass(eq=False)
class RunningJob:
    """The one job in flight: written by the worker (job id, deadline), watched by the loop.

    Exactly one side settles the message: the worker when the job ends, or the loop when the
    deadline passes or a forced stop abandons the job; :meth:`claim_final` decides who.
    """

    delivery: Delivery
    started_at: float = field(default_factory=time.monotonic)  # monotonic seconds
    job_id: str | None = None
    deadline_at: float | None = None  # monotonic; set by the handler once the audio length is known
    context: object | None = None  # the handler's own record of the job (what its on_timeout needs)
    cancelled: threading.Event = field(default_factory=threading.Event)  # the loop gave up on the job
    done: threading.Event = field(default_factory=threading.Event)  # the worker returned
    cancel_requested: threading.Event = field(default_factory=threading.Event)  # someone cancelled the job
    cancel_marker_id: str | None = None  # the cancel request's id (the job.cancelled event id derives from it)
    cancel_requested_at: float | None = None  # monotonic; when this consumer learned of the cancel
    _final_lock: threading.Lock = field(default_factory=threading.Lock)
    _finalized: bool = False

    def claim_final(self) -> bool:
        """True for the first caller only: that caller settles the message (ack, nack, retry)."""
        with self._final_lock:
            if self._finalized:
                return False
            self._finalized = True
            return True

    def request_cancel(self, marker_id: str, now: float) -> None:
        """A cancel for this job arrived (broadcast or marker); ``now``: time.monotonic(). First one wins."""
        if self.cancel_requested.is_set():
            return
        self.cancel_marker_id, self.cancel_requested_at = marker_id, now
        self.cancel_requested.set()

    def past_deadline(self, now: float) -> bool:
        """``now``: time.monotonic(). False while no deadline is set."""
        return self.deadline_at is not None and now > self.deadline_at
