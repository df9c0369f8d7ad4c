"""Consumer resilience against real services: S3 outage, long jobs vs AMQP heartbeats, the broker's
consumer_timeout, SIGTERM during a job, the job deadline, boot failures.

Long jobs use a few minutes of synthetic speech: the tiny engine needs several seconds for it,
which is many AMQP heartbeat intervals (the tests set ``amqp.heartbeat_s`` to 1).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from funasr_fleet import exitcodes
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage
from tests.fixtures.audio import synth_speech
from tests.fixtures.services import subprocess_env
from tests.test_consumer import (  # noqa: F401 - fixtures re-exported for this module
    Broker,
    broker_for,
    consumer_settings,
    consumer_thread,
    heartbeat_state,
    job_body,
    upload,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[1]
LONG_AUDIO_S = 300.0


@pytest.fixture(scope="module")
def long_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~5 minutes of two-voice speech: several seconds of work for the tiny engine."""
    return synth_speech(tmp_path_factory.mktemp("long") / "long.wav", LONG_AUDIO_S)


def _rabbit_env(key: str, value: int) -> None:
    subprocess.run(
        ["rabbitmqctl", "eval", f"application:set_env(rabbit, {key}, {value})."],
        check=True,
        capture_output=True,
        timeout=60,
    )


class ConsumerProcess:
    """``python -m funasr_fleet consume`` as a real subprocess."""

    def __init__(self, settings: Settings, log_path: Path, **extra_env: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "funasr_fleet", "consume"],
            env=subprocess_env(settings, **extra_env),
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        assert self.settings.consumer.heartbeat_file is not None
        wait_ready(self.settings.consumer.heartbeat_file, alive=lambda: self.proc.poll() is None)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    made: list[ConsumerProcess] = []

    def make(settings: Settings, **extra_env: str) -> ConsumerProcess:
        p = ConsumerProcess(settings, tmp_path / f"consumer-{len(made)}.log", **extra_env)
        made.append(p)
        return p

    yield make
    for p in made:
        p.kill()


def test_s3_outage_is_retried_until_it_succeeds(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    own_s3_server: Any,
    audio_dir: Path,
    unique: str,
) -> None:
    s3 = {
        **own_s3_server.settings(connect_timeout_s=1.0, read_timeout_s=5.0, max_attempts=1).model_dump(
            exclude_none=True
        ),
        "access_key": own_s3_server.access_key,
        "secret_key": own_s3_server.secret_key,
        "results_bucket": f"t-{unique}-own-results",
        "inbox_bucket": f"t-{unique}-own-inbox",
    }
    s = consumer_settings(
        s3=s3, consumer={"retry_base_delay_s": 1.0, "retry_max_delay_s": 4.0, "retry_max_attempts": 10}
    )
    own = Storage(s.s3)
    own.ensure_bucket(s.s3.results_bucket)
    own.ensure_bucket(s.s3.inbox_bucket)
    audio = upload(own, s.s3.inbox_bucket, "dialogue.wav", audio_dir / "dialogue.wav")
    broker = broker_for(s)
    with consumer_thread(s):
        own_s3_server.stop()
        restart = threading.Timer(10.0, own_s3_server.restart)
        restart.start()
        try:
            broker.publish(job_body(audio, "outage-1", formats=["json"]))
            retry = broker.wait_event(lambda e: e.subject == "outage-1" and e.data.stage == "retrying", 60)
            assert retry.data.error is not None and retry.data.error.code == "storage_unavailable"
            final = broker.final("outage-1", timeout=90)
        finally:
            restart.join()
    assert final.kind == "succeeded", final.data.error
    assert final.data.attempt >= 2
    assert own.exists(*final.data.outputs[0].removeprefix("s3://").split("/", 1))  # type: ignore[index]
    assert broker.count(s.amqp.jobs_queue) == 0 and broker.count(s.amqp.dead_letter_queue) == 0


