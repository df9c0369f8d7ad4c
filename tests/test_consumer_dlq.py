"""`funasr-fleet dlq list|replay` against the real broker: listing loses nothing, replay is confirmed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

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


# --- what `dlq list` shows as the error (issue 16) -------------------------------------------------------
def _dead_letter_raw(settings: Settings, messages: list[tuple[bytes, str, dict[str, object]]]) -> None:
    """Publish each (body, message id, headers) to the jobs queue and reject it: the broker dead-letters it
    exactly as it does a consumer's nack(requeue=False)."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        topology.declare(ch, settings.amqp, settings.consumer)
        for body, mid, headers in messages:
            props = pika.BasicProperties(delivery_mode=2, message_id=mid, headers=headers or None)
            ch.basic_publish(settings.amqp.jobs_exchange, settings.amqp.jobs_routing_key, body, props, mandatory=True)
        for _ in messages:
            while True:
                method, _, _ = ch.basic_get(settings.amqp.jobs_queue)
                if method is not None:
                    ch.basic_nack(method.delivery_tag, requeue=False)
                    break
                conn.sleep(0.05)
        _count(ch, settings.amqp.dead_letter_queue, len(messages))
    finally:
        conn.close()


def test_dlq_list_shows_the_error_and_the_object(fleet_settings: Callable[..., Settings]) -> None:
    from funasr_fleet.consumer import dlq

    s = fleet_settings(with_engine=False)
    inbox = s.s3.inbox_bucket
    note = {"EventName": "s3:ObjectCreated:Put", "Records": [
        {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": inbox}, "object": {"key": "calls%2Fa+b.wav", "eTag": "e1"}}},
        {"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": inbox}, "object": {"key": "calls%2Fc.wav", "eTag": "e2"}}},
    ]}  # fmt: skip
    bad_note = {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": inbox}}}]}
    good_job = {"job_id": "dl-good", "audio": f"s3://{inbox}/calls/take#2 (final)?.wav"}
    _dead_letter_raw(s, [
        (b"{not json", "dl-malformed", {}),
        (json.dumps({"job_id": "dl-schema", "audio": f"s3://{inbox}/a.wav", "colour": "blue"}).encode(), "dl-schema", {}),
        (json.dumps({"job_id": "dl-uri", "audio": "http://example.com/a.wav"}).encode(), "dl-uri", {}),
        (json.dumps(note).encode(), "dl-note", {}),
        (json.dumps(bad_note).encode(), "dl-bad-note", {}),
        (json.dumps(good_job).encode(), "dl-good", {}),
        (json.dumps({**good_job, "job_id": "dl-header"}).encode(), "dl-header",
         {topology.ERROR_CODE_HEADER: "object_not_found", topology.ERROR_MESSAGE_HEADER: "get: object not found"}),
        (json.dumps({**good_job, "job_id": "dl-retried"}).encode(), "dl-retried",
         {topology.ATTEMPT_HEADER: 3, topology.RETRY_REASON_HEADER: "storage_unavailable"}),
    ])  # fmt: skip
    # as the consumer will dead-letter a failed message itself (phase 2): a copy with the error headers
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        headers = {
            topology.ERROR_CODE_HEADER: "undecodable_audio",
            topology.ERROR_MESSAGE_HEADER: "ffmpeg: invalid data",
        }
        ch.basic_publish(s.amqp.dead_letter_exchange, topology.DEAD_LETTER_ROUTING_KEY,
                         json.dumps({**good_job, "job_id": "dl-copied"}).encode(),
                         pika.BasicProperties(delivery_mode=2, message_id="dl-copied", headers=headers), mandatory=True)  # fmt: skip
    finally:
        conn.close()
    rows = {d.message_id: d for d in dlq.list_dead(s)}
    assert len(rows) == 9 and all(d.reason == "rejected" for d in rows.values())
    assert (rows["dl-copied"].last_error, rows["dl-copied"].error_source, rows["dl-copied"].deaths) == (
        "undecodable_audio",
        "header",
        0,
    )

    def shows(mid: str, code: str | None, source: str | None, kind: str) -> None:
        d = rows[mid]
        assert (d.last_error, d.error_source, d.kind) == (code, source, kind), d
        if source in ("header", "body"):
            assert d.error_message

    shows("dl-malformed", "malformed_message", "body", "unreadable")
    shows("dl-schema", "schema_invalid", "body", "job")
    shows("dl-uri", "bad_s3_uri", "body", "job")
    shows("dl-bad-note", "schema_invalid", "body", "s3-event")
    shows("dl-note", None, None, "s3-event")  # a valid notification fails only at run time: phase 2 header
    shows("dl-good", None, None, "job")
    shows("dl-header", "object_not_found", "header", "job")
    shows("dl-retried", "storage_unavailable", "retry_header", "job")
    assert rows["dl-note"].audio == f"s3://{inbox}/calls/a b.wav" and rows["dl-note"].records == 2
    assert rows["dl-good"].audio == f"s3://{inbox}/calls/take#2 (final)?.wav" and rows["dl-good"].job_id == "dl-good"
    assert rows["dl-header"].error_message == "get: object not found"
    assert _count_dlq(s, 9) == 9  # listing loses nothing


def _count_dlq(settings: Settings, expect: int) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    try:
        return _count(conn.channel(), settings.amqp.dead_letter_queue, expect)
    finally:
        conn.close()


def test_dlq_replay_drops_the_error_headers(fleet_settings: Callable[..., Settings]) -> None:
    from funasr_fleet.consumer import dlq

    s = fleet_settings(with_engine=False)
    body = json.dumps({"job_id": "dl-h", "audio": f"s3://{s.s3.inbox_bucket}/a.wav"}).encode()
    _dead_letter_raw(s, [(body, "dl-h", {topology.ERROR_CODE_HEADER: "object_not_found", "x-custom": "kept"})])
    assert [d.job_id for d in dlq.replay(s)] == ["dl-h"]
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    try:
        method, props, _ = conn.channel().basic_get(s.amqp.jobs_queue, auto_ack=True)
        assert method is not None
        assert topology.ERROR_CODE_HEADER not in props.headers and props.headers["x-custom"] == "kept"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("schema", "schema_invalid"),
        ("missing-object", "object_not_found"),
    ],
)
def test_dlq_list_after_a_real_consumer_failed_the_job(
    case: str, code: str, fleet_settings: Callable[..., Settings], engine_env: dict[str, str], tmp_path: Any
) -> None:
    from funasr_fleet.consumer import dlq
    from tests.test_consumer import Broker, consumer_thread

    s = fleet_settings(with_engine=True, consumer={"heartbeat_file": str(tmp_path / "hb.json")})
    job_id = f"dl-real-{case}"
    body: dict[str, Any] = {"job_id": job_id, "audio": f"s3://{s.s3.inbox_bucket}/nope/missing.wav"}
    if case == "schema":
        body["colour"] = "blue"
    broker = Broker(s)
    try:
        with consumer_thread(s):
            broker.publish(body, message_id=job_id)
            final = broker.final(job_id)
        assert final.kind == "failed" and final.data.error is not None and final.data.error.code == code
        _count(broker.ch, s.amqp.dead_letter_queue, 1)
    finally:
        broker.close()
    [row] = dlq.list_dead(s, job_id=job_id)
    assert row.last_error == code and row.error_message


