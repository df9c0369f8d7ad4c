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
    code, _ = wait_for(lambda: (r if (r := fleet.get("/healthz"))[0] == 200 else None), 15, what="healthz")
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
        "--consumers", "1", STANDIN_MODE="boot_silent", STANDIN_BOOT_S="30",
        FLEET_SUPERVISOR__BOOT_TIMEOUT_S="1", FLEET_SUPERVISOR__MAX_BOOT_FAILURES="2",
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
        "--consumers", "1", STANDIN_MODE="crash", STANDIN_LIFE_S="0.2",
        FLEET_SUPERVISOR__MAX_CRASHES_IN_WINDOW="3", FLEET_SUPERVISOR__CRASH_WINDOW_S="60",
    )
    assert fleet.wait_exit(30) == exitcodes.CRASH
    assert "3 consumer crashes within 60 s" in fleet.log_text()


def test_deadline_exit_replaced_without_counting(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start(
        "--consumers", "1", STANDIN_MODE="deadline", STANDIN_LIFE_S="0.2",
        FLEET_SUPERVISOR__MAX_CRASHES_IN_WINDOW="1",
    )
    first = fleet.wait_ready(1)[0]
    wait_for(lambda: [p for p in fleet.ready_pids() if p != first], 10, what="replacement")
    assert fleet.metric('fleet_consumer_restarts_total{cause="deadline"}') == 1
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
    assert all(not pid_alive(p) for p in old)
    assert "rolling restart finished" in fleet.log_text()


def test_orphaned_children_exit_when_supervisor_is_killed(start) -> None:  # type: ignore[no-untyped-def]
    fleet = start("--consumers", "2")
    pids = fleet.wait_ready(2)
    fleet.proc.send_signal(signal.SIGKILL)
    fleet.proc.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 10, what="children exit on their own")