def test_long_job_keeps_heartbeats_and_sigterm_finishes_it(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    long_audio: Path,
    spawn: Callable[..., ConsumerProcess],
) -> None:
    s = consumer_settings(amqp={"heartbeat_s": 1}, consumer={"result_reuse": False})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "long.wav", long_audio)
    consumer = spawn(s)
    consumer.wait_ready()
    hb = s.consumer.heartbeat_file
    assert hb is not None
    broker.publish(job_body(audio, "long-1", formats=["json", "srt"]))
    broker.wait_event(lambda e: e.subject == "long-1" and e.data.stage == "decoded", 60)
    # while the model runs, the connection loop keeps beating (file rewritten, state busy)
    beats = set()
    for _ in range(8):
        state = heartbeat_state(hb)
        if state:
            beats.add((state["state"], round(state["ts"], 1)))
        time.sleep(0.3)
    assert {b[0] for b in beats} == {"busy"}, beats
    assert len(beats) >= 3, beats
    time.sleep(2.5)  # > 2 heartbeat intervals of pure inference
    consumer.proc.send_signal(signal.SIGTERM)
    broker.publish(job_body(audio, "long-2", formats=["json"]))  # must NOT be taken after SIGTERM
    code = consumer.wait(180)
    assert code == 0, consumer.output()
    final = broker.final("long-1", timeout=10)
    assert final.kind == "succeeded", final.data.error
    assert final.data.attempt == 1
    assert [e.kind for e in broker.of("long-1")].count("started") == 1  # no redelivery: the ack held
    assert not broker.of("long-2")
    assert broker.count(s.amqp.jobs_queue) == 1  # long-2 waits for the next consumer
    assert "missed heartbeats" not in consumer.output().lower()

    assert (heartbeat_state(hb) or {}).get("state") == "draining"

    # a second signal abandons the running job: requeued at once, exit 0 without waiting
    quitter = spawn(s)
    broker.wait_event(lambda e: e.subject == "long-2" and e.data.stage == "decoded", 120)
    quitter.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    quitter.proc.send_signal(signal.SIGTERM)
    assert quitter.wait(60) == 0, quitter.output()
    assert not [e for e in broker.of("long-2") if e.final]
    assert "requeueing the running job" in quitter.output()

    # a consumer that dies mid-job: the broker redelivers the job to the next one
    doomed = spawn(s)
    before = {e.id for e in broker.of("long-2")}
    broker.wait_event(lambda e: e.subject == "long-2" and e.data.stage == "decoded" and e.id not in before, 120)
    doomed.proc.kill()
    doomed.wait(30)
    with consumer_thread(s):
        final2 = broker.final("long-2", timeout=120)
    assert final2.kind == "succeeded", final2.data.error
    assert [e.kind for e in broker.of("long-2")].count("started") == 3
    assert broker.count(s.amqp.jobs_queue) == 0


def test_consumer_timeout_is_survived(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    long_audio: Path,
) -> None:
    """The broker closes the consume channel under a long job; the job still commits, and its
    redelivered copy is answered from the manifest (one transcription, queue empty)."""
    s = consumer_settings(consumer={"result_reuse": False})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "long.wav", long_audio)
    restored = threading.Event()

    def short_timeout() -> None:
        # consumer_timeout is read when a channel opens: only this consumer's first channels get it
        _rabbit_env("channel_tick_interval", 500)
        _rabbit_env("consumer_timeout", 1500)

    def restore_timeout() -> None:
        if not restored.is_set():
            _rabbit_env("consumer_timeout", 1800000)
            restored.set()

    try:
        with consumer_thread(s, before_connect=short_timeout) as loop:
            restore_timeout()
            generation = loop.generation
            broker.publish(job_body(audio, "ct-1", formats=["json"]))
            first = broker.final("ct-1", timeout=120)
            assert first.kind == "succeeded", first.data.error
            assert loop.generation > generation, "the consume channel was expected to be closed by the broker"
            second = broker.wait_event(lambda e: e.subject == "ct-1" and e.final and e.id != first.id, 60)
            end = time.monotonic() + 10
            while broker.count(s.amqp.jobs_queue) and time.monotonic() < end:
                time.sleep(0.2)
    finally:
        restore_timeout()
        _rabbit_env("channel_tick_interval", 60000)
    assert second.kind == "succeeded" and second.data.reused == "manifest"
    assert second.data.outputs == first.data.outputs
    assert [e.data.stage for e in broker.of("ct-1")].count("transcribed") == 1
    assert broker.count(s.amqp.jobs_queue) == 0


