"""Job intake: MinIO bucket notifications → jobs, and the reconcile sweep (real S3, real broker)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pika
import pytest

from funasr_fleet import intake, reconcile
from funasr_fleet.bucket_events import EventClass, classify_event
from funasr_fleet.errors import BrokerUnavailable, MalformedMessage, SchemaInvalid
from funasr_fleet.intake import Ignored, parse_notification
from funasr_fleet.jobs import JobRequest, job_id_for_object, message_kind
from funasr_fleet.manifest import manifest_key
from funasr_fleet.s3uri import safe_prefix
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

ETAG = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"


def settings_for(**s3: Any) -> Settings:
    values = {"inbox_bucket": "inbox", "results_bucket": "results", "results_prefix": "results", **s3}
    return Settings(s3=values, intake={"formats": ["json", "srt", "vtt"]})


def minio_body(
    bucket: str,
    encoded_key: str,
    *,
    size: int = 48_000,
    etag: str = ETAG,
    event: str = "s3:ObjectCreated:Put",
    version_id: str | None = None,
) -> dict[str, Any]:
    """A notification body exactly as MinIO publishes it to AMQP (keys URL-encoded, `+` = space)."""
    obj: dict[str, Any] = {
        "key": encoded_key,
        "size": size,
        "eTag": etag,
        "contentType": "audio/wav",
        "userMetadata": {"content-type": "audio/wav"},
        "sequencer": "17A3F2D2B5F4E6A1",
    }
    if version_id:
        obj["versionId"] = version_id
    return {
        "EventName": event,
        "Key": f"{bucket}/{encoded_key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": "2026-11-28T17:00:00.123Z",
                "eventName": event,
                "userIdentity": {"principalId": "minioadmin"},
                "requestParameters": {"principalId": "minioadmin", "region": "", "sourceIPAddress": "172.17.0.1"},
                "responseElements": {
                    "x-amz-id-2": "dd9025bab4ad464b049177c95eb6ebf374d3b3fd1af9251148b658df7ac2e3e8",
                    "x-amz-request-id": "17A3F2D2B4E12C5B",
                    "x-minio-deployment-id": "5d8c1e2a-7f42-4a3c-9f1b-1f2d3c4b5a69",
                    "x-minio-origin-endpoint": "http://172.17.0.2:9000",
                },
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "minioadmin"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": obj,
                },
                "source": {"host": "172.17.0.1", "port": "", "userAgent": "MinIO (linux; amd64) minio-go/v7.0.66"},
            }
        ],
    }


def one_job(result: list[JobRequest] | Ignored) -> JobRequest:
    assert isinstance(result, list), result
    assert len(result) == 1
    return result[0]


# --- parse_notification (no services needed) -------------------------------------------------------
@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("calls/plain.wav", "calls/plain.wav"),
        ("calls%2F2026%2F11%2Fcall.wav", "calls/2026/11/call.wav"),
        ("calls/my+call+1.wav", "calls/my call 1.wav"),
        ("calls/a%2Bb.wav", "calls/a+b.wav"),
        (quote_plus("会议/录音 一.wav"), "会议/录音 一.wav"),
        (quote_plus("réunion/été 2026.MP3"), "réunion/été 2026.MP3"),
    ],
)
def test_keys_are_url_decoded(encoded: str, decoded: str) -> None:
    settings = settings_for()
    body = minio_body("inbox", encoded)
    assert message_kind(body) == "s3-event"
    job = one_job(parse_notification(body, settings))
    assert job.audio.bucket == "inbox" and job.audio.key == decoded
    assert job.job_id == job_id_for_object("inbox", decoded, ETAG)
    assert job.output is not None
    assert job.output.bucket == "results"
    assert job.output.key == f"results/{decoded}"
    assert job.formats == ["json", "srt", "vtt"]
    assert job.metadata["intake"] == "s3-event"
    assert job.metadata["object"] == {"etag": ETAG, "size": 48_000}
    # The body the consumer re-publishes validates as a job request again.
    assert JobRequest.model_validate_json(job.to_body()).job_id == job.job_id


def test_same_object_same_job_new_version_new_job() -> None:
    settings = settings_for()
    a = one_job(parse_notification(minio_body("inbox", "x.wav"), settings))
    b = one_job(
        parse_notification(minio_body("inbox", "x.wav", event="s3:ObjectCreated:CompleteMultipartUpload"), settings)
    )
    c = one_job(parse_notification(minio_body("inbox", "x.wav", etag='"ffff0000ffff0000ffff0000ffff0000"'), settings))
    assert a.job_id == b.job_id
    assert c.job_id != a.job_id
    assert c.output == a.output  # same key → same output prefix (the manifest tells the versions apart)


def test_zero_size_object_is_a_job() -> None:
    job = one_job(parse_notification(minio_body("inbox", "empty.wav", size=0), settings_for()))
    assert job.metadata["object"]["size"] == 0  # the consumer fails it with empty_object


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (minio_body("inbox", "calls%2F", size=0), "directory marker"),
        (minio_body("inbox", "calls/", size=0), "directory marker"),
        (minio_body("elsewhere", "x.wav"), "not the inbox bucket"),
        (minio_body("inbox", "notes.txt"), "suffix"),
        (minio_body("inbox", "x.wav", event="s3:ObjectRemoved:Delete"), "not an object creation"),
        (minio_body("inbox", "x.wav", event="s3:ObjectAccessed:Get"), "not an object creation"),
        (minio_body("inbox", "x.wav", event="s3:ObjectRemoved:DeleteMarkerCreated"), "not an object creation"),
        ({"EventName": "s3:ObjectCreated:Put", "Records": []}, "no records"),
    ],
)
def test_ignored(body: dict[str, Any], why: str) -> None:
    result = parse_notification(body, settings_for())
    assert isinstance(result, Ignored)
    assert why in result.reason


def test_suffixes_case_insensitive_and_aws_event_names() -> None:
    settings = settings_for()
    assert one_job(parse_notification(minio_body("inbox", "LOUD.WAV"), settings)).audio.key == "LOUD.WAV"
    aws = minio_body("inbox", "aws.m4a", event="ObjectCreated:Put")  # AWS omits the "s3:" prefix
    assert one_job(parse_notification(aws, settings)).audio.key == "aws.m4a"


def test_inbox_prefix_filter() -> None:
    settings = settings_for(inbox_prefix="incoming")
    assert one_job(parse_notification(minio_body("inbox", "incoming%2Fa.wav"), settings)).audio.key == "incoming/a.wav"
    for key in ("a.wav", "incoming2/a.wav", "other/incoming/a.wav"):
        assert isinstance(parse_notification(minio_body("inbox", quote_plus(key)), settings), Ignored)


def test_shared_bucket_ignores_results_and_markers() -> None:
    settings = settings_for(results_bucket="inbox", results_prefix="out")
    for key in ("out/calls/x.wav/transcript.json", "out/x.mp4", "_fleet/sweep/j.wav"):
        assert isinstance(parse_notification(minio_body("inbox", quote_plus(key)), settings), Ignored), key


def test_mixed_records_and_version_ids() -> None:
    settings = settings_for()
    body = minio_body("inbox", "one.wav", version_id="v-1")
    body["Records"] += minio_body("inbox", "notes.txt")["Records"]
    body["Records"] += minio_body("inbox", "two.flac", event="s3:ObjectCreated:Copy")["Records"]
    result = parse_notification(body, settings)
    assert isinstance(result, list)
    assert [j.audio.key for j in result] == ["one.wav", "two.flac"]
    assert result[0].metadata["object"]["version_id"] == "v-1"


def test_unsafe_keys_get_a_safe_output_prefix() -> None:
    settings = settings_for()
    for key in ("a/../b.wav", "./x.wav", "a//b.wav", "/lead.wav", "back\\slash.wav"):
        job = one_job(parse_notification(minio_body("inbox", quote_plus(key)), settings))
        assert job.audio.key == key
        assert job.output is not None
        assert safe_prefix(job.output.key) == job.output.key
        assert job.output.key.startswith("results/")


def test_a_record_without_etag_never_invents_an_identity() -> None:
    """Pure parsing cannot know the object's bytes: no job (resolve_notification looks it up)."""
    for etag_field in ("absent", "", '""'):
        body = minio_body("inbox", "x.wav", version_id="v-7")
        obj = body["Records"][0]["s3"]["object"]
        if etag_field == "absent":
            del obj["eTag"]
        else:
            obj["eTag"] = etag_field
        result = parse_notification(body, settings_for())
        assert isinstance(result, Ignored), etag_field
        assert "no eTag" in result.reason


