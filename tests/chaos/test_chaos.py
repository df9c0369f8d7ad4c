"""Chaos: jobs keep flowing while consumers are SIGKILLed, RabbitMQ restarts and S3 goes away.

Real broker (the machine's RabbitMQ), a private SeaweedFS the test stops for ~10 s, a real
`funasr-fleet supervise` with two real consumers (tiny models). A seeded RNG decides when each
fault happens, so a failing run can be repeated. Size: ``FLEET_CHAOS_JOBS`` (default 40 in the
default run); ``test_chaos_full`` (marked slow) runs 200. ``test_chaos_preload_fork`` runs the
same with consumers forked from a zygote (``supervisor.preload = "fork"``) and SIGKILLs the zygote
once too.

Afterwards every job must have exactly one manifest and intact outputs (JSON parsed back into a
Transcript, SRT checked cue by cue), at least one ``job.succeeded`` event and no ``job.failed``;
duplicate succeeded events must carry identical data (except ``attempt`` and ``reused``, which
name the delivery that answered); no message is left in the jobs queue, the DLQ or a delay
queue, none unacked; no staged temp file is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.chaos import harness
from tests.supervisor_harness import Fleet, wait_for

SEED = int(os.environ.get("FLEET_CHAOS_SEED", "20261128"))
CI_JOBS = int(os.environ.get("FLEET_CHAOS_JOBS", "40"))
FULL_JOBS = 200
CONSUMERS = 2
S3_OUTAGE_S = 10.0
MAX_KILLS_PER_JOB = 2  # below amqp.delivery_limit (5), counting the broker restart's redelivery


def fleet_env_for(settings: Any, tmp_path: Path) -> dict[str, str]:
    from tests.fixtures.services import subprocess_env

    return subprocess_env(
        settings,
        FLEET_SUPERVISOR__STATE_DIR=str(tmp_path / "state"),
        FLEET_LOG__FORMAT="json",
        FLEET_LOG__LEVEL="INFO",
    )


class Chaos(threading.Thread):
    """Runs the fault schedule: [(at_s, action)], in order, relative to ``t0``."""

    def __init__(self, fleet: Fleet, s3: Any, amqp_url: str, schedule: list[tuple[float, str]], t0: float) -> None:
        super().__init__(daemon=True, name="chaos")
        self.fleet, self.s3, self.amqp_url, self.schedule, self.t0 = fleet, s3, amqp_url, schedule, t0
        self.rng = random.Random(SEED + 1)
        self.kills: list[tuple[float, int, str]] = []  # (t, pid, state)
        self.job_kills: Counter[str | None] = Counter()
        self.skipped_kills = 0
        self.broker_restarts: list[float] = []  # seconds unavailable
        self.s3_outages: list[float] = []
        self.zygote_kills = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for at, action in self.schedule:
                delay = self.t0 + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                getattr(self, action)()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
            harness.ensure_broker(self.amqp_url)

    def kill(self) -> None:
        """SIGKILL one consumer: a busy one when one turns busy within 3 s, else a ready one.

        Waits (up to 60 s) until the fleet is back at full strength first, and never kills a job a
        third time: a job that takes down ``amqp.delivery_limit`` consumers is a poison message and
        is dead-lettered BY DESIGN; back-to-back kills on a recovering fleet would otherwise keep
        hitting the job at the head of the queue.
        """
        dead = {k[1] for k in self.kills}  # /status may list a killed pid until the supervisor reaps it

        def live() -> list[dict[str, Any]]:
            return [c for c in self.fleet.status().get("consumers", [])
                    if c["state"] in ("ready", "busy") and c["pid"] not in dead]  # fmt: skip

        full = time.monotonic() + 60
        while len(live()) < CONSUMERS and time.monotonic() < full:
            time.sleep(0.2)
        start = time.monotonic()
        end = start + 15
        while time.monotonic() < end:
            consumers = live()
            busy = [
                c for c in consumers if c["state"] == "busy" and self.job_kills[c.get("job_id")] < MAX_KILLS_PER_JOB
            ]
            idle = [c for c in consumers if c["state"] == "ready"]
            pool = busy or (idle if time.monotonic() - start > 3 else [])
            if pool:
                victim = self.rng.choice(sorted(pool, key=lambda c: c["pid"]))
                try:
                    os.kill(victim["pid"], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                self.kills.append((time.monotonic() - self.t0, victim["pid"], victim["state"]))
                if victim.get("job_id"):
                    self.job_kills[victim["job_id"]] += 1
                return
            time.sleep(0.1)  # never kill during boot (that counts as a boot failure)
        self.skipped_kills += 1

    def kill_zygote(self) -> None:
        """SIGKILL the zygote (preload = fork): running consumers must not notice."""
        zygote = self.fleet.status().get("zygote")
        if zygote:
            os.kill(zygote["pid"], signal.SIGKILL)
            self.zygote_kills += 1

    def restart_broker(self) -> None:
        self.broker_restarts.append(harness.restart_broker(self.amqp_url, down_s=3.0))

    def s3_outage(self) -> None:
        t = time.monotonic()
        self.s3.seaweed.stop()
        remaining = S3_OUTAGE_S - (time.monotonic() - t)
        if remaining > 0:
            time.sleep(remaining)
        self.s3.seaweed.start()
        self.s3_outages.append(time.monotonic() - t)


def schedule_for(jobs: int, submit_s: float, rng: random.Random, *, preload: str = "none") -> list[tuple[float, str]]:
    window = submit_s + 10
    kills = max(3, jobs // 15)
    plan = [(rng.uniform(3, window), "kill") for _ in range(kills)]
    plan.append((rng.uniform(0.25, 0.4) * window, "restart_broker"))
    plan.append((rng.uniform(0.55, 0.7) * window, "s3_outage"))
    if preload == "fork":
        plan.append((rng.uniform(0.4, 0.5) * window, "kill_zygote"))
    return sorted(plan)


def run_chaos(jobs: int, fleet_settings: Any, own_s3_server: Any, amqp_url: str, audio_dir: Path, tmp_path: Path,
              capsys: pytest.CaptureFixture[str], *, preload: str = "none", rig: Any = None) -> dict[str, Any]:  # fmt: skip
    from funasr_fleet.storage import Storage

    rng = random.Random(SEED)
    storage = Storage(own_s3_server.settings())
    results_bucket, inbox_bucket = f"chaos-{os.urandom(4).hex()}-out", f"chaos-{os.urandom(4).hex()}-in"
    for b in (results_bucket, inbox_bucket):
        storage.ensure_bucket(b)
    s3_over = {
        **own_s3_server.settings().model_dump(exclude_none=True),
        "access_key": own_s3_server.access_key,
        "secret_key": own_s3_server.secret_key,
        "results_bucket": results_bucket,
        "inbox_bucket": inbox_bucket,
    }
    settings = fleet_settings(
        with_engine=True,
        s3=s3_over,
        consumer={"result_reuse": False, "retry_max_attempts": 8, "retry_base_delay_s": 1.0, "retry_max_delay_s": 8.0},
        supervisor={
            "max_crashes_in_window": 10_000,
            "restart_backoff_base_s": 0.2,
            "restart_backoff_max_s": 1.0,
            "boot_timeout_s": 300.0,
            "heartbeat_timeout_s": 60.0,
            "grace_period_s": 120.0,
            "preload": preload,
        },
        **(rig.settings_overrides() if rig is not None else {}),  # e.g. test_chaos_webhooks.WebhookRig
    )
    sources = []
    for name in ("dialogue.wav", "dialogue.mp3", "dialogue.flac"):
        storage.upload_file(audio_dir / name, inbox_bucket, f"in/{name}")
        sources.append(f"in/{name}")

    log = harness.EventLog(settings)
    publisher = harness.RawPublisher(settings)
    env = {**fleet_env_for(settings, tmp_path), **(rig.env() if rig is not None else {})}
    fleet = Fleet(tmp_path, env, ["--consumers", str(CONSUMERS), "--threads", "1"], None)
    chaos: Chaos | None = None
    ids = [f"chaos-{i:04d}" for i in range(jobs)]
    try:
        if rig is not None:
            rig.start(settings)  # before any job: the relay's queue must exist before the first event
        fleet.wait_ready(CONSUMERS, timeout=240)
        pace = 0.6
        submit_s = jobs * pace
        t0 = time.monotonic()
        chaos = Chaos(fleet, own_s3_server, amqp_url, schedule_for(jobs, submit_s, rng, preload=preload), t0)
        chaos.start()
        for i, job_id in enumerate(ids):
            delay = t0 + i * pace - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            extra = rig.job_extra(job_id) if rig is not None else {}
            body = harness.job_body(job_id, inbox_bucket, sources[i % len(sources)], **extra)
            publisher.publish(body, message_id=job_id)
            fleet.status()  # keeps seen_pids complete for teardown
            if i % 10 == 0:
                log.drain()
        chaos.join(timeout=600)
        assert not chaos.is_alive(), "the chaos schedule did not finish"
        assert chaos.error is None, f"chaos action failed: {chaos.error!r}"

        def all_final() -> bool:
            log.drain()
            fleet.status()
            finals = log.finals()
            return all(j in finals for j in ids)

        wait_for(all_final, timeout=max(180, jobs * 2), interval=1.0, what="a final event for every job")
        # Late duplicates (redelivered copies, retry copies still in a delay tier of up to
        # retry_max_delay_s) are answered from the manifest and acked shortly after the last final.
        unacked_before_stop: dict[str, int] = {}

        def all_settled() -> bool:
            unacked_before_stop.clear()
            unacked_before_stop.update(harness.unacked(settings))
            return all(v == 0 for v in unacked_before_stop.values())

        with contextlib.suppress(AssertionError):  # reported by the assertion below, with the counts
            wait_for(all_settled, timeout=60, interval=1.0, what="no unacked message")
        restarts = int(harness.metric_sum(fleet, "fleet_consumer_restarts_total"))
        fleet.proc.send_signal(signal.SIGTERM)
        code = fleet.wait_exit(180)
        wall = time.monotonic() - t0
        log.drain()

        # --- assertions ---
        finals = log.finals()
        failed = {j: [e["data"].get("error") for e in finals.get(j, []) if harness.kind_of(e) == "failed"] for j in ids}
        failed = {j: v for j, v in failed.items() if v}
        assert not failed, f"jobs with a failed event: {failed}"
        dup_mismatch = []
        duplicates = 0
        for j in ids:
            succ = [e for e in finals.get(j, []) if harness.kind_of(e) == "succeeded"]
            assert succ, f"{j}: no succeeded event"
            duplicates += len(succ) - 1
            first = harness.stable_data(succ[0])
            dup_mismatch += [(j, e["data"]) for e in succ[1:] if harness.stable_data(e) != first]
        assert not dup_mismatch, f"duplicate succeeded events differ: {dup_mismatch[:3]}"
        problems = {j: p for j in ids if (p := harness.check_job_outputs(storage, settings, j))}
        assert not problems, f"bad outputs: {dict(list(problems.items())[:5])}"
        counts = harness.queue_counts(settings)
        assert all(v == 0 for v in counts.values()), f"messages left: {counts}"
        assert all(v == 0 for v in unacked_before_stop.values()), f"unacked after all finals: {unacked_before_stop}"
        stage = settings.consumer.tmp_dir
        leftovers = sorted(p.name for p in Path(stage).iterdir()) if stage and Path(stage).exists() else []
        assert not leftovers, f"temp files left in {stage}: {leftovers}"
        assert code == 0, f"supervisor exit {code}"
        rig_summary = rig.check(settings, ids, log) if rig is not None else {}

        kinds = log.kinds()
        started = len([e for e in log.events.values() if harness.kind_of(e) == "started"])
        summary = {
            "jobs": jobs,
            "consumers": CONSUMERS,
            "preload": preload,
            "seed": SEED,
            "kills": len(chaos.kills),
            "kills_skipped": chaos.skipped_kills,
            "zygote_kills": chaos.zygote_kills,
            "killed_busy": sum(1 for k in chaos.kills if k[2] == "busy"),
            "consumer_restarts": restarts,
            "broker_restarts": len(chaos.broker_restarts),
            "broker_down_s": round(sum(chaos.broker_restarts), 1),
            "s3_outages": len(chaos.s3_outages),
            "s3_down_s": round(sum(chaos.s3_outages), 1),
            "deliveries_started": started,
            "retries": kinds.get("retrying", 0),
            "redeliveries": max(0, started - jobs - kinds.get("retrying", 0)),
            "succeeded_events": kinds.get("succeeded", 0),
            "duplicates": duplicates,
            "failed_events": kinds.get("failed", 0),
            "publish_retries": publisher.retries,
            "wall_s": round(wall, 1),
            **rig_summary,
        }
        with capsys.disabled():
            title = f"chaos run ({jobs} jobs{', preload = fork' if preload == 'fork' else ''})"
            print("\n" + harness.summary_table(title, list(summary.items())) + "\n")
        report = os.environ.get("FLEET_CHAOS_REPORT")
        if report:
            Path(report).write_text(json.dumps(summary, indent=2))
        return summary
    except BaseException:
        tail = fleet.log_text()[-6000:]
        try:
            queues = harness.broker_queues(settings)
        except Exception as exc:  # noqa: BLE001
            queues = {"error": repr(exc)}
        finals = log.finals()
        missing = [j for j in ids if j not in finals]
        try:
            dead = [(p.message_id, [(d.get("reason"), d.get("count")) for d in (p.headers or {}).get("x-death", [])])
                    for p, _ in harness.dlq_messages(settings)]  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            dead = [repr(exc)]
        history = {j: [(harness.kind_of(e), e["data"].get("attempt"), e["data"].get("stage")) for e in log.of(j)]
                   for j in missing[:5]}  # fmt: skip
        with capsys.disabled():
            print(
                f"\n--- supervisor log tail ---\n{tail}\n--- events: {log.kinds()}\n--- queues: {queues}"
                f"\n--- jobs without a final event ({len(missing)}): {missing[:20]}\n--- their events: {history}"
                f"\n--- dead letters: {dead}\n--- kills: {chaos.kills if chaos else None}"
            )
        raise
    finally:
        if chaos is not None and chaos.is_alive():
            chaos.join(timeout=120)
        if rig is not None:
            rig.stop()
        harness.ensure_broker(amqp_url)
        fleet.stop()
        publisher.close()
        log.delete()
        for b in (results_bucket, inbox_bucket):
            with contextlib.suppress(Exception):  # best effort: the broker/S3 may be mid-restart
                storage.delete_bucket(b)


@pytest.mark.timeout(900)
def test_chaos(fleet_settings, own_s3_server, amqp_url, audio_dir, engine_env, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    summary = run_chaos(CI_JOBS, fleet_settings, own_s3_server, amqp_url, audio_dir, tmp_path, capsys)
    assert summary["kills"] >= 1 and summary["broker_restarts"] == 1 and summary["s3_outages"] == 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_chaos_full(fleet_settings, own_s3_server, amqp_url, audio_dir, engine_env, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    summary = run_chaos(FULL_JOBS, fleet_settings, own_s3_server, amqp_url, audio_dir, tmp_path, capsys)
    assert summary["kills"] >= 1 and summary["broker_restarts"] == 1 and summary["s3_outages"] == 1


@pytest.mark.timeout(900)
def test_chaos_preload_fork(fleet_settings, own_s3_server, amqp_url, audio_dir, engine_env, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    summary = run_chaos(CI_JOBS, fleet_settings, own_s3_server, amqp_url, audio_dir, tmp_path, capsys, preload="fork")
    assert summary["kills"] >= 1 and summary["broker_restarts"] == 1 and summary["s3_outages"] == 1
    assert summary["zygote_kills"] == 1
