"""Waiting for jobs: the event watcher, the JobResult it hands back, and the manifest fallback.

An exclusive queue bound to ``job.*`` on the events exchange is made BEFORE anything is published,
so no event is missed; it is also the job's ``reply_to`` (the consumer sends the final event there
too). Duplicate events (topic + reply_to) are recognised by their CloudEvents id. A job that ended
while nobody watched is answered from its manifest.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO

import pika
import pika.exceptions
import structlog
from pydantic import ValidationError

from funasr_fleet import events
from funasr_fleet.errors import BrokerUnavailable, ConfigError, FleetError
from funasr_fleet.keys import join_key
from funasr_fleet.manifest import manifest_key
from funasr_fleet.progressbar import ProgressBar
from funasr_fleet.publisher import CLOSE_ERRORS, connect
from funasr_fleet.s3uri import S3Location
from funasr_fleet.settings import Settings

log = structlog.get_logger(__name__)

MAX_BUFFERED_JOBS = 10_000
"""The watcher sees every job's events; it buffers those of at most this many jobs (oldest dropped)."""
MAX_EVENTS_PER_JOB = 64
WAIT_TIMEOUT_CODE = "wait_timeout"
"""``JobResult.error_code`` when :meth:`EventWatcher.wait` gave up (the job may still finish)."""


@dataclass
class JobResult:
    """How a job ended, from its final event (or a manifest, or a client-side timeout)."""

    job_id: str
    status: str  # succeeded | failed | cancelled | timeout
    outputs: list[str] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    event: events.CloudEvent | None = None
    warnings: list[events.WarningInfo] = field(default_factory=list)  # succeeded, but not exactly as asked

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def data(self) -> events.EventData | None:
        return self.event.data if self.event is not None else None


ProgressCallback = Callable[[events.CloudEvent], None]