def _without(path: tuple[str, ...]) -> dict[str, Any]:
    body = minio_body("inbox", "x.wav")
    node: Any = body["Records"][0]
    for name in path[:-1]:
        node = node[name]
    del node[path[-1]]
    return body


@pytest.mark.parametrize(
    "body",
    [
        {"EventName": "s3:ObjectCreated:Put"},
        {"Records": "nope"},
        {"Records": [17]},
        _without(("eventName",)),
        _without(("s3",)),
        _without(("s3", "bucket")),
        _without(("s3", "object", "key")),
        {"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"bucket": {"name": "inbox"}, "object": {"key": 5}}}]},
        {
            "Records": [
                {
                    "eventName": "s3:ObjectCreated:Put",
                    "s3": {"bucket": {"name": "inbox"}, "object": {"key": "a.wav", "size": "big"}},
                }
            ]
        },
        {
            "Records": [
                {
                    "eventName": "s3:ObjectCreated:Put",
                    "s3": {"bucket": {"name": "inbox"}, "object": {"key": "a.wav", "size": -1}},
                }
            ]
        },
    ],
)
def test_malformed_notifications_raise(body: dict[str, Any]) -> None:
    with pytest.raises(SchemaInvalid) as err:
        parse_notification(body, settings_for())
    assert err.value.permanent and err.value.code == "schema_invalid"


def test_non_object_body_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        parse_notification(["Records"], settings_for())  # type: ignore[arg-type]


# --- the sweep (real S3) ---------------------------------------------------------------------------
class Collect:
    """A publish callable that records jobs (and can be told to fail)."""

    def __init__(self) -> None:
        self.jobs: list[JobRequest] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, job: JobRequest) -> None:
        if self.fail:
            raise BrokerUnavailable("broker down (test)")
        with self.lock:
            self.jobs.append(job)

    @property
    def keys(self) -> list[str]:
        return sorted(j.audio.key for j in self.jobs)


def _drop(storage: Storage, settings: Settings, key: str, data: bytes = b"RIFF....WAVEfmt ") -> str:
    info = storage.put_bytes(settings.s3.inbox_bucket, key, data, content_type="audio/wav")
    return job_id_for_object(settings.s3.inbox_bucket, key, info.etag)


