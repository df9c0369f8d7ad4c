"""Consumer end to end against the real broker, the real S3 server and the real (tiny) FunASR engine.

In-process consumers (``run_consumer`` on a thread) keep these fast; the signal/heartbeat tests in
``test_consumer_resilience.py`` run real ``python -m funasr_fleet consume`` subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pika
import pytest

from funasr_fleet import events, topology
from funasr_fleet.consumer.loop import ConsumerLoop
from funasr_fleet.manifest import MANIFEST_NAME
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

ALL = ["json", "srt", "vtt", "txt", "rttm"]


# --- helpers (also used by test_consumer_resilience.py) ---------------------------------------------
class Broker:
    """The test's own AMQP client: publishes jobs, collects events, inspects queues."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        topology.declare(self.ch, settings.amqp, settings.consumer)
        self.events_q = self.ch.queue_declare("", exclusive=True).method.queue
        self.ch.queue_bind(self.events_q, settings.amqp.events_exchange, routing_key="job.#")
        self.seen: list[events.CloudEvent] = []

    def reply_queue(self) -> str:
        return self.ch.queue_declare("", exclusive=True).method.queue

    def publish(
        self,
        body: bytes | dict[str, Any],
        *,
        message_id: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        routing_key: str | None = None,
    ) -> None:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=message_id,
            reply_to=reply_to,
            correlation_id=correlation_id,
            timestamp=int(time.time()),
        )
        self.ch.basic_publish(
            self.settings.amqp.jobs_exchange,
            routing_key or self.settings.amqp.jobs_routing_key,
            raw,
            props,
            mandatory=True,
        )

    def _pull(self) -> bool:
        method, _, body = self.ch.basic_get(self.events_q, auto_ack=True)
        if method is None:
            return False
        self.seen.append(events.parse(body))
        return True

    def wait_event(
        self, pred: Callable[[events.CloudEvent], bool], timeout: float = 120.0, what: str = "event"
    ) -> events.CloudEvent:
        end = time.monotonic() + timeout
        checked = 0
        while True:
            for ev in self.seen[checked:]:
                if pred(ev):
                    return ev
            checked = len(self.seen)
            if not self._pull():
                if time.monotonic() > end:
                    raise AssertionError(
                        f"no {what} within {timeout} s; seen: {[(e.kind, e.subject) for e in self.seen]}"
                    )
                self.conn.sleep(0.05)

    def final(self, job_id: str, timeout: float = 120.0) -> events.CloudEvent:
        return self.wait_event(lambda e: e.subject == job_id and e.final, timeout, f"final event of {job_id}")

    def of(self, job_id: str) -> list[events.CloudEvent]:
        while self._pull():
            pass
        return [e for e in self.seen if e.subject == job_id]

    def count(self, queue: str) -> int:
        return int(self.ch.queue_declare(queue, passive=True).method.message_count)

    def take_all(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        out: list[tuple[pika.BasicProperties, bytes]] = []
        while True:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))

    def get_one(self, queue: str, timeout: float = 10.0) -> tuple[pika.BasicProperties, bytes]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            method, props, body = self.ch.basic_get(queue, auto_ack=True)
            if method is not None:
                return props, body
            self.conn.sleep(0.05)
        raise AssertionError(f"nothing in {queue}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


def heartbeat_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_ready(path: Path, timeout: float = 180.0, alive: Callable[[], bool] = lambda: True) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        hb = heartbeat_state(path)
        if hb and hb.get("state") == "ready":
            return
        if not alive():
            raise AssertionError(f"consumer died during boot; heartbeat: {hb}")
        time.sleep(0.1)
    raise AssertionError(f"consumer not ready within {timeout} s; heartbeat: {heartbeat_state(path)}")


@contextmanager
def consumer_thread(settings: Settings, before_connect: Callable[[], None] | None = None) -> Iterator[ConsumerLoop]:
    """``run_consumer`` on a thread (no signals); stopped gracefully at the end."""
    from funasr_fleet.consumer.main import run_consumer

    assert settings.consumer.heartbeat_file is not None
    box: dict[str, Any] = {}

    def target() -> None:
        box["code"] = run_consumer(
            settings, on_loop=lambda loop: box.setdefault("loop", loop), before_connect=before_connect
        )

    t = threading.Thread(target=target, name="test-consumer", daemon=True)
    t.start()
    wait_ready(settings.consumer.heartbeat_file, alive=t.is_alive)
    loop: ConsumerLoop = box["loop"]
    try:
        yield loop
    finally:
        loop.request_stop()
        t.join(120)
        assert not t.is_alive(), "consumer did not stop"
        assert box.get("code") == 0


def upload(storage: Storage, bucket: str, key: str, path: Path) -> str:
    storage.put_bytes(bucket, key, path.read_bytes(), content_type="audio/wav")
    return f"s3://{bucket}/{key}"


def job_body(audio_uri: str, job_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"schema_version": 1, "audio": audio_uri, **extra}
    if job_id:
        body["job_id"] = job_id
    return body


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@pytest.fixture
def consumer_settings(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], tmp_path: Path
) -> Callable[..., Settings]:
    """fleet_settings + tiny engine + a heartbeat file + quick retries (per-section overrides deep-merge)."""

    def make(**overrides: Any) -> Settings:
        consumer = {
            "heartbeat_file": str(tmp_path / f"hb-{uuid.uuid4().hex[:6]}.json"),
            "retry_base_delay_s": 0.5,
            "retry_max_delay_s": 2.0,
            "retry_max_attempts": 3,
            **overrides.pop("consumer", {}),
        }
        return fleet_settings(with_engine=True, consumer=consumer, **overrides)

    return make


