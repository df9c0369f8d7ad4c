"""Status by id and cancel, publisher side (real RabbitMQ, real S3, the real CLI); no consumer runs here.

What needs the consumer (running → cancelled inside a model call, status at each stage) is tested with
the consumer itself once it is wired (README: jobs-api, phase 2).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pika
import pytest

from funasr_fleet import cancel, events, jobstate, reconcile
from funasr_fleet.cancel import Outcome
from funasr_fleet.client import Client, build_job
from funasr_fleet.errors import BrokerUnavailable, CallbackNotAllowed
from funasr_fleet.jobstatus import JobState, Update
from funasr_fleet.manifest import manifest_key
from funasr_fleet.publisher import Publisher
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage
from funasr_fleet.waiting import EventWatcher
from tests.fixtures.services import subprocess_env


@pytest.fixture
def settings(fleet_settings: Callable[..., Settings]) -> Settings:
    return fleet_settings(with_engine=False)


def jobs_in_queue(settings: Settings) -> int:
    from funasr_fleet import topology

    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    try:
        ch = conn.channel()
        topology.declare(ch, settings.amqp, settings.consumer)
        return int(ch.queue_declare(settings.amqp.jobs_queue, passive=True).method.message_count)
    finally:
        conn.close()


def run_cli(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "funasr_fleet", *args], env=subprocess_env(settings),
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip


# --- status -----------------------------------------------------------------------------------------
def test_submitted_job_reads_queued_with_no_consumer(settings: Settings) -> None:
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/q.wav", output=f"s3://{settings.s3.results_bucket}/custom/q")
        st = fleet.status(job_id)
    assert st.state is JobState.QUEUED and st.attempt == 1 and st.run == 1
    assert st.input == "s3://calls/q.wav" and st.output_prefix == f"s3://{settings.s3.results_bucket}/custom/q"
    assert "queued" in st.times and st.history[0].by and st.history[0].by.startswith("publisher@")
    assert jobs_in_queue(settings) == 1
    shown = run_cli(settings, "status", job_id)
    assert shown.returncode == 0 and f"{job_id}: queued" in shown.stdout, shown.stderr
    as_json = run_cli(settings, "status", job_id, "--json")
    assert '"state": "queued"' in as_json.stdout
    unknown = run_cli(settings, "status", "j-never-seen")
    assert unknown.returncode == 4 and "j-never-seen: unknown" in unknown.stdout


def test_swept_jobs_read_queued(settings: Settings, storage: Storage) -> None:
    storage.put_bytes(settings.s3.inbox_bucket, "drop/a.wav", b"RIFF....")
    with Publisher(settings) as publisher:
        report = reconcile.sweep(settings, storage, publisher)
    (job_id,) = report.job_ids
    st = jobstate.read(storage, settings, job_id)
    assert st.state is JobState.QUEUED and st.input == f"s3://{settings.s3.inbox_bucket}/drop/a.wav"
    assert st.output_prefix == f"s3://{settings.s3.results_bucket}/{settings.s3.results_prefix}/drop/a.wav"


def test_unconfirmed_publish_reads_failed_and_resubmission_reopens(settings: Settings, storage: Storage) -> None:
    job = build_job("s3://calls/lost.wav")
    nowhere = settings.model_copy(update={"amqp": settings.amqp.model_copy(update={"jobs_routing_key": "nowhere"})})
    with Publisher(settings):
        pass
    with Publisher(nowhere, declare=False) as publisher, pytest.raises(BrokerUnavailable):
        publisher.publish(job)
    st = jobstate.read(storage, settings, str(job.job_id))
    assert st.state is JobState.FAILED and st.error is not None and st.error.code == "broker_unavailable"
    with Publisher(settings) as publisher:
        publisher.publish(job)
    st = jobstate.read(storage, settings, str(job.job_id))
    assert st.state is JobState.QUEUED and st.run == 2 and st.error is None


def test_client_refuses_a_callback_outside_the_allow_list_before_publishing(
    fleet_settings: Callable[..., Settings],
) -> None:
    s = fleet_settings(with_engine=False, webhooks={"allowed_hosts": ["hooks.example.com"]})
    with Client(s) as fleet, pytest.raises(CallbackNotAllowed):
        fleet.submit("s3://calls/x.wav", callback="https://evil.example.net/hook")
    assert jobs_in_queue(s) == 0


# --- cancel -----------------------------------------------------------------------------------------
def test_cancel_a_queued_job(settings: Settings, storage: Storage) -> None:
    seen: list[events.CloudEvent] = []
    with Client(settings) as fleet, EventWatcher(settings) as other:
        job_id = fleet.submit("s3://calls/mistake.wav", callback="https://hooks.example.com/x")
        answer = fleet.cancel(job_id, reason="wrong file")
        assert answer.outcome is Outcome.CANCELLED and answer.accepted
        assert answer.status.state is JobState.CANCELLED
        result = fleet.wait(job_id, timeout_s=10)
        assert result.status == "cancelled" and result.error_code == "job_cancelled" and not result.ok
        assert other.wait(job_id, timeout_s=10, progress=seen.append).status == "cancelled"
        again = fleet.cancel(job_id)
        assert again.outcome is Outcome.ALREADY_CANCELLED
    assert [e.kind for e in seen] == ["cancelled"]
    marker = cancel.read_marker(storage, settings, job_id)
    assert marker is not None and marker["reason"] == "wrong file"
    assert result.event is not None and result.event.id == events.cancelled_event_id(job_id, marker["id"])
    assert result.event.source == events.CANCEL_SOURCE
    st = jobstate.read(storage, settings, job_id)
    assert st.state is JobState.CANCELLED and "cancelled" in st.times and st.callback == "https://hooks.example.com/x"
    # the message is still queued (a consumer drops it when it gets there); nothing was written as output
    assert jobs_in_queue(settings) == 1
    out = st.output_prefix or ""
    bucket, _, prefix = out.removeprefix("s3://").partition("/")
    assert not list(storage.list_objects(bucket, prefix))


def test_cancelled_event_carries_the_callback_header(settings: Settings) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    ch = conn.channel()
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/h.wav", callback="https://hooks.example.com/h")
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(q, settings.amqp.events_exchange, "job.cancelled")
        fleet.cancel(job_id)
    got = None
    for _ in range(50):
        method, props, _ = ch.basic_get(q, auto_ack=True)
        if method is not None:
            got = props
            break
        time.sleep(0.1)
    conn.close()
    assert got is not None and got.headers[events.CALLBACK_HEADER] == "https://hooks.example.com/h"


def test_cancel_a_running_job_broadcasts_to_consumers(settings: Settings, storage: Storage) -> None:
    """A job a consumer recorded as running: the marker is left, the status stays running, the broadcast arrives."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    ch = conn.channel()
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/long.wav")
        listener = cancel.bind_control_listener(ch, settings)
        jobstate.record(
            storage, settings, Update(job_id=job_id, state=JobState.RUNNING, by="consumer", stage="decoded")
        )
        answer = fleet.cancel(job_id)
        assert answer.outcome is Outcome.CANCELLING and answer.accepted
    broadcast = None
    for _ in range(50):
        method, _props, raw = ch.basic_get(listener, auto_ack=True)
        if method is not None:
            broadcast = cancel.parse_control(raw)
            break
        time.sleep(0.1)
    conn.close()
    marker = cancel.read_marker(storage, settings, job_id)
    assert marker is not None and broadcast == (job_id, marker["id"])
    st = jobstate.read(storage, settings, job_id)
    assert st.state is JobState.RUNNING and st.cancel_requested_at == marker["requested_at"]
    # the consumer's own cancelled write then wins, and a duplicate delivery's late running does not
    jobstate.record(storage, settings, Update(job_id=job_id, state=JobState.CANCELLED, by="consumer"))
    assert not jobstate.record(storage, settings, Update(job_id=job_id, state=JobState.RUNNING, by="c2")).applied


