"""Issue 13, the consumer's part: status at every transition, cancel (queued, stage boundary, inside a
model call), the supervisor replacing a cancelled consumer and running the dead-letter announcer.

Real RabbitMQ, real S3 (SeaweedFS), the real consumer with the tiny models, the real supervisor.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from funasr_fleet import cancel, events, exitcodes, jobstate
from funasr_fleet.cancel import Outcome
from funasr_fleet.client import Client
from funasr_fleet.consumer.cancelling import UploadLog
from funasr_fleet.errors import JobCancelled
from funasr_fleet.jobstatus import JobState
from funasr_fleet.manifest import MANIFEST_NAME
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage
from tests import test_consumer
from tests.fixtures.audio import synth_speech
from tests.fixtures.services import subprocess_env
from tests.supervisor_harness import Fleet, wait_for
from tests.test_consumer import Broker, consumer_thread, job_body, split_uri, upload
from tests.test_consumer_resilience import ConsumerProcess
from tests.test_intake import minio_body

consumer_settings = test_consumer.consumer_settings  # fixtures shared with the consumer tests
broker_for = test_consumer.broker_for
LONG_AUDIO_S = 600.0
MEDIUM_AUDIO_S = 90.0
STAGES = ["downloaded", "decoded", "transcribed", "uploaded"]


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~10 minutes of speech: a model call of several seconds with the tiny engine."""
    return synth_speech(tmp_path_factory.mktemp("long") / "long.wav", LONG_AUDIO_S)