def _manifest(storage: Storage, settings: Settings, key: str, job_id: str) -> None:
    job = intake.job_for_object(settings, settings.s3.inbox_bucket, key, "x")
    out = job.output_location(settings)
    storage.put_json(out.bucket, manifest_key(out.key), {"job_id": job_id, "outputs": []})


@pytest.fixture
def sweep_settings(fleet_settings: Callable[..., Settings]) -> Settings:
    return fleet_settings(with_engine=False)


def test_sweep_enqueues_once_and_skips_finished(storage: Storage, sweep_settings: Settings) -> None:
    s = sweep_settings
    a = _drop(storage, s, "calls/a.wav")
    _drop(storage, s, "calls/b b.mp3", b"ID3 not really")
    _drop(storage, s, "calls/notes.txt")
    storage.put_bytes(s.s3.inbox_bucket, "calls/sub/", b"")  # directory marker
    done = _drop(storage, s, "calls/done.wav")
    _manifest(storage, s, "calls/done.wav", done)
    _drop(storage, s, "calls/replaced.wav", b"new bytes")
    _manifest(storage, s, "calls/replaced.wav", "s3-an-older-version")
    _drop(storage, s, "calls/empty.wav", b"")

    first = Collect()
    report = reconcile.sweep(s, storage, first)
    assert first.keys == ["calls/a.wav", "calls/b b.mp3", "calls/empty.wav", "calls/replaced.wav"]
    assert report.enqueued == 4 and report.done == 1 and report.errors == 0
    assert report.skipped >= 1  # notes.txt (+ the marker if the server lists it)
    assert sorted(report.job_ids) == sorted(str(j.job_id) for j in first.jobs)
    job_a = next(j for j in first.jobs if j.audio.key == "calls/a.wav")
    assert job_a.job_id == a and job_a.metadata["intake"] == "sweep"
    assert job_a.output is not None and job_a.output.key == f"{s.s3.results_prefix}/calls/a.wav"

    second = Collect()
    again = reconcile.sweep(s, storage, second)
    assert second.jobs == []
    assert again.recent == 4 and again.done == 1 and again.enqueued == 0

    # The same object announced by a bucket event is the same job (one id, one output prefix).
    from_event = parse_notification(
        minio_body(s.s3.inbox_bucket, "calls%2Fa.wav", etag=storage.head(s.s3.inbox_bucket, "calls/a.wav").etag), s
    )
    assert isinstance(from_event, list) and from_event[0].job_id == a and from_event[0].output == job_a.output
    assert intake.job_ids_for_inbox_key(s, storage, "calls/a.wav") == [a]
    assert intake.job_ids_for_inbox_key(s, storage, "calls/notes.txt") == []


def test_sweep_re_enqueues_after_the_recent_window_then_gives_up(
    storage: Storage, fleet_settings: Callable[..., Settings]
) -> None:
    s = fleet_settings(with_engine=False, intake={"sweep_recent_s": 0})
    _drop(storage, s, "stuck.wav")
    counts = []
    for _ in range(reconcile.MAX_SWEEP_ENQUEUES + 2):
        c = Collect()
        report = reconcile.sweep(s, storage, c)
        counts.append((report.enqueued, report.given_up))
    assert counts == [(1, 0)] * reconcile.MAX_SWEEP_ENQUEUES + [(0, 1), (0, 1)]


def test_sweep_publish_failure_leaves_no_marker(storage: Storage, sweep_settings: Settings) -> None:
    s = sweep_settings
    _drop(storage, s, "p.wav")
    broken = Collect()
    broken.fail = True
    with pytest.raises(BrokerUnavailable):
        reconcile.sweep(s, storage, broken)
    ok = Collect()
    assert reconcile.sweep(s, storage, ok).enqueued == 1
    assert ok.keys == ["p.wav"]


def test_concurrent_sweeps_enqueue_each_object_once(storage: Storage, sweep_settings: Settings) -> None:
    s = sweep_settings
    keys = [f"c/{i}.wav" for i in range(6)]
    for key in keys:
        _drop(storage, s, key, key.encode())
    shared = Collect()
    barrier = threading.Barrier(4)

    def one(_: int) -> int:
        barrier.wait()
        return reconcile.sweep(s, storage, shared).enqueued

    with ThreadPoolExecutor(4) as pool:
        enqueued = sum(pool.map(one, range(4)))
    assert enqueued == len(keys)
    assert shared.keys == sorted(keys)


def test_sweep_publishes_to_the_real_jobs_queue(storage: Storage, sweep_settings: Settings) -> None:
    from funasr_fleet.publisher import Publisher

    s = sweep_settings
    job_id = _drop(storage, s, "q/real.wav")
    with Publisher(s) as publisher:
        report = reconcile.sweep(s, storage, publisher)
    assert report.job_ids == [job_id]
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    try:
        ch = conn.channel()
        method, props, body = ch.basic_get(s.amqp.jobs_queue, auto_ack=True)
        assert method is not None
        assert props.message_id == job_id and props.delivery_mode == 2 and props.timestamp
        job = JobRequest.model_validate(json.loads(body))
        assert job.job_id == job_id and job.audio.key == "q/real.wav"
    finally:
        conn.close()