@pytest.mark.parametrize("final", [JobState.SUCCEEDED, JobState.FAILED])
def test_cancel_a_finished_job_changes_nothing(settings: Settings, storage: Storage, final: JobState) -> None:
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/done.wav")
        jobstate.record(storage, settings, Update(job_id=job_id, state=final, by="consumer"))
        answer = fleet.cancel(job_id)
    assert answer.outcome is Outcome.ALREADY_FINISHED and not answer.accepted
    assert final.value in answer.message
    assert cancel.read_marker(storage, settings, job_id) is None
    assert jobstate.read(storage, settings, job_id).state is final


def test_cancel_a_job_known_only_by_its_manifest(settings: Settings, storage: Storage) -> None:
    s3 = settings.s3
    storage.put_json(s3.results_bucket, manifest_key(f"{s3.results_prefix}/j-old"), {"job_id": "j-old", "outputs": []})
    with Client(settings) as fleet:
        assert fleet.cancel("j-old").outcome is Outcome.ALREADY_FINISHED


def test_cancel_unknown_and_forced(settings: Settings, storage: Storage) -> None:
    with Client(settings) as fleet:
        answer = fleet.cancel("j-nobody")
        assert answer.outcome is Outcome.UNKNOWN and not answer.accepted
        assert cancel.read_marker(storage, settings, "j-nobody") is None
        forced = fleet.cancel("j-nobody", force=True)
    assert forced.outcome is Outcome.REQUESTED
    assert cancel.read_marker(storage, settings, "j-nobody") is not None
    assert jobstate.read(storage, settings, "j-nobody").cancel_requested_at


def test_resubmitting_a_cancelled_job_starts_a_new_run(settings: Settings, storage: Storage) -> None:
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/again.wav")
        fleet.cancel(job_id)
        assert fleet.submit("s3://calls/again.wav") == job_id
        st = fleet.status(job_id)
    assert st.state is JobState.QUEUED and st.run == 2
    assert cancel.read_marker(storage, settings, job_id) is None


def test_cli_cancel_exit_codes_and_submit_wait_returns_on_cancel(settings: Settings) -> None:
    waiting = subprocess.Popen(
        [sys.executable, "-m", "funasr_fleet", "submit", "s3://calls/waited.wav", "--wait", "--no-progress",
         "--timeout", "60"],
        env=subprocess_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert waiting.stdout is not None
    job_id = waiting.stdout.readline().strip()
    assert job_id.startswith("j-")
    done = run_cli(settings, "cancel", job_id, "--reason", "test")
    assert done.returncode == 0 and f"{job_id}: cancelled" in done.stdout, done.stderr
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 3, err
    assert out.strip().splitlines()[-1] == "cancelled"
    again = run_cli(settings, "cancel", job_id, "--json")
    assert again.returncode == 0 and '"outcome": "already_cancelled"' in again.stdout
    assert run_cli(settings, "cancel", "j-unknown-id").returncode == 4


def test_status_survives_parallel_publishers(settings: Settings, storage: Storage) -> None:
    """Four publishers submit the same job at once: one queued status, one run, a message per publish."""
    job = build_job("s3://calls/same.wav")
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            with Publisher(settings) as publisher:
                publisher.publish(job)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = jobstate.read(storage, settings, str(job.job_id))
    assert st.state is JobState.QUEUED and st.run == 1 and len(st.history) == 1
