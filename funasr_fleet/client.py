"""Submit jobs to the fleet and wait for their results (the CLI and upstream Python services use this).

```python
from funasr_fleet.client import Client
from funasr_fleet.settings import load_settings

with Client(load_settings()) as fleet:
    job_id = fleet.submit("s3://calls/2026/11/call-42.wav", formats=["json", "srt"])
    result = fleet.wait(job_id, timeout_s=1800)
    if result.ok:
        print(result.outputs)          # s3:// URIs, manifest last
    else:
        print(result.error_code)       # a stable code from funasr_fleet.errors
    print(fleet.status(job_id).state)  # queued, running, succeeded, failed, cancelled, unknown
    fleet.cancel(other_job_id)         # CancelAnswer: cancelled / cancelling / already_finished / unknown
```

Status: before publishing, the publisher records the job as ``queued`` in its status object
(``funasr_fleet.jobstate``); a failed publish records ``failed`` (``broker_unavailable``) instead.

Publishing: publisher confirms, persistent messages, the AMQP ``timestamp`` set (the consumer's
queue-wait metric), ``message_id`` = job id, to ``amqp.jobs_exchange`` under
``amqp.jobs_routing_key``, after declaring the topology (idempotent). Waiting: an exclusive
queue bound to ``job.*`` on the events exchange is made BEFORE anything is published, so no event
is missed; it is also the job's ``reply_to`` (the consumer sends the final event there too).
Duplicate events (topic + reply_to) are recognised by their CloudEvents id.
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

from funasr_fleet import envelope, events, jobstate, topology
from funasr_fleet.errors import BrokerUnavailable, ConfigError, FleetError
from funasr_fleet.jobs import JobOptions, JobRequest, S3Location, check_allowed, parse_s3_uri
from funasr_fleet.keys import join_key
from funasr_fleet.manifest import manifest_key
from funasr_fleet.settings import Settings

log = structlog.get_logger(__name__)

# what closing an already-dead pika connection raises (wrong state, a lost stream)
_CLOSE_ERRORS = (pika.exceptions.AMQPError, OSError)

MAX_BUFFERED_JOBS = 10_000
"""The watcher sees every job's events; it buffers those of at most this many jobs (oldest dropped)."""
MAX_EVENTS_PER_JOB = 64
WAIT_TIMEOUT_CODE = "wait_timeout"
"""``JobResult.error_code`` when :meth:`EventWatcher.wait` gave up (the job may still finish)."""
APP_ID = envelope.CLIENT_APP_ID


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


def _connect(settings: Settings) -> pika.BlockingConnection:
    params = pika.URLParameters(settings.amqp.url.get_secret_value())
    params.heartbeat = settings.amqp.heartbeat_s
    params.socket_timeout = settings.amqp.connect_timeout_s
    params.blocked_connection_timeout = max(30.0, settings.amqp.connect_timeout_s)
    params.client_properties = {"connection_name": APP_ID}
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        # Never echo the URL: it holds the password.
        raise BrokerUnavailable(f"cannot connect to the broker: {type(exc).__name__}") from None
    except OSError as exc:
        raise BrokerUnavailable(f"cannot connect to the broker: {exc}") from None


def _declare(channel: Any, settings: Settings) -> None:
    try:
        topology.declare(channel, settings.amqp, settings.consumer)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise ConfigError(f"the broker's topology differs from these settings: {exc.reply_text}") from None
        raise BrokerUnavailable(f"declaring the topology failed: {exc.reply_text}") from None