class EventWatcher:
    """An exclusive queue bound to every ``job.*`` event; create it BEFORE publishing what you wait for."""

    def __init__(self, settings: Settings, *, connection: pika.BlockingConnection | None = None) -> None:
        self.settings = settings
        self._own = connection is None
        self._connection = connection or connect(settings)
        self._events: OrderedDict[str, deque[events.CloudEvent]] = OrderedDict()
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()
        try:
            channel = self._connection.channel()
            channel.exchange_declare(settings.amqp.events_exchange, exchange_type="topic", durable=True)
            declared = channel.queue_declare("", exclusive=True, auto_delete=True)
            self.queue: str = declared.method.queue
            channel.queue_bind(self.queue, settings.amqp.events_exchange, routing_key="job.*")
            channel.basic_consume(self.queue, self._on_message, auto_ack=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            self.close()
            if exc.reply_code == 406:
                raise ConfigError(f"events exchange differs from these settings: {exc.reply_text}") from None
            raise BrokerUnavailable(f"cannot watch events: {exc.reply_text}") from None
        except (pika.exceptions.AMQPError, OSError) as exc:
            self.close()
            raise BrokerUnavailable(f"cannot watch events: {type(exc).__name__}") from None
        self._channel = channel

    @property
    def connection(self) -> pika.BlockingConnection:
        return self._connection

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        try:
            event = events.parse(body)
        except (ValueError, ValidationError) as exc:
            log.warning("ignoring an unreadable event", error=str(exc)[:200])
            return
        if event.id in self._seen:
            return  # the same final event via topic and reply_to
        self._seen.add(event.id)
        self._seen_order.append(event.id)
        if len(self._seen_order) > MAX_BUFFERED_JOBS * 4:
            self._seen.discard(self._seen_order.popleft())
        queue = self._events.get(event.subject)
        if queue is None:
            queue = self._events[event.subject] = deque(maxlen=MAX_EVENTS_PER_JOB)
            while len(self._events) > MAX_BUFFERED_JOBS:  # a busy fleet: forget the oldest jobs
                self._events.popitem(last=False)
        queue.append(event)

    def poll(self, time_limit: float = 0.0) -> None:
        """Service the connection (heartbeats, deliveries) for up to ``time_limit`` seconds."""
        if not self._connection.is_open:
            raise BrokerUnavailable("the event connection is closed")
        try:
            self._connection.process_data_events(time_limit=time_limit)
        except (pika.exceptions.AMQPError, OSError, ValueError) as exc:  # ValueError: pika on a dead socket
            raise BrokerUnavailable(f"lost the broker while waiting: {type(exc).__name__}") from None

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        *,
        progress: bool | ProgressCallback = False,
        stream: TextIO | None = None,
    ) -> JobResult:
        """Block until ``job_id``'s final event (job.succeeded / job.failed / job.cancelled) or the timeout.

        ``progress``: True draws a progress bar on stderr; a callable receives every event.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = ProgressBar(job_id, stream or sys.stderr) if progress is True else None
        callback: ProgressCallback | None = progress if callable(progress) else None
        try:
            while True:
                queue = self._events.get(job_id)
                if queue is not None:
                    self._events.move_to_end(job_id)  # the job we wait for is never the one evicted
                while queue:
                    event = queue.popleft()
                    if bar is not None:
                        bar.update(event)
                    if callback is not None:
                        callback(event)
                    if event.final:
                        self._events.pop(job_id, None)
                        return _result_from_event(event)
                if deadline is not None and time.monotonic() >= deadline:
                    return JobResult(
                        job_id=job_id,
                        status="timeout",
                        error_code=WAIT_TIMEOUT_CODE,
                        error_message=f"no final event within {timeout_s:.0f} s (the job may still finish)",
                    )
                slice_s = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
                self.poll(slice_s)
        finally:
            if bar is not None:
                bar.close()

    def close(self) -> None:
        if self._own and self._connection is not None and self._connection.is_open:
            with contextlib.suppress(*CLOSE_ERRORS):  # closing a connection that already died
                self._connection.close()

    def __enter__(self) -> EventWatcher:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _result_from_event(event: events.CloudEvent) -> JobResult:
    data = event.data
    if event.kind == "succeeded":
        return JobResult(
            job_id=event.subject,
            status="succeeded",
            outputs=list(data.outputs or []),
            event=event,
            warnings=list(data.warnings or []),
        )
    if event.kind == "cancelled":
        return JobResult(
            job_id=event.subject,
            status="cancelled",
            error_code="job_cancelled",
            error_message=data.error.message if data.error else "the job was cancelled",
            event=event,
        )
    return JobResult(
        job_id=event.subject,
        status="failed",
        error_code=data.error.code if data.error else "internal_error",
        error_message=data.error.message if data.error else None,
        event=event,
    )


def default_output(settings: Settings, job_id: str) -> S3Location:
    """Where a job's outputs go when its request named none: ``results_bucket/results_prefix/<job_id>``."""
    return S3Location(bucket=settings.s3.results_bucket, key=join_key(settings.s3.results_prefix, job_id))


def result_from_manifest(settings: Settings, job_id: str, location: S3Location) -> JobResult | None:
    """A succeeded JobResult from the manifest under ``location``; None when absent, unreadable or another job's."""
    from funasr_fleet.storage import Storage

    try:
        manifest = Storage(settings.s3).get_json(location.bucket, manifest_key(location.key))
    except FleetError as exc:
        log.warning("could not read the manifest", error=exc.message)
        return None
    if not manifest or manifest.get("job_id") != job_id:
        return None
    raw_warnings = (manifest.get("event") or {}).get("warnings") or []
    try:
        warnings = [events.WarningInfo.model_validate(w) for w in raw_warnings]
    except ValidationError:
        log.warning("the manifest's warnings are unreadable", job_id=job_id, warnings=repr(raw_warnings)[:500])
        warnings = []
    return JobResult(job_id=job_id, status="succeeded", outputs=list(manifest.get("outputs") or []), warnings=warnings)
