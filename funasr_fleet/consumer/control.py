"""How a busy consumer learns that its job was cancelled, and the bound on stopping inside a model call.

- :class:`CancelWatch.listen` (each broker connection, loop thread): an exclusive queue on the control
  exchange; a ``cancel.<job_id>`` broadcast for the running job flags it (``RunningJob.request_cancel``)
  within one loop tick (0.5 s);
- a poller thread re-reads the running job's marker every ``jobs.cancel_poll_s`` (a consumer that was
  reconnecting when the broadcast went out still learns of it);
- :meth:`CancelWatch.overdue` (each loop tick): a flagged job that has not settled within
  ``jobs.cancel_grace_s`` is inside a model call that cannot be interrupted: the loop claims the
  delivery, carries the cancel out (consumer/cancelling.py) and exits ``exitcodes.JOB_CANCELLED``, which
  the supervisor replaces without counting a crash.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from funasr_fleet import cancel
from funasr_fleet.consumer.cancelling import Canceller
from funasr_fleet.consumer.context import JobContext
from funasr_fleet.consumer.delivery import RunningJob
from funasr_fleet.errors import FleetError
from funasr_fleet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.consumer.loop import ConsumerLoop

log = structlog.get_logger("funasr_fleet.consumer.control")


class CancelWatch:
    """Wired into a ConsumerLoop by :meth:`attach`; ``storage`` reads cancel markers."""

    def __init__(self, settings: Settings, storage: Any, canceller: Canceller) -> None:
        self.settings = settings
        self.storage = storage
        self.canceller = canceller
        self._running: Callable[[], RunningJob | None] = lambda: None
        self._poller: threading.Thread | None = None

    def attach(self, loop: ConsumerLoop) -> None:
        """Listen on every connection the loop opens, check for overdue cancels each tick, poll markers."""
        self._running = lambda: loop.jobs.running
        loop.cancels = self
        loop.link.on_connect = self.listen
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll, name="cancel-poller", daemon=True)
            self._poller.start()

    # --- loop thread -----------------------------------------------------------------------------
    def listen(self, conn: Any) -> None:
        """Consume cancel broadcasts on a channel of ``conn`` (auto-ack: the marker is the durable part)."""
        channel = conn.channel()
        queue = cancel.bind_control_listener(channel, self.settings)
        channel.basic_consume(queue, self._on_broadcast, auto_ack=True)

    def _on_broadcast(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        parsed = cancel.parse_control(body)
        running = self._running()
        if parsed is None or running is None or running.job_id != parsed[0]:
            return
        log.info("cancel broadcast for the running job", job_id=parsed[0])
        running.request_cancel(parsed[1], time.monotonic())

    def overdue(self, running: RunningJob | None) -> bool:
        """True when the loop took over a cancel the worker could not reach in time: the process must exit."""
        if running is None or running.cancel_requested_at is None or running.done.is_set():
            return False
        if time.monotonic() - running.cancel_requested_at < self.settings.jobs.cancel_grace_s:
            return False
        running.cancelled.set()  # the worker stops at its next check and settles nothing
        if not running.claim_final():
            return False  # the worker is settling the job itself (it finished meanwhile)
        ctx = running.context
        log.warning("cancelled job did not reach a stage boundary in time; abandoning the model call",
                    job_id=running.job_id, grace_s=self.settings.jobs.cancel_grace_s)  # fmt: skip
        if isinstance(ctx, JobContext):
            try:
                self.canceller.carry_out(ctx, "cancelled inside a model call; the consumer exits")
            except Exception as exc:  # noqa: BLE001 - we exit anyway; the redelivery is dropped at its start
                log.error("could not carry out the cancel; the broker redelivers the job", error=repr(exc))
        return True

    # --- poller thread ---------------------------------------------------------------------------
    def _poll(self) -> None:
        while True:
            time.sleep(self.settings.jobs.cancel_poll_s)
            running = self._running()
            if running is None or running.job_id is None or running.cancel_requested.is_set() or running.done.is_set():
                continue
            try:
                marker = cancel.read_marker(self.storage, self.settings, running.job_id)
            except FleetError as exc:
                log.debug("cancel marker not readable now", error=exc.message)
                continue
            if marker is not None:
                log.info("cancel marker found for the running job", job_id=running.job_id)
                running.request_cancel(str(marker.get("id") or "none"), time.monotonic())
