"""Bad inputs through the real supervisor: each class fails with its stable code, lands in the DLQ
exactly as sent, and good jobs submitted alongside all succeed.

One fleet (`funasr-fleet supervise`, two real consumers, tiny models) serves the whole module.
Every test publishes one bad message together with GOOD_JOBS good jobs, waits for all of them,
then checks: the bad message's ``job.failed`` code, the dead-letter queue (body, message id, the
``x-fleet-error-code`` header the consumer sets when it dead-letters), and that every good job
succeeded. Good-job throughput per test is printed as a table at the end (a figure, not an assertion).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
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
    engine = {k[len("FLEET_ENGINE__") :].lower(): v for k, v in engine_env.items() if k.startswith("FLEET_ENGINE__")}
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
            with contextlib.suppress(Exception):  # best effort cleanup
                storage.delete_bucket(b)
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
    "output-escape": (
        lambda r, i: job(i, r.uri("good.wav"), output=f"s3://{r.results}/a/../../b"),
        "output_prefix_invalid",
        "job",
    ),
    "unsupported-format": (
        lambda r, i: {**job(i, r.uri("good.wav")), "formats": ["docx"]},
        "unsupported_format",
        "job",
    ),
    "object-not-found": (lambda r, i: job(i, f"s3://{r.inbox}/nope.wav"), "object_not_found", "job"),
    "object-too-large": (lambda r, i: job(i, r.uri("big.wav")), "object_too_large", "job"),
    "empty-object": (lambda r, i: job(i, r.uri("empty.wav")), "empty_object", "job"),
    "undecodable-text": (lambda r, i: job(i, r.uri("text.wav")), "undecodable_audio", "job"),
    "undecodable-corrupt": (lambda r, i: job(i, r.uri("corrupt.mp3")), "undecodable_audio", "job"),
    "no-audio-stream": (lambda r, i: job(i, r.uri("video.mp4")), "no_audio_stream", "job"),
    "audio-too-short": (lambda r, i: job(i, r.uri("short.wav")), "audio_too_short", "job"),
    "audio-too-long": (lambda r, i: job(i, r.uri("long.wav")), "audio_too_long", "job"),
    # intake: MinIO/S3 bucket notifications on the intake routing key
    "s3-event-no-records": (
        lambda r, i: {"EventName": "s3:ObjectCreated:Put", "Key": f"{r.inbox}/a.wav"},
        "schema_invalid",
        "s3-event",
    ),
    "s3-event-bad-record": (
        lambda r, i: {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": r.inbox}}}]},
        "schema_invalid",
        "s3-event",
    ),
    "s3-event-bad-size": (
        lambda r, i: {"Records": [s3_record(r.inbox, "drop.wav", size=-5, eTag="abc")]},
        "schema_invalid",
        "s3-event",
    ),
    "s3-event-bad-key-escape": (
        lambda r, i: {"Records": [s3_record(r.inbox, "drops%2F%FF%FE.wav", size=5, eTag="abc")]},
        "schema_invalid",
        "s3-event",
    ),
    # hotwords: the documented limits (engine/hotwords.py), refused before any work
    "hotwords-too-many": (
        lambda r, i: job(i, r.uri("good.wav"), options={"hotwords": [f"w{n}" for n in range(201)]}),
        "schema_invalid",
        "job",
    ),
    "hotword-too-long": (
        lambda r, i: job(i, r.uri("good.wav"), options={"hotwords": ["x" * 65]}),
        "schema_invalid",
        "job",
    ),
    "hotword-not-a-string": (
        lambda r, i: job(i, r.uri("good.wav"), options={"hotwords": [{"url": "http://10.0.0.1/"}]}),
        "schema_invalid",
        "job",
    ),
}


def fanned_out_id(rig: Rig, key: str, etag: str) -> str:
    from funasr_fleet.jobs import job_id_for_object

    return job_id_for_object(rig.inbox, key, etag)


def run_case(
    rig: Rig, case: str, bad: bytes | dict[str, Any] | None, routing: str, bad_id: str | None
) -> dict[str, Any]:
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
    # the consumer dead-letters it itself with the error headers (a nack cannot carry them): no x-death
    assert props.headers["x-fleet-error-code"] == code and props.headers["x-fleet-error-message"]
    assert "x-death" not in props.headers


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
    rig.publisher.publish(
        json.dumps(note).encode(), message_id=note_id, routing_key=rig.settings.amqp.intake_routing_key
    )
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


# --- issue 16: metadata-only records, records without an eTag, awkward keys, hotword URLs/paths --------
AWKWARD_KEYS = ["drops/take#2 (final)?.wav", "drops/100% + a+b.wav", "drops/q?x=1&y=%2F.wav", "会议/录音 一#1.wav",
                "drops/émoji 🎙️ ;=@$!'.wav"]  # fmt: skip


def _note(rig: Rig, key: str, event: str = "s3:ObjectCreated:Put", etag: str = "", size: int = 0) -> bytes:
    from urllib.parse import quote_plus

    record = s3_record(rig.inbox, quote_plus(key, safe=""), size=size, eTag=etag)
    record["eventName"] = event
    return json.dumps(
        {"EventName": event, "Key": f"{rig.inbox}/{quote_plus(key, safe='')}", "Records": [record]}
    ).encode()


def _settle(rig: Rig, case: str, expect: Iterable[str] = ()) -> None:
    """Good jobs as a barrier, then every queue empty: what was published before has been handled.

    ``expect``: job ids whose final event must have arrived too. A bucket notification's jobs are
    published by its fan-out, so they can start after the barrier's jobs; and the broker's queue
    counts lag by seconds, so an empty-looking queue alone does not prove they ended.
    """
    run_case(rig, case, None, "job", None)

    def quiet() -> bool:
        return harness.queue_counts(rig.settings)[rig.settings.amqp.jobs_queue] == 0 and not any(
            harness.unacked(rig.settings).values()
        )

    wait_for(quiet, timeout=60, interval=0.5, what="jobs queue drained")
    rig.log.drain()
    waiting = set(expect)

    def ended() -> bool:
        rig.log.drain()
        return waiting <= set(rig.log.finals())

    if waiting:
        wait_for(ended, timeout=120, interval=0.5, what=f"final events of {sorted(waiting)}")


def test_s3_metadata_only_records_start_nothing(rig: Rig) -> None:
    """One upload announced, then MinIO's metadata records for it (tagging, retention, legal hold; one
    with an empty eTag and size 0): one transcription, one job.succeeded, nothing else."""
    from funasr_fleet.jobs import job_id_for_object

    key = "drops/tagged.wav"
    info = rig.storage.put_bytes(rig.inbox, key, rig.storage.get_bytes(rig.inbox, rig.good_key))
    job_id = job_id_for_object(rig.inbox, key, info.etag)
    rig.publisher.publish(_note(rig, key, etag=info.etag, size=info.size), message_id="note-upload",
                          routing_key=rig.settings.amqp.intake_routing_key)  # fmt: skip
    wait_for(lambda: (rig.log.drain() or True) and job_id in rig.log.finals(), timeout=120, what="the upload's job")
    notes = []
    for n, event in enumerate(["PutTagging", "DeleteTagging", "PutRetention", "PutLegalHold"]):
        notes.append((f"note-meta-{n}", _note(rig, key, f"s3:ObjectCreated:{event}", info.etag, info.size)))
    notes.append(("note-meta-no-etag", _note(rig, key, "s3:ObjectCreated:PutTagging")))
    for mid, body in notes:
        rig.publisher.publish(body, message_id=mid, routing_key=rig.settings.amqp.intake_routing_key)
    _settle(rig, "s3-metadata-records")
    assert [harness.kind_of(e) for e in rig.log.finals()[job_id]] == ["succeeded"]
    assert len(rig.log.of(job_id, "started")) == 1  # one run
    for mid, _ in notes:
        assert not rig.log.of(mid) and not take_dead(rig, mid)


def test_s3_record_without_etag_for_a_missing_object_is_ignored(rig: Rig) -> None:
    rig.publisher.publish(_note(rig, "drops/never-there.wav"), message_id="note-no-etag-gone",
                          routing_key=rig.settings.amqp.intake_routing_key)  # fmt: skip
    _settle(rig, "s3-no-etag-gone")
    assert not rig.log.of("note-no-etag-gone") and not take_dead(rig, "note-no-etag-gone")


def test_s3_record_without_etag_gets_the_objects_identity(rig: Rig) -> None:
    """An upload record with an empty eTag: the object's real eTag (HEAD) names the job: the same id an
    event with the eTag, or the sweep, would give it; never a new one."""
    from funasr_fleet.jobs import job_id_for_object

    key = "drops/no-etag.wav"
    info = rig.storage.put_bytes(rig.inbox, key, rig.storage.get_bytes(rig.inbox, rig.good_key)[:-4000])
    job_id = job_id_for_object(rig.inbox, key, info.etag)
    rig.publisher.publish(_note(rig, key), message_id="note-no-etag", routing_key=rig.settings.amqp.intake_routing_key)
    _settle(rig, "s3-no-etag", expect=[job_id])
    assert [harness.kind_of(e) for e in rig.log.finals().get(job_id, [])] == ["succeeded"]


def test_awkward_keys_succeed_and_name_themselves(rig: Rig) -> None:
    """Keys with #, ?, %, +, spaces and any UTF-8: as job URIs and as MinIO-encoded bucket events, they
    are transcribed, and every URI in the events parses back to exactly the key."""
    from funasr_fleet.jobs import job_id_for_object
    from funasr_fleet.s3uri import parse_s3_uri

    audio = rig.storage.get_bytes(rig.inbox, rig.good_key)
    by_job: dict[str, str] = {}
    for n, key in enumerate(AWKWARD_KEYS):
        info = rig.storage.put_bytes(rig.inbox, key, audio)
        jid = f"awkward-{n}-{uuid.uuid4().hex[:6]}"
        rig.publisher.publish(harness.job_body(jid, rig.inbox, key), message_id=jid)
        by_job[jid] = key
        event_key = "ev/" + key
        info = rig.storage.put_bytes(rig.inbox, event_key, audio)
        rig.publisher.publish(_note(rig, event_key, etag=info.etag, size=info.size), message_id=f"note-{jid}",
                              routing_key=rig.settings.amqp.intake_routing_key)  # fmt: skip
        by_job[job_id_for_object(rig.inbox, event_key, info.etag)] = event_key
    _settle(rig, "awkward-keys", expect=by_job)
    finals = rig.log.finals()
    for jid, key in by_job.items():
        events = finals.get(jid, [])
        assert [harness.kind_of(e) for e in events] == ["succeeded"], (key, events)
        data = events[0]["data"]
        assert parse_s3_uri(data["input"]).key == key
        for uri in data["outputs"]:
            loc = parse_s3_uri(uri)
            assert rig.storage.exists(loc.bucket, loc.key), uri


def test_hotword_urls_and_paths_are_plain_words(rig: Rig) -> None:
    """Hotwords naming a URL of a real HTTP server and an existing local .txt file: the job succeeds and
    the server gets no request. (The suite's tiny ASR is not hotword-capable; tests/test_hotwords.py
    proves the same on FunASR's SeACo parser.)"""
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sentinel = Path("/tmp") / f"hw-{uuid.uuid4().hex[:8]}.txt"  # short: a hotword is at most 64 characters
    sentinel.write_text("SENTINEL\n")
    try:
        jid = f"hotwords-{uuid.uuid4().hex[:6]}"
        words = [f"http://127.0.0.1:{server.server_address[1]}/x.txt", str(sentinel), "", "two words"]
        rig.publisher.publish(
            harness.job_body(jid, rig.inbox, rig.good_key, options={"hotwords": words}), message_id=jid
        )
        _settle(rig, "hotword-url-path")
        events = rig.log.finals().get(jid, [])
        assert [harness.kind_of(e) for e in events] == ["succeeded"], events
        assert hits == []
    finally:
        server.shutdown()
        server.server_close()
        sentinel.unlink(missing_ok=True)


def test_queues_empty_after_the_suite(rig: Rig) -> None:
    """Nothing left behind: the jobs queue is drained and every dead letter was accounted for."""

    def empty() -> bool:
        counts = harness.queue_counts(rig.settings)
        return all(v == 0 for v in counts.values())

    wait_for(empty, timeout=30, interval=0.5, what="empty jobs/dead-letter/delay queues")
