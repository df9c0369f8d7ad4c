"""The submit/wait client and `funasr-fleet submit`, against the real broker and S3.

A small stand-in consumer (a thread answering jobs with events) covers the client's own contract
quickly; the end-to-end tests run the real consumer (tiny models) and the real CLI.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from funasr_fleet import client, events, topology
from funasr_fleet.client import Client, JobResult
from funasr_fleet.errors import BrokerUnavailable, UnsupportedFormat
from funasr_fleet.jobs import JobRequest
from funasr_fleet.manifest import MANIFEST_NAME
from funasr_fleet.progressbar import ProgressBar
from funasr_fleet.publisher import Publisher
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage
from funasr_fleet.waiting import EventWatcher
from tests.fixtures.services import subprocess_env

SOURCE = "/funasr-fleet/consumers/stand-in"


class StandIn:
    """Answers each job like the consumer would: started, progress, then the final event (topic + reply_to)."""

    def __init__(self, settings: Settings, outcome: Callable[[JobRequest], str] = lambda job: "succeeded") -> None:
        self.settings = settings
        self.outcome = outcome
        self.received: list[tuple[pika.BasicProperties, JobRequest]] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "stand-in consumer did not start"

    def _run(self) -> None:
        conn = pika.BlockingConnection(pika.URLParameters(self.settings.amqp.url.get_secret_value()))
        ch = conn.channel()
        topology.declare(ch, self.settings.amqp, self.settings.consumer)
        self._ready.set()
        try:
            while not self._stop.is_set():
                method, props, body = ch.basic_get(self.settings.amqp.jobs_queue, auto_ack=True)
                if method is None:
                    conn.sleep(0.05)
                    continue
                job = JobRequest.model_validate_json(body)
                self.received.append((props, job))
                self._answer(ch, props, job)
        finally:
            conn.close()

    def _answer(self, ch: Any, props: pika.BasicProperties, job: JobRequest) -> None:
        job_id, meta, ex = str(job.job_id), job.metadata, self.settings.amqp.events_exchange

        def send(event: events.CloudEvent, reply: bool = False) -> None:
            body = events.encode(event)
            ch.basic_publish(ex, events.routing_key(event.kind), body)
            if reply and props.reply_to:
                ch.basic_publish("", props.reply_to, body, pika.BasicProperties(correlation_id=props.correlation_id))

        send(events.started(job_id, SOURCE, attempt=1, metadata=meta, input_uri=job.audio.uri))
        for stage in ("downloaded", "decoded", "transcribed", "uploaded"):
            send(events.progress(job_id, SOURCE, stage, attempt=1, metadata=meta))  # type: ignore[arg-type]
        outcome = self.outcome(job)
        if outcome == "silent":
            return
        if outcome in ("succeeded", "warned"):
            out = job.output_location(self.settings)
            uris = [f"s3://{out.bucket}/{out.key}/transcript.{f}" for f in job.effective_formats(self.settings)]
            uris.append(f"s3://{out.bucket}/{out.key}/{MANIFEST_NAME}")
            warnings = [events.WarningInfo(code="speaker_count_not_met", message="asked for 2-3; found 1")]
            data = events.EventData(job_id=job_id, status="succeeded", metadata=meta, outputs=uris,
                                    warnings=warnings if outcome == "warned" else [])  # fmt: skip
            send(events.succeeded(data, SOURCE), reply=True)
        else:
            send(
                events.failed(job_id, SOURCE, code=outcome, message="stand-in says no", attempt=1, metadata=meta),
                reply=True,
            )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def settings(fleet_settings: Callable[..., Settings]) -> Settings:
    return fleet_settings(with_engine=False)


@pytest.fixture
def stand_in(settings: Settings) -> Iterator[Callable[..., StandIn]]:
    made: list[StandIn] = []

    def make(outcome: Callable[[JobRequest], str] = lambda job: "succeeded") -> StandIn:
        s = StandIn(settings, outcome)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_submit_and_wait(settings: Settings, stand_in: Callable[..., StandIn]) -> None:
    worker = stand_in()
    seen: list[str] = []
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/2026/a.wav", formats=["json", "srt"], metadata={"ticket": "T-1"})
        result = fleet.wait(job_id, timeout_s=30, progress=lambda e: seen.append(e.kind))
        assert result.ok and result.status == "succeeded"
        assert result.job_id == job_id
        out = f"s3://{settings.s3.results_bucket}/{settings.s3.results_prefix}/{job_id}"
        assert result.outputs == [f"{out}/transcript.json", f"{out}/transcript.srt", f"{out}/{MANIFEST_NAME}"]
        assert result.data is not None and result.data.metadata == {"ticket": "T-1"}
        # started + 4 progress + ONE final (the reply_to copy of the final event is deduplicated)
        assert seen == ["started", "progress", "progress", "progress", "progress", "succeeded"]
        props, job = worker.received[0]
        assert props.reply_to == fleet.watcher.queue
        assert props.delivery_mode == 2 and props.message_id == job_id and props.correlation_id == job_id
        assert props.timestamp and abs(props.timestamp - time.time()) < 60
        assert job.audio.uri == "s3://calls/2026/a.wav"


def test_same_request_same_job_id(settings: Settings, stand_in: Callable[..., StandIn]) -> None:
    stand_in()
    with Client(settings) as fleet:
        first = fleet.submit("s3://calls/x.wav", formats=["srt"])
        second = fleet.submit("s3://calls/x.wav", formats=["srt"], metadata={"different": "metadata"})
        other = fleet.submit("s3://calls/x.wav", formats=["vtt"])
        assert first == second != other
        assert fleet.wait(other, timeout_s=30).ok


def test_failed_job_and_wait_timeout(settings: Settings, stand_in: Callable[..., StandIn]) -> None:
    stand_in(lambda job: "silent" if job.audio.key == "silent.wav" else "undecodable_audio")
    with Client(settings) as fleet:
        bad = fleet.wait(fleet.submit("s3://calls/bad.wav"), timeout_s=30)
        assert not bad.ok and bad.status == "failed"
        assert bad.error_code == "undecodable_audio" and bad.error_message == "stand-in says no"
        started = time.monotonic()
        slow = fleet.wait(fleet.submit("s3://calls/silent.wav"), timeout_s=1.5)
        assert slow.status == "timeout" and slow.error_code == client.WAIT_TIMEOUT_CODE
        assert time.monotonic() - started < 15


def test_wait_survives_a_lost_connection(
    settings: Settings, storage: Storage, stand_in: Callable[..., StandIn]
) -> None:
    stand_in(lambda job: "silent")  # the final event never comes: only the manifest can tell
    with Client(settings) as fleet:
        job_id = fleet.submit("s3://calls/lost.wav")
        out = fleet.output_location(job_id)
        assert out is not None
        storage.put_json(out.bucket, f"{out.key}/{MANIFEST_NAME}", {"job_id": job_id, "outputs": ["s3://x/y"]})
        fleet.watcher.connection.close()  # e.g. heartbeats missed while the caller was busy
        result = fleet.wait(job_id, timeout_s=20)
        assert result.ok and result.outputs == ["s3://x/y"]
        assert fleet.wait(fleet.submit("s3://calls/next.wav"), timeout_s=1).status == "timeout"  # usable again


def test_publisher_recovers_from_a_dropped_connection(settings: Settings, stand_in: Callable[..., StandIn]) -> None:
    import socket

    worker = stand_in()
    with Publisher(settings) as publisher:
        publisher(client.build_job("s3://calls/one.wav"))
        try:  # what a broker does to a connection that missed its heartbeats
            sock = publisher._connection._impl._transport._sock  # type: ignore[union-attr]
        except AttributeError:
            pytest.skip("pika internals changed")
        sock.shutdown(socket.SHUT_RDWR)
        publisher(client.build_job("s3://calls/two.wav"))
    deadline = time.monotonic() + 20
    while len(worker.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(job.audio.key for _, job in worker.received) == ["one.wav", "two.wav"]


def test_module_level_submit_and_wait_from_manifest(settings: Settings, storage: Storage) -> None:
    # A job finished before anyone waited: wait() answers from its manifest.
    job_id = client.submit(settings, "s3://calls/done.wav")
    out = f"{settings.s3.results_prefix}/{job_id}"
    outputs = [f"s3://{settings.s3.results_bucket}/{out}/transcript.json"]
    storage.put_json(settings.s3.results_bucket, f"{out}/{MANIFEST_NAME}", {"job_id": job_id, "outputs": outputs})
    result = client.wait(settings, job_id, timeout_s=5)
    assert result == JobResult(job_id=job_id, status="succeeded", outputs=outputs)


def test_invalid_requests_fail_before_publishing(settings: Settings) -> None:
    with pytest.raises(UnsupportedFormat):
        client.build_job("s3://calls/x.wav", formats=["docx"])


def test_broker_unreachable_is_transient(settings: Settings) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = settings.model_copy(
        update={
            "amqp": settings.amqp.model_copy(update={"url": pika_url(f"amqp://guest:secretpw@127.0.0.1:{port}/%2F")})
        }
    )
    with pytest.raises(BrokerUnavailable) as err:
        client.submit(dead, "s3://calls/x.wav")
    assert not err.value.permanent
    assert "secretpw" not in str(err.value)


def pika_url(url: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(url)


def test_progress_bar_lines() -> None:
    stream = io.StringIO()
    bar = ProgressBar("j-1", stream)
    bar.update(events.started("j-1", SOURCE, attempt=1, metadata={}, input_uri=None))
    bar.update(events.progress("j-1", SOURCE, "transcribed", attempt=1, metadata={}))
    bar.update(events.progress("j-1", SOURCE, "transcribed", attempt=1, metadata={}))  # same line: not repeated
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("j-1: [") and "80.0% transcribed" in lines[1]


def test_watcher_sees_events_published_after_it_binds(settings: Settings) -> None:
    with EventWatcher(settings) as watcher:
        conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
        ch = conn.channel()
        data = events.EventData(job_id="j-2", status="succeeded", outputs=["s3://b/k"])
        ch.basic_publish(settings.amqp.events_exchange, "job.succeeded", events.encode(events.succeeded(data, SOURCE)))
        conn.close()
        assert watcher.wait("j-2", timeout_s=10).outputs == ["s3://b/k"]


# --- end to end: the real consumer, the real CLI ---------------------------------------------------
@pytest.fixture
def real_settings(fleet_settings: Callable[..., Settings], engine_env: dict[str, str], tmp_path: Path) -> Settings:
    return fleet_settings(
        with_engine=True,
        consumer={
            "heartbeat_file": str(tmp_path / f"hb-{uuid.uuid4().hex[:6]}.json"),
            "retry_base_delay_s": 0.5,
            "retry_max_delay_s": 1.0,
            "retry_max_attempts": 2,
        },
    )


def run_cli(settings: Settings, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "funasr_fleet", *args],
        env=subprocess_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_submit_passes_job_options_and_prints_warnings(
    settings: Settings, stand_in: Callable[..., StandIn]
) -> None:
    worker = stand_in(lambda job: "warned")
    proc = run_cli(settings, "submit", "s3://calls/2026/b.wav", "--wait", "--no-progress", "--timeout", "60",
                   "--channels", "split", "--min-speakers", "2", "--max-speakers", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]  # a warning is not a failure
    assert "warning speaker_count_not_met: asked for 2-3; found 1" in proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith(MANIFEST_NAME)  # stdout contract unchanged
    options = worker.received[0][1].options
    assert (options.channels, options.min_speakers, options.max_speakers, options.num_speakers) == ("split", 2, 3, None)
    bad = run_cli(settings, "submit", "s3://calls/2026/b.wav", "--num-speakers", "2", "--max-speakers", "3")
    assert bad.returncode == 1 and bad.stdout.strip() == "failed schema_invalid" and "num_speakers" in bad.stderr
    assert len(worker.received) == 1  # the invalid request was never published


def test_cli_submit_wait_upload_and_failure_with_the_real_consumer(
    real_settings: Settings, storage: Storage, audio_dir: Path
) -> None:
    from tests.test_consumer import consumer_thread

    s = real_settings
    storage.put_bytes(s.s3.inbox_bucket, "cli/dialogue.wav", (audio_dir / "dialogue.wav").read_bytes())
    storage.put_bytes(s.s3.inbox_bucket, "cli/not_audio.wav", (audio_dir / "not_audio.wav").read_bytes())
    with consumer_thread(s):
        ok = run_cli(s, "submit", f"s3://{s.s3.inbox_bucket}/cli/dialogue.wav", "--wait", "--timeout", "150",
                     "--formats", "json,srt", "vtt")  # fmt: skip
        assert ok.returncode == 0, ok.stderr[-3000:]
        lines = ok.stdout.strip().splitlines()
        uris = lines[1:]
        assert [u.rsplit("/", 1)[1] for u in uris] == [
            "transcript.json",
            "transcript.srt",
            "transcript.vtt",
            MANIFEST_NAME,
        ]
        for uri in uris:
            bucket, _, key = uri.removeprefix("s3://").partition("/")
            assert storage.exists(bucket, key), uri
        assert "%" in ok.stderr  # the progress bar

        up = run_cli(
            s, "submit", str(audio_dir / "dialogue.wav"), "--upload", "--wait", "--no-progress", "--timeout", "150"
        )
        assert up.returncode == 0, up.stderr[-3000:]
        up_uris = [line for line in up.stdout.splitlines() if line.startswith("s3://")]
        assert up_uris[-1].endswith(MANIFEST_NAME)
        # The uploaded object sits in the inbox and its job is the bucket-drop job: the sweep skips it.
        from funasr_fleet import reconcile

        report = reconcile.sweep(s, storage, lambda job: pytest.fail(f"sweep re-enqueued {job.audio.key}"),
                              objects=[o for o in storage.list_objects(s.s3.inbox_bucket, "") if "dialogue" in o.key and not o.key.startswith("cli/")])  # fmt: skip
        assert report.done == 1

        bad = run_cli(s, "submit", f"s3://{s.s3.inbox_bucket}/cli/not_audio.wav", "--wait", "--timeout", "150")
        assert bad.returncode == 1, bad.stderr[-3000:]
        assert bad.stdout.strip().splitlines()[-1] == "failed undecodable_audio"

        nowait = run_cli(s, "submit", f"s3://{s.s3.inbox_bucket}/cli/missing.wav")
        assert nowait.returncode == 0 and nowait.stdout.strip().startswith("j-")