def test_deadline_fails_the_job_and_exits_4(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    storage: Storage,
    long_audio: Path,
    spawn: Callable[..., ConsumerProcess],
) -> None:
    s = consumer_settings(consumer={"deadline_base_s": 1.0, "deadline_factor": 0.0, "retry_max_attempts": 1})
    broker = broker_for(s)
    audio = upload(storage, s.s3.inbox_bucket, "long.wav", long_audio)
    consumer = spawn(s)
    consumer.wait_ready()
    broker.publish(job_body(audio, "slow-1", formats=["json"]))
    code = consumer.wait(120)
    assert code == exitcodes.JOB_TIMEOUT, consumer.output()
    final = broker.final("slow-1", timeout=10)
    assert final.kind == "failed" and final.data.error is not None and final.data.error.code == "timeout"
    dead = broker.take_all(s.amqp.dead_letter_queue)
    assert len(dead) == 1


def test_boot_failures_exit_3_or_78_and_say_why(
    consumer_settings: Callable[..., Settings], spawn: Callable[..., ConsumerProcess], tmp_path: Path
) -> None:
    s = consumer_settings()
    bad_settings = spawn(s, FLEET_AMQP__PREFETCH="0")
    assert bad_settings.wait(60) == exitcodes.CONFIG, bad_settings.output()
    assert "prefetch" in bad_settings.output()

    s2 = consumer_settings(amqp={"url": "amqp://guest:guest@127.0.0.1:1/%2F"}, consumer={"boot_timeout_s": 1.0})
    no_broker = spawn(s2)
    assert no_broker.wait(120) == exitcodes.BOOT_FAILURE, no_broker.output()
    assert s2.consumer.heartbeat_file is not None
    state = heartbeat_state(s2.consumer.heartbeat_file)
    assert state is not None and state["state"] == "booting" and "broker unreachable" in state["error"]
    assert "boot failed" in no_broker.output()
    assert "guest:guest" not in no_broker.output()  # the URL's password never reaches a log

    orphan = spawn(s, FLEET_SUPERVISOR_PID="1")  # "the supervisor" is not our parent: orphaned
    assert orphan.wait(60) == exitcodes.ORPHANED, orphan.output()


def test_transient_failures_dead_letter_when_attempts_run_out(
    consumer_settings: Callable[..., Settings],
    broker_for: Callable[[Settings], Broker],
    own_s3_server: Any,
    unique: str,
) -> None:
    s3 = {
        **own_s3_server.settings(connect_timeout_s=1.0, read_timeout_s=5.0, max_attempts=1).model_dump(
            exclude_none=True
        ),
        "access_key": own_s3_server.access_key,
        "secret_key": own_s3_server.secret_key,
        "results_bucket": f"t-{unique}-gone-results",
        "inbox_bucket": f"t-{unique}-gone-inbox",
    }
    s = consumer_settings(
        s3=s3, consumer={"retry_base_delay_s": 0.3, "retry_max_delay_s": 0.6, "retry_max_attempts": 3}
    )
    broker = broker_for(s)
    with consumer_thread(s):
        own_s3_server.stop()  # and never back
        broker.publish(job_body(f"s3://{s.s3.inbox_bucket}/a.wav", "gone-1"))
        final = broker.final("gone-1", timeout=60)
    assert final.kind == "failed" and final.data.error is not None
    assert final.data.error.code == "storage_unavailable"
    assert final.data.attempt == 3
    retries = [e for e in broker.of("gone-1") if e.data.stage == "retrying"]
    assert [e.data.attempt for e in retries] == [1, 2]
    dead = broker.take_all(s.amqp.dead_letter_queue)
    assert len(dead) == 1
    props, _ = dead[0]
    assert props.headers["x-fleet-attempt"] == 3 and props.headers["x-fleet-retry-reason"] == "storage_unavailable"
    assert broker.count(s.amqp.jobs_queue) == 0