# --- end to end: the real consumer ------------------------------------------------------------------
def test_bucket_drop_and_sweep_with_the_real_consumer(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], storage: Storage, audio_dir: Any, tmp_path: Any
) -> None:
    """A MinIO-format event → the real consumer → outputs + manifest; a drop whose event was lost → the sweep."""
    from funasr_fleet.waiting import EventWatcher
    from tests.test_consumer import consumer_thread

    s = fleet_settings(
        with_engine=True,
        consumer={"heartbeat_file": str(tmp_path / "hb.json"), "retry_base_delay_s": 0.5, "retry_max_attempts": 2},
    )
    wav = (audio_dir / "dialogue.wav").read_bytes()
    announced = storage.put_bytes(s.s3.inbox_bucket, "drops/team call 1.wav", wav, content_type="audio/wav")
    storage.put_bytes(s.s3.inbox_bucket, "drops/lost event.wav", wav[:-2000], content_type="audio/wav")
    body = minio_body(
        s.s3.inbox_bucket, quote_plus("drops/team call 1.wav"), size=announced.size, etag=f'"{announced.etag}"'
    )

    with consumer_thread(s), EventWatcher(s) as watcher:
        conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
        try:  # what MinIO does: publish the notification to the jobs exchange under the intake key
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish(s.amqp.jobs_exchange, s.amqp.intake_routing_key, json.dumps(body).encode(),
                             pika.BasicProperties(content_type="application/json", delivery_mode=2), mandatory=True)  # fmt: skip
        finally:
            conn.close()
        job_id = job_id_for_object(s.s3.inbox_bucket, "drops/team call 1.wav", announced.etag)
        result = watcher.wait(job_id, timeout_s=150)
        assert result.ok, (result.error_code, result.error_message)
        prefix = f"{s.s3.results_prefix}/drops/team call 1.wav"
        assert result.outputs[-1] == f"s3://{s.s3.results_bucket}/{prefix}/manifest.json"
        manifest = storage.get_json(s.s3.results_bucket, f"{prefix}/manifest.json")
        assert manifest is not None and manifest["job_id"] == job_id
        assert [u.rsplit(".", 1)[1] for u in result.outputs[:-1]] == s.intake.formats

        from funasr_fleet.publisher import Publisher

        with Publisher(s) as publisher:
            report = reconcile.sweep(s, storage, publisher)
            assert report.done == 1 and report.enqueued == 1, report
            lost = watcher.wait(report.job_ids[0], timeout_s=150)
            assert lost.ok, (lost.error_code, lost.error_message)
            assert storage.exists(s.s3.results_bucket, f"{s.s3.results_prefix}/drops/lost event.wav/manifest.json")
            again = reconcile.sweep(s, storage, publisher)
            assert again.done == 2 and again.enqueued == 0


def test_sweep_cli_once(storage: Storage, sweep_settings: Settings) -> None:
    import subprocess
    import sys

    from tests.fixtures.services import subprocess_env

    s = sweep_settings
    job_id = _drop(storage, s, "cli/one.wav")
    run = subprocess.run(
        [sys.executable, "-m", "funasr_fleet", "sweep", "--once"],
        env=subprocess_env(s), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["enqueued"] == 1 and report["job_ids"] == [job_id]
    again = subprocess.run(
        [sys.executable, "-m", "funasr_fleet", "sweep", "--once"],
        env=subprocess_env(s), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert json.loads(again.stdout.strip().splitlines()[-1])["recent"] == 1


# --- event kinds: content vs metadata-only (issue 16) ---------------------------------------------------
CASE_EVENTS = Path(__file__).parent / "fixtures" / "events"


def case_event(name: str, bucket: str, etag: str | None = None) -> dict[str, Any]:
    """A recorded MinIO notification (tests/fixtures/events, from shared/cases/metadata-events) for our bucket."""
    body = json.loads((CASE_EVENTS / name).read_text().replace("fleet-inbox", bucket))
    if etag is not None:
        body["Records"][0]["s3"]["object"]["eTag"] = etag
    return body


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        *[(f"s3:ObjectCreated:{k}", EventClass.CONTENT) for k in ("Put", "Post", "Copy", "CompleteMultipartUpload")],
        *[(f"ObjectCreated:{k}", EventClass.CONTENT) for k in ("Put", "Post", "Copy", "CompleteMultipartUpload")],
        *[
            (f"s3:ObjectCreated:{k}", EventClass.METADATA)
            for k in ("PutTagging", "DeleteTagging", "PutRetention", "PutLegalHold")
        ],
        ("s3:ObjectCreated:PutObjectLockRetention", EventClass.UNKNOWN_CREATED),
        ("s3:ObjectCreated:SomethingNew", EventClass.UNKNOWN_CREATED),
        ("s3:ObjectCreated:*", EventClass.UNKNOWN_CREATED),
        ("s3:ObjectCreated:put", EventClass.UNKNOWN_CREATED),  # names are case-sensitive
        ("s3:ObjectRemoved:Delete", EventClass.OTHER),
        ("s3:ObjectTagging:Put", EventClass.OTHER),  # AWS's own tagging events
        ("s3:ObjectAccessed:Get", EventClass.OTHER),
        ("s3:ObjectRestore:Completed", EventClass.OTHER),
        ("s3:Replication:OperationFailedReplication", EventClass.OTHER),
        ("", EventClass.OTHER),
    ],
)
def test_classify_event(event: str, kind: EventClass) -> None:
    assert classify_event(event) is kind


@pytest.mark.parametrize("event", ["PutTagging", "DeleteTagging", "PutRetention", "PutLegalHold"])
def test_metadata_only_records_are_ignored(event: str) -> None:
    result = parse_notification(minio_body("inbox", "calls%2Fx.wav", event=f"s3:ObjectCreated:{event}"), settings_for())
    assert isinstance(result, Ignored)
    assert "metadata-only" in result.reason and "s3://inbox/calls/x.wav" in result.reason


