"""Helpers for the chaos and bad-input suites: a durable event log, resilient publishing, broker
and S3 outages, output checks, queue counts. Everything talks to the real services.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from funasr_fleet import topology
from funasr_fleet.errors import BrokerUnavailable
from funasr_fleet.settings import Settings

_AMQP_ERRORS = (pika.exceptions.AMQPError, OSError)
SRT_TIME = re.compile(r"^(\d{2,}):([0-5]\d):([0-5]\d),(\d{3}) --> (\d{2,}):([0-5]\d):([0-5]\d),(\d{3})$")
# Fields of a duplicate succeeded event that legitimately differ from the first one: the attempt
# number of the delivery that answered, and ``reused: manifest`` (the redelivery was answered from
# the manifest, not transcribed again). Everything else must be identical.
VOLATILE_EVENT_FIELDS = ("attempt", "reused")


def connect(url: str, timeout: float = 3.0) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.socket_timeout = timeout
    params.blocked_connection_timeout = timeout
    params.connection_attempts = 1
    params.heartbeat = 30
    return pika.BlockingConnection(params)


def declare_topology(settings: Settings) -> None:
    conn = connect(settings.amqp.url.get_secret_value())
    try:
        topology.declare(conn.channel(), settings.amqp, settings.consumer)
    finally:
        conn.close()


# --- events ------------------------------------------------------------------------------------
@dataclass
class EventLog:
    """Every ``job.*`` event, through a durable quorum queue of our own (it outlives broker restarts:
    events published while we are not reading wait there). Deduplicated by CloudEvents id."""

    settings: Settings
    queue: str = ""
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> event
    order: list[str] = field(default_factory=list)
    received: dict[str, float] = field(default_factory=dict)  # id -> time.monotonic() of the drain that got it

    def __post_init__(self) -> None:
        self.queue = self.queue or f"{self.settings.amqp.events_exchange}.chaos-log-{uuid.uuid4().hex[:6]}"
        conn = connect(self.settings.amqp.url.get_secret_value())
        try:
            ch = conn.channel()
            topology.declare(ch, self.settings.amqp, self.settings.consumer)
            ch.queue_declare(self.queue, durable=True, arguments={"x-queue-type": "quorum"})
            ch.queue_bind(self.queue, self.settings.amqp.events_exchange, routing_key="job.#")
        finally:
            conn.close()

    def drain(self) -> int:
        """Read everything waiting (best effort: a broker outage just means 0 now, more later)."""
        new = 0
        try:
            conn = connect(self.settings.amqp.url.get_secret_value())
        except _AMQP_ERRORS:
            return 0
        try:
            ch = conn.channel()
            while True:
                method, _props, body = ch.basic_get(self.queue, auto_ack=False)
                if method is None:
                    break
                event = json.loads(body)
                if event["id"] not in self.events:
                    self.events[event["id"]] = event
                    self.order.append(event["id"])
                    self.received[event["id"]] = time.monotonic()
                    new += 1
                ch.basic_ack(method.delivery_tag)
        except _AMQP_ERRORS:
            pass
        finally:
            with contextlib.suppress(*_AMQP_ERRORS):
                conn.close()
        return new

    def of(self, job_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        out = []
        for eid in self.order:
            e = self.events[eid]
            if e["data"].get("job_id") == job_id and (kind is None or kind_of(e) == kind):
                out.append(e)
        return out

    def finals(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for eid in self.order:
            e = self.events[eid]
            if kind_of(e) in ("succeeded", "failed"):
                out.setdefault(e["data"]["job_id"], []).append(e)
        return out

    def kinds(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for e in self.events.values():
            k = kind_of(e)
            if k == "progress" and e["data"].get("stage") == "retrying":
                k = "retrying"
            counts[k] += 1
        return counts

    def delete(self) -> None:
        try:
            conn = connect(self.settings.amqp.url.get_secret_value())
            try:
                conn.channel().queue_delete(self.queue)
            finally:
                conn.close()
        except _AMQP_ERRORS:
            pass


def kind_of(event: dict[str, Any]) -> str:
    return str(event.get("type", "")).rsplit(".", 1)[-1]


def stable_data(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event["data"].items() if k not in VOLATILE_EVENT_FIELDS}


# --- publishing ----------------------------------------------------------------------------------
class RawPublisher:
    """Publishes bytes to the jobs exchange with confirms; reconnects and retries through outages."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn: pika.BlockingConnection | None = None
        self.ch: Any = None
        self.retries = 0

    def _channel(self) -> Any:
        if self.ch is None or not self.ch.is_open or self.conn is None or not self.conn.is_open:
            self.close()
            self.conn = connect(self.settings.amqp.url.get_secret_value())
            self.ch = self.conn.channel()
            self.ch.confirm_delivery()
        return self.ch

    def publish(self, body: bytes, *, message_id: str | None = None, headers: dict[str, Any] | None = None,
                routing_key: str | None = None, deadline_s: float = 180.0) -> None:  # fmt: skip
        amqp = self.settings.amqp
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=message_id,
                                     timestamp=int(time.time()), headers=headers)  # fmt: skip
        end = time.monotonic() + deadline_s
        while True:
            try:
                self._channel().basic_publish(amqp.jobs_exchange, routing_key or amqp.jobs_routing_key, body, props,
                                              mandatory=True)  # fmt: skip
                return
            except (*_AMQP_ERRORS, BrokerUnavailable):
                self.close()
                self.retries += 1
                if time.monotonic() > end:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(*_AMQP_ERRORS):
                self.conn.close()
        self.conn, self.ch = None, None


