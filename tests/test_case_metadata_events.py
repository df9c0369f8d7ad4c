"""The handed case ``../shared/cases/metadata-events`` end to end: real RabbitMQ, real S3, one consumer.

``clip.wav`` is uploaded as ``calls/2026-11-30/tagged.wav`` and ALL the case's event files are
published at once with the intake routing key (so metadata records can arrive while the upload's
job is still queued or running). Right (issue 16): exactly one run of the job (one ``job.started``,
one ``transcribed``), one ``job.succeeded``, no event and no job for any metadata record, nothing
dead-lettered or left queued, the manifest names the object's one job id, and a later sweep finds
the object done.

Unseen kin: the same files in reverse order (the eTag-less tagging record first, the upload last);
MinIO's lock and tag records (PutRetention, PutLegalHold, DeleteTagging) with and without an eTag
around the upload; and an upload record that itself has no eTag (the consumer looks the object up:
the job id is still the one the real eTag gives).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
import pytest

from funasr_fleet import intake, reconcile
from funasr_fleet.jobs import job_id_for_object
from funasr_fleet.manifest import manifest_key
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

REPO = Path(__file__).resolve().parents[1]
_CASES = [Path(os.environ["FLEET_CASES_DIR"])] if os.environ.get("FLEET_CASES_DIR") else []
# ../shared from the main checkout; ../../shared from a worktree under wt/
_CASES += [REPO.parent / "shared" / "cases", REPO.parents[1] / "shared" / "cases"]
CASE = next((c for c in _CASES if c.is_dir()), _CASES[0]) / "metadata-events"
KEY = "calls/2026-11-30/tagged.wav"  # the case's object key (its events name it)
PUT, TAGGING, TAGGING_NO_ETAG = "1-event-put.json", "2-event-put-tagging.json", "6-event-put-tagging-no-etag.json"


def _case_file(name: str) -> Path:
    path = CASE / name
    if not path.exists():
        pytest.skip(f"handed case not here: {path}")
    return path


def _event(name: str, bucket: str, *, event: str | None = None, etag: str | None = None) -> dict[str, Any]:
    """A case event file for our inbox bucket; ``event`` renames its kind, ``etag`` replaces its eTag
    ("" makes a record without one, size 0, as some servers send)."""
    body = json.loads(_case_file(name).read_text().replace("fleet-inbox", bucket))
    record = body["Records"][0]
    if event is not None:
        body["EventName"] = record["eventName"] = event
    if etag is not None:
        record["s3"]["object"]["eTag"] = etag
        if not etag:
            record["s3"]["object"]["size"] = 0
    return body


def _lock_records(bucket: str, etag: str) -> list[dict[str, Any]]:
    out = []
    for kind in ("PutRetention", "PutLegalHold", "DeleteTagging"):
        for tag in (etag, ""):
            out.append(_event(TAGGING, bucket, event=f"s3:ObjectCreated:{kind}", etag=tag))
    return out


VARIANTS: dict[str, Callable[[str, str], list[dict[str, Any]]]] = {
    "as-handed": lambda b, e: [_event(PUT, b, etag=e), _event(TAGGING, b, etag=e), _event(TAGGING_NO_ETAG, b)],
    "reversed": lambda b, e: [_event(TAGGING_NO_ETAG, b), _event(TAGGING, b, etag=e), _event(PUT, b, etag=e)],
    "lock-records-around-the-upload": lambda b, e: [
        *_lock_records(b, e)[:3],
        _event(PUT, b, etag=e),
        *_lock_records(b, e)[3:],
        _event(TAGGING_NO_ETAG, b),
    ],
    "upload-record-without-etag": lambda b, e: [
        _event(TAGGING_NO_ETAG, b),
        _event(PUT, b, etag=""),
        _event(TAGGING, b, etag=e),
    ],
}


def _publish(s: Settings, bodies: list[dict[str, Any]]) -> list[str]:
    """Publish each body as MinIO does (intake routing key), confirmed; returns their message ids."""
    ids = []
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for n, body in enumerate(bodies):
            mid = f"case-note-{n}"
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=mid)
            ch.basic_publish(s.amqp.jobs_exchange, s.amqp.intake_routing_key, json.dumps(body).encode(), props,
                             mandatory=True)  # fmt: skip
            ids.append(mid)
    finally:
        conn.close()
    return ids


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_metadata_events_case_gives_one_transcription_and_one_event(
    variant: str,
    fleet_settings: Callable[..., Settings],
    engine_env: dict[str, str],
    storage: Storage,
    tmp_path: Path,
) -> None:
    from tests.test_consumer import Broker, consumer_thread

    clip = _case_file("clip.wav")
    s = fleet_settings(
        with_engine=True,
        consumer={"heartbeat_file": str(tmp_path / "hb.json"), "result_reuse": False, "progress_events": True},
    )
    inbox = s.s3.inbox_bucket
    info = storage.put_bytes(inbox, KEY, clip.read_bytes(), content_type="audio/wav")
    job_id = job_id_for_object(inbox, KEY, info.etag)
    broker = Broker(s)
    try:
        with consumer_thread(s):
            note_ids = _publish(s, VARIANTS[variant](inbox, info.etag))
            # one consumer, prefetch 1, FIFO: a job published after the notes finishes after them
            # and after the job the upload fanned out into
            broker.publish({"job_id": "barrier", "audio": f"s3://{inbox}/{KEY}", "formats": ["txt"]},
                           message_id="barrier")  # fmt: skip
            assert broker.final("barrier").kind == "succeeded"
            assert broker.final(job_id).kind == "succeeded"
        mine = broker.of(job_id)
        assert [e.kind for e in mine if e.final] == ["succeeded"], [(e.kind, e.data.error) for e in mine]
        assert len([e for e in mine if e.kind == "started"]) == 1  # one run: nothing answered twice either
        assert len([e for e in mine if e.kind == "progress" and e.data.stage == "transcribed"]) == 1
        assert {e.subject for e in broker.seen} == {job_id, "barrier"}  # no other job, no event of a note
        assert not any(broker.of(mid) for mid in note_ids)
        assert broker.count(s.amqp.dead_letter_queue) == 0 and broker.count(s.amqp.jobs_queue) == 0
    finally:
        broker.close()
    out = intake.job_for_object(s, inbox, KEY, info.etag).output_location(s)
    manifest = storage.get_json(out.bucket, manifest_key(out.key))
    assert manifest is not None and manifest["job_id"] == job_id
    assert manifest["input"]["etag"].strip('"') == info.etag.strip('"')
    report = reconcile.sweep(s, storage, lambda job: pytest.fail(f"the sweep enqueued {job.job_id}"))
    assert report.enqueued == 0 and report.recent + report.done == 1
