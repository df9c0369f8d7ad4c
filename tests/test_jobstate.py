"""Job status store: the monotonic transition rule (pure) and the S3 object it keeps (real S3)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from funasr_fleet import jobstate
from funasr_fleet.events import ErrorInfo
from funasr_fleet.jobstatus import JobState, JobStatus, Update, accepts, advance
from funasr_fleet.manifest import manifest_key
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

Q, R, S, F, C = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED


def up(state: JobState, **kw: object) -> Update:
    return Update(job_id="j-1", state=state, by="test", **kw)  # type: ignore[arg-type]


def at(state: JobState, attempt: int = 1) -> JobStatus:
    return JobStatus(job_id="j-1", state=state, attempt=attempt)


# --- the rule ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("state", list(JobState))
def test_anything_starts_a_status(state: JobState) -> None:
    assert accepts(None, up(state))


@pytest.mark.parametrize(
    ("old", "new", "kw", "ok"),
    [
        # nothing leaves succeeded (outputs exist), but a refresh of it is fine
        (S, R, {}, False), (S, Q, {"reopen": True}, False), (S, F, {}, False), (S, C, {}, False), (S, S, {}, True),
        # a late running or failure never overwrites cancelled; committed outputs and a resubmission do
        (C, R, {}, False), (C, F, {}, False), (C, C, {}, False), (C, Q, {}, False), (C, S, {}, True),
        (C, Q, {"reopen": True}, True),
        # failed: a replayed/duplicate delivery really runs again; a resubmission re-opens
        (F, R, {}, True), (F, S, {}, True), (F, F, {}, True), (F, C, {}, False), (F, Q, {}, False),
        (F, Q, {"reopen": True}, True),
        # running: a retry (newer attempt) goes back to queued; a resubmission does not
        (R, Q, {"attempt": 2}, True), (R, Q, {"attempt": 1}, False), (R, Q, {"attempt": 2, "reopen": True}, False),
        (R, R, {}, True), (R, S, {}, True), (R, F, {}, True), (R, C, {}, True),
        # queued: a second submission changes nothing; everything after it is fine
        (Q, Q, {"reopen": True}, False), (Q, Q, {"attempt": 3}, True), (Q, R, {}, True), (Q, C, {}, True),
        (Q, S, {}, True), (Q, F, {}, True),
    ],
)  # fmt: skip
def test_transition_rule(old: JobState, new: JobState, kw: dict[str, object], ok: bool) -> None:
    assert accepts(at(old), up(new, **kw)) is ok
    assert (advance(at(old), up(new, **kw)) is not None) is ok


def test_create_only_never_overwrites() -> None:
    assert accepts(None, up(Q, create_only=True))
    for state in (Q, R, S, F, C):
        assert not accepts(at(state), up(Q, create_only=True))


def test_only_from_guards_the_cancel_of_a_queued_job() -> None:
    """cancel writes ``cancelled`` only over ``queued``: a consumer that started the job meanwhile stops it itself."""
    only_queued = frozenset({JobState.QUEUED})
    cancelled = Update(job_id="j", state=JobState.CANCELLED, by="cancel", only_from=only_queued)
    assert accepts(JobStatus(job_id="j", state=JobState.QUEUED), cancelled)
    assert not accepts(JobStatus(job_id="j", state=JobState.RUNNING), cancelled)
    assert not accepts(None, cancelled)


def test_advance_records_times_stages_and_history() -> None:
    s = advance(None, up(Q, at="2026-01-01T00:00:00Z", attempt=1, input="s3://a/b.wav", output_prefix="s3://r/p"))
    assert s is not None and s.state is Q and s.times == {"queued": "2026-01-01T00:00:00Z"}
    s = advance(s, up(R, at="2026-01-01T00:00:01Z", stage="downloaded", progress=0.1))
    s = advance(s, up(R, at="2026-01-01T00:00:02Z", stage="downloaded", progress=0.1))  # same stage: no entry
    s = advance(s, up(R, at="2026-01-01T00:00:03Z", stage="transcribed", progress=0.8))
    assert s is not None and (s.stage, s.progress) == ("transcribed", 0.8)
    assert s.times["running"] == "2026-01-01T00:00:01Z"  # entered once
    s = advance(s, up(S, at="2026-01-01T00:00:04Z", manifest="s3://r/p/manifest.json", outputs=["s3://r/p/x"]))
    assert s is not None and s.state is S and s.stage is None and s.progress == 1.0
    assert s.input == "s3://a/b.wav" and s.output_prefix == "s3://r/p"  # kept from earlier writes
    assert [(e.state, e.stage) for e in s.history] == [(Q, None), (R, "downloaded"), (R, "transcribed"), (S, None)]
    assert set(s.times) == {"queued", "running", "succeeded"}


def test_reopen_starts_a_new_run() -> None:
    s = advance(None, up(Q))
    s = advance(s, up(F, error=ErrorInfo(code="object_not_found", message="x")))
    assert s is not None and s.error is not None
    s = advance(s, up(Q, reopen=True, attempt=1))
    assert s is not None and s.state is Q and s.run == 2 and s.error is None
    assert list(s.times) == ["queued"] and len(s.history) == 3


def test_history_is_capped() -> None:
    s: JobStatus | None = advance(None, up(Q))
    for i in range(50):
        s = advance(s, up(R, stage=f"s{i}"), history_limit=5)
    assert s is not None and len(s.history) == 5 and s.history[-1].stage == "s49"


# --- in S3 ------------------------------------------------------------------------------------------
@pytest.fixture
def settings(fleet_settings: Callable[..., Settings]) -> Settings:
    return fleet_settings(with_engine=False)


def test_record_and_read_round_trip(settings: Settings, storage: Storage) -> None:
    assert jobstate.read(storage, settings, "j-none").state is JobState.UNKNOWN
    first = jobstate.record(
        storage, settings, up(Q, attempt=1, output_prefix=f"s3://{settings.s3.results_bucket}/out/j-1")
    )
    assert first.applied and first.status.state is Q
    raw = storage.get_json(settings.s3.results_bucket, "_fleet/jobs/j-1.json")
    assert raw is not None and raw["state"] == "queued" and "source" not in raw
    jobstate.record(storage, settings, up(R, stage="decoded", progress=0.2))
    jobstate.record(storage, settings, up(S, outputs=["s3://x/y"]))
    late = jobstate.record(storage, settings, up(R, stage="downloaded"))  # a duplicate delivery starting late
    assert not late.applied and late.status.state is S
    got = jobstate.read(storage, settings, "j-1")
    assert got.state is S and got.source == "status" and got.outputs == ["s3://x/y"]


def test_concurrent_writers_serialise(settings: Settings, storage: Storage) -> None:
    """Eight threads race to move one job; conditional writes lose no transition and keep the final state."""
    jobstate.record(storage, settings, up(Q))
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            jobstate.record(storage, settings, up(R, stage=f"stage-{i}"))
            if i == 0:
                jobstate.record(storage, settings, up(S))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = jobstate.read(storage, settings, "j-1")
    assert final.state is S
    stages = {e.stage for e in final.history if e.state is R}
    assert stages <= {f"stage-{i}" for i in range(8)} and "stage-0" in stages


def test_read_reconciles_with_a_newer_manifest(settings: Settings, storage: Storage) -> None:
    bucket = settings.s3.results_bucket
    jobstate.record(storage, settings, up(R, at="2026-01-01T00:00:00Z", output_prefix=f"s3://{bucket}/custom/p"))
    storage.put_json(bucket, manifest_key("custom/p"), {"job_id": "j-1", "outputs": ["s3://o/1"],
                                                        "created": "2026-01-01T00:05:00+00:00", "event": {}})  # fmt: skip
    got = jobstate.read(storage, settings, "j-1")
    assert got.state is S and got.source == "manifest" and got.outputs == ["s3://o/1"]
    assert got.times["running"] == "2026-01-01T00:00:00Z"
    # an older run's manifest does not override a newer status
    jobstate.record(storage, settings, up(R, at="2026-01-02T00:00:00Z"))
    assert jobstate.read(storage, settings, "j-1").state is R


def test_read_without_status_finds_the_default_manifest(settings: Settings, storage: Storage) -> None:
    s3 = settings.s3
    storage.put_json(s3.results_bucket, manifest_key(f"{s3.results_prefix}/j-old"), {"job_id": "j-old", "outputs": []})
    assert jobstate.read(storage, settings, "j-old").state is S
    storage.put_json(s3.results_bucket, manifest_key("elsewhere/j-2"), {"job_id": "j-2", "outputs": []})
    assert jobstate.read(storage, settings, "j-2").state is JobState.UNKNOWN
    assert jobstate.read(storage, settings, "j-2", output_prefix=f"s3://{s3.results_bucket}/elsewhere/j-2").state is S


def test_reopening_a_cancelled_job_clears_its_marker(settings: Settings, storage: Storage) -> None:
    bucket = settings.s3.results_bucket
    jobstate.record(storage, settings, up(C))
    storage.put_json(bucket, jobstate.cancel_marker_key("j-1"), {"job_id": "j-1", "id": "m1", "requested_at": "t"})
    assert jobstate.record(storage, settings, up(Q, reopen=True)).status.run == 2
    assert storage.get_json(bucket, jobstate.cancel_marker_key("j-1")) is None


def test_status_off_writes_nothing(fleet_settings: Callable[..., Settings], storage: Storage) -> None:
    s = fleet_settings(with_engine=False, jobs={"status": False})
    assert jobstate.try_record(storage, s, up(Q)) is None
    assert storage.get_json(s.s3.results_bucket, "_fleet/jobs/j-1.json") is None