def job_body(job_id: str, bucket: str, key: str, formats: tuple[str, ...] = ("json", "srt"), **extra: Any) -> bytes:
    return json.dumps({"job_id": job_id, "audio": f"s3://{bucket}/{key}", "formats": list(formats), **extra}).encode()


# --- queues --------------------------------------------------------------------------------------
def queue_counts(settings: Settings) -> dict[str, int]:
    """Ready messages in the jobs queue, the DLQ and every delay queue (passive declares)."""
    names = [settings.amqp.jobs_queue, settings.amqp.dead_letter_queue]
    names += [t.queue for t in topology.retry_tiers(settings.amqp, settings.consumer)]
    out: dict[str, int] = {}
    conn = connect(settings.amqp.url.get_secret_value())
    try:
        for name in names:
            ch = conn.channel()
            try:
                out[name] = int(ch.queue_declare(name, passive=True).method.message_count)
                ch.close()
            except pika.exceptions.ChannelClosedByBroker:  # 404: never declared
                out[name] = 0
    finally:
        conn.close()
    return out


def unacked(settings: Settings) -> dict[str, int]:
    """messages_unacknowledged per queue of this test (rabbitmqctl; empty dict when unavailable)."""
    try:
        proc = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages_unacknowledged"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return {}
    prefix = settings.amqp.jobs_queue.split(".", 1)[0]
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith(prefix) and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def broker_queues(settings: Settings) -> dict[str, tuple[int, int, int]]:
    """(ready, unacked, consumers) of every queue of this test, from rabbitmqctl (diagnostics)."""
    proc = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages_ready", "messages_unacknowledged",
                           "consumers"], capture_output=True, text=True, timeout=30)  # fmt: skip
    prefix = settings.amqp.jobs_queue.split(".", 1)[0]
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0].startswith(prefix):
            out[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return out


def dlq_messages(settings: Settings) -> list[tuple[Any, bytes]]:
    """Every message in the dead-letter queue as (properties, body); they are requeued (left there)."""
    conn = connect(settings.amqp.url.get_secret_value())
    got = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(settings.amqp.dead_letter_queue, auto_ack=False)
            if method is None:
                break
            got.append((props, body))
        # closing without ack returns them to the queue
    finally:
        conn.close()
    return got


# --- outages -------------------------------------------------------------------------------------
def rabbitmqctl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout)


def broker_answers(url: str) -> bool:
    try:
        connect(url, timeout=2).close()
        return True
    except _AMQP_ERRORS:
        return False