class Publisher:
    """Publishes job requests with confirms; callable, so ``intake.sweep`` can use it directly.

    With ``jobs.status`` on, each job is recorded as ``queued`` before it is published (``storage`` is
    made from the settings when not given); a status write that fails is logged, never fatal.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        connection: pika.BlockingConnection | None = None,
        declare: bool = True,
        storage: Any = None,
    ) -> None:
        self.settings = settings
        self._own = connection is None
        self._connection: pika.BlockingConnection | None = connection
        self._channel: Any = None
        self._declare = declare
        self._storage = storage

    @property
    def storage(self) -> Any:
        """The :class:`funasr_fleet.storage.Storage` for status writes (made on first use)."""
        if self._storage is None:
            from funasr_fleet.storage import Storage

            self._storage = Storage(self.settings.s3)
        return self._storage

    def _ensure(self) -> Any:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        if self._connection is None or not self._connection.is_open:
            if not self._own:
                raise BrokerUnavailable("the client's broker connection is closed")
            self._connection = _connect(self.settings)
        channel = self._connection.channel()
        if self._declare:
            _declare(channel, self.settings)
            self._declare = False  # once per publisher is enough
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def publish(self, job: JobRequest, *, reply_to: str | None = None, correlation_id: str | None = None) -> str:
        """Record the job ``queued``, publish it and wait for the broker's confirm; returns the job id.

        Raises BrokerUnavailable when the broker did not confirm (the status then reads ``failed``,
        ``broker_unavailable``; publishing again re-opens it).
        """
        props = envelope.job_properties(
            str(job.job_id), app_id=APP_ID, reply_to=reply_to, correlation_id=correlation_id or str(job.job_id)
        )
        body = job.to_body()
        by = jobstate.writer_id("publisher")
        queued = jobstate.enqueued(job, self.settings, by)
        recorded = jobstate.try_record(self.storage, self.settings, queued) if self.settings.jobs.status else None
        try:
            self._publish_body(job, body, props)
        except BrokerUnavailable as exc:
            if recorded is not None and recorded.applied:
                error = events.ErrorInfo(code=exc.code, message=f"not enqueued: {exc.message}")
                failed = jobstate.Update(job_id=str(job.job_id), state=jobstate.JobState.FAILED, by=by, error=error)
                jobstate.try_record(self.storage, self.settings, failed)
            raise
        log.info("job published", job_id=job.job_id, audio=job.audio.uri)
        return str(job.job_id)

    def _publish_body(self, job: JobRequest, body: bytes, props: pika.BasicProperties) -> None:
        amqp = self.settings.amqp
        try:
            self._publish_retried(
                lambda channel: channel.basic_publish(
                    amqp.jobs_exchange, amqp.jobs_routing_key, body, props, mandatory=True
                ),
                f"job {job.job_id}",
            )
        except pika.exceptions.UnroutableError:
            raise BrokerUnavailable(
                f"job {job.job_id} was not routed to a queue "
                f"(exchange {amqp.jobs_exchange!r}, key {amqp.jobs_routing_key!r})"
            ) from None
        except pika.exceptions.NackError:
            raise BrokerUnavailable(f"the broker refused job {job.job_id} (queue full or unavailable)") from None

    def send(self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        """Publish any message (events, control broadcasts) and wait for the confirm; BrokerUnavailable otherwise."""
        try:
            self._publish_retried(
                lambda channel: channel.basic_publish(exchange, routing_key, body, properties), f"to {exchange!r}"
            )
        except pika.exceptions.NackError:
            raise BrokerUnavailable(f"the broker refused a message to {exchange!r}") from None

    def _publish_retried(self, publish: Callable[[Any], None], what: str) -> None:
        """``publish(channel)`` on our channel, once more on a fresh connection if it failed.

        Raises pika's UnroutableError/NackError as they are (the caller words them), and
        BrokerUnavailable("publishing <what> failed: ...") for any other broker or socket failure.
        """
        for attempt in (1, 2):
            try:
                publish(self._ensure())
                return
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError):
                raise
            except (pika.exceptions.AMQPError, OSError, ValueError) as exc:
                self._channel = None
                # An idle connection may have been dropped (missed heartbeats): one fresh try. A
                # duplicate, if the first publish did land, is the same job id (idempotent).
                if attempt == 1 and self._own and not isinstance(exc, pika.exceptions.ChannelClosedByBroker):
                    self._drop_connection()
                    continue
                raise BrokerUnavailable(f"publishing {what} failed: {type(exc).__name__}") from None

    def _drop_connection(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        except Exception:  # noqa: BLE001 - it is already broken
            pass
        self._connection = None

    __call__ = publish

    def close(self) -> None:
        if self._own and self._connection is not None and self._connection.is_open:
            with contextlib.suppress(*_CLOSE_ERRORS):  # closing a connection that already died
                self._connection.close()
        self._connection = None
        self._channel = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class EventWatcher:
    """An exclusive queue bound to every ``job.*`` event; create it BEFORE publishing what you wait for."""

    def __init__(self, settings: Settings, *, connection: pika.BlockingConnection | None = None) -> None:
        self.settings = settings
        self._own = connection is None
        self._connection = connection or _connect(settings)
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
            with contextlib.suppress(*_CLOSE_ERRORS):  # closing a connection that already died
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


class ProgressBar:
    """A one-line progress bar fed by job events (redrawn on a TTY, one line per stage otherwise)."""

    WIDTH = 30

    def __init__(self, job_id: str, stream: TextIO) -> None:
        self.job_id = job_id
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = ""
        self._drawn = False

    def update(self, event: events.CloudEvent) -> None:
        data = event.data
        if event.kind == "started":
            fraction, label = 0.0, f"started (attempt {data.attempt})"
        elif event.kind == "progress":
            fraction = data.progress or 0.0
            label = data.stage or "running"
            if data.stage == "retrying" and data.error is not None:
                label = f"retrying after {data.error.code}"
        elif event.kind == "succeeded":
            fraction, label = 1.0, "succeeded"
        elif event.kind == "cancelled":
            fraction, label = data.progress or 0.0, "cancelled"
        else:
            fraction, label = data.progress or 0.0, f"failed: {data.error.code if data.error else '?'}"
        filled = round(self.WIDTH * max(0.0, min(1.0, fraction)))
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:5.1f}% {label}"
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self._drawn = True
        else:
            self.stream.write(f"{self.job_id}: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def build_job(
    audio: str | S3Location,
    *,
    output: str | S3Location | None = None,
    formats: list[str] | None = None,
    options: JobOptions | dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    job_id: str | None = None,
    delete_source: bool | None = None,
    callback: str | None = None,
) -> JobRequest:
    """A validated JobRequest (raises the FleetError naming what is wrong; ``callback_invalid`` for a bad URL)."""
    body: dict[str, Any] = {
        "audio": parse_s3_uri(audio).uri if isinstance(audio, str) else audio,
        "formats": formats or [],
        "options": options.model_dump() if isinstance(options, JobOptions) else (options or {}),
        "metadata": metadata or {},
    }
    if output is not None:
        body["output"] = parse_s3_uri(output, allow_empty_key=True) if isinstance(output, str) else output
    if job_id is not None:
        body["job_id"] = job_id
    if delete_source is not None:
        body["delete_source"] = delete_source
    if callback is not None:
        body["callback"] = callback
    from funasr_fleet.jobs import validate_job

    return validate_job(body)


class Client:
    """One broker connection: an event watcher (made first) plus a confirming publisher."""

    def __init__(self, settings: Settings, *, declare: bool = True) -> None:
        self.settings = settings
        self.watcher = EventWatcher(settings)
        self.publisher = Publisher(settings, connection=self.watcher.connection, declare=declare)
        self._outputs: dict[str, S3Location] = {}

    def submit(
        self,
        audio: str | S3Location | JobRequest,
        *,
        output: str | S3Location | None = None,
        formats: list[str] | None = None,
        options: JobOptions | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        job_id: str | None = None,
        delete_source: bool | None = None,
        callback: str | None = None,
    ) -> str:
        """Publish one job (confirmed) with this client's queue as ``reply_to``; returns its id.

        ``callback``: an https URL the job's final event is POSTed to (needs ``funasr-fleet notify``).
        """
        job = (
            audio
            if isinstance(audio, JobRequest)
            else build_job(
                audio,
                output=output,
                formats=formats,
                options=options,
                metadata=metadata,
                job_id=job_id,
                delete_source=delete_source,
                callback=callback,
            )
        )
        check_allowed(job, self.settings)  # bucket and callback allow-lists: refuse before publishing
        self._outputs[str(job.job_id)] = job.output_location(self.settings)
        return self.publisher.publish(job, reply_to=self.watcher.queue, correlation_id=str(job.job_id))

    def status(self, job_id: str) -> jobstate.JobStatus:
        """The job's status (``funasr_fleet.jobstate.JobStatus``); ``state`` is ``unknown`` for an unseen id.

        Raises StorageError when S3 cannot be read.
        """
        out = self._outputs.get(job_id)
        prefix = f"s3://{out.bucket}/{out.key}" if out is not None else None
        return jobstate.read(self.publisher.storage, self.settings, job_id, output_prefix=prefix)

    def cancel(self, job_id: str, *, reason: str | None = None, force: bool = False) -> Any:
        """Cancel a job (``funasr_fleet.cancel.CancelAnswer``): a queued job never starts, a running one stops.

        Finished and unknown jobs are answered as such (``outcome``) and nothing changes; ``force``
        leaves a cancel marker for an id the fleet has not recorded (published straight to AMQP).
        Raises StorageError / BrokerUnavailable.
        """
        from funasr_fleet.cancel import request_cancel

        out = self._outputs.get(job_id)
        prefix = f"s3://{out.bucket}/{out.key}" if out is not None else None
        return request_cancel(
            self.settings, self.publisher.storage, self.publisher.send, job_id, reason=reason, force=force,
            output_prefix=prefix,
        )  # fmt: skip

    def wait(
        self,
        job_id: str,
        timeout_s: float | None = None,
        *,
        progress: bool | ProgressCallback = False,
        stream: TextIO | None = None,
    ) -> JobResult:
        """Wait for the final event. If the connection was lost meanwhile (e.g. missed heartbeats while
        the caller was busy), reconnect once and fall back to the job's manifest for events missed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            return self.watcher.wait(job_id, timeout_s, progress=progress, stream=stream)
        except BrokerUnavailable as exc:
            log.warning("event connection lost; reconnecting", error=exc.message)
        self.publisher.close()
        self.watcher.close()
        self.watcher = EventWatcher(self.settings)
        self.publisher = Publisher(self.settings, connection=self.watcher.connection, declare=False)
        location = self._outputs.get(job_id) or _default_output(self.settings, job_id)
        done = _from_manifest(self.settings, job_id, location)
        if done is not None:
            return done
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        result = self.watcher.wait(job_id, remaining, progress=progress, stream=stream)
        if result.status == "timeout":
            return _from_manifest(self.settings, job_id, location) or result
        return result

    def output_location(self, job_id: str) -> S3Location | None:
        return self._outputs.get(job_id)

    def close(self) -> None:
        self.publisher.close()
        self.watcher.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