@pytest.mark.parametrize("name", ["2-event-put-tagging.json", "6-event-put-tagging-no-etag.json"])
def test_recorded_tagging_events_are_ignored(name: str) -> None:
    result = parse_notification(case_event(name, "inbox"), settings_for())
    assert isinstance(result, Ignored) and "metadata-only" in result.reason


def test_recorded_upload_event_is_one_job() -> None:
    job = one_job(parse_notification(case_event("1-event-put.json", "inbox"), settings_for()))
    assert job.audio.key == "calls/2026-11-30/tagged.wav"
    assert job.job_id == job_id_for_object("inbox", "calls/2026-11-30/tagged.wav", "767dddaa00308cf6d8074da22f36206d")


def test_upload_then_metadata_records_in_one_notification_is_one_job() -> None:
    body = minio_body("inbox", "x.wav")
    for event in ("PutTagging", "DeleteTagging", "PutRetention", "PutLegalHold"):
        body["Records"] += minio_body("inbox", "x.wav", event=f"s3:ObjectCreated:{event}")["Records"]
    body["Records"] += minio_body("inbox", "x.wav", event="s3:ObjectCreated:PutTagging", etag="", size=0)["Records"]
    result = parse_notification(body, settings_for())
    assert isinstance(result, list) and [j.job_id for j in result] == [job_id_for_object("inbox", "x.wav", ETAG)]


def test_unknown_created_kind_is_ignored_and_says_so() -> None:
    result = parse_notification(minio_body("inbox", "x.wav", event="s3:ObjectCreated:SomethingNew"), settings_for())
    assert isinstance(result, Ignored)
    assert "does not know" in result.reason and "sweep" in result.reason


def test_metadata_records_are_not_validated_like_uploads() -> None:
    """A tagging record with size 0 and no eTag (as some servers send) is not malformed: just ignored."""
    body = minio_body("inbox", "x.wav", event="s3:ObjectCreated:PutTagging", etag="", size=0)
    body["Records"][0]["s3"]["object"]["size"] = "0"
    assert isinstance(parse_notification(body, settings_for()), Ignored)


def test_undecodable_key_escapes_are_schema_invalid() -> None:
    with pytest.raises(SchemaInvalid, match="not percent-encoded UTF-8"):
        parse_notification(minio_body("inbox", "calls%2F%FF%FE.wav"), settings_for())


# --- records without an eTag: looked up in the real S3 ---------------------------------------------------
def test_resolve_notification_looks_up_records_without_etag(storage: Storage, sweep_settings: Settings) -> None:
    s = sweep_settings
    inbox = s.s3.inbox_bucket
    info = storage.put_bytes(inbox, "calls/2026-11-30/tagged.wav", b"RIFF....WAVEfmt one", content_type="audio/wav")
    upload = one_job(intake.resolve_notification(case_event("1-event-put.json", inbox, etag=info.etag), s, storage))
    assert upload.job_id == job_id_for_object(inbox, "calls/2026-11-30/tagged.wav", info.etag)

    no_etag = case_event("1-event-put.json", inbox, etag="")  # an upload record without an eTag
    no_etag["Records"][0]["s3"]["object"]["size"] = 0
    looked_up = one_job(intake.resolve_notification(no_etag, s, storage))
    assert looked_up.job_id == upload.job_id  # the same identity, never a new one
    assert looked_up.output == upload.output
    assert looked_up.metadata["object"] == {"etag": info.etag, "size": info.size}

    # metadata-only records are ignored before any lookup
    for name in ("2-event-put-tagging.json", "6-event-put-tagging-no-etag.json"):
        assert isinstance(intake.resolve_notification(case_event(name, inbox), s, storage), Ignored)

    # the object is gone: nothing to do
    storage.delete(inbox, "calls/2026-11-30/tagged.wav")
    gone = intake.resolve_notification(no_etag, s, storage)
    assert isinstance(gone, Ignored) and "no longer exists" in gone.reason


def test_resolve_notification_keeps_record_etags_and_mixes(storage: Storage, sweep_settings: Settings) -> None:
    s = sweep_settings
    inbox = s.s3.inbox_bucket
    a = storage.put_bytes(inbox, "m/a.wav", b"aaaa")
    b = storage.put_bytes(inbox, "m/b b.wav", b"bbbb")
    body = minio_body(inbox, "m%2Fa.wav", etag=f'"{a.etag}"')
    body["Records"] += minio_body(inbox, "m%2Fb+b.wav", etag="")["Records"]
    body["Records"] += minio_body(inbox, "m%2Fgone.wav", etag="")["Records"]
    body["Records"] += minio_body(inbox, "m%2Fa.wav", event="s3:ObjectCreated:PutTagging", etag="", size=0)["Records"]
    jobs = intake.resolve_notification(body, s, storage)
    assert isinstance(jobs, list)
    assert [j.job_id for j in jobs] == [
        job_id_for_object(inbox, "m/a.wav", a.etag),
        job_id_for_object(inbox, "m/b b.wav", b.etag),
    ]


