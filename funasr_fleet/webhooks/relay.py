"""The webhook relay (``funasr-fleet notify``): events in, signed POSTs out, retried for hours.

```
events exchange --job.* (subscribed kinds)--> <prefix>.events (quorum, max-length, drop-head -> dlx)
      | fan-out: one delivery per destination (subscriptions matching the kind + the job's callback)
      v
<prefix> exchange (direct) --deliver--> <prefix>.deliveries (quorum) --POST--> receiver
      ^                                         | retryable failure: attempt n -> delay tier n
      |                                         v
      +--- dead-letter on expiry --- <prefix>.delay.<ms>ms (quorum, x-message-ttl)
given up (refused destination, redirect, 4xx, schedule exhausted) --> <prefix>.dlx (fanout) --> <prefix>.dlq
```

Nothing here touches the jobs queue or a consumer: the events exchange copies each event into the
relay's queue, which never refuses a publish (drop-head into the relay's dead-letter queue past
``webhooks.max_backlog``), so a slow or absent relay never slows or blocks a consumer. The job's
callback travels in the event's ``x-fleet-callback`` header, never in the body a receiver sees.
Delivery is at-least-once: every attempt of one event to one destination carries the same
``webhook-id`` (the CloudEvent id); receivers de-duplicate on it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import structlog

from funasr_fleet import events
from funasr_fleet.settings import Settings, WebhookSettings
from funasr_fleet.webhooks.sender import Outcome, Sender

log = structlog.get_logger(__name__)

URL_HEADER = "x-webhook-url"
ATTEMPT_HEADER = "x-webhook-attempt"
ID_HEADER = "x-webhook-id"
KIND_HEADER = "x-webhook-kind"
ERROR_HEADER = "x-webhook-error"
DELIVER_KEY = "deliver"
RECENT_EVENTS = 10_000


@dataclass(frozen=True)
class Names:
    exchange: str
    events_queue: str
    deliveries_queue: str
    dlx: str
    dlq: str

    @classmethod
    def of(cls, hooks: WebhookSettings) -> Names:
        p = hooks.queue_prefix
        return cls(p, f"{p}.events", f"{p}.deliveries", f"{p}.dlx", f"{p}.dlq")


def delay_ms(hooks: WebhookSettings, attempt: int) -> int | None:
    """Delay before attempt ``attempt + 1`` after failed attempt ``attempt`` (1-based); None: give up (pure)."""
    schedule = hooks.retry_schedule_s
    if attempt < 1 or attempt > len(schedule):
        return None
    return max(1, round(schedule[attempt - 1] * 1000))


def delay_queue(hooks: WebhookSettings, ms: int) -> str:
    return f"{hooks.queue_prefix}.delay.{ms}ms"


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching (``*`` one word, ``#`` zero or more) of ``pattern`` against ``key`` (pure)."""
    p, k = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, n) for n in range(j, len(k) + 1))
        return j < len(k) and (p[i] == "*" or p[i] == k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def destinations(hooks: WebhookSettings, routing_key: str, callback: str | None) -> list[tuple[str, str]]:
    """``(kind, url)`` pairs an event goes to: matching subscriptions, then the job's callback (pure)."""
    out: list[tuple[str, str]] = []
    for sub in hooks.subscriptions:
        if any(topic_matches(p, routing_key) for p in sub.events) and sub.url not in [u for _, u in out]:
            out.append(("subscription", sub.url))
    wanted = callback and any(topic_matches(p, routing_key) for p in hooks.callback_events)
    if wanted and callback not in [u for _, u in out]:
        out.append(("callback", str(callback)))
    return out


def declare(channel: Any, settings: Settings) -> Names:
    """The relay's exchanges and queues (idempotent); binds the events queue to the kinds anyone wants."""
    hooks, n = settings.webhooks, Names.of(settings.webhooks)
    channel.exchange_declare(settings.amqp.events_exchange, exchange_type="topic", durable=True)
    channel.exchange_declare(n.exchange, exchange_type="direct", durable=True)
    channel.exchange_declare(n.dlx, exchange_type="fanout", durable=True)
    channel.queue_declare(n.dlq, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_bind(n.dlq, n.dlx)
    channel.queue_declare(n.events_queue, durable=True, arguments={
        "x-queue-type": "quorum", "x-max-length": hooks.max_backlog, "x-overflow": "drop-head",
        "x-dead-letter-exchange": n.dlx,
    })  # fmt: skip
    for key in sorted({p for s in hooks.subscriptions for p in s.events} | set(hooks.callback_events)):
        channel.queue_bind(n.events_queue, settings.amqp.events_exchange, routing_key=key)
    channel.queue_declare(n.deliveries_queue, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 20, "x-dead-letter-exchange": n.dlx,
    })  # fmt: skip
    channel.queue_bind(n.deliveries_queue, n.exchange, routing_key=DELIVER_KEY)
    for ms in sorted({m for a in range(1, len(hooks.retry_schedule_s) + 1) if (m := delay_ms(hooks, a))}):
        q = delay_queue(hooks, ms)
        channel.queue_declare(q, durable=True, arguments={
            "x-queue-type": "quorum", "x-message-ttl": ms, "x-dead-letter-exchange": n.exchange,
            "x-dead-letter-routing-key": DELIVER_KEY,
        })  # fmt: skip
        channel.queue_bind(q, n.exchange, routing_key=f"delay.{ms}")
    return n


def delete(channel: Any, settings: Settings) -> None:
    """Remove the relay's exchanges and queues (tests); missing ones are skipped."""
    hooks, n = settings.webhooks, Names.of(settings.webhooks)
    queues = [n.events_queue, n.deliveries_queue, n.dlq]
    queues += [delay_queue(hooks, m) for a in range(1, len(hooks.retry_schedule_s) + 1) if (m := delay_ms(hooks, a))]
    for kind, name in [("q", q) for q in queues] + [("x", x) for x in (n.exchange, n.dlx)]:
        if not channel.is_open:
            channel = channel.connection.channel()
        try:
            channel.queue_delete(name) if kind == "q" else channel.exchange_delete(name)
        except pika.exceptions.ChannelClosedByBroker:
            continue


class Relay:
    """One worker's handlers; ``publish(exchange, key, body, props)`` is confirmed by the broker."""

    def __init__(self, settings: Settings, sender: Sender, publish: Any, recent: OrderedDict[str, None]) -> None:
        self.settings, self.hooks, self.names = settings, settings.webhooks, Names.of(settings.webhooks)
        self.sender, self.publish = sender, publish
        self._recent, self._lock = recent, threading.Lock()

    def on_event(self, routing_key: str, props: pika.BasicProperties, body: bytes) -> int:
        """Fan an event out into one delivery per destination; returns how many."""
        try:
            event = events.parse(body)
        except ValueError:
            log.warning("webhook relay: unreadable event skipped", routing_key=routing_key)
            return 0
        callback = (props.headers or {}).get(events.CALLBACK_HEADER)
        callback = callback.decode() if isinstance(callback, bytes) else callback
        targets = destinations(self.hooks, routing_key, callback if isinstance(callback, str) else None)
        with self._lock:  # the same event id twice (cancel command + consumer): one fan-out per process
            if event.id in self._recent:
                return 0
            self._recent[event.id] = None
            while len(self._recent) > RECENT_EVENTS:
                self._recent.popitem(last=False)
        try:
            for kind, url in targets:
                headers = {URL_HEADER: url, ATTEMPT_HEADER: 1, ID_HEADER: event.id, KIND_HEADER: kind}
                self.publish(self.names.exchange, DELIVER_KEY, body, _props(event.id, url, headers))
        except BaseException:
            with self._lock:  # the event goes back to the queue: its redelivery must fan out again
                self._recent.pop(event.id, None)
            raise
        return len(targets)

    def on_delivery(self, props: pika.BasicProperties, body: bytes) -> str:
        """POST one delivery; schedule its retry or dead-letter it. Returns the outcome (logs, tests)."""
        headers = dict(props.headers or {})
        url = _text(headers.get(URL_HEADER))
        webhook_id = _text(headers.get(ID_HEADER)) or str(props.message_id or "")
        attempt = int(headers.get(ATTEMPT_HEADER) or 1)
        result = self.sender.send(url, webhook_id, body)
        log.info("webhook", url=_redact(url), webhook_id=webhook_id, attempt=attempt, outcome=result.outcome.value,
                 reason=result.reason)  # fmt: skip
        if result.outcome is Outcome.DELIVERED:
            return "delivered"
        wait = delay_ms(self.hooks, attempt) if result.outcome is Outcome.RETRY else None
        base = {k: v for k, v in headers.items() if not str(k).startswith("x-death") and k != "x-delivery-count"}
        if wait is not None:
            retry = {**base, ATTEMPT_HEADER: attempt + 1, ERROR_HEADER: result.reason[:500]}
            self.publish(self.names.exchange, f"delay.{wait}", body, _props(webhook_id, url, retry))
            return "retry"
        dead = {**base, ERROR_HEADER: result.reason[:500]}
        self.publish(self.names.dlx, "dead", body, _props(webhook_id, url, dead))
        log.warning("webhook given up", url=_redact(url), webhook_id=webhook_id, attempts=attempt, reason=result.reason)
        return "dead"


def _props(webhook_id: str, url: str, headers: dict[str, Any]) -> pika.BasicProperties:
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return pika.BasicProperties(content_type=events.CONTENT_TYPE, delivery_mode=2, headers=headers,
                                message_id=f"{webhook_id}:{digest}", timestamp=int(time.time()))  # fmt: skip


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _redact(url: str) -> str:
    """Scheme, host and path only: a query string may hold a receiver's token."""
    return url.split("?", 1)[0]


def run(settings: Settings, stop: threading.Event, *, sender: Sender | None = None) -> None:
    """``webhooks.concurrency`` workers (own connection each) until ``stop`` is set."""
    sender = sender or Sender(settings.webhooks)
    recent: OrderedDict[str, None] = OrderedDict()
    params = pika.URLParameters(settings.amqp.url.get_secret_value())
    conn = pika.BlockingConnection(params)
    try:
        declare(conn.channel(), settings)
    finally:
        conn.close()
    workers = [
        threading.Thread(target=_worker, args=(settings, sender, recent, stop, i), name=f"webhook-{i}", daemon=True)
        for i in range(settings.webhooks.concurrency)
    ]
    for w in workers:
        w.start()
    log.info("webhook relay ready", workers=len(workers), subscriptions=len(settings.webhooks.subscriptions))
    for w in workers:
        w.join()


def _worker(settings: Settings, sender: Sender, recent: OrderedDict[str, None], stop: threading.Event, n: int) -> None:
    delay = 0.5
    while not stop.is_set():
        try:
            _serve(settings, sender, recent, stop, n)
            delay = 0.5
        except (pika.exceptions.AMQPError, OSError) as exc:
            log.warning("webhook relay lost the broker; reconnecting", error=repr(exc), retry_in_s=delay)
            stop.wait(delay)
            delay = min(delay * 2, 30.0)


def _serve(settings: Settings, sender: Sender, recent: OrderedDict[str, None], stop: threading.Event, n: int) -> None:
    params = pika.URLParameters(settings.amqp.url.get_secret_value())
    params.heartbeat = max(settings.amqp.heartbeat_s, int(settings.webhooks.timeout_s * 4))
    params.client_properties = {"connection_name": f"funasr-fleet notify {n}"}
    conn = pika.BlockingConnection(params)
    try:
        pub = conn.channel()
        pub.confirm_delivery()

        def publish(exchange: str, key: str, body: bytes, props: pika.BasicProperties) -> None:
            pub.basic_publish(exchange, key, body, props)

        relay = Relay(settings, sender, publish, recent)
        names = relay.names
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)

        def on_event(channel: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            relay.on_event(method.routing_key, props, body)
            channel.basic_ack(method.delivery_tag)

        def on_delivery(channel: Any, method: Any, props: pika.BasicProperties, body: bytes) -> None:
            relay.on_delivery(props, body)
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume(names.events_queue, on_event)
        ch.basic_consume(names.deliveries_queue, on_delivery)
        while not stop.is_set():
            conn.process_data_events(time_limit=0.5)
    finally:
        if conn.is_open:
            conn.close()