def test_a_fan_out_refused_until_attempts_run_out_is_dead_lettered_with_its_error(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], storage: Any, audio_dir: Any, tmp_path: Any
) -> None:
    """The jobs queue stays full (max-length policy): the notification is retried once through the delay
    tier, then fails with job.failed broker_unavailable and is dead-lettered; `dlq list` shows the error
    (from the header), the kind, the first record's object as audio and the record count."""
    import re
    from urllib.parse import quote_plus

    from funasr_fleet.consumer import dlq
    from tests.test_consumer import Broker, consumer_thread
    from tests.test_intake import _rabbitmqctl, _vhost, minio_body

    s = fleet_settings(
        with_engine=True,
        consumer={"heartbeat_file": str(tmp_path / "hb.json"), "retry_base_delay_s": 0.5, "retry_max_delay_s": 1.0,
                  "retry_max_attempts": 2},
    )  # fmt: skip
    inbox = s.s3.inbox_bucket
    wav = (audio_dir / "dialogue.wav").read_bytes()
    keys = ["full/one a.wav", "full/two.wav"]
    infos = [storage.put_bytes(inbox, k, wav[: len(wav) - i * 1000]) for i, k in enumerate(keys)]
    note = minio_body(inbox, quote_plus(keys[0], safe=""), etag=infos[0].etag)
    note["Records"] += minio_body(inbox, quote_plus(keys[1], safe=""), etag=infos[1].etag)["Records"]
    vhost = _vhost(s.amqp.url.get_secret_value())
    policy = f"{s.amqp.jobs_queue}-full"
    broker = Broker(s)
    try:
        broker.publish(note, message_id="note-refused", routing_key=s.amqp.intake_routing_key)
        _rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "10", policy,
                     f"^{re.escape(s.amqp.jobs_queue)}$", json.dumps({"max-length": 0}))  # fmt: skip
        try:
            with consumer_thread(s):
                final = broker.final("note-refused", timeout=120)
        finally:
            _rabbitmqctl("clear_policy", "-p", vhost, policy, check=False)
        assert final.kind == "failed" and final.data.error is not None
        assert final.data.error.code == "broker_unavailable" and final.data.attempt == 2
        retrying = [e for e in broker.of("note-refused") if e.kind == "progress" and e.data.stage == "retrying"]
        assert [e.data.attempt for e in retrying] == [1]
        _count(broker.ch, s.amqp.dead_letter_queue, 1)
    finally:
        broker.close()
    [row] = dlq.list_dead(s, job_id="note-refused")
    assert (row.kind, row.last_error, row.error_source, row.reason, row.attempt) == (
        "s3-event",
        "broker_unavailable",
        "header",
        "rejected",
        2,
    )
    assert row.error_message and row.audio == f"s3://{inbox}/{keys[0]}" and row.records == 2
    assert row.died_at is not None and row.deaths == 0  # the consumer's failed-at header; no broker death