# --- one-call helpers ------------------------------------------------------------------------------
def submit(settings: Settings, audio: str | S3Location | JobRequest, **kwargs: Any) -> str:
    """Fire and forget: publish one job (confirmed) and return its id."""
    job = audio if isinstance(audio, JobRequest) else build_job(audio, **kwargs)
    with Publisher(settings) as publisher:
        return publisher.publish(job)


def status(settings: Settings, job_id: str, *, output: str | None = None) -> jobstate.JobStatus:
    """A job's status without a broker connection (``output``: its s3:// prefix when not the default)."""
    from funasr_fleet.storage import Storage

    return jobstate.read(Storage(settings.s3), settings, job_id, output_prefix=output)


def wait(
    settings: Settings,
    job_id: str,
    timeout_s: float | None = None,
    *,
    output: str | S3Location | None = None,
    progress: bool | ProgressCallback = False,
) -> JobResult:
    """Wait for a job submitted elsewhere: a finished job is answered from its manifest, else events.

    ``output`` is the job's output prefix when it is not the default ``results_prefix/<job_id>``.
    Events published before this call are not seen, so the manifest is checked again on timeout.
    """
    location = (parse_s3_uri(output, allow_empty_key=True) if isinstance(output, str) else output) or _default_output(
        settings, job_id
    )
    with EventWatcher(settings) as watcher:
        done = _from_manifest(settings, job_id, location)
        if done is not None:
            return done
        result = watcher.wait(job_id, timeout_s, progress=progress)
    if result.status == "timeout":
        return _from_manifest(settings, job_id, location) or result
    return result


def _default_output(settings: Settings, job_id: str) -> S3Location:
    return S3Location(bucket=settings.s3.results_bucket, key=join_key(settings.s3.results_prefix, job_id))


def _from_manifest(settings: Settings, job_id: str, location: S3Location) -> JobResult | None:
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
