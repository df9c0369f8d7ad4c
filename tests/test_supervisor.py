"""The supervisor as a real process: spawn, reap, restart, hung detection, halts, drain, rolling, HTTP.

The first group drives `funasr-fleet supervise` with a stand-in consumer (tests/supervisor_harness.py)
so the mechanics take seconds; the end-to-end group at the bottom runs the real consumer against
the real RabbitMQ and SeaweedFS.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from funasr_fleet import exitcodes
from tests.supervisor_harness import STANDIN, Fleet, pid_alive, wait_for

FAST = {
    "FLEET_SUPERVISOR__HEARTBEAT_TIMEOUT_S": "2",
    "FLEET_SUPERVISOR__BOOT_TIMEOUT_S": "4",
    "FLEET_SUPERVISOR__ABORT_GRACE_S": "1",
    "FLEET_SUPERVISOR__RESTART_BACKOFF_BASE_S": "0.2",
    "FLEET_SUPERVISOR__RESTART_BACKOFF_MAX_S": "1",
    "FLEET_SUPERVISOR__GRACE_PERIOD_S": "15",
    "FLEET_SUPERVISOR__MAX_BOOT_FAILURES": "3",
}


@pytest.fixture
def standin(tmp_path: Path) -> list[str]:
    path = tmp_path / "standin_consumer.py"
    path.write_text(STANDIN)
    return [sys.executable, str(path)]


@pytest.fixture
def fleets(tmp_path: Path) -> Iterator[list[Fleet]]:
    made: list[Fleet] = []
    yield made
    for fleet in made:
        fleet.stop()


@pytest.fixture
def start(tmp_path: Path, standin: list[str], fleets: list[Fleet]):  # type: ignore[no-untyped-def]
    def _start(*args: str, command: list[str] | None = None, **env: str) -> Fleet:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "STANDIN_"))}
        full_env.update(FAST)
        full_env["STANDIN_JOURNAL"] = str(tmp_path / "journal.txt")
        full_env.update(env)
        fleet = Fleet(tmp_path, full_env, list(args), command if command is not None else standin)
        fleets.append(fleet)
        return fleet

    return _start


def journal(tmp_path: Path) -> list[tuple[int, str]]:
    path = tmp_path / "journal.txt"
    if not path.exists():
        return []
    return [(int(p), e) for p, e in (line.split() for line in path.read_text().splitlines())]


# --- stand-in consumer: arbiter mechanics ------------------------------------------------------


def test_spawn_ready_threads_and_drain(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "2", "--threads", "1", STANDIN_BOOT_S="1.0", STANDIN_DRAIN_S="1.0")
    wait_for(lambda: r if (r := fleet.get("/healthz"))[0] == 200 else None, 15, what="healthz")
    assert fleet.get("/readyz")[0] == 503  # consumers still "loading their model"
    pids = fleet.wait_ready(2)
    assert fleet.get("/readyz")[0] == 200
    assert fleet.metric("fleet_consumers_alive") == 2
    # each consumer got its own thread budget and the OpenMP variables
    hb_dir = next((tmp_path / "state").glob("run-*/heartbeats"))
    import json

    bodies = [json.loads(p.read_text()) for p in hb_dir.glob("*.json")]
    assert {(b["threads"], b["omp"]) for b in bodies} == {("1", "1")}
    # the supervisor process has no torch mapped
    maps = Path(f"/proc/{fleet.proc.pid}/maps").read_text()
    assert "libtorch" not in maps

    t0 = time.monotonic()
    fleet.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: fleet.get("/readyz")[0] in (0, 503), 5, what="readyz off while draining")
    assert fleet.wait_exit(15) == 0
    assert time.monotonic() - t0 >= 0.9  # waited for the "jobs" to finish
    events = journal(tmp_path)
    for pid in pids:
        assert (pid, "sigterm") in events and (pid, "drained") in events
        assert [e for p, e in events if p == pid].count("sigterm") == 1  # exactly one SIGTERM each
        assert not pid_alive(pid)
    assert not list((tmp_path / "state").glob("run-*"))  # per-run dir removed


def test_crash_is_restarted_and_counted(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "1", STANDIN_MODE="crash_once", STANDIN_LIFE_S="0.5")
    first = fleet.wait_ready(1)[0]
    wait_for(lambda: not pid_alive(first), 10, what="crash")
    second = wait_for(lambda: [p for p in fleet.ready_pids() if p != first], 10, what="replacement")[0]
    assert second != first
    assert fleet.metric('fleet_consumer_restarts_total{cause="crash"}') == 1
    exits = [e for e in fleet.logs() if e.get("event", "").startswith("consumer exited")]
    assert exits[0]["exit_code"] == 1 and exits[0]["cause"] == "crash"
    assert "segfault-ish" in exits[0]["last_words"]


def test_sigkill_is_reported_as_possible_oom_and_replaced(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "1")
    pid = fleet.wait_ready(1)[0]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: [p for p in fleet.ready_pids() if p != pid], 10, what="replacement")
    assert "possibly out of memory" in fleet.log_text()
    assert fleet.metric('fleet_consumer_restarts_total{cause="oom_suspected"}') == 1


def test_stopped_consumer_is_killed_as_hung_and_replaced(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "1")
    pid = fleet.wait_ready(1)[0]
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    new = wait_for(lambda: [p for p in fleet.ready_pids() if p != pid], 15, what="replacement")[0]
    elapsed = time.monotonic() - t0
    assert not pid_alive(pid)
    # timeout 2 s + abort grace 1 s + restart backoff; generous bound for a loaded machine
    assert elapsed < 10, elapsed
    assert fleet.metric('fleet_consumer_restarts_total{cause="hung"}') == 1
    hung = [e for e in fleet.logs() if e.get("event", "").startswith("consumer hung")]
    assert hung and hung[0]["pid"] == pid
    assert new != pid


def test_silent_boot_is_a_boot_failure(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start(
        "--consumers",
        "1",
        STANDIN_MODE="boot_silent",
        STANDIN_BOOT_S="30",
        FLEET_SUPERVISOR__BOOT_TIMEOUT_S="1",
        FLEET_SUPERVISOR__MAX_BOOT_FAILURES="2",
    )
    assert fleet.wait_exit(20) == exitcodes.BOOT_FAILURE
    assert "2 consecutive boot failures" in fleet.log_text()


def test_repeated_boot_failure_halts_with_the_cause(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "2", STANDIN_MODE="boot_fail")
    t0 = time.monotonic()
    assert fleet.wait_exit(20) == exitcodes.BOOT_FAILURE
    assert time.monotonic() - t0 < 15
    halt = [e for e in fleet.logs() if e.get("event", "").startswith("supervisor halting")]
    assert halt, fleet.log_text()
    assert "/nonexistent/model" in halt[0]["event"]
    assert "3 consecutive boot failures" in halt[0]["event"]
    starts = [p for p, e in journal(tmp_path) if e == "start"]
    assert 3 <= len(starts) <= 4  # no crash loop
    assert not any(pid_alive(p) for p in starts)


def test_boot_failure_once_then_recovers(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "1", STANDIN_MODE="boot_fail_once")
    fleet.wait_ready(1)
    assert fleet.metric('fleet_consumer_restarts_total{cause="boot_failure"}') == 1
    assert fleet.proc.poll() is None


def test_crash_storm_halts(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start(
        "--consumers",
        "1",
        STANDIN_MODE="crash",
        STANDIN_LIFE_S="0.2",
        FLEET_SUPERVISOR__MAX_CRASHES_IN_WINDOW="3",
        FLEET_SUPERVISOR__CRASH_WINDOW_S="60",
    )
    assert fleet.wait_exit(30) == exitcodes.CRASH
    assert "3 consumer crashes within 60 s" in fleet.log_text()


def test_deadline_exit_replaced_without_counting(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start(
        "--consumers",
        "1",
        STANDIN_MODE="deadline",
        STANDIN_LIFE_S="1.5",
        FLEET_SUPERVISOR__MAX_CRASHES_IN_WINDOW="1",
    )
    first = fleet.wait_ready(1)[0]
    wait_for(lambda: [p for p in fleet.ready_pids() if p != first], 30, what="replacement")
    assert fleet.metric('fleet_consumer_restarts_total{cause="deadline"}') == 1
    assert fleet.metric('fleet_consumer_restarts_total{cause="crash"}') == 0
    assert fleet.proc.poll() is None  # not a crash: no halt with max_crashes_in_window=1


def test_grace_period_over_kills_leftovers(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "1", "--grace-period", "1", STANDIN_DRAIN_S="60")
    pid = fleet.wait_ready(1)[0]
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.wait_exit(15) == 0
    assert not pid_alive(pid)
    assert "grace period over" in fleet.log_text()


def test_sighup_rolls_consumers_one_at_a_time(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "2", STANDIN_BOOT_S="0.5")
    old = fleet.wait_ready(2)
    fleet.proc.send_signal(signal.SIGHUP)
    min_ready = 2
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = fleet.ready_pids()
        min_ready = min(min_ready, len(pids))
        if len(pids) == 2 and not set(pids) & set(old):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"rolling restart did not finish: {fleet.status()}")
    assert min_ready >= 1  # never without a ready consumer
    assert fleet.metric('fleet_consumer_restarts_total{cause="rolling"}') == 2
    wait_for(lambda: not any(pid_alive(p) for p in old), 10, what="old consumers drained")
    wait_for(lambda: "rolling restart finished" in fleet.log_text(), 10, what="roll finished")


def test_unstartable_consumer_command_is_a_config_error(start, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "1", command=[str(tmp_path / "no-such-program")])
    assert fleet.wait_exit(20) == exitcodes.CONFIG
    assert "cannot start the consumer command" in fleet.log_text()


def test_orphaned_children_exit_when_supervisor_is_killed(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "2")
    pids = fleet.wait_ready(2)
    fleet.proc.send_signal(signal.SIGKILL)
    fleet.proc.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, what="children exit on their own")


# --- the real consumer: RabbitMQ + SeaweedFS + tiny models -------------------------------------


class JobBus:
    """Publish job requests and collect their CloudEvents through the real broker.

    The events queue is durable and named, and every call reconnects once on a lost connection:
    other tests on this machine bounce the shared broker (stop_app/start_app) now and then.
    """

    def __init__(self, settings, amqp_url: str) -> None:  # type: ignore[no-untyped-def]
        import uuid

        self.settings = settings
        self.url = amqp_url
        self.events_queue = f"t-sup-events-{uuid.uuid4().hex[:10]}"
        self.events: list[dict] = []  # type: ignore[type-arg]
        self.conn = None
        self._connect()

    def _connect(self) -> None:
        import pika

        from funasr_fleet import topology

        self.close(delete=False)
        self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        topology.declare(self.ch, self.settings.amqp, self.settings.consumer)
        self.ch.queue_declare(self.events_queue, durable=True)
        self.ch.queue_bind(self.events_queue, self.settings.amqp.events_exchange, routing_key="job.#")

    def _retry(self, fn):  # type: ignore[no-untyped-def]
        import pika.exceptions

        try:
            return fn()
        except (pika.exceptions.AMQPError, ConnectionError, OSError):
            wait_for(self._try_connect, 60, interval=1.0, what="broker back")
            return fn()

    def _try_connect(self) -> bool:
        try:
            self._connect()
            return True
        except Exception:  # noqa: BLE001 - the broker is down on purpose here; retried by the caller
            return False

    def publish(self, job_id: str, bucket: str, key: str) -> None:
        import pika

        from funasr_fleet.jobs import JobRequest

        body = JobRequest(job_id=job_id, audio=f"s3://{bucket}/{key}", formats=["json", "srt"]).to_body()
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json", timestamp=int(time.time()))
        self._retry(
            lambda: self.ch.basic_publish(
                self.settings.amqp.jobs_exchange, self.settings.amqp.jobs_routing_key, body, props
            )
        )

    def pump(self) -> None:
        import json

        def drain() -> None:
            while True:
                method, _props, body = self.ch.basic_get(self.events_queue, auto_ack=True)
                if method is None:
                    return
                self.events.append(json.loads(body))

        self._retry(drain)

    def kinds(self, job_id: str) -> list[str]:
        self.pump()
        return [e["type"].rsplit(".", 1)[1] for e in self.events if e["data"]["job_id"] == job_id]

    def wait_final(self, job_id: str, timeout: float) -> dict:  # type: ignore[type-arg]
        def final() -> dict | None:  # type: ignore[type-arg]
            self.pump()
            for e in self.events:
                if e["data"]["job_id"] == job_id and e["type"].rsplit(".", 1)[1] in ("succeeded", "failed"):
                    return e
            return None

        return wait_for(final, timeout, interval=0.2, what=f"final event of {job_id}")

    def queue_depth(self) -> int:
        return int(
            self._retry(lambda: self.ch.queue_declare(self.settings.amqp.jobs_queue, passive=True).method.message_count)
        )

    def close(self, delete: bool = True) -> None:
        if self.conn is None:
            return
        try:
            if delete and self.conn.is_open:
                self.ch.queue_delete(self.events_queue)
            self.conn.close()
        except Exception:  # noqa: BLE001 - teardown of a connection that may be dead
            pass
        self.conn = None


@pytest.fixture
def real_fleet(fleet_settings, engine_env, amqp_url, storage, audio_dir, tmp_path, fleets):  # type: ignore[no-untyped-def]
    """Start a supervisor over real consumers; yields (start, bus, upload)."""
    from tests.fixtures.audio import synth_speech
    from tests.fixtures.services import subprocess_env

    settings = fleet_settings(with_engine=True)
    bus = JobBus(settings, amqp_url)
    bucket = settings.s3.inbox_bucket

    def upload(name: str, seconds: float | None = None) -> str:
        if seconds is None:
            path = audio_dir / "dialogue.wav"
        else:
            path = tmp_path / f"{name}.wav"
            if not path.exists():
                synth_speech(path, seconds)
        storage.upload_file(path, bucket, f"in/{name}.wav")
        return f"in/{name}.wav"

    def start_real(*args: str, **env: str) -> Fleet:
        full = subprocess_env(settings)
        full.update(FAST)
        full.update(
            {
                "FLEET_SUPERVISOR__HEARTBEAT_TIMEOUT_S": "5",
                "FLEET_SUPERVISOR__BOOT_TIMEOUT_S": "120",
                "FLEET_LOG__LEVEL": "INFO",
                "FLEET_SUPERVISOR__GRACE_PERIOD_S": "120",
                "FLEET_CONSUMER__RESULT_REUSE": "false",  # same audio, real work every time
            }
        )
        full.update(env)
        fleet = Fleet(tmp_path, full, list(args), None)
        fleets.append(fleet)
        return fleet

    yield start_real, bus, upload, settings
    bus.close()


def _busy_pid(fleet: Fleet, job_id: str) -> int | None:
    for c in fleet.status().get("consumers", []):
        if c["state"] == "busy" and c["job_id"] == job_id:
            return int(c["pid"])
    return None


def _started_busy(fleet: Fleet, bus: JobBus, job_id: str) -> int | None:
    """The consumer working on ``job_id`` once its job.started event is out (so a kill is mid-job)."""
    return _busy_pid(fleet, job_id) if "started" in bus.kinds(job_id) else None


def _manifests(storage, settings, job_id: str) -> list[str]:  # type: ignore[no-untyped-def]
    prefix = f"{settings.s3.results_prefix}/{job_id}/"
    return [o.key for o in storage.list_objects(settings.s3.results_bucket, prefix) if o.key.endswith("manifest.json")]


def test_real_fleet_jobs_kill_hang_metrics_and_drain(real_fleet, storage) -> None:  # type: ignore[no-untyped-def]
    start_real, bus, upload, settings = real_fleet
    short = upload("short")
    long = upload("long", 120)
    fleet = start_real("--consumers", "1", "--threads", "1")

    # /readyz turns ready only after the model is loaded
    wait_for(lambda: fleet.get("/healthz")[0] == 200, 30, what="healthz")
    assert fleet.get("/readyz")[0] == 503
    fleet.wait_ready(1, timeout=120)
    assert fleet.get("/readyz")[0] == 200

    # a job goes through; /metrics moves
    bus.publish("sup-ok", settings.s3.inbox_bucket, short)
    assert bus.wait_final("sup-ok", 120)["type"].endswith("succeeded")
    wait_for(lambda: fleet.metric('fleet_jobs_total{error_code="none",status="succeeded"}') >= 1, 10, what="metrics")
    assert fleet.metric("fleet_audio_seconds_total") > 0
    assert fleet.metric("fleet_job_duration_seconds_count") >= 1
    assert fleet.metric("fleet_queue_wait_seconds_count") >= 1

    # SIGKILL mid-job: replaced; the redelivered job completes exactly once
    bus.publish("sup-kill", settings.s3.inbox_bucket, long)
    victim = wait_for(lambda: _started_busy(fleet, bus, "sup-kill"), 60, interval=0.05, what="busy consumer")
    os.kill(victim, signal.SIGKILL)
    final = bus.wait_final("sup-kill", 240)
    assert final["type"].endswith("succeeded")
    kinds = bus.kinds("sup-kill")
    assert kinds.count("succeeded") == 1 and kinds.count("started") >= 2, kinds
    assert len(_manifests(storage, settings, "sup-kill")) == 1
    for uri in final["data"]["outputs"]:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        assert storage.head(bucket, key).size > 0
    assert fleet.metric('fleet_consumer_restarts_total{cause="oom_suspected"}') == 1

    # SIGSTOP mid-job: detected as hung, killed, replaced; job completed
    bus.publish("sup-hang", settings.s3.inbox_bucket, long)
    victim = wait_for(lambda: _started_busy(fleet, bus, "sup-hang"), 120, interval=0.05, what="busy consumer")
    t0 = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    wait_for(lambda: not pid_alive(victim), 30, what="hung consumer killed")
    detected_s = time.monotonic() - t0
    assert detected_s < 5 + 1 + 10, detected_s  # heartbeat timeout + abort grace + a loaded machine
    assert bus.wait_final("sup-hang", 240)["type"].endswith("succeeded")
    assert bus.kinds("sup-hang").count("succeeded") == 1
    assert fleet.metric('fleet_consumer_restarts_total{cause="hung"}') == 1

    # SIGTERM during a job: the job finishes and is acked, children exit, supervisor exits 0
    fleet.wait_ready(1, timeout=120)
    bus.publish("sup-drain", settings.s3.inbox_bucket, long)
    worker = wait_for(lambda: _busy_pid(fleet, "sup-drain"), 60, interval=0.05, what="busy consumer")
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.wait_exit(180) == 0
    assert not pid_alive(worker)
    assert bus.wait_final("sup-drain", 10)["type"].endswith("succeeded")
    assert bus.queue_depth() == 0  # acked, not requeued


def test_real_bad_model_path_halts_with_cause(real_fleet) -> None:  # type: ignore[no-untyped-def]
    start_real, _bus, _upload, _settings = real_fleet
    t0 = time.monotonic()
    fleet = start_real(
        "--consumers",
        "2",
        "--threads",
        "1",
        FLEET_ENGINE__MODEL="/nonexistent/asr-model",
        FLEET_SUPERVISOR__MAX_BOOT_FAILURES="2",
    )
    assert fleet.wait_exit(60) == exitcodes.BOOT_FAILURE
    elapsed = time.monotonic() - t0
    halt = [e for e in fleet.logs() if e.get("event", "").startswith("supervisor halting")]
    assert halt, fleet.log_text()[-3000:]
    assert "/nonexistent/asr-model" in halt[0]["event"] and "no such directory" in halt[0]["event"]
    assert elapsed < 30, elapsed


def test_real_consumers_exit_when_supervisor_is_killed(real_fleet) -> None:  # type: ignore[no-untyped-def]
    start_real, _bus, _upload, _settings = real_fleet
    fleet = start_real("--consumers", "1", "--threads", "1")
    pids = fleet.wait_ready(1, timeout=120)
    fleet.proc.send_signal(signal.SIGKILL)
    fleet.proc.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, what="consumers exit on their own")


def test_real_sighup_rolls_without_losing_readiness_or_the_job(real_fleet) -> None:  # type: ignore[no-untyped-def]
    start_real, bus, upload, settings = real_fleet
    long = upload("long", 120)
    fleet = start_real("--consumers", "1", "--threads", "1")
    old = fleet.wait_ready(1, timeout=120)[0]
    bus.publish("sup-roll", settings.s3.inbox_bucket, long)
    wait_for(lambda: _started_busy(fleet, bus, "sup-roll"), 60, interval=0.05, what="busy consumer")
    fleet.proc.send_signal(signal.SIGHUP)
    not_ready = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if fleet.get("/readyz")[0] != 200:
            not_ready += 1
        pids = fleet.ready_pids()
        if pids and old not in pids and not pid_alive(old):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"rolling restart did not finish: {fleet.status()}")
    assert not_ready == 0  # a ready consumer the whole time
    final = bus.wait_final("sup-roll", 60)
    assert final["type"].endswith("succeeded")
    assert bus.kinds("sup-roll").count("started") == 1  # the old consumer finished it: no redo
    assert fleet.metric('fleet_consumer_restarts_total{cause="rolling"}') == 1


# --- metrics module: multiprocess aggregation without a supervisor ------------------------------


def test_metrics_aggregate_across_processes(tmp_path: Path) -> None:
    import subprocess

    shard_dir = tmp_path / "prom"
    shard_dir.mkdir()
    writer = (
        "from funasr_fleet import metrics as m\n"
        "m.job_started(0.5); m.job_finished('succeeded', None, 2.0, 0.05, 60.0)\n"
        "m.job_started(None); m.job_finished('failed', 'audio_too_short', 0.1)\n"
        "m.job_started(1.0)\n"  # still in flight when the process exits
        "import os; print(os.getpid())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shard_dir)}
    pids = [
        int(subprocess.run([sys.executable, "-c", writer], env=env, capture_output=True, text=True, check=True).stdout)
        for _ in range(2)
    ]
    reader = (
        "import sys\n"
        "from pathlib import Path\n"
        "from funasr_fleet import metrics as m\n"
        f"m.enable_multiprocess(Path({str(shard_dir)!r}))\n"
        f"[m.mark_process_dead(p) for p in {pids!r}]\n"
        "m.consumers(alive=2, ready=1); m.consumer_restarted('hung')\n"
        "sys.stdout.write(m.render()[0].decode())\n"
    )
    text = subprocess.run([sys.executable, "-c", reader], env=os.environ.copy(), capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}
    assert samples['fleet_jobs_total{error_code="none",status="succeeded"}'] == 2
    assert samples['fleet_jobs_total{error_code="audio_too_short",status="failed"}'] == 2
    assert samples["fleet_audio_seconds_total"] == 120
    assert samples["fleet_queue_wait_seconds_count"] == 4
    assert samples["fleet_job_duration_seconds_count"] == 4
    assert samples["fleet_job_real_time_factor_count"] == 2
    assert samples.get("fleet_jobs_in_flight", 0.0) == 0  # dead processes leave the live sum
    assert samples["fleet_consumers_alive"] == 2 and samples["fleet_consumers_ready"] == 1
    assert samples['fleet_consumer_restarts_total{cause="hung"}'] == 1


def test_metrics_without_multiprocess_dir() -> None:
    import subprocess

    code = (
        "import sys\n"
        "from funasr_fleet import metrics as m\n"
        "m.job_started(0.1); m.job_finished('succeeded', None, 1.0, 0.1, 10.0)\n"
        "text = m.render()[0].decode()\n"
        'assert \'fleet_jobs_total{error_code="none",status="succeeded"} 1.0\' in text, text\n'
        "assert 'fleet_jobs_in_flight 0.0' in text, text\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_http_endpoints_follow_the_arbiter_state() -> None:
    import json
    import urllib.error
    import urllib.request
    from typing import Any

    from funasr_fleet.supervisor.http import HealthServer

    class Source:
        stopping = False
        alive = True
        ready = 0

        def loop_alive(self) -> bool:
            return self.alive

        def ready_count(self) -> int:
            return self.ready

        def status(self) -> dict[str, Any]:
            return {"consumers": [], "ready": self.ready}

    source = Source()
    server = HealthServer(source, "127.0.0.1", 0).start()

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    try:
        assert get("/healthz") == 200
        assert get("/readyz") == 503
        source.ready = 2
        assert get("/readyz") == 200
        source.stopping = True  # draining: take no new traffic
        assert get("/readyz") == 503
        source.alive = False  # the loop stopped ticking
        assert get("/healthz") == 503
        assert get("/nope") == 404
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/status", timeout=5) as resp:
            assert json.loads(resp.read())["ready"] == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain")
    finally:
        server.stop()