@pytest.fixture(scope="module")
def medium_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~1.5 minutes of speech: a model call of some seconds, short enough to wait for."""
    return synth_speech(tmp_path_factory.mktemp("medium") / "medium.wav", MEDIUM_AUDIO_S)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    made: list[ConsumerProcess] = []

    def make(settings: Settings) -> ConsumerProcess:
        p = ConsumerProcess(settings, tmp_path / f"consumer-{len(made)}.log")
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()


def outputs_under(storage: Storage, prefix_uri: str | None) -> list[str]:
    bucket, key = split_uri(prefix_uri or "")
    return [o.key for o in storage.list_objects(bucket, key)]


# --- status ----------------------------------------------------------------------------------------
def test_status_is_written_before_each_event(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    audio_dir: Path,
) -> None:  # fmt: skip
    s = consumer_settings(consumer={"result_reuse": False})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "calls/dialogue.wav", audio_dir / "dialogue.wav")
    with Client(s) as fleet:
        job_id = fleet.submit(audio, formats=["json"], callback="https://hooks.example.com/done")
        assert fleet.status(job_id).state is JobState.QUEUED
    seen: list[tuple[str, str | None, JobState, str | None]] = []
    with consumer_thread(s):
        while True:
            ev = broker.wait_event(lambda e: e.subject == job_id and e.id not in {x[0] for x in seen}, 120)
            st = jobstate.read(storage, s, job_id)  # read as soon as the event arrives
            seen.append((ev.id, ev.kind if ev.kind != "progress" else ev.data.stage, st.state, st.stage))
            if ev.final:
                break
    kinds = [k for _, k, _, _ in seen]
    assert kinds == ["started", *STAGES, "succeeded"], kinds
    for _, kind, state, stage in seen[1:-1]:  # a progress event: the status is at that stage or later
        assert state is JobState.SUCCEEDED or STAGES.index(stage or "") >= STAGES.index(kind or ""), seen
    assert seen[-1][2] is JobState.SUCCEEDED
    st = jobstate.read(storage, s, job_id)
    assert st.source == "status" and st.progress == 1.0 and st.manifest and st.outputs and st.outputs[-1] == st.manifest
    assert st.callback == "https://hooks.example.com/done" and st.attempt == 1
    assert [(h.state.value, h.stage) for h in st.history] == [
        ("queued", None), ("running", None), *[("running", x) for x in STAGES], ("succeeded", None)
    ]  # fmt: skip
    assert all(h.by and h.by.startswith("consumer@") for h in st.history[1:])
    assert set(st.times) == {"queued", "running", "succeeded"}


def test_failed_job_and_bucket_drop_statuses(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    audio_dir: Path,
) -> None:  # fmt: skip
    s = consumer_settings()
    broker = broker_for(s)
    data = (audio_dir / "dialogue.wav").read_bytes()
    storage.put_bytes(s.s3.inbox_bucket, "drop/a.wav", data, content_type="audio/wav")
    etag = storage.head(s.s3.inbox_bucket, "drop/a.wav").etag
    with Client(s) as fleet:
        missing = fleet.submit(f"s3://{s.s3.inbox_bucket}/nope/missing.wav")
    with consumer_thread(s):
        failed = broker.final(missing)
        broker.publish(minio_body(s.s3.inbox_bucket, "drop/a.wav", etag=etag, size=len(data)))
        dropped = broker.wait_event(lambda e: e.kind == "succeeded", 120).subject
    st = jobstate.read(storage, s, missing)
    assert failed.kind == "failed" and failed.data.error is not None
    assert st.state is JobState.FAILED and st.error is not None and st.error.code == failed.data.error.code
    drop = jobstate.read(storage, s, dropped)
    assert drop.state is JobState.SUCCEEDED and drop.input == f"s3://{s.s3.inbox_bucket}/drop/a.wav"
    assert [h.state for h in drop.history][:2] == [JobState.QUEUED, JobState.RUNNING]  # queued by the fan-out


def test_status_after_a_consumer_sigkill(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    medium_audio: Path, spawn: Callable[..., ConsumerProcess],
) -> None:  # fmt: skip
    s = consumer_settings(consumer={"result_reuse": False})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "medium.wav", medium_audio)
    doomed = spawn(s)
    doomed.wait_ready()
    with Client(s) as fleet:
        job_id = fleet.submit(audio, formats=["json"])
    broker.wait_event(lambda e: e.subject == job_id and e.data.stage == "decoded", 120)
    doomed.proc.kill()
    doomed.wait(30)
    st = jobstate.read(storage, s, job_id)
    assert st.state is JobState.RUNNING and st.stage == "decoded"  # what was last true; nothing claims more
    with consumer_thread(s):
        assert broker.final(job_id, 180).kind == "succeeded"
    st = jobstate.read(storage, s, job_id)
    assert st.state is JobState.SUCCEEDED
    assert [h.stage for h in st.history if h.state is JobState.RUNNING].count(None) == 2  # started twice


def test_status_through_a_retry_and_a_final_failure(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    medium_audio: Path, spawn: Callable[..., ConsumerProcess],
) -> None:  # fmt: skip
    """The deadline path (loop thread): attempt 1 times out → ``queued`` attempt 2; attempt 2 → ``failed``."""
    s = consumer_settings(consumer={"deadline_base_s": 1.0, "deadline_factor": 0.0, "retry_max_attempts": 2,
                                    "result_reuse": False})  # fmt: skip
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "medium.wav", medium_audio)
    with Client(s) as fleet:
        job_id = fleet.submit(audio, formats=["json"])
    first = spawn(s)
    assert first.wait(180) == exitcodes.JOB_TIMEOUT, first.output()
    st = jobstate.read(storage, s, job_id)
    assert st.state is JobState.QUEUED and st.attempt == 2 and st.error is not None and st.error.code == "timeout"
    second = spawn(s)
    assert second.wait(180) == exitcodes.JOB_TIMEOUT, second.output()
    final = broker.final(job_id, 30)
    st = jobstate.read(storage, s, job_id)
    assert final.kind == "failed" and st.state is JobState.FAILED and st.attempt == 2
    assert st.error is not None and st.error.code == "timeout"
    assert [h.state.value for h in st.history if h.stage is None] == [
        "queued",
        "running",
        "queued",
        "running",
        "failed",
    ]


# --- cancel ----------------------------------------------------------------------------------------
def test_cancelled_queued_job_never_starts(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    audio_dir: Path,
) -> None:  # fmt: skip
    s = consumer_settings()
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "q.wav", audio_dir / "dialogue.wav")
    reply_q = broker.reply_queue()
    with Client(s) as fleet:
        job_id = fleet.submit(audio, delete_source=True)
        t0 = time.perf_counter()
        assert fleet.cancel(job_id).outcome is Outcome.CANCELLED  # job.cancelled is out when this returns
        print(f"\ncancel latency, queued job (Client.cancel until job.cancelled published): "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")  # fmt: skip
    # a job published straight to AMQP that no one recorded, cancelled with --force
    broker.publish(job_body(audio, "j-raw-forced"), reply_to=reply_q, correlation_id="c-1")
    with Client(s) as fleet:
        assert fleet.cancel("j-raw-forced", force=True).outcome is Outcome.REQUESTED
    with consumer_thread(s):
        wait_for(lambda: broker.count(s.amqp.jobs_queue) == 0 or None, 60, what="queue drained")
        forced = broker.final("j-raw-forced")
        time.sleep(1.0)
    assert forced.kind == "cancelled" and forced.data.error is not None
    assert forced.id == events.cancelled_event_id("j-raw-forced", cancel.read_marker(storage, s, "j-raw-forced")["id"])  # type: ignore[index]
    props, body = broker.get_one(reply_q)
    assert props.correlation_id == "c-1" and events.parse(body).id == forced.id
    for jid in (job_id, "j-raw-forced"):
        mine = broker.of(jid)
        assert {e.kind for e in mine} == {"cancelled"} and len({e.id for e in mine}) == 1, mine  # never started
        st = jobstate.read(storage, s, jid)
        assert st.state is JobState.CANCELLED
        assert not outputs_under(storage, st.output_prefix or jobstate.default_output_prefix(s, jid))
    assert storage.exists(*split_uri(audio))  # never deleted, even with delete_source
    assert broker.count(s.amqp.dead_letter_queue) == 0


def test_cancel_a_running_job_at_its_next_stage_boundary(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    medium_audio: Path, audio_dir: Path,
) -> None:  # fmt: skip
    s = consumer_settings(consumer={"result_reuse": False}, jobs={"cancel_grace_s": 600})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "medium.wav", medium_audio)
    short = upload(storage, s.s3.inbox_bucket, "short.wav", audio_dir / "dialogue.wav")
    with consumer_thread(s):  # one Client per call: a client idle through a long wait loses its connection
        with Client(s) as fleet:
            job_id = fleet.submit(audio, formats=["json", "srt"])
        broker.wait_event(lambda e: e.subject == job_id and e.data.stage == "decoded", 120)
        t0 = time.monotonic()
        with Client(s) as fleet:
            assert fleet.cancel(job_id, reason="wrong file").outcome is Outcome.CANCELLING
        final = broker.final(job_id, 300)
        latency = time.monotonic() - t0
        with Client(s) as fleet:  # the same consumer goes on with the next job
            nxt = fleet.submit(short, formats=["json"])
        assert broker.final(nxt, 120).kind == "succeeded"
    assert final.kind == "cancelled" and final.source == events.CANCEL_SOURCE
    stages = [e.data.stage for e in broker.of(job_id) if e.kind == "progress"]
    assert stages == ["downloaded", "decoded"]  # stopped at the boundary after the model call
    st = jobstate.read(storage, s, job_id)
    assert st.state is JobState.CANCELLED and st.error is not None and st.error.code == "job_cancelled"
    assert not outputs_under(storage, st.output_prefix) and storage.exists(*split_uri(audio))
    print(f"\ncancel latency, stage boundary (rest of the model call): {latency:.2f} s")


def test_cancel_inside_a_model_call_exits_6_within_the_grace(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    long_audio: Path, spawn: Callable[..., ConsumerProcess],
) -> None:  # fmt: skip
    grace = 1.0
    s = consumer_settings(consumer={"result_reuse": False}, jobs={"cancel_grace_s": grace})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "long.wav", long_audio)
    consumer = spawn(s)
    consumer.wait_ready()
    with Client(s) as fleet:
        job_id = fleet.submit(audio, formats=["json"])
        broker.wait_event(lambda e: e.subject == job_id and e.data.stage == "decoded", 120)
        t0 = time.monotonic()
        assert fleet.cancel(job_id).outcome is Outcome.CANCELLING
        final = broker.final(job_id, 60)
        t_event = time.monotonic() - t0
        code = consumer.wait(60)
        t_exit = time.monotonic() - t0
    assert code == exitcodes.JOB_CANCELLED, consumer.output()
    assert final.kind == "cancelled"
    assert t_exit < grace + 5.0, t_exit  # broadcast + one tick + grace + settle
    st = jobstate.read(storage, s, job_id)
    assert st.state is JobState.CANCELLED and not outputs_under(storage, st.output_prefix)
    assert storage.exists(*split_uri(audio))
    assert broker.count(s.amqp.jobs_queue) == 0 and broker.count(s.amqp.dead_letter_queue) == 0
    assert "abandoning the model call" in consumer.output()
    print(f"\ncancel latency inside a model call (grace {grace} s): event {t_event:.2f} s, exit {t_exit:.2f} s")


def test_cancel_finished_and_unknown_jobs_change_nothing(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    audio_dir: Path,
) -> None:  # fmt: skip
    s = consumer_settings()
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "done.wav", audio_dir / "dialogue.wav")
    with consumer_thread(s), Client(s) as fleet:
        job_id = fleet.submit(audio, formats=["json"])
        assert broker.final(job_id).kind == "succeeded"
        before = sorted(outputs_under(storage, fleet.status(job_id).output_prefix))
        assert fleet.cancel(job_id).outcome is Outcome.ALREADY_FINISHED
        assert fleet.cancel("j-never-was").outcome is Outcome.UNKNOWN
    assert sorted(outputs_under(storage, jobstate.read(storage, s, job_id).output_prefix)) == before
    assert cancel.read_marker(storage, s, job_id) is None and cancel.read_marker(storage, s, "j-never-was") is None


def replaced_pids(fleet_proc: Fleet, first: int) -> list[int] | None:
    pids = fleet_proc.ready_pids()
    return pids if pids and first not in pids else None


def reaped(fleet_proc: Fleet, pid: int) -> bool | None:
    return all(c["pid"] != pid for c in fleet_proc.status().get("consumers", [])) or None


def test_upload_log_closes_and_names_what_this_attempt_wrote(storage: Storage, make_bucket: Callable[..., str]) -> None:
    """What a cancel deletes: every output this attempt wrote, never a manifest; nothing is written after."""
    bucket = make_bucket()
    log = UploadLog(storage)
    log.put_bytes(bucket, "out/j/transcript.json", b"{}")
    log.upload_chunks(bucket, "out/j/transcript.srt", iter([b"1\n"]), content_type="text/plain")
    log.put_json(bucket, f"out/j/{MANIFEST_NAME}", {"job_id": "j"})
    assert log.get_bytes(bucket, "out/j/transcript.json") == b"{}"  # reads pass through
    assert log.close() == [(bucket, "out/j/transcript.json"), (bucket, "out/j/transcript.srt")]
    assert log.manifest_written
    with pytest.raises(JobCancelled):
        log.put_bytes(bucket, "out/j/late.txt", b"late")
    assert not storage.exists(bucket, "out/j/late.txt")
    log.reset()
    log.put_bytes(bucket, "out/k/transcript.json", b"{}")
    assert log.close() == [(bucket, "out/k/transcript.json")] and not log.manifest_written


# --- the supervisor: cancelled consumer replaced, dead letters announced by its sidecar -------------
def test_supervisor_replaces_a_cancelled_consumer_and_announces_dead_letters(
    consumer_settings: Callable[..., Settings], broker_for: Callable[[Settings], Broker], storage: Storage,
    long_audio: Path, tmp_path: Path,
) -> None:  # fmt: skip
    s = consumer_settings(consumer={"result_reuse": False}, jobs={"cancel_grace_s": 1.0},
                          amqp={"delivery_limit": 1}, supervisor={"consumers": 1, "announcer": True})  # fmt: skip
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "long.wav", long_audio)
    env = subprocess_env(s)
    env.pop("FLEET_CONSUMER__HEARTBEAT_FILE", None)
    fleet_proc = Fleet(tmp_path, env, [], None)
    try:
        (first,) = fleet_proc.wait_ready(1, timeout=180)
        with Client(s) as fleet:
            job_id = fleet.submit(audio, formats=["json"])
            broker.wait_event(lambda e: e.subject == job_id and e.data.stage == "decoded", 120)
            fleet.cancel(job_id)
            assert broker.final(job_id, 60).kind == "cancelled"
            replaced = wait_for(functools.partial(replaced_pids, fleet_proc, first), 180, what="a replacement")
            assert replaced and first not in replaced
            died = [x for x in fleet_proc.logs() if x.get("pid") == first and x.get("cause")]
            assert died and died[-1]["cause"] == "cancelled" and died[-1]["exit_code"] == exitcodes.JOB_CANCELLED
            assert fleet_proc.metric('fleet_consumer_restarts_total{cause="cancelled"}') == 1

            # a job that kills its consumer on every delivery (the OOM killer, simulated)
            oom = fleet.submit(audio, formats=["srt"], job_id="j-oom-every-time")  # not the cancelled job's id
            killed = 0
            while killed <= s.amqp.delivery_limit:
                pid: int = wait_for(lambda: next((c["pid"] for c in fleet_proc.status().get("consumers", [])
                                                  if c["state"] == "busy" and c["job_id"] == oom), None), 180,
                                    what="the consumer busy with the job")  # type: ignore[assignment]  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed += 1
                wait_for(functools.partial(reaped, fleet_proc, pid), 30, what="the killed consumer reaped")
            result = fleet.wait(oom, timeout_s=120)
        assert result.status == "failed" and result.error_code == "delivery_limit_exceeded", result
        time.sleep(2.0)
        failed = [e for e in broker.of(oom) if e.kind == "failed"]
        assert len(failed) == 1 and failed[0].source == events.ANNOUNCER_SOURCE
        st = jobstate.read(storage, s, oom)
        assert st.state is JobState.FAILED and st.error is not None and st.error.code == "delivery_limit_exceeded"
        assert any(x.get("event") == "announcer started" for x in fleet_proc.logs())
    finally:
        fleet_proc.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(AssertionError):
            assert fleet_proc.wait_exit(60) == 0
        fleet_proc.stop()
    print(json.dumps({"killed": killed}))