def restart_broker(url: str, down_s: float = 2.0) -> float:
    """``rabbitmqctl stop_app``, a pause, ``start_app``; returns seconds the broker was unavailable.
    The broker is shared by everyone on the machine: it is always started again."""
    t0 = time.monotonic()
    try:
        rabbitmqctl("stop_app")
        time.sleep(down_s)
    finally:
        ensure_broker(url)
    return time.monotonic() - t0


def ensure_broker(url: str, timeout: float = 90.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if broker_answers(url):
            return
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup", timeout=30)
        time.sleep(0.5)
    raise RuntimeError("RabbitMQ did not come back")


# --- outputs -------------------------------------------------------------------------------------
def check_srt(text: str) -> list[str]:
    """Structural problems of an SRT document (empty is fine: silent audio has no cues)."""
    problems = []
    blocks = [b for b in text.replace("\r\n", "\n").strip().split("\n\n") if b.strip()]
    expected = 1
    for block in blocks:
        lines = block.split("\n")
        if len(lines) < 3:
            problems.append(f"cue {expected}: fewer than 3 lines")
            continue
        if lines[0].strip() != str(expected):
            problems.append(f"cue {expected}: index {lines[0]!r}")
        m = SRT_TIME.match(lines[1].strip())
        if not m:
            problems.append(f"cue {expected}: bad time line {lines[1]!r}")
        else:
            g = [int(x) for x in m.groups()]
            start = ((g[0] * 60 + g[1]) * 60 + g[2]) * 1000 + g[3]
            end = ((g[4] * 60 + g[5]) * 60 + g[6]) * 1000 + g[7]
            if end < start:
                problems.append(f"cue {expected}: ends before it starts")
        expected += 1
    return problems


def check_job_outputs(
    storage: Any, settings: Settings, job_id: str, formats: tuple[str, ...] = ("json", "srt")
) -> list[str]:
    """Exactly one manifest and intact outputs under the job's default prefix; returns problems."""
    from funasr_fleet.manifest import MANIFEST_NAME, Manifest
    from funasr_fleet.outputs import FORMATS, parse_json

    bucket = settings.s3.results_bucket
    prefix = f"{settings.s3.results_prefix.strip('/')}/{job_id}"
    keys = sorted(o.key for o in storage.list_objects(bucket, prefix + "/"))
    expected = sorted([f"{prefix}/{FORMATS[f].filename()}" for f in formats] + [f"{prefix}/{MANIFEST_NAME}"])
    problems = []
    if keys != expected:
        problems.append(f"objects under {prefix}/: {keys} (expected {expected})")
    manifests = [k for k in keys if k.endswith(MANIFEST_NAME)]
    if len(manifests) != 1:
        return [*problems, f"{len(manifests)} manifests"]
    try:
        manifest = Manifest.model_validate(storage.get_json(bucket, manifests[0]))
    except Exception as exc:  # noqa: BLE001 - reported as a problem
        return [*problems, f"manifest unreadable: {exc}"]
    if manifest.job_id != job_id:
        problems.append(f"manifest job_id {manifest.job_id}")
    for uri in manifest.outputs:
        key = uri.removeprefix(f"s3://{bucket}/")
        if key.endswith(MANIFEST_NAME):
            continue
        try:
            raw = storage.get_bytes(bucket, key)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{key}: {exc}")
            continue
        if key.endswith(".json"):
            try:
                json.loads(raw)
                transcript, _meta = parse_json(raw)
                if transcript.duration_ms <= 0:
                    problems.append(f"{key}: zero duration")
            except Exception as exc:  # noqa: BLE001
                problems.append(f"{key}: JSON does not parse: {exc}")
        elif key.endswith(".srt"):
            try:
                problems += [f"{key}: {p}" for p in check_srt(raw.decode("utf-8"))]
            except UnicodeDecodeError as exc:
                problems.append(f"{key}: not UTF-8: {exc}")
    return problems


def metric_sum(fleet: Any, name: str) -> float:
    """Sum of every sample of ``name`` on the supervisor's /metrics (0 when unreadable)."""
    code, body = fleet.get("/metrics")
    if code != 200:
        return 0.0
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def summary_table(title: str, rows: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