# --- the sweep and jobs enqueued by bucket events ------------------------------------------------------
def test_sweep_skips_objects_the_fan_out_recorded(storage: Storage, sweep_settings: Settings) -> None:
    s = sweep_settings
    inbox = s.s3.inbox_bucket
    info = storage.put_bytes(inbox, "ev/announced.wav", b"RIFF....WAVEfmt ev")
    storage.put_bytes(inbox, "ev/not-announced.wav", b"RIFF....WAVEfmt other")
    jobs = intake.resolve_notification(minio_body(inbox, "ev%2Fannounced.wav", etag=info.etag), s, storage)
    assert isinstance(jobs, list)
    assert reconcile.record_enqueued(s, storage, jobs) == 1  # what the fan-out does once the publishes are confirmed
    marker = storage.get_json(s.s3.results_bucket, reconcile.marker_key(str(jobs[0].job_id)))
    assert marker is not None and marker["count"] == 0 and marker["via"] == "s3-event"

    c = Collect()
    report = reconcile.sweep(s, storage, c)
    assert c.keys == ["ev/not-announced.wav"]
    assert report.recent == 1 and report.enqueued == 1


def test_sweep_re_enqueues_event_jobs_after_the_window(
    storage: Storage, fleet_settings: Callable[..., Settings]
) -> None:
    s = fleet_settings(with_engine=False, intake={"sweep_recent_s": 0})
    info = storage.put_bytes(s.s3.inbox_bucket, "late.wav", b"RIFF late")
    job = intake.job_for_object(s, s.s3.inbox_bucket, "late.wav", info.etag)
    reconcile.record_enqueued(s, storage, job)
    c = Collect()
    report = reconcile.sweep(s, storage, c)
    assert report.enqueued == 1 and c.keys == ["late.wav"]
    marker = storage.get_json(s.s3.results_bucket, reconcile.marker_key(str(job.job_id)))
    assert marker is not None and marker["count"] == 1


def test_record_enqueued_is_best_effort(own_s3_server: Any, sweep_settings: Settings) -> None:
    s = sweep_settings
    down = Storage(own_s3_server.settings())
    own_s3_server.stop()  # a real outage: the marker write fails, the caller goes on
    job = intake.job_for_object(s, s.s3.inbox_bucket, "x.wav", ETAG)
    assert reconcile.record_enqueued(s, down, [job]) == 0  # logged, not raised


def test_a_manifest_of_another_job_for_the_same_bytes_is_done(storage: Storage, sweep_settings: Settings) -> None:
    """A manifest written under another job id (e.g. by an older fan-out) for the same bucket, key and
    eTag counts as done: the sweep does not start the object again, so its results do not flip ids."""
    s = sweep_settings
    inbox = s.s3.inbox_bucket
    info = storage.put_bytes(inbox, "done/other-id.wav", b"RIFF other id")
    job = intake.job_for_object(s, inbox, "done/other-id.wav", info.etag)
    out = job.output_location(s)
    storage.put_json(out.bucket, manifest_key(out.key), {
        "job_id": "s3-00000000000000000000000000000000", "outputs": [],
        "input": {"bucket": inbox, "key": "done/other-id.wav", "etag": info.etag},
    })  # fmt: skip
    assert reconcile.is_done(s, storage, job)
    report = reconcile.sweep(s, storage, Collect())
    assert report.done == 1 and report.enqueued == 0
    # new bytes under the key: not done
    storage.put_bytes(inbox, "done/other-id.wav", b"RIFF replaced")
    assert reconcile.sweep(s, storage, Collect()).enqueued == 1


# --- a refused fan-out is retried, not dead-lettered (issue 16, phase 2) --------------------------------
def _rabbitmqctl(*args: str, check: bool = True) -> None:
    import shutil
    import subprocess

    exe = shutil.which("rabbitmqctl")
    if exe is None:
        pytest.skip("rabbitmqctl is not available to set a queue policy")
    subprocess.run([exe, *args], check=check, capture_output=True, timeout=60)


def _vhost(url: str) -> str:
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).path.lstrip("/")) or "/"


def test_a_refused_fan_out_is_retried_not_dead_lettered(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], storage: Storage, audio_dir: Any, tmp_path: Any
) -> None:
    """The jobs queue at its length limit (a max-length policy; the queue is x-overflow=reject-publish)
    nacks the second job a notification fans out into. Right: the notification goes to a delay tier
    (job.progress 'retrying', no job.failed, nothing dead-lettered) and, once there is room, both jobs
    run; the job already published is idempotent."""
    import re

    from tests.test_consumer import Broker, consumer_thread

    s = fleet_settings(
        with_engine=True,
        consumer={"heartbeat_file": str(tmp_path / "hb.json"), "retry_base_delay_s": 1.0, "retry_max_delay_s": 2.0,
                  "retry_max_attempts": 4},
    )  # fmt: skip
    inbox = s.s3.inbox_bucket
    wav = (audio_dir / "dialogue.wav").read_bytes()
    infos = {
        k: storage.put_bytes(inbox, k, wav[: len(wav) - i * 1000]) for i, k in enumerate(["full/a.wav", "full/b.wav"])
    }
    note = minio_body(inbox, quote_plus("full/a.wav"), etag=infos["full/a.wav"].etag)
    note["Records"] += minio_body(inbox, quote_plus("full/b.wav"), etag=infos["full/b.wav"].etag)["Records"]
    jobs = parse_notification(note, s)
    assert isinstance(jobs, list) and len(jobs) == 2
    vhost = _vhost(s.amqp.url.get_secret_value())
    policy = f"{s.amqp.jobs_queue}-full"
    broker = Broker(s)  # declares the topology
    try:
        broker.publish(note, message_id="note-full", routing_key=s.amqp.intake_routing_key)
        # A quorum queue refuses a publish once it holds MORE than max-length ready messages (measured:
        # limit 0 takes one, refuses the next). Once a consumer holds the notification, the first
        # fanned-out job is taken and the second refused.
        _rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "10", policy,
                     f"^{re.escape(s.amqp.jobs_queue)}$", json.dumps({"max-length": 0}))  # fmt: skip
        try:
            with consumer_thread(s):
                first = broker.wait_event(
                    lambda e: e.subject == "note-full", timeout=120, what="the notification's outcome"
                )
                assert first.kind == "progress" and first.data.stage == "retrying", (first.kind, first.data.error)
                assert first.data.error is not None and first.data.error.code == "broker_unavailable"
                _rabbitmqctl("clear_policy", "-p", vhost, policy)
                for job in jobs:
                    final = broker.final(str(job.job_id), timeout=180)
                    assert final.kind == "succeeded", final.data.error
        finally:
            _rabbitmqctl("clear_policy", "-p", vhost, policy, check=False)  # cleared above unless it failed early
        assert not [e for e in broker.of("note-full") if e.kind == "failed"]
        assert broker.count(s.amqp.dead_letter_queue) == 0
    finally:
        broker.close()