@pytest.fixture
def broker_for() -> Iterator[Callable[[Settings], Broker]]:
    made: list[Broker] = []

    def make(settings: Settings) -> Broker:
        b = Broker(settings)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


# --- tests ---------------------------------------------------------------------------------------
def test_happy_path_every_format_reply_to_and_progress(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    audio_dir: Path,
) -> None:
    s = consumer_settings()
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "calls/dialogue.wav", audio_dir / "dialogue.wav")
    reply_q = broker.reply_queue()
    with consumer_thread(s):
        broker.publish(
            job_body(audio, "happy-1", formats=ALL, metadata={"ticket": 42}),
            reply_to=reply_q,
            correlation_id="corr-1",
        )
        final = broker.final("happy-1")
        assert final.kind == "succeeded", final.data.error
        d = final.data
        assert d.metadata == {"ticket": 42}
        assert d.attempt == 1 and d.reused is None
        assert d.audio_duration_s and d.audio_duration_s > 5
        assert d.sentences is not None and d.sentences > 0 and d.speakers is not None and d.speakers >= 1
        assert d.real_time_factor is not None and d.real_time_factor > 0
        assert d.outputs is not None and d.outputs[-1].endswith(MANIFEST_NAME)
        exts = sorted(u.rsplit(".", 1)[1] for u in d.outputs[:-1])
        assert exts == sorted(ALL)
        for uri in d.outputs:
            bucket, key = split_uri(uri)
            assert storage.head(bucket, key).size > 0
        # the JSON output is a real transcript of this job
        bucket, key = split_uri(next(u for u in d.outputs if u.endswith(".json") and not u.endswith(MANIFEST_NAME)))
        doc = json.loads(storage.get_bytes(bucket, key))
        assert doc["job_id"] == "happy-1" if "job_id" in doc else True
        # manifest: commit marker with input version, engine fingerprint and the final event data
        manifest = storage.get_json(*split_uri(d.manifest or ""))
        assert manifest is not None
        assert manifest["job_id"] == "happy-1" and manifest["input"]["etag"]
        assert manifest["engine_fingerprint"] == d.engine_fingerprint
        assert manifest["event"]["outputs"] == d.outputs
        # events: started, stage progress in order, final; also sent to reply_to with the correlation id
        mine = broker.of("happy-1")
        kinds = [e.kind for e in mine]
        assert kinds[0] == "started" and kinds[-1] == "succeeded"
        stages = [e.data.stage for e in mine if e.kind == "progress"]
        assert stages == ["downloaded", "decoded", "transcribed", "uploaded"]
        assert all(e.source.startswith("/funasr-fleet/consumers/") for e in mine)
        props, body = broker.get_one(reply_q)
        assert props.correlation_id == "corr-1"
        assert props.content_type == events.CONTENT_TYPE
        assert events.parse(body).data.outputs == d.outputs
        # acked: nothing left anywhere
        assert broker.count(s.amqp.jobs_queue) == 0
        assert broker.count(s.amqp.dead_letter_queue) == 0


