"""The pika side of a consumer: one thread owns the BlockingConnection, one worker runs jobs.

Why this shape: a BlockingConnection only answers broker heartbeats while someone calls into it,
and a transcription can block for many minutes. So the loop thread (the process's main thread)
does nothing but ``process_data_events(time_limit=0.5)``, beats the heartbeat file, watches the
job deadline, signals and the parent, and reconnects. The job runs on ONE worker thread; every
publish/ack/nack it needs is handed back to the loop thread (queued, then the loop is woken with
``add_callback_threadsafe``) and the worker waits for the result (dramatiq's pattern). pika is
never touched from two threads.

Channels: a *publish* channel in confirm mode (every publish is confirmed or raises) and a
*consume* channel with prefetch 1. When the broker closes the consume channel under a long job
(``consumer_timeout``) the publish channel survives; the job finishes, its ack is skipped (the
delivery tag died with the channel and the broker has requeued the message), and consuming
restarts only once the worker is idle: the redelivered copy is then answered by the manifest.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
import structlog
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from funasr_fleet import exitcodes, topology
from funasr_fleet.consumer.heartbeat import Heartbeat
from funasr_fleet.errors import BrokerUnavailable, FleetError
from funasr_fleet.settings import Settings

log = structlog.get_logger("funasr_fleet.consumer.connection")

LOOP_TICK_S = 0.5
BRIDGE_TIMEOUT_S = 30.0
_AMQP_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPError,
    ConnectionError,
    OSError,
)


class BootFailure(FleetError):
    """The consumer could not get ready (broker unreachable past the boot timeout, model load)."""

    code = "boot_failed"


class JobCancelled(FleetError):
    """The loop gave up on this job (deadline passed or forced stop); its result must not be committed."""

    code = "cancelled"
    permanent = False


@dataclass
class Delivery:
    """One message off the jobs queue, as the worker sees it."""

    body: bytes
    properties: pika.BasicProperties
    delivery_tag: int
    redelivered: bool
    generation: int  # which consume channel it came from: acks on a newer channel are impossible
    exchange: str = ""
    routing_key: str = ""

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})

    @property
    def attempt(self) -> int:
        """1-based attempt number (our retry header; crash redeliveries keep the same attempt)."""
        try:
            return max(1, int(self.headers.get(topology.ATTEMPT_HEADER, 1)))
        except (TypeError, ValueError):
            return 1

    @property
    def delivery_count(self) -> int:
        """Broker-side redeliveries of this copy (quorum ``x-delivery-count``; absent on the first)."""
        try:
            return int(self.headers.get("x-delivery-count", 0))
        except (TypeError, ValueError):
            return 0


@dataclass
class JobSlot:
    """The one in-flight job, shared by the loop thread and the worker thread."""

    delivery: Delivery
    started_at: float = field(default_factory=time.monotonic)
    job_id: str | None = None
    deadline_at: float | None = None  # monotonic; set by the handler once the audio length is known
    context: dict[str, Any] = field(default_factory=dict)  # what on_timeout needs (job, metadata...)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _final_lock: threading.Lock = field(default_factory=threading.Lock)
    _finalized: bool = False

    def claim_final(self) -> bool:
        """Whoever calls first (worker finishing, or the loop on deadline/forced stop) settles the message."""
        with self._final_lock:
            if self._finalized:
                return False
            self._finalized = True
            return True

    @property
    def finalized(self) -> bool:
        return self._finalized


Runner = Callable[["Delivery", "Bridge", JobSlot], None]
TimeoutHandler = Callable[[JobSlot, "Bridge"], None]


class Bridge:
    """Thread-safe facade over the loop's channels: the worker's only way to talk to the broker."""

    def __init__(self, loop: ConsumerLoop) -> None:
        self._loop = loop
        self._requests: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self.timeout_s = BRIDGE_TIMEOUT_S

    def _call(self, fn: Callable[[], Any]) -> Any:
        if threading.get_ident() == self._loop.thread_ident:
            return fn()
        future: Future[Any] = Future()
        self._requests.append((fn, future))
        self._loop.wake()
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise BrokerUnavailable(f"the broker did not answer within {self.timeout_s:.0f} s") from None

    def drain(self) -> None:
        """Run queued requests (loop thread only). AMQP errors propagate after failing the request."""
        while self._requests:
            fn, future = self._requests.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except _AMQP_ERRORS as exc:
                future.set_exception(BrokerUnavailable(f"broker error: {exc!r}"))
                raise
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting worker
                future.set_exception(exc)

    def fail_pending(self, reason: str) -> None:
        while self._requests:
            _, future = self._requests.popleft()
            if future.set_running_or_notify_cancel():
                future.set_exception(BrokerUnavailable(reason))

    # --- the worker's API --------------------------------------------------------------------
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
        *,
        mandatory: bool = False,
    ) -> None:
        """Publish and wait for the broker's confirm; BrokerUnavailable if it is not confirmed."""
        self._call(lambda: self._loop.publish_now(exchange, routing_key, body, properties, mandatory))

    def ack(self, delivery: Delivery) -> bool:
        """Ack; False when the delivery's channel is gone (the broker has requeued the message)."""
        return bool(self._call(lambda: self._loop.settle_now(delivery, "ack")))

    def nack(self, delivery: Delivery, *, requeue: bool) -> bool:
        """Nack (requeue=False dead-letters through the queue's DLX); False if the channel is gone."""
        return bool(self._call(lambda: self._loop.settle_now(delivery, "requeue" if requeue else "reject")))