# --- the metadata-events case with the real consumer ----------------------------------------------------
def _publish_note(s: Settings, note: dict[str, Any], message_id: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(s.amqp.jobs_exchange, s.amqp.intake_routing_key, json.dumps(note).encode(),
                         pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=message_id),
                         mandatory=True)  # fmt: skip
    finally:
        conn.close()


def _consumer_settings(fleet_settings: Callable[..., Settings], tmp_path: Any, **consumer: Any) -> Settings:
    return fleet_settings(
        with_engine=True,
        consumer={"heartbeat_file": str(tmp_path / "hb.json"), "retry_base_delay_s": 0.5, "retry_max_attempts": 2,
                  "result_reuse": False, **consumer},
    )  # fmt: skip


def test_metadata_events_after_an_upload_start_nothing(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], storage: Storage, audio_dir: Any, tmp_path: Any
) -> None:
    """shared/cases/metadata-events: one upload, then tagging/retention/legal-hold records (one with an
    empty eTag and size 0). Right: one transcription, one job.succeeded; the rest acked and ignored;
    the manifest keeps its job id; a later sweep finds the object done."""
    from tests.test_consumer import Broker, consumer_thread

    s = _consumer_settings(fleet_settings, tmp_path)
    inbox, key = s.s3.inbox_bucket, "calls/2026-11-30/tagged.wav"
    info = storage.put_bytes(inbox, key, (audio_dir / "dialogue.wav").read_bytes(), content_type="audio/wav")
    job_id = job_id_for_object(inbox, key, info.etag)
    broker = Broker(s)
    try:
        with consumer_thread(s):
            _publish_note(s, case_event("1-event-put.json", inbox, etag=info.etag), "note-put")
            assert broker.final(job_id).kind == "succeeded"
            out = intake.job_for_object(s, inbox, key, info.etag).output_location(s)
            before = storage.head(out.bucket, manifest_key(out.key))
            notes = [case_event("2-event-put-tagging.json", inbox, etag=info.etag),
                     case_event("6-event-put-tagging-no-etag.json", inbox)]  # fmt: skip
            for event in ("DeleteTagging", "PutRetention", "PutLegalHold"):
                note = case_event("2-event-put-tagging.json", inbox, etag=info.etag)
                note["EventName"] = note["Records"][0]["eventName"] = f"s3:ObjectCreated:{event}"
                notes.append(note)
            for i, note in enumerate(notes):
                _publish_note(s, note, f"note-meta-{i}")
            # a job published after the notes finishes after them (one consumer, prefetch 1, FIFO)
            broker.publish(
                {"job_id": "after-notes", "audio": f"s3://{inbox}/{key}", "formats": ["txt"]}, message_id="after-notes"
            )
            assert broker.final("after-notes").kind == "succeeded"
        finals = [e for e in broker.of(job_id) if e.final]
        assert [e.kind for e in finals] == ["succeeded"]
        assert {e.subject for e in broker.seen} == {job_id, "after-notes"}  # no other job, no event of a note
        after = storage.head(out.bucket, manifest_key(out.key))
        assert after.etag == before.etag  # the manifest was not rewritten
        manifest = storage.get_json(out.bucket, manifest_key(out.key))
        assert manifest is not None and manifest["job_id"] == job_id
        assert broker.count(s.amqp.dead_letter_queue) == 0 and broker.count(s.amqp.jobs_queue) == 0
    finally:
        broker.close()
    report = reconcile.sweep(s, storage, Collect())
    assert report.done == 1 and report.enqueued == 0


# --- the consumer's wiring of the intake pieces (issue 16, phase 2) ---------------------------------------
def test_fan_out_looks_up_a_record_without_etag(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], storage: Storage, audio_dir: Any, tmp_path: Any
) -> None:
    from tests.test_consumer import Broker, consumer_thread

    s = _consumer_settings(fleet_settings, tmp_path)
    inbox, key = s.s3.inbox_bucket, "noetag/upload.wav"
    info = storage.put_bytes(inbox, key, (audio_dir / "dialogue.wav").read_bytes(), content_type="audio/wav")
    broker = Broker(s)
    try:
        with consumer_thread(s):
            _publish_note(s, minio_body(inbox, quote_plus(key, safe=""), etag="", size=0), "note-no-etag")
            final = broker.final(job_id_for_object(inbox, key, info.etag), timeout=60)
        assert final.kind == "succeeded"
    finally:
        broker.close()


