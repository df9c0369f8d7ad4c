"""The running job and the one delivery held for after it (prefetch 1, see :meth:`InFlight.hold`)."""

from __future__ import annotations

from funasr_fleet.consumer.delivery import Delivery, RunningJob


class InFlight:
    """At most one running job, at most one held delivery, and how many jobs finished."""

    def __init__(self) -> None:
        self.running: RunningJob | None = None
        self.held: Delivery | None = None
        self.jobs_done = 0

    @property
    def busy(self) -> bool:
        return self.running is not None

    def start(self, delivery: Delivery) -> RunningJob:
        assert self.running is None, "one job at a time"
        self.running = RunningJob(delivery=delivery)
        return self.running

    def hold(self, delivery: Delivery) -> bool:
        """Keep ``delivery`` for when the running job clears; False if busy with one held already.

        With prefetch 1 the broker sends the next message only once the running job was acked, so
        a delivery that finds a job running arrived between that ack and the loop noticing the
        job is done. Holding it (not nack-requeueing it) matters: on a quorum queue every requeue
        raises the delivery count, and at every job boundary that would walk good jobs to the
        delivery limit, where they dead-letter without a ``job.failed`` event.
        """
        if self.running is None or self.held is not None:
            return False
        self.held = delivery
        return True

    def finish(self) -> Delivery | None:
        """The running job is done: count it, clear it, and hand back the held delivery (if any)."""
        self.running = None
        self.jobs_done += 1
        held, self.held = self.held, None
        return held
