"""Bad inputs through the real supervisor: each class fails with its stable code, lands in the DLQ
exactly as sent, and good jobs submitted alongside all succeed.

One fleet (`funasr-fleet supervise`, two real consumers, tiny models) serves the whole module.
Every test publishes one bad message together with GOOD_JOBS good jobs, waits for all of them,
then checks: the bad message's ``job.failed`` code, the dead-letter queue (body, message id,
``x-death`` reason ``rejected``), and that every good job succeeded. Good-job throughput per test
is printed as a table at the end (a figure, not an assertion).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import harness
from tests.supervisor_harness import Fleet, wait_for

GOOD_JOBS = 4
CONSUMERS = 2
MAX_OBJECT_BYTES = 1_000_000
MAX_AUDIO_S = 15.0


@dataclass
class Rig:
    settings: Any
    storage: Any
    fleet: Fleet
    log: harness.EventLog
    publisher: harness.RawPublisher
    inbox: str
    results: str
    other: str
    good_key: str
    objects: dict[str, str] = field(default_factory=dict)  # name -> s3:// uri
    rows: list[tuple[str, int, float, float]] = field(default_factory=list)

    def uri(self, name: str) -> str:
        return self.objects[name]


@pytest.fixture(scope="module")
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, s3_server: Any, storage: Any,
        amqp_url: str, engine_env: dict[str, str], audio_dir: Path) -> Iterator[Rig]:  # fmt: skip
    from funasr_fleet.settings import Settings
    from tests.fixtures.services import amqp_names, delete_amqp_entities, subprocess_env

    tmp = tmp_path_factory.mktemp("bad-inputs")
    unique = uuid.uuid4().hex[:10]
    inbox, results, other = (f"bad-{unique}-{r}" for r in ("in", "out", "other"))
    for b in (inbox, results, other):
        storage.ensure_bucket(b)
    s3 = {
        **s3_server.settings().model_dump(exclude_none=True),
        "access_key": s3_server.access_key,
        "secret_key": s3_server.secret_key,
        "results_bucket": results,
        "inbox_bucket": inbox,
        "allowed_buckets": [inbox],
        "max_object_bytes": MAX_OBJECT_BYTES,
    }
    engine = {k[len("FLEET_ENGINE__"):].lower(): v for k, v in engine_env.items() if k.startswith("FLEET_ENGINE__")}
    settings = Settings(
        amqp={"url": amqp_url, **amqp_names(unique)},
        s3=s3,
        engine={**engine, "max_audio_s": MAX_AUDIO_S, "min_audio_s": 0.5},
        consumer={"tmp_dir": str(tmp / "stage"), "result_reuse": False},
        log={"level": "INFO"},
    )
    # the objects the cases point at
    objects: dict[str, str] = {}

    def put(name: str, data: bytes, bucket: str = inbox) -> None:
        storage.put_bytes(bucket, name, data)
        objects[name] = f"s3://{bucket}/{name}"

    good = audio_dir / "dialogue.wav"
    put("good.wav", good.read_bytes())
    put("x.wav", good.read_bytes(), bucket=other)
    put("big.wav", b"\0" * (MAX_OBJECT_BYTES + 200_000))
    put("empty.wav", b"")
    put("text.wav", (audio_dir / "not_audio.wav").read_bytes())
    put("corrupt.mp3", (audio_dir / "corrupt.mp3").read_bytes())
    put("video.mp4", (audio_dir / "no_audio.mp4").read_bytes())
    put("short.wav", (audio_dir / "short.wav").read_bytes())
    long_wav = tmp / "long.wav"
    subprocess.run(["sox", "-R", "-D", str(good), str(good), str(long_wav)], check=True)  # ~2 x 10 s > MAX_AUDIO_S
    put("long.wav", long_wav.read_bytes())

    log = harness.EventLog(settings)
    publisher = harness.RawPublisher(settings)
    env = subprocess_env(settings, FLEET_SUPERVISOR__STATE_DIR=str(tmp / "state"), FLEET_LOG__FORMAT="json",
                         FLEET_SUPERVISOR__GRACE_PERIOD_S="30")  # fmt: skip
    fleet = Fleet(tmp, env, ["--consumers", str(CONSUMERS), "--threads", "1"], None)
    rig = Rig(settings, storage, fleet, log, publisher, inbox, results, other, "good.wav", objects)
    try:
        fleet.wait_ready(CONSUMERS, timeout=240)
        yield rig
    finally:
        fleet.stop()
        publisher.close()
        log.delete()
        delete_amqp_entities(amqp_url, settings)
        for b in (inbox, results, other):
            try:
                storage.delete_bucket(b)
            except Exception:  # noqa: BLE001
                pass
        tr = request.config.pluginmanager.getplugin("terminalreporter")
        capman = request.config.pluginmanager.getplugin("capturemanager")
        if tr is not None and capman is not None and rig.rows:
            with capman.global_and_fixture_disabled():
                _print_rows(tr, rig.rows)


def _print_rows(tr: Any, rows: list[tuple[str, int, float, float]]) -> None:
    tr.write_line("")
    tr.write_line(f"bad-input suite: good-job throughput with one bad message alongside ({GOOD_JOBS} good jobs, "
                  f"{CONSUMERS} consumers)")  # fmt: skip
    tr.write_line(f"{'case':<24} {'good ok':>8} {'makespan s':>11} {'good jobs/s':>12}")
    for case, ok, makespan, rate in rows:
        tr.write_line(f"{case:<24} {ok:>8} {makespan:>11.2f} {rate:>12.2f}")


def job(job_id: str, audio: str, **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "audio": audio, "formats": ["json", "srt"], **extra}


def s3_record(bucket: str, key: str, **obj: Any) -> dict[str, Any]:
    return {"eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, **obj}}}  # fmt: skip


# case id -> (body builder, expected code, routing: "job" | "s3-event")
Body = Callable[[Rig, str], bytes | dict[str, Any]]
CASES: dict[str, tuple[Body, str, str]] = {
    "malformed-json": (lambda r, i: b"{not json", "malformed_message", "job"),
    "not-an-object": (lambda r, i: b"[1, 2, 3]", "malformed_message", "job"),
    "missing-audio": (lambda r, i: {"schema_version": 1, "job_id": i}, "schema_invalid", "job"),
    "unknown-field": (lambda r, i: job(i, r.uri("good.wav"), colour="blue"), "schema_invalid", "job"),
    "bad-job-id": (lambda r, i: job("../../etc", r.uri("good.wav")), "schema_invalid", "job"),
    "schema-version": (lambda r, i: job(i, r.uri("good.wav"), schema_version=99), "unsupported_schema_version", "job"),
    "bad-s3-uri": (lambda r, i: job(i, "http://example.com/a.wav"), "bad_s3_uri", "job"),
    "bucket-not-allowed": (lambda r, i: job(i, r.uri("x.wav")), "bucket_not_allowed", "job"),
    "output-escape": (lambda r, i: job(i, r.uri("good.wav"), output=f"s3://{r.results}/a/../../b"),
                      "output_prefix_invalid", "job"),  # fmt: skip
    "unsupported-format": (lambda r, i: {**job(i, r.uri("good.wav")), "formats": ["docx"]}, "unsupported_format", "job"),
    "object-not-found": (lambda r, i: job(i, f"s3://{r.inbox}/nope.wav"), "object_not_found", "job"),
    "object-too-large": (lambda r, i: job(i, r.uri("big.wav")), "object_too_large", "job"),
    "empty-object": (lambda r, i: job(i, r.uri("empty.wav")), "empty_object", "job"),
    "undecodable-text": (lambda r, i: job(i, r.uri("text.wav")), "undecodable_audio", "job"),
    "undecodable-corrupt": (lambda r, i: job(i, r.uri("corrupt.mp3")), "undecodable_audio", "job"),
    "no-audio-stream": (lambda r, i: job(i, r.uri("video.mp4")), "no_audio_stream", "job"),
    "audio-too-short": (lambda r, i: job(i, r.uri("short.wav")), "audio_too_short", "job"),
    "audio-too-long": (lambda r, i: job(i, r.uri("long.wav")), "audio_too_long", "job"),
    # intake: MinIO/S3 bucket notifications on the intake routing key
    "s3-event-no-records": (lambda r, i: {"EventName": "s3:ObjectCreated:Put", "Key": f"{r.inbox}/a.wav"},
                            "schema_invalid", "s3-event"),  # fmt: skip
    "s3-event-bad-record": (lambda r, i: {"Records": [{"eventName": "s3:ObjectCreated:Put",
                                                       "s3": {"bucket": {"name": r.inbox}}}]},
                            "schema_invalid", "s3-event"),  # fmt: skip
    "s3-event-bad-size": (lambda r, i: {"Records": [s3_record(r.inbox, "drop.wav", size=-5, eTag="abc")]},
                          "schema_invalid", "s3-event"),  # fmt: skip
}


def fanned_out_id(rig: Rig, key: str, etag: str) -> str:
    from funasr_fleet.jobs import job_id_for_object

    return job_id_for_object(rig.inbox, key, etag)


def run_case(rig: Rig, case: str, bad: bytes | dict[str, Any] | None, routing: str, bad_id: str | None) -> dict[str, Any]:
    """Publish the bad message (if any) and GOOD_JOBS good ones at once; wait for every outcome."""
    tag = uuid.uuid4().hex[:6]
    slug = "".join(c if c.isalnum() else "-" for c in case).strip("-")
    goods = [f"good-{slug}-{tag}-{n}" for n in range(GOOD_JOBS)]
    t0 = time.monotonic()
    if bad is not None:
        body = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        key = rig.settings.amqp.intake_routing_key if routing == "s3-event" else rig.settings.amqp.jobs_routing_key
        rig.publisher.publish(body, message_id=bad_id, routing_key=key)
    for g in goods:
        rig.publisher.publish(harness.job_body(g, rig.inbox, rig.good_key), message_id=g)
    waiting = goods + ([bad_id] if bad_id else [])

    def done() -> bool:
        rig.log.drain()
        finals = rig.log.finals()
        return all(j in finals for j in waiting)

    try:
        wait_for(done, timeout=180, interval=0.2, what=f"outcomes of {case}")
    except AssertionError:
        finals = rig.log.finals()
        missing = [j for j in waiting if j not in finals]
        raise AssertionError(
            f"no outcome for {missing} after 180 s; queues {harness.broker_queues(rig.settings)}; "
            f"consumers {rig.fleet.status().get('consumers')}; events of missing: "
            f"{[(harness.kind_of(e), e['data'].get('stage')) for j in missing for e in rig.log.of(j)]}\n"
            f"supervisor log tail:\n{rig.fleet.log_text()[-5000:]}"
        ) from None
    finals = rig.log.finals()
    makespan = max(rig.log.received[finals[g][0]["id"]] for g in goods) - t0
    ok = sum(1 for g in goods if harness.kind_of(finals[g][0]) == "succeeded")
    rig.rows.append((case, ok, makespan, GOOD_JOBS / makespan if makespan > 0 else float("nan")))
    assert ok == GOOD_JOBS, {g: finals[g][0]["data"].get("error") for g in goods}
    for g in goods:
        assert not harness.check_job_outputs(rig.storage, rig.settings, g)
    return finals


def take_dead(rig: Rig, message_id: str) -> list[tuple[Any, bytes]]:
    """Remove and return the DLQ messages with this message id (others are left in place)."""
    conn = harness.connect(rig.settings.amqp.url.get_secret_value())
    taken = []
    try:
        ch = conn.channel()
        while True:
            method, props, body = ch.basic_get(rig.settings.amqp.dead_letter_queue, auto_ack=False)
            if method is None:
                break
            if props.message_id == message_id:
                ch.basic_ack(method.delivery_tag)
                taken.append((props, body))
        # unacked others go back to the queue when the connection closes
    finally:
        conn.close()
    return taken


def test_baseline_good_jobs_only(rig: Rig) -> None:
    run_case(rig, "none (good jobs only)", None, "job", None)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(rig: Rig, case: str) -> None:
    build, code, routing = CASES[case]
    bad_id = f"bad-{case}-{uuid.uuid4().hex[:6]}"
    bad = build(rig, bad_id)
    finals = run_case(rig, case, bad, routing, bad_id)
    outcome = finals[bad_id]
    assert [harness.kind_of(e) for e in outcome] == ["failed"], outcome
    error = outcome[0]["data"]["error"]
    assert error["code"] == code, error
    # the DLQ holds the message exactly as it was sent
    dead = wait_for(lambda: take_dead(rig, bad_id), timeout=15, interval=0.3, what=f"{bad_id} in the DLQ")
    assert len(dead) == 1, dead
    props, body = dead[0]
    expected = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
    assert body == expected
    deaths = props.headers["x-death"]
    assert deaths[0]["reason"] == "rejected" and deaths[0]["queue"] == rig.settings.amqp.jobs_queue


def test_s3_event_for_missing_object_fails_the_fanned_out_job(rig: Rig) -> None:
    """A well-formed notification for an object that is gone: the job it becomes fails with
    object_not_found and that job (not the notification) is dead-lettered."""
    key, etag = "drops/vanished.wav", "0123456789abcdef0123456789abcdef"
    note = {"EventName": "s3:ObjectCreated:Put", "Records": [s3_record(rig.inbox, key, size=1000, eTag=etag)]}
    job_id = fanned_out_id(rig, key, etag)
    rig.publisher.publish(json.dumps(note).encode(), message_id=f"note-{uuid.uuid4().hex[:6]}",
                          routing_key=rig.settings.amqp.intake_routing_key)  # fmt: skip
    finals = run_case(rig, "s3-event-missing-object", None, "job", None)
    wait_for(lambda: (rig.log.drain() or True) and job_id in rig.log.finals(), timeout=60, what="fanned-out outcome")
    finals = rig.log.finals()
    assert [harness.kind_of(e) for e in finals[job_id]] == ["failed"]
    assert finals[job_id][0]["data"]["error"]["code"] == "object_not_found"
    dead = wait_for(lambda: take_dead(rig, job_id), timeout=15, interval=0.3, what="fanned-out job in the DLQ")
    assert json.loads(dead[0][1])["job_id"] == job_id


def test_s3_event_for_non_audio_is_ignored_not_dead_lettered(rig: Rig) -> None:
    note_id = f"note-{uuid.uuid4().hex[:6]}"
    note = {"Records": [s3_record(rig.inbox, "drops/readme.txt", size=10, eTag="feed")]}
    rig.publisher.publish(json.dumps(note).encode(), message_id=note_id, routing_key=rig.settings.amqp.intake_routing_key)
    run_case(rig, "s3-event-non-audio", None, "job", None)
    rig.log.drain()
    assert not rig.log.of(note_id)
    assert not take_dead(rig, note_id)


def test_duplicate_messages_of_one_job_give_identical_events(rig: Rig) -> None:
    """The same job published several times at once (a publisher retry, at-least-once dead-
    lettering): the consumers may run it concurrently, yet there is one manifest and every
    succeeded event carries the same data (except ``attempt``/``reused``)."""
    job_id = f"dup-{uuid.uuid4().hex[:6]}"
    body = harness.job_body(job_id, rig.inbox, rig.good_key)
    for _ in range(3):
        rig.publisher.publish(body, message_id=job_id)

    def three() -> bool:
        rig.log.drain()
        return len(rig.log.finals().get(job_id, [])) >= 3

    wait_for(three, timeout=120, interval=0.2, what="three outcomes of one job")
    succeeded = [e for e in rig.log.finals()[job_id] if harness.kind_of(e) == "succeeded"]
    assert len(succeeded) == 3, rig.log.finals()[job_id]
    first = harness.stable_data(succeeded[0])
    assert all(harness.stable_data(e) == first for e in succeeded[1:]), [e["data"] for e in succeeded]
    assert not harness.check_job_outputs(rig.storage, rig.settings, job_id)


def test_queues_empty_after_the_suite(rig: Rig) -> None:
    """Nothing left behind: the jobs queue is drained and every dead letter was accounted for."""
    def empty() -> bool:
        counts = harness.queue_counts(rig.settings)
        return all(v == 0 for v in counts.values())

    wait_for(empty, timeout=30, interval=0.5, what="empty jobs/dead-letter/delay queues")