def test_redelivery_is_answered_from_the_manifest(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    audio_dir: Path,
) -> None:
    s = consumer_settings(consumer={"result_reuse": False})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "dialogue.wav", audio_dir / "dialogue.wav")
    # delete_source: the redelivery must be answered from the manifest even with the source gone
    body = job_body(audio, "dup-1", formats=["json", "srt"], delete_source=True)
    with consumer_thread(s):
        broker.publish(body)
        first = broker.final("dup-1")
        assert first.kind == "succeeded"
        assert first.data.outputs is not None and first.data.manifest is not None
        outputs_before = {u: storage.get_bytes(*split_uri(u)) for u in first.data.outputs}
        assert not storage.exists(*split_uri(audio))
        broker.publish(body)  # the same job again (what a redelivery looks like)
        second = broker.wait_event(lambda e: e.subject == "dup-1" and e.final and e.id != first.id)
    assert second.kind == "succeeded"
    assert second.data.reused == "manifest"
    assert second.data.outputs == first.data.outputs
    same = {k: v for k, v in first.data.model_dump().items() if k not in ("reused", "attempt")}
    assert {k: v for k, v in second.data.model_dump().items() if k not in ("reused", "attempt")} == same
    # one transcription: the second run published no stage progress, and nothing was rewritten
    progress = [e for e in broker.of("dup-1") if e.kind == "progress"]
    assert len(progress) == 4
    assert {u: storage.get_bytes(*split_uri(u)) for u in first.data.outputs} == outputs_before
    assert broker.count(s.amqp.jobs_queue) == 0


def test_result_reuse_by_content(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    audio_dir: Path,
) -> None:
    s = consumer_settings(consumer={"result_reuse": True})
    broker = broker_for(s)
    a = upload(storage, s.s3.inbox_bucket, "a/first.wav", audio_dir / "dialogue.wav")
    b = upload(storage, s.s3.inbox_bucket, "b/second-copy.wav", audio_dir / "dialogue.wav")
    with consumer_thread(s):
        broker.publish(job_body(a, "reuse-a", formats=["json", "vtt"]))
        first = broker.final("reuse-a")
        broker.publish(job_body(b, "reuse-b", formats=["json", "txt"]))
        second = broker.final("reuse-b")
    assert first.kind == second.kind == "succeeded"
    assert first.data.reused is None and second.data.reused == "content"
    assert second.data.sentences == first.data.sentences
    assert second.data.audio_duration_s == first.data.audio_duration_s
    assert not [e for e in broker.of("reuse-b") if e.data.stage in ("decoded", "transcribed")]
    json_a = json.loads(storage.get_bytes(*split_uri(first.data.outputs[0])))  # type: ignore[index]
    json_b = json.loads(storage.get_bytes(*split_uri(second.data.outputs[0])))  # type: ignore[index]
    assert json_a["sentences"] == json_b["sentences"]
    assert json_b.get("job_id", "reuse-b") == "reuse-b"
    assert any(u.endswith(".txt") for u in second.data.outputs or [])