class ConsumerLoop:
    """Owns the connection; feeds the worker; beats; reconnects; decides when the process exits."""

    def __init__(
        self,
        settings: Settings,
        runner: Runner,
        on_timeout: TimeoutHandler,
        heartbeat: Heartbeat | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        self.settings = settings
        self.amqp = settings.amqp
        self.runner = runner
        self.on_timeout = on_timeout
        self.heartbeat = heartbeat or Heartbeat(None)
        self.supervisor_pid = supervisor_pid
        self.bridge = Bridge(self)
        self.thread_ident: int | None = None
        self.conn: BlockingConnection | None = None
        self.pub_ch: BlockingChannel | None = None
        self.consume_ch: BlockingChannel | None = None
        self.consumer_tag: str | None = None
        self.generation = 0
        self.slot: JobSlot | None = None
        self.held: Delivery | None = None  # arrived between the running job's ack and its slot clearing
        self.stop_requests = 0
        self.jobs_done = 0
        self.max_jobs: int | None = None  # tests: exit 0 after this many jobs
        self._work: queue.Queue[JobSlot | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work_loop, name="job-worker", daemon=True)
        self._cancelled_consumer = False

    # --- entry points ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Signal handlers call this: the first stops intake, the second abandons the job."""
        self.stop_requests += 1

    def wake(self) -> None:
        conn = self.conn
        if conn is None:
            return
        try:
            conn.add_callback_threadsafe(lambda: None)
        except Exception:  # noqa: BLE001 - closed connection: the loop will reconnect and drain
            pass

    def connect_for_boot(self) -> None:
        """First connection + topology, retrying until ``consumer.boot_timeout_s`` (then BootFailure)."""
        deadline = time.monotonic() + self.settings.consumer.boot_timeout_s
        delay = 0.5
        while True:
            try:
                self._connect()
                return
            except _AMQP_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    raise BootFailure(f"broker unreachable for {self.settings.consumer.boot_timeout_s:.0f} s: {exc!r}") from None
                log.warning("broker not reachable yet", error=repr(exc), retry_in_s=delay)
                self.heartbeat.write("booting")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def run(self) -> int:
        """The loop. Returns the process exit code (see exitcodes)."""
        self.thread_ident = threading.get_ident()
        if self.conn is None:
            self.connect_for_boot()
        self._worker.start()
        log.info("consumer ready", queue=self.amqp.jobs_queue)
        reconnect_delay = 0.5
        while True:
            if self.conn is None or self.conn.is_closed:
                if not self._try_reconnect():
                    code = self._checks()
                    if code is not None:
                        return code
                    self._sleep_beating(reconnect_delay)
                    reconnect_delay = min(reconnect_delay * 2, 10.0)
                    continue
                reconnect_delay = 0.5
            try:
                assert self.conn is not None
                self.conn.process_data_events(time_limit=LOOP_TICK_S)
                self.bridge.drain()
                self._repair_channels()
            except pika.exceptions.ChannelClosed as exc:
                log.warning("channel closed by broker", reason=repr(exc))
                self._repair_channels()
            except _AMQP_ERRORS as exc:
                log.warning("broker connection lost", error=repr(exc))
                self._drop_connection()
            code = self._checks()
            if code is not None:
                self._close()
                return code

    # --- the loop's duties -------------------------------------------------------------------
    def _state(self) -> str:
        if self.stop_requests:
            return "draining"
        if self.slot is not None:
            return "busy"
        return "ready" if self.conn is not None else "booting"

    def _checks(self) -> int | None:
        """Heartbeat, job completion, deadline, signals, orphaning. Returns an exit code to stop."""
        slot = self.slot
        self.heartbeat.maybe_write(self._state(), slot.job_id if slot else None)  # type: ignore[arg-type]
        if self.supervisor_pid is not None and os.getppid() != self.supervisor_pid:
            log.error("supervisor is gone; exiting", supervisor_pid=self.supervisor_pid)
            return exitcodes.ORPHANED
        if slot is not None and slot.done.is_set():
            self.slot = None
            self.jobs_done += 1
            slot = None
            held, self.held = self.held, None
            last = self.max_jobs is not None and self.jobs_done >= self.max_jobs
            if held is not None and held.generation == self.generation:
                if self.stop_requests or last:
                    try:
                        self.settle_now(held, "requeue")
                    except _AMQP_ERRORS as exc:  # the broker requeues it when the channel closes
                        log.warning("could not requeue the held delivery", error=repr(exc))
                else:
                    self._start(held)
                    slot = self.slot
            if last:
                return exitcodes.OK
        if slot is not None and slot.deadline_at is not None and time.monotonic() > slot.deadline_at:
            slot.cancelled.set()
            if slot.claim_final():
                log.error("job deadline passed; the model call cannot be interrupted", job_id=slot.job_id)
                try:
                    self.on_timeout(slot, self.bridge)
                except Exception as exc:  # noqa: BLE001 - we exit anyway; the broker redelivers
                    log.error("could not settle the timed-out job", error=repr(exc))
            return exitcodes.JOB_TIMEOUT
        if self.stop_requests >= 1:
            self._stop_consuming()
            if slot is None:
                log.info("stopped", jobs_done=self.jobs_done)
                return exitcodes.OK
            if self.stop_requests >= 2:
                slot.cancelled.set()
                if slot.claim_final():
                    log.warning("second stop signal: requeueing the running job", job_id=slot.job_id)
                    try:
                        self.settle_now(slot.delivery, "requeue")
                    except Exception as exc:  # noqa: BLE001 - the broker requeues on close anyway
                        log.warning("requeue failed", error=repr(exc))
                return exitcodes.OK
        elif slot is None and self.consumer_tag is None and self.consume_ch is not None and self.consume_ch.is_open:
            try:
                self._start_consuming()  # after a channel loss, resume only once idle
            except _AMQP_ERRORS as exc:
                log.warning("could not resume consuming", error=repr(exc))
        return None

    def _sleep_beating(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            slot = self.slot
            self.heartbeat.maybe_write(self._state(), slot.job_id if slot else None)  # type: ignore[arg-type]
            if self.stop_requests >= 2:
                return
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))

    # --- connection management ---------------------------------------------------------------
    def _params(self) -> pika.URLParameters:
        params = pika.URLParameters(self.amqp.url.get_secret_value())
        params.heartbeat = self.amqp.heartbeat_s
        params.socket_timeout = self.amqp.connect_timeout_s
        params.connection_attempts = 1
        params.blocked_connection_timeout = max(30.0, 4.0 * self.amqp.heartbeat_s)
        params.client_properties = {"connection_name": f"funasr-fleet consumer {self.settings.consumer.id or os.getpid()}"}
        return params

    def _connect(self) -> None:
        conn = pika.BlockingConnection(self._params())
        try:
            ch = conn.channel()
            topology.declare(ch, self.amqp, self.settings.consumer)
            ch.close()
            self.conn = conn
            self._open_publish_channel()
            self._open_consume_channel()
        except BaseException:
            self.conn = None
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
            raise

    def _try_reconnect(self) -> bool:
        try:
            self._connect()
            log.info("reconnected to the broker")
            return True
        except _AMQP_ERRORS as exc:
            log.warning("reconnect failed", error=repr(exc))
            return False

    def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        self.pub_ch = self.consume_ch = None
        self.consumer_tag = None
        self.generation += 1  # settles queued for the dead channel now return False; publishes wait
        if conn is not None and not conn.is_closed:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def _open_publish_channel(self) -> None:
        assert self.conn is not None
        ch = self.conn.channel()
        ch.confirm_delivery()
        self.pub_ch = ch

    def _open_consume_channel(self) -> None:
        assert self.conn is not None
        ch = self.conn.channel()
        ch.basic_qos(prefetch_count=self.amqp.prefetch, global_qos=False)
        self.generation += 1
        self.consume_ch = ch
        self.consumer_tag = None
        if self.slot is None and not self.stop_requests:
            self._start_consuming()

    def _start_consuming(self) -> None:
        assert self.consume_ch is not None
        self.consumer_tag = self.consume_ch.basic_consume(
            self.amqp.jobs_queue, on_message_callback=self._on_message, auto_ack=False
        )

    def _stop_consuming(self) -> None:
        if self.consumer_tag is None or self.consume_ch is None or self.consume_ch.is_closed:
            return
        tag, self.consumer_tag = self.consumer_tag, None
        try:
            self.consume_ch.basic_cancel(tag)
            log.info("stopped taking jobs")
        except _AMQP_ERRORS as exc:
            log.warning("basic_cancel failed", error=repr(exc))

    def _repair_channels(self) -> None:
        if self.conn is None or self.conn.is_closed:
            return
        if self.pub_ch is None or self.pub_ch.is_closed:
            log.warning("reopening the publish channel")
            self._open_publish_channel()
        if self.consume_ch is None or self.consume_ch.is_closed:
            log.warning("consume channel was closed (consumer_timeout?); reopening", busy=self.slot is not None)
            self._open_consume_channel()

    def _close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    # --- called on the loop thread -----------------------------------------------------------
    def _on_message(
        self, ch: BlockingChannel, method: pika.spec.Basic.Deliver, props: pika.BasicProperties, body: bytes
    ) -> None:
        delivery = Delivery(
            body=body,
            properties=props,
            delivery_tag=method.delivery_tag,
            redelivered=bool(method.redelivered),
            generation=self.generation,
            exchange=method.exchange,
            routing_key=method.routing_key,
        )
        if self.slot is not None and self.held is None and not self.stop_requests:
            # prefetch 1: the broker sends the next message only once the running job was acked, so
            # this one arrived between that ack and the loop clearing the slot. Hold it and start it
            # when the slot clears. (Nack-requeueing it instead bumps the quorum delivery count at
            # every job boundary until the message dead-letters, reason delivery_limit, with no
            # job.failed event: good jobs were silently lost under load; found by tests/chaos.)
            self.held = delivery
            return
        if self.slot is not None or self.stop_requests:
            ch.basic_nack(method.delivery_tag, requeue=True)  # never two jobs at once
            return
        self._start(delivery)

    def _start(self, delivery: Delivery) -> None:
        self.slot = JobSlot(delivery=delivery)
        self.heartbeat.maybe_write("busy", every_s=0.0)
        self._work.put(self.slot)

    def publish_now(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties, mandatory: bool
    ) -> None:
        if self.conn is None or self.conn.is_closed:
            raise BrokerUnavailable("not connected to the broker")
        if self.pub_ch is None or self.pub_ch.is_closed:
            self._open_publish_channel()
        assert self.pub_ch is not None
        try:
            self.pub_ch.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        except pika.exceptions.UnroutableError:
            raise BrokerUnavailable(f"message to {exchange!r}/{routing_key!r} was unroutable") from None
        except pika.exceptions.NackError:
            raise BrokerUnavailable(f"the broker refused the message to {exchange!r}/{routing_key!r}") from None

    def settle_now(self, delivery: Delivery, how: str) -> bool:
        ch = self.consume_ch
        if ch is None or ch.is_closed or delivery.generation != self.generation:
            log.warning("cannot settle: the delivery's channel is gone (the broker requeued it)", how=how)
            return False
        if how == "ack":
            ch.basic_ack(delivery.delivery_tag)
        else:
            ch.basic_nack(delivery.delivery_tag, requeue=(how == "requeue"))
        return True

    # --- the worker thread -------------------------------------------------------------------
    def _work_loop(self) -> None:
        while True:
            slot = self._work.get()
            if slot is None:
                return
            try:
                self.runner(slot.delivery, self.bridge, slot)
            except BaseException as exc:  # noqa: BLE001 - the loop must survive any job
                log.exception("job runner crashed", error=repr(exc))
            finally:
                structlog.contextvars.clear_contextvars()
                slot.done.set()
                self.wake()