def test_fan_out_records_its_jobs_for_the_sweep(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], storage: Storage, audio_dir: Any, tmp_path: Any
) -> None:
    from tests.test_consumer import Broker, consumer_thread

    s = _consumer_settings(fleet_settings, tmp_path)
    inbox, key = s.s3.inbox_bucket, "recorded/upload.wav"
    info = storage.put_bytes(inbox, key, (audio_dir / "dialogue.wav").read_bytes(), content_type="audio/wav")
    job_id = job_id_for_object(inbox, key, info.etag)
    broker = Broker(s)
    try:
        with consumer_thread(s):
            _publish_note(s, minio_body(inbox, quote_plus(key, safe=""), etag=info.etag), "note-recorded")
            assert broker.final(job_id).kind == "succeeded"
    finally:
        broker.close()
    marker = storage.get_json(s.s3.results_bucket, reconcile.marker_key(job_id))
    assert marker is not None and marker["via"] == "s3-event"


def test_a_fan_out_lookup_during_an_s3_outage_is_retried(
    fleet_settings: Callable[..., Settings],
    engine_env: dict[str, str],
    own_s3_server: Any,
    audio_dir: Any,
    unique: str,
    tmp_path: Any,
) -> None:
    """Issue 16: an upload record without an eTag is looked up (HEAD); S3 down makes that lookup fail
    with storage_unavailable, which retries the notification through the delay tiers. Once S3 is back
    the object becomes its one job (the id its real eTag gives) and succeeds."""
    from urllib.parse import quote_plus

    from tests.test_consumer import Broker, consumer_thread

    s3 = {
        **own_s3_server.settings(connect_timeout_s=1.0, read_timeout_s=5.0, max_attempts=1).model_dump(
            exclude_none=True
        ),
        "access_key": own_s3_server.access_key,
        "secret_key": own_s3_server.secret_key,
        "results_bucket": f"t-{unique}-own-results",
        "inbox_bucket": f"t-{unique}-own-inbox",
    }
    s = fleet_settings(
        with_engine=True,
        s3=s3,
        consumer={"heartbeat_file": str(tmp_path / "hb.json"), "retry_base_delay_s": 1.0, "retry_max_delay_s": 4.0,
                  "retry_max_attempts": 10},
    )  # fmt: skip
    own = Storage(s.s3)
    own.ensure_bucket(s.s3.results_bucket)
    own.ensure_bucket(s.s3.inbox_bucket)
    key = "drops/no etag.wav"
    info = own.put_bytes(s.s3.inbox_bucket, key, (audio_dir / "dialogue.wav").read_bytes())
    record = {"eventName": "s3:ObjectCreated:Put",
              "s3": {"bucket": {"name": s.s3.inbox_bucket}, "object": {"key": quote_plus(key), "size": 0, "eTag": ""}}}  # fmt: skip
    broker = Broker(s)
    try:
        with consumer_thread(s):
            own_s3_server.stop()
            restart = threading.Timer(10.0, own_s3_server.restart)
            restart.start()
            try:
                broker.publish({"Records": [record]}, routing_key=s.amqp.intake_routing_key, message_id="note-outage")
                retry = broker.wait_event(lambda e: e.subject == "note-outage" and e.data.stage == "retrying", 60)
                assert retry.data.error is not None and retry.data.error.code == "storage_unavailable"
                final = broker.final(job_id_for_object(s.s3.inbox_bucket, key, info.etag), timeout=90)
            finally:
                restart.join()
        assert final.kind == "succeeded", final.data.error
        assert not [e for e in broker.of("note-outage") if e.final]  # the notification itself never failed
        assert broker.count(s.amqp.jobs_queue) == 0 and broker.count(s.amqp.dead_letter_queue) == 0
    finally:
        broker.close()


def test_a_manifest_of_another_job_id_answers_and_does_not_flip(
    fleet_settings: Callable[..., Settings], engine_env: dict[str, str], storage: Storage, audio_dir: Any, tmp_path: Any
) -> None:
    """Two job ids for the same input bytes, engine, options and output prefix: the second is answered
    from the first one's manifest (its own job id in the event, reused 'manifest'); the manifest keeps
    the first id."""
    from tests.test_consumer import Broker, consumer_thread

    s = _consumer_settings(fleet_settings, tmp_path)
    inbox, key = s.s3.inbox_bucket, "two-ids/call.wav"
    storage.put_bytes(inbox, key, (audio_dir / "dialogue.wav").read_bytes(), content_type="audio/wav")
    prefix = f"s3://{s.s3.results_bucket}/shared/two-ids"
    broker = Broker(s)
    try:
        with consumer_thread(s):
            for jid in ("first-id", "second-id"):
                broker.publish({"job_id": jid, "audio": f"s3://{inbox}/{key}", "output": prefix, "formats": ["json"],
                                "metadata": {"who": jid}}, message_id=jid)  # fmt: skip
                assert broker.final(jid).kind == "succeeded"
        second = next(e for e in broker.of("second-id") if e.final)
        assert second.data.reused == "manifest" and second.data.metadata == {"who": "second-id"}
        assert not [e for e in broker.of("second-id") if e.kind == "progress" and e.data.stage == "transcribed"]
        manifest = storage.get_json(s.s3.results_bucket, "shared/two-ids/manifest.json")
        assert manifest is not None and manifest["job_id"] == "first-id"
    finally:
        broker.close()
