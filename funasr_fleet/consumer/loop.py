"""The consumer's main loop: one thread owns the broker connection, one worker runs jobs.

Why this shape: a BlockingConnection only answers broker heartbeats while someone calls into it,
and a transcription can block for many minutes. So the loop thread (the process's main thread)
does nothing but service the connection (``process_data_events``, 0.5 s at a time), run the
worker's queued broker calls (:mod:`~funasr_fleet.consumer.bridge`), and then one :meth:`tick`:

1. beat the heartbeat file with the loop's :class:`LoopState`;
2. exit (5) if the supervisor is gone;
3. collect a finished job, and start the delivery held for after it;
4. exit (4) if the running job passed its deadline (settled as a timeout first), or (6) if it was
   cancelled and did not stop within ``jobs.cancel_grace_s`` (consumer/control.py; cancelled first);
5. on a stop request: stop consuming, exit once idle; on a second one abandon the job (requeue);
6. otherwise resume consuming if the consume channel was reopened while busy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

import pika.exceptions
import structlog

from funasr_fleet import exitcodes
from funasr_fleet.consumer.bridge import Bridge
from funasr_fleet.consumer.broker import AMQP_ERRORS, BrokerLink
from funasr_fleet.consumer.delivery import Delivery, RunningJob
from funasr_fleet.consumer.inflight import InFlight
from funasr_fleet.consumer.watchdog import ParentWatch
from funasr_fleet.consumer.worker import Runner, Worker
from funasr_fleet.errors import BootFailure
from funasr_fleet.heartbeat import BeatState, Heartbeat
from funasr_fleet.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.consumer.control import CancelWatch

log = structlog.get_logger("funasr_fleet.consumer.loop")

LOOP_TICK_S = 0.5
TimeoutHandler = Callable[[RunningJob, Bridge], None]
"""Settles a job the loop gave up on at its deadline (runs on the loop thread; the loop exits 4 after)."""


class LoopState(StrEnum):
    """What the loop is doing; the heartbeat reports it as :attr:`beat`."""

    CONNECTING = "connecting"  # idle without a broker connection (first boot or after a loss)
    READY = "ready"  # connected, idle, consuming
    BUSY = "busy"  # a job runs (whether or not the connection is up)
    DRAINING = "draining"  # a stop was requested: no new jobs; exits once idle

    @property
    def beat(self) -> BeatState:
        return _BEATS[self]


_BEATS = {
    LoopState.CONNECTING: BeatState.BOOTING,
    LoopState.READY: BeatState.READY,
    LoopState.BUSY: BeatState.BUSY,
    LoopState.DRAINING: BeatState.DRAINING,
}


class StopRequests:
    """Signals counted: the first drains (finish the job, exit 0), the second abandons the job."""

    def __init__(self) -> None:
        self.count = 0

    def request(self) -> None:
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.count >= 1

    @property
    def forced(self) -> bool:
        return self.count >= 2


class ConsumerLoop:
    """Owns the broker link; feeds the worker; beats; reconnects; decides when the process exits.

    ``runner`` runs one job on the worker thread; ``on_timeout`` settles a job past its deadline;
    ``supervisor_pid``: exit 5 when the parent is no longer that process.
    """

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        on_timeout: TimeoutHandler,
        heartbeat: Heartbeat | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.on_timeout = on_timeout
        self.heartbeat = heartbeat or Heartbeat(None)
        self.parent = ParentWatch(supervisor_pid)
        self.link = BrokerLink(settings, on_message=self._on_message, may_consume=self._may_consume)
        self.bridge = Bridge(self.link)
        self.worker = Worker(runner, self.bridge, on_done=self.link.wake)
        self.jobs = InFlight()
        self.stops = StopRequests()
        self.max_jobs: int | None = None  # tests: exit 0 after this many jobs
        self.cancels: CancelWatch | None = None  # set by CancelWatch.attach

    # --- entry points ----------------------------------------------------------------------------
    @property
    def runner(self) -> Runner:
        return self.worker.runner

    @runner.setter
    def runner(self, runner: Runner) -> None:
        self.worker.runner = runner

    @property
    def generation(self) -> int:
        """How many consume channels were opened (grows on every reconnect or channel loss)."""
        return self.link.generation

    @property
    def jobs_done(self) -> int:
        return self.jobs.jobs_done

    @property
    def state(self) -> LoopState:
        if self.stops.requested:
            return LoopState.DRAINING
        if self.jobs.busy:
            return LoopState.BUSY
        return LoopState.READY if self.link.conn is not None else LoopState.CONNECTING

    def request_stop(self) -> None:
        """Signal handlers call this: the first stops intake, the second abandons the job."""
        self.stops.request()

    def connect_for_boot(self) -> None:
        """First connection + topology, retrying until ``consumer.boot_timeout_s`` (then BootFailure)."""
        timeout_s = self.settings.consumer.boot_timeout_s
        deadline = time.monotonic() + timeout_s
        delay = 0.5
        while True:
            try:
                self.link.connect()
                return
            except AMQP_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise BootFailure(f"broker unreachable for {timeout_s:.0f} s: {exc!r}") from None
                log.warning("broker not reachable yet", error=repr(exc), retry_in_s=delay)
                self.heartbeat.write(BeatState.BOOTING)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def run(self) -> int:
        """The loop. Returns the process exit code (see exitcodes)."""
        self.bridge.bind_owner()
        if self.link.conn is None:
            self.connect_for_boot()
        self.worker.start()
        log.info("consumer ready", queue=self.settings.amqp.jobs_queue)
        reconnect_delay = 0.5
        while True:
            if not self.link.connected:
                if not self.link.try_reconnect():
                    code = self.tick()
                    if code is not None:
                        return code
                    self._sleep_beating(reconnect_delay)
                    reconnect_delay = min(reconnect_delay * 2, 10.0)
                    continue
                reconnect_delay = 0.5
            self._service()
            code = self.tick()
            if code is not None:
                self.link.close()
                return code

    # --- one turn of the loop ----------------------------------------------------------------------
    def _service(self) -> None:
        """Serve the connection, then the worker's broker calls; a lost channel or connection is repaired next turn."""
        try:
            self.link.process(LOOP_TICK_S)
            self.bridge.drain()
            self.link.repair_channels(busy=self.jobs.busy)
        except pika.exceptions.ChannelClosed as exc:
            log.warning("channel closed by broker", reason=repr(exc))
            self.link.repair_channels(busy=self.jobs.busy)
        except AMQP_ERRORS as exc:
            log.warning("broker connection lost", error=repr(exc))
            self.link.drop()

    def tick(self) -> int | None:
        """The loop's duties, in order (see the module docstring). Returns an exit code to stop."""
        self._beat()
        if self.parent.gone():
            log.error("supervisor is gone; exiting", supervisor_pid=self.parent.supervisor_pid)
            return exitcodes.ORPHANED
        if self._collect_finished_job():
            return exitcodes.OK
        if self._deadline_passed():
            return exitcodes.JOB_TIMEOUT
        if self.cancels is not None and self.cancels.overdue(self.jobs.running):
            return exitcodes.JOB_CANCELLED
        if self.stops.requested:
            return self._stop_step()
        if not self.jobs.busy and self.link.can_resume:
            try:
                self.link.start_consuming()  # after a channel loss, resume only once idle
            except AMQP_ERRORS as exc:
                log.warning("could not resume consuming", error=repr(exc))
        return None

    def _beat(self) -> None:
        running = self.jobs.running
        self.heartbeat.maybe_write(self.state.beat, running.job_id if running else None)

    def _collect_finished_job(self) -> bool:
        """Clear a finished job and start (or give back) the held delivery. True: ``max_jobs`` reached."""
        running = self.jobs.running
        if running is None or not running.done.is_set():
            return False
        held = self.jobs.finish()
        last = self.max_jobs is not None and self.jobs.jobs_done >= self.max_jobs
        if held is not None and held.generation == self.link.generation:
            if self.stops.requested or last:
                try:
                    self.link.requeue(held)
                except AMQP_ERRORS as exc:  # the broker requeues it when the channel closes
                    log.warning("could not requeue the held delivery", error=repr(exc))
            else:
                self._start(held)
        return last

    def _deadline_passed(self) -> bool:
        """The running job passed its deadline: cancel it, settle it as a timeout (if the worker has
        not settled it yet). The model call cannot be interrupted, so the process must exit."""
        running = self.jobs.running
        if running is None or not running.past_deadline(time.monotonic()):
            return False
        running.cancelled.set()
        if running.claim_final():
            log.error("job deadline passed; the model call cannot be interrupted", job_id=running.job_id)
            try:
                self.on_timeout(running, self.bridge)
            except Exception as exc:  # noqa: BLE001 - we exit anyway; the broker redelivers
                log.error("could not settle the timed-out job", error=repr(exc))
        return True

    def _stop_step(self) -> int | None:
        """Draining: no new deliveries; exit once idle. Forced: requeue the running job and exit."""
        self.link.stop_consuming()
        running = self.jobs.running
        if running is None:
            log.info("stopped", jobs_done=self.jobs.jobs_done)
            return exitcodes.OK
        if not self.stops.forced:
            return None
        running.cancelled.set()
        if running.claim_final():
            log.warning("second stop signal: requeueing the running job", job_id=running.job_id)
            try:
                self.link.requeue(running.delivery)
            except Exception as exc:  # noqa: BLE001 - the broker requeues on close anyway
                log.warning("requeue failed", error=repr(exc))
        return exitcodes.OK

    def _sleep_beating(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._beat()
            if self.stops.forced:
                return
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))

    # --- deliveries (loop thread) ------------------------------------------------------------------
    def _may_consume(self) -> bool:
        return not self.jobs.busy and not self.stops.requested

    def _on_message(self, delivery: Delivery) -> None:
        if not self.stops.requested and self.jobs.hold(delivery):
            return
        if self.jobs.busy or self.stops.requested:
            self.link.requeue(delivery)  # never two jobs at once
            return
        self._start(delivery)

    def _start(self, delivery: Delivery) -> None:
        running = self.jobs.start(delivery)
        self.heartbeat.maybe_write(BeatState.BUSY, every_s=0.0)
        self.worker.submit(running)