def test_bad_inputs_fail_with_stable_codes_and_dead_letter(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    audio_dir: Path,
    tmp_path: Path,
    make_bucket: Callable[..., str],
) -> None:
    other = make_bucket("other")
    s0 = consumer_settings()
    inbox, results = s0.s3.inbox_bucket, s0.s3.results_bucket
    s = consumer_settings(
        s3={"allowed_buckets": [inbox], "max_object_bytes": 1_000_000},
        engine={"max_audio_s": 6.0, "min_audio_s": 0.5},
    )
    broker = broker_for(s)

    def put(name: str, data: bytes) -> str:
        storage.put_bytes(inbox, name, data)
        return f"s3://{inbox}/{name}"

    good_clip = tmp_path / "clip.wav"
    import subprocess

    subprocess.run(["sox", "-R", "-D", str(audio_dir / "dialogue.wav"), str(good_clip), "trim", "0", "4"], check=True)
    wav = put("ok.wav", good_clip.read_bytes())
    storage.put_bytes(other, "x.wav", good_clip.read_bytes())
    cases: list[tuple[str, bytes | dict[str, Any], str]] = [
        ("malformed", b"{not json", "malformed_message"),
        ("not-object", b"[1, 2, 3]", "malformed_message"),
        ("missing-audio", {"schema_version": 1, "job_id": "missing-audio"}, "schema_invalid"),
        ("unknown-field", job_body(wav, "unknown-field", colour="blue"), "schema_invalid"),
        ("bad-job-id", job_body(wav, "../../etc"), "schema_invalid"),
        ("version", {**job_body(wav, "version"), "schema_version": 99}, "unsupported_schema_version"),
        ("bad-uri", job_body("http://example.com/a.wav", "bad-uri"), "bad_s3_uri"),
        ("not-allowed", job_body(f"s3://{other}/x.wav", "not-allowed"), "bucket_not_allowed"),
        ("missing-object", job_body(f"s3://{inbox}/nope.wav", "missing-object"), "object_not_found"),
        ("too-large", job_body(put("big.wav", b"\0" * 1_200_000), "too-large"), "object_too_large"),
        ("empty", job_body(put("empty.wav", b""), "empty"), "empty_object"),
        (
            "not-audio",
            job_body(put("text.wav", (audio_dir / "not_audio.wav").read_bytes()), "not-audio"),
            "undecodable_audio",
        ),
        (
            "corrupt",
            job_body(put("corrupt.mp3", (audio_dir / "corrupt.mp3").read_bytes()), "corrupt"),
            "undecodable_audio",
        ),
        (
            "no-stream",
            job_body(put("video.mp4", (audio_dir / "no_audio.mp4").read_bytes()), "no-stream"),
            "no_audio_stream",
        ),
        (
            "too-short",
            job_body(put("short.wav", (audio_dir / "short.wav").read_bytes()), "too-short"),
            "audio_too_short",
        ),
        (
            "too-long",
            job_body(put("long.wav", (audio_dir / "dialogue.wav").read_bytes()), "too-long"),
            "audio_too_long",
        ),
        ("escape", job_body(wav, "escape", output=f"s3://{results}/a/../../b"), "output_prefix_invalid"),
        ("format", job_body(wav, "format", formats=["docx"]), "unsupported_format"),
    ]
    with consumer_thread(s):
        for case_id, body, _ in cases:
            broker.publish(body, message_id=case_id)
        got = {case_id: broker.final(case_id, timeout=90) for case_id, _, _ in cases}
        # still consuming: a good job after all the bad ones
        broker.publish(job_body(wav, "good-after", formats=["txt"]))
        good = broker.final("good-after")
    assert good.kind == "succeeded", good.data.error

    def code_of(event: events.CloudEvent) -> str | None:
        error = event.data.error
        return error.code if error is not None else None

    wrong = {
        cid: (got[cid].kind, code_of(got[cid]), code)
        for cid, _, code in cases
        if got[cid].kind != "failed" or code_of(got[cid]) != code
    }
    assert not wrong, wrong
    dead = broker.take_all(s.amqp.dead_letter_queue)
    assert len(dead) == len(cases)
    assert {p.message_id for p, _ in dead} == {cid for cid, _, _ in cases}
    # the consumer dead-letters each itself, saying why (a nack cannot carry headers): no x-death
    codes = {cid: code for cid, _, code in cases}
    assert {p.message_id: p.headers[topology.ERROR_CODE_HEADER] for p, _ in dead} == codes
    assert all(p.headers[topology.ERROR_MESSAGE_HEADER] and "x-death" not in p.headers for p, _ in dead)
    assert broker.count(s.amqp.jobs_queue) == 0


def test_bucket_notification_becomes_jobs(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    audio_dir: Path,
) -> None:
    from funasr_fleet import intake

    s = consumer_settings()
    broker = broker_for(s)
    key = "drops/meeting one.wav"
    info = storage.put_bytes(s.s3.inbox_bucket, key, (audio_dir / "dialogue.wav").read_bytes())

    def record(k: str, etag: str) -> dict[str, Any]:
        return {
            "eventName": "s3:ObjectCreated:Put",
            "s3": {
                "bucket": {"name": s.s3.inbox_bucket},
                "object": {"key": k.replace(" ", "+"), "size": 1, "eTag": etag},
            },
        }

    note = {"EventName": "s3:ObjectCreated:Put", "Key": f"{s.s3.inbox_bucket}/{key}",
            "Records": [record(key, info.etag), record("drops/notes.txt", "abc")]}  # fmt: skip
    jobs = intake.parse_notification(note, s)
    assert isinstance(jobs, list) and len(jobs) == 1
    job_id = str(jobs[0].job_id)
    ignored = {"Records": [record("drops/readme.txt", "def")]}
    with consumer_thread(s):
        broker.publish(ignored, routing_key=s.amqp.intake_routing_key, message_id="ignored-note")
        broker.publish(note, routing_key=s.amqp.intake_routing_key, message_id="note-1")
        final = broker.final(job_id)
    assert final.kind == "succeeded", final.data.error
    assert final.data.metadata.get("intake") == "s3-event"
    assert final.data.input == f"s3://{s.s3.inbox_bucket}/{key}"
    assert not broker.of("ignored-note") and not broker.of("note-1")  # notifications themselves emit nothing
    assert broker.count(s.amqp.dead_letter_queue) == 0
    assert broker.count(s.amqp.jobs_queue) == 0
