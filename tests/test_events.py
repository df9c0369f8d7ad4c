"""CloudEvents builders: required attributes, round trip, pass-through of metadata."""

from __future__ import annotations

import json

from funasr_fleet import events


def test_failed_event_has_cloudevents_attributes() -> None:
    ev = events.failed(
        "job-1", events.default_source("c1"), code="object_not_found", message="nope", attempt=2, metadata={"a": 1}
    )
    body = json.loads(events.encode(ev))
    for attr in ("specversion", "type", "source", "id", "time", "subject", "datacontenttype", "data"):
        assert attr in body
    assert body["specversion"] == "1.0"
    assert body["type"] == "io.funasr-fleet.job.failed"
    assert body["subject"] == "job-1"
    assert body["source"] == "/funasr-fleet/consumers/c1"
    assert body["data"]["error"] == {"code": "object_not_found", "message": "nope"}
    assert body["data"]["metadata"] == {"a": 1}
    assert body["data"]["attempt"] == 2
    assert body["time"].endswith("Z")
    back = events.parse(events.encode(ev))
    assert back.kind == "failed" and back.final
    assert back.data.error is not None and back.data.error.code == "object_not_found"


def test_progress_event_stage_and_fraction() -> None:
    ev = events.progress("j", "/s", "decoded", attempt=1, metadata={})
    assert ev.data.stage == "decoded" and 0 < (ev.data.progress or 0) < 1
    assert not ev.final
    assert events.routing_key("progress") == "job.progress"


def test_ids_are_unique() -> None:
    data = events.EventData(job_id="j", status="succeeded", outputs=["s3://b/k"])
    a, b = events.succeeded(data, "/s"), events.succeeded(data, "/s")
    assert a.id != b.id and a.data == b.data


def test_succeeded_event_carries_warnings() -> None:
    warning = events.WarningInfo(code="speaker_count_not_met", message="asked for 2 speakers; found 1")
    data = events.EventData(job_id="j", status="succeeded", outputs=["s3://b/k"], warnings=[warning])
    body = json.loads(events.encode(events.succeeded(data, "/s")))
    assert body["data"]["warnings"] == [{"code": "speaker_count_not_met", "message": "asked for 2 speakers; found 1"}]
    assert events.parse(json.dumps(body)).data.warnings == [warning]
    none = events.EventData(job_id="j", status="succeeded", warnings=[])
    assert json.loads(events.encode(events.succeeded(none, "/s")))["data"]["warnings"] == []  # said: no warnings
    started = json.loads(events.encode(events.started("j", "/s", attempt=1, metadata={}, input_uri=None)))
    assert "warnings" not in started["data"]
    old = {"specversion": "1.0", "type": "io.funasr-fleet.job.succeeded", "source": "/s", "id": "1", "time": "t",
           "subject": "j", "data": {"job_id": "j", "status": "succeeded"}}  # fmt: skip
    assert events.parse(old).data.warnings is None  # events from before warnings still parse
