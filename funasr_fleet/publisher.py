"""The confirming job publisher: records a job ``queued``, publishes it, waits for the broker's confirm.

Publishing: publisher confirms, persistent messages, the AMQP ``timestamp`` set (the consumer's
queue-wait metric), ``message_id`` = job id, to ``amqp.jobs_exchange`` under
``amqp.jobs_routing_key``, after declaring the topology (idempotent). Before publishing, the job is
recorded as ``queued`` in its status object (``funasr_fleet.jobstate``); a failed publish records
``failed`` (``broker_unavailable``) instead. ``connect`` is the client-side broker connection the
event watcher (``funasr_fleet.waiting``) shares.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pika
import pika.exceptions
import structlog

from funasr_fleet import envelope, events, jobstate, topology
from funasr_fleet.errors import BrokerUnavailable, ConfigError
from funasr_fleet.jobs import JobRequest
from funasr_fleet.jobstatus import JobState, Update
from funasr_fleet.settings import Settings

log = structlog.get_logger(__name__)

# what closing an already-dead pika connection raises (wrong state, a lost stream)
CLOSE_ERRORS = (pika.exceptions.AMQPError, OSError)

APP_ID = envelope.CLIENT_APP_ID


def connect(settings: Settings) -> pika.BlockingConnection:
    """A blocking connection to ``amqp.url`` as the client (heartbeat and timeouts from the settings).

    Raises BrokerUnavailable (never echoing the URL).
    """
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


def declare(channel: Any, settings: Settings) -> None:
    """Declare the fleet topology; ConfigError when the broker's differs (406), else BrokerUnavailable."""
    try:
        topology.declare(channel, settings.amqp, settings.consumer)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            raise ConfigError(f"the broker's topology differs from these settings: {exc.reply_text}") from None
        raise BrokerUnavailable(f"declaring the topology failed: {exc.reply_text}") from None


class Publisher:
    """Publishes job requests with confirms; callable, so ``reconcile.sweep`` can use it directly.

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
            self._connection = connect(self.settings)
        channel = self._connection.channel()
        if self._declare:
            declare(channel, self.settings)
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
                failed = Update(job_id=str(job.job_id), state=JobState.FAILED, by=by, error=error)
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
            with contextlib.suppress(*CLOSE_ERRORS):  # closing a connection that already died
                self._connection.close()
        self._connection = None
        self._channel = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
