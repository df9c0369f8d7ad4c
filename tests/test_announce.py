"""The announcer against a real delivery-limit dead-letter (real RabbitMQ, real S3, SIGKILLed consumers)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pika
import pytest

from funasr_fleet import announce, events, jobstate, topology
from funasr_fleet.client import Client, build_job
from funasr_fleet.consumer import dlq
from funasr_fleet.jobstatus import JobState
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

# A consumer that takes one job and is SIGKILLed holding it, as the OOM killer would do.
CRASHING_CONSUMER = textwrap.dedent(
    """
    import os, signal, sys, pika
    conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    for method, props, body in ch.consume(sys.argv[2], auto_ack=False, inactivity_timeout=3):
        if method is None:
            break
        print("got", (props.headers or {}).get("x-delivery-count"), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    print("none", flush=True)
    """
)


@pytest.fixture
def settings(fleet_settings: Callable[..., Settings]) -> Settings:
    return fleet_settings(with_engine=False, amqp={"delivery_limit": 2})


@pytest.fixture
def announcer(settings: Settings, storage: Storage) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=announce.run, args=(settings, stop), kwargs={"storage": storage}, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(15)


def crash_until_dead_lettered(settings: Settings) -> int:
    """Run crashing consumers until the broker dead-letters the job; returns how many were killed."""
    url, queue = settings.amqp.url.get_secret_value(), settings.amqp.jobs_queue
    for kills in range(settings.amqp.delivery_limit + 3):
        proc = subprocess.run([sys.executable, "-c", CRASHING_CONSUMER, url, queue], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        if proc.stdout.startswith("none"):
            return kills
        assert proc.returncode == -9, proc.stderr
    pytest.fail("the broker never dead-lettered the crash-looping job")


def test_crash_looping_job_ends_with_one_failed_event(settings: Settings, storage: Storage, announcer: None) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    ch = conn.channel()
    topology.declare(ch, settings.amqp, settings.consumer)
    tap = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(tap, settings.amqp.events_exchange, "job.#")
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/oom.wav", metadata={"ticket": "T-9"}, callback="https://hooks.example.com/x")
        kills = crash_until_dead_lettered(settings)
        result = fleet.wait(job_id, timeout_s=60)  # returns on the announced job.failed, not on its timeout
    assert kills == settings.amqp.delivery_limit + 1
    assert result.status == "failed" and result.error_code == "delivery_limit_exceeded"
    assert result.event is not None and result.event.source == events.ANNOUNCER_SOURCE
    error = result.event.data.error
    assert error is not None and error.model_extra == {"deliveries": kills}
    assert result.event.data.metadata == {"ticket": "T-9"}

    st = jobstate.read(storage, settings, job_id)
    assert st.state is JobState.FAILED and st.error is not None and st.error.code == "delivery_limit_exceeded"
    assert [e.state for e in st.history] == [JobState.QUEUED, JobState.FAILED]

    # exactly one event on the topic (the waiting client's reply_to got its own copy, same id)
    time.sleep(2)
    seen = []
    while True:
        method, props, body = ch.basic_get(tap, auto_ack=True)
        if method is None:
            break
        seen.append((method.routing_key, json.loads(body)["id"], (props.headers or {}).get(events.CALLBACK_HEADER)))
    conn.close()
    assert seen == [("job.failed", result.event.id, "https://hooks.example.com/x")]
    # the dead letter itself stays in the dead-letter queue for `dlq list|replay`
    (dead,) = dlq.list_dead(settings)
    assert dead.job_id == job_id and dead.reason == "delivery_limit"


def test_same_dead_letter_same_event_id_and_rejected_ones_ignored(settings: Settings) -> None:
    body = build_job("s3://calls/x.wav").to_body()
    death = [{"reason": b"delivery_limit", "queue": settings.amqp.jobs_queue, "count": 1, "time": "T1"}]
    a = announce.classify_dead_letter({"x-death": death, "x-delivery-count": 3}, body, "m1", settings)
    b = announce.classify_dead_letter({"x-death": death, "x-delivery-count": 3}, body, "m1", settings)
    assert a is not None and b is not None and a.event_id == b.event_id and a.deliveries == 3 and a.attempt == 1
    replayed = [{**death[0], "time": "T2"}]
    c = announce.classify_dead_letter({"x-death": replayed}, body, "m1", settings)
    assert c is not None and c.event_id != a.event_id
    rejected = [{"reason": "rejected", "queue": settings.amqp.jobs_queue, "count": 1, "time": "T1"}]
    assert announce.classify_dead_letter({"x-death": rejected}, body, "m1", settings) is None
    unreadable = announce.classify_dead_letter({"x-death": death}, b"\xff not json", None, settings)
    assert unreadable is not None and unreadable.job_id.startswith("unparsed-")


def test_dead_letter_of_a_job_that_succeeded_elsewhere_is_not_announced(settings: Settings, storage: Storage) -> None:
    job = build_job("s3://calls/dup.wav")
    jobstate.record(storage, settings, jobstate.Update(job_id=str(job.job_id), state=JobState.SUCCEEDED, by="c"))
    published: list[str] = []
    ann = announce.Announcer(settings, storage, lambda ex, key, body, props: published.append(key))
    death = [{"reason": "delivery_limit", "queue": settings.amqp.jobs_queue, "count": 1, "time": "T"}]
    props = pika.BasicProperties(headers={"x-death": death}, message_id=str(job.job_id))
    assert ann.on_dead_letter(props, job.to_body()) == "superseded" and published == []


def test_jobs_published_straight_to_amqp_read_queued(settings: Settings, storage: Storage, announcer: None) -> None:
    """An upstream service publishes a job body without the client: the announcer records it queued."""
    job = build_job("s3://calls/raw.wav", callback="https://hooks.example.com/raw")
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    ch = conn.channel()
    topology.declare(ch, settings.amqp, settings.consumer)
    ch.confirm_delivery()
    ch.basic_publish(settings.amqp.jobs_exchange, settings.amqp.jobs_routing_key, job.to_body(),
                     pika.BasicProperties(delivery_mode=2))  # fmt: skip
    ch.basic_publish(settings.amqp.jobs_exchange, settings.amqp.jobs_routing_key, b"not a job")
    conn.close()
    deadline = time.monotonic() + 30
    st = jobstate.read(storage, settings, str(job.job_id))
    while st.state is JobState.UNKNOWN and time.monotonic() < deadline:
        time.sleep(0.2)
        st = jobstate.read(storage, settings, str(job.job_id))
    assert st.state is JobState.QUEUED and st.callback == "https://hooks.example.com/raw"
    assert st.history[0].by is not None and st.history[0].by.startswith("announcer@")
    # a late copy never rewinds a job that started
    jobstate.record(storage, settings, jobstate.Update(job_id=str(job.job_id), state=JobState.RUNNING, by="c"))
    ann = announce.Announcer(settings, storage, lambda *a: None)
    assert ann.on_observed(pika.BasicProperties(), job.to_body()) == "known"
    assert jobstate.read(storage, settings, str(job.job_id)).state is JobState.RUNNING
