"""The consumer's connection to RabbitMQ: two channels, reconnection, consuming, publish and settle.

Channels: a *publish* channel in confirm mode (every publish is confirmed or raises) and a
*consume* channel with prefetch 1. When the broker closes the consume channel under a long job
(``consumer_timeout``) the publish channel survives; the job finishes, its ack is skipped (the
delivery tag died with the channel and the broker has requeued the message), and consuming
restarts only once the worker is idle: the redelivered copy is then answered by the manifest.

Every method here runs on the loop thread (the one that owns the pika connection); the worker
reaches them only through :class:`~funasr_fleet.consumer.bridge.Bridge`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import pika
import pika.exceptions
import pika.spec
import structlog
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from funasr_fleet import topology
from funasr_fleet.consumer.delivery import Delivery
from funasr_fleet.errors import BrokerUnavailable
from funasr_fleet.settings import Settings

log = structlog.get_logger("funasr_fleet.consumer.broker")

AMQP_ERRORS: tuple[type[BaseException], ...] = (pika.exceptions.AMQPError, ConnectionError, OSError)
"""What a lost or refusing broker raises out of pika."""


class BrokerLink:
    """Owns the BlockingConnection and its channels; hands each delivery to ``on_message``.

    ``may_consume()`` says whether a (re)opened consume channel should start consuming now (the
    loop: only when idle and not stopping). ``generation`` grows with every consume channel, so a
    delivery from a channel that is gone can never be settled on its successor.
    """

    def __init__(
        self, settings: Settings, on_message: Callable[[Delivery], None], may_consume: Callable[[], bool]
    ) -> None:
        self.settings = settings
        self.amqp = settings.amqp
        self._on_message = on_message
        self._may_consume = may_consume
        self.conn: BlockingConnection | None = None
        self.publish_channel: BlockingChannel | None = None
        self.consume_channel: BlockingChannel | None = None
        self.consumer_tag: str | None = None
        self.generation = 0
        self.on_connect: Callable[[BlockingConnection], None] | None = None  # e.g. the cancel listener

    # --- connection ------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.conn is not None and not self.conn.is_closed

    def connect(self) -> None:
        """Connect, declare the topology, open both channels. Raises one of :data:`AMQP_ERRORS`."""
        conn = pika.BlockingConnection(self._params())
        try:
            ch = conn.channel()
            topology.declare(ch, self.amqp, self.settings.consumer)
            ch.close()
            self.conn = conn
            self._open_publish_channel()
            self._open_consume_channel()
            if self.on_connect is not None:
                self.on_connect(conn)
        except BaseException:
            self.conn = None
            _close_quietly(conn)
            raise

    def try_reconnect(self) -> bool:
        try:
            self.connect()
        except AMQP_ERRORS as exc:
            log.warning("reconnect failed", error=repr(exc))
            return False
        log.info("reconnected to the broker")
        return True

    def drop(self) -> None:
        """Forget a broken connection: settles queued for its channel now return False; publishes wait."""
        conn, self.conn = self.conn, None
        self.publish_channel = self.consume_channel = None
        self.consumer_tag = None
        self.generation += 1
        if conn is not None and not conn.is_closed:
            _close_quietly(conn)

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and conn.is_open:
            _close_quietly(conn)

    def process(self, time_limit_s: float) -> None:
        """Service the connection (heartbeats, deliveries, confirms) for up to ``time_limit_s``."""
        assert self.conn is not None
        self.conn.process_data_events(time_limit=time_limit_s)

    def wake(self) -> None:
        """Make a ``process`` call return early (thread-safe; a closed connection is ignored)."""
        conn = self.conn
        if conn is None:
            return
        with contextlib.suppress(Exception):  # closed: the loop reconnects, then drains the bridge
            conn.add_callback_threadsafe(lambda: None)

    def _params(self) -> pika.URLParameters:
        params = pika.URLParameters(self.amqp.url.get_secret_value())
        params.heartbeat = self.amqp.heartbeat_s
        params.socket_timeout = self.amqp.connect_timeout_s
        params.connection_attempts = 1
        params.blocked_connection_timeout = max(30.0, 4.0 * self.amqp.heartbeat_s)
        name = self.settings.consumer.id or os.getpid()
        params.client_properties = {"connection_name": f"funasr-fleet consumer {name}"}
        return params

    # --- channels --------------------------------------------------------------------------------
    def _open_publish_channel(self) -> None:
        assert self.conn is not None
        ch = self.conn.channel()
        ch.confirm_delivery()
        self.publish_channel = ch

    def _open_consume_channel(self) -> None:
        assert self.conn is not None
        ch = self.conn.channel()
        ch.basic_qos(prefetch_count=self.amqp.prefetch, global_qos=False)
        self.generation += 1
        self.consume_channel = ch
        self.consumer_tag = None
        if self._may_consume():
            self.start_consuming()

    def repair_channels(self, *, busy: bool) -> None:
        """Reopen a channel the broker closed (``busy``: a job runs, for the log only)."""
        if not self.connected:
            return
        if self.publish_channel is None or self.publish_channel.is_closed:
            log.warning("reopening the publish channel")
            self._open_publish_channel()
        if self.consume_channel is None or self.consume_channel.is_closed:
            log.warning("consume channel was closed (consumer_timeout?); reopening", busy=busy)
            self._open_consume_channel()

    # --- consuming -------------------------------------------------------------------------------
    @property
    def can_resume(self) -> bool:
        """Not consuming although the consume channel is open (it was reopened while busy)."""
        ch = self.consume_channel
        return self.consumer_tag is None and ch is not None and ch.is_open

    def start_consuming(self) -> None:
        assert self.consume_channel is not None
        self.consumer_tag = self.consume_channel.basic_consume(
            self.amqp.jobs_queue, on_message_callback=self._deliver, auto_ack=False
        )

    def stop_consuming(self) -> None:
        """basic_cancel: the broker sends nothing more (idempotent; errors are only logged)."""
        if self.consumer_tag is None or self.consume_channel is None or self.consume_channel.is_closed:
            return
        tag, self.consumer_tag = self.consumer_tag, None
        try:
            self.consume_channel.basic_cancel(tag)
            log.info("stopped taking jobs")
        except AMQP_ERRORS as exc:
            log.warning("basic_cancel failed", error=repr(exc))

    def _deliver(
        self, ch: BlockingChannel, method: pika.spec.Basic.Deliver, props: pika.BasicProperties, body: bytes
    ) -> None:
        self._on_message(
            Delivery(
                body=body,
                properties=props,
                delivery_tag=method.delivery_tag,
                redelivered=bool(method.redelivered),
                generation=self.generation,
                exchange=method.exchange,
                routing_key=method.routing_key,
            )
        )

    # --- publish and settle (loop thread) ---------------------------------------------------------
    def publish(
        self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties, *, mandatory: bool
    ) -> None:
        """Publish on the confirm channel; BrokerUnavailable unless the broker confirmed it."""
        if not self.connected:
            raise BrokerUnavailable("not connected to the broker")
        if self.publish_channel is None or self.publish_channel.is_closed:
            self._open_publish_channel()
        assert self.publish_channel is not None
        try:
            self.publish_channel.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
        except pika.exceptions.UnroutableError:
            raise BrokerUnavailable(f"message to {exchange!r}/{routing_key!r} was unroutable") from None
        except pika.exceptions.NackError:
            raise BrokerUnavailable(f"the broker refused the message to {exchange!r}/{routing_key!r}") from None

    def ack(self, delivery: Delivery) -> bool:
        """Done with it. False when its channel is gone (the broker has requeued the message)."""
        return self._settle(delivery, "ack", lambda ch: ch.basic_ack(delivery.delivery_tag))

    def requeue(self, delivery: Delivery) -> bool:
        """Back to the queue (counts as a delivery on a quorum queue). False when its channel is gone."""
        return self._settle(delivery, "requeue", lambda ch: ch.basic_nack(delivery.delivery_tag, requeue=True))

    def reject(self, delivery: Delivery) -> bool:
        """Dead-letter it through the queue's DLX. False when its channel is gone."""
        return self._settle(delivery, "reject", lambda ch: ch.basic_nack(delivery.delivery_tag, requeue=False))

    def _settle(self, delivery: Delivery, how: str, settle: Callable[[BlockingChannel], None]) -> bool:
        ch = self.consume_channel
        if ch is None or ch.is_closed or delivery.generation != self.generation:
            log.warning("cannot settle: the delivery's channel is gone (the broker requeued it)", how=how)
            return False
        settle(ch)
        return True


def _close_quietly(conn: BlockingConnection) -> None:
    with contextlib.suppress(Exception):  # it is broken already; nothing to tell anyone
        conn.close()
