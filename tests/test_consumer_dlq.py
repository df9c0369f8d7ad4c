"""`funasr-fleet dlq list|replay` against the real broker: listing loses nothing, replay is confirmed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pika
import pytest

from funasr_fleet import topology
from funasr_fleet.cli import main
from funasr_fleet.settings import Settings
from tests.fixtures.services import fleet_env


def _dead_letter(settings: Settings, job_ids: list[str]) -> pika.adapters.blocking_connection.BlockingChannel:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    ch = conn.channel()
    ch.confirm_delivery()
    topology.declare(ch, settings.amqp, settings.consumer)
    for jid in job_ids:
        body = json.dumps({"schema_version": 1, "job_id": jid, "audio": "s3://bucket-x/a.wav"}).encode()
        headers = {topology.ATTEMPT_HEADER: 3, topology.RETRY_REASON_HEADER: "storage_unavailable"}
        props = pika.BasicProperties(delivery_mode=2, message_id=jid, headers=headers)
        ch.basic_publish(settings.amqp.jobs_exchange, settings.amqp.jobs_routing_key, body, props, mandatory=True)
    for _ in job_ids:
        while True:
            method, _, _ = ch.basic_get(settings.amqp.jobs_queue)
            if method is not None:
                ch.basic_nack(method.delivery_tag, requeue=False)
                break
            conn.sleep(0.05)
    conn.sleep(0.5)
    return ch


def _count(ch: pika.adapters.blocking_connection.BlockingChannel, queue: str, expect: int | None = None) -> int:
    """Ready messages; with ``expect``, wait (a few s) for returned messages to become ready again."""
    end = time.monotonic() + 5
    while True:
        n = int(ch.queue_declare(queue, passive=True).method.message_count)
        if expect is None or n == expect or time.monotonic() > end:
            return n
        ch.connection.sleep(0.1)


def test_dlq_list_and_replay(
    fleet_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = fleet_settings(with_engine=False)
    for key, value in fleet_env(s).items():
        monkeypatch.setenv(key, value)
    ch = _dead_letter(s, ["dl-a", "dl-b", "dl-c"])
    assert _count(ch, s.amqp.dead_letter_queue) == 3

    assert main(["dlq", "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["job_id"] for r in rows) == ["dl-a", "dl-b", "dl-c"]
    assert all(
        r["reason"] == "rejected" and r["attempt"] == 3 and r["last_error"] == "storage_unavailable" for r in rows
    )
    assert _count(ch, s.amqp.dead_letter_queue, 3) == 3  # listing loses nothing

    assert main(["dlq", "list", "--job-id", "dl-b"]) == 0
    out = capsys.readouterr().out
    assert "dl-b" in out and "dl-a" not in out

    assert _count(ch, s.amqp.dead_letter_queue, 3) == 3
    assert main(["dlq", "replay", "--job-id", "dl-b"]) == 0
    assert "1 replayed" in capsys.readouterr().out
    assert _count(ch, s.amqp.dead_letter_queue, 2) == 2
    method, props, body = ch.basic_get(s.amqp.jobs_queue, auto_ack=True)
    assert method is not None and json.loads(body)["job_id"] == "dl-b"
    assert topology.ATTEMPT_HEADER not in props.headers and "x-death" not in props.headers  # fresh attempts
    assert props.headers["x-fleet-replayed"] == 1

    assert main(["dlq", "replay", "--limit", "1"]) == 0
    capsys.readouterr()
    assert _count(ch, s.amqp.dead_letter_queue, 1) == 1
    assert _count(ch, s.amqp.jobs_queue, 1) == 1
    ch.connection.close()
