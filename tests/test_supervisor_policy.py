"""Pure rules of the supervisor: exit classification, backoff, boot-failure and crash-window halts."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from funasr_fleet import exitcodes, heartbeat
from funasr_fleet.supervisor.policy import Action, Cause, Death, RestartPolicy, classify, plan_threads


def exited(code: int) -> int:
    return code << 8  # a waitpid status for a normal exit


def killed(sig: int) -> int:
    return int(sig)  # a waitpid status for death by signal


def death(cause: Cause, *, exit_code: int | None = 1, sig: int | None = None, ready: bool = True) -> Death:
    return Death(pid=1, exit_code=exit_code, signal=sig, cause=cause, was_ready=ready)


@pytest.mark.parametrize(
    ("status", "ready", "stop", "hung", "cause"),
    [
        (exited(exitcodes.BOOT_FAILURE), False, False, False, Cause.BOOT_FAILURE),
        (exited(exitcodes.CONFIG), False, False, False, Cause.BOOT_FAILURE),
        (exited(1), False, False, False, Cause.BOOT_FAILURE),  # crash before ready: broken install
        (exited(1), True, False, False, Cause.CRASH),
        (killed(signal.SIGSEGV), True, False, False, Cause.CRASH),
        (killed(signal.SIGKILL), True, False, False, Cause.OOM_SUSPECTED),
        (killed(signal.SIGKILL), True, False, True, Cause.HUNG),
        (killed(signal.SIGABRT), True, False, True, Cause.HUNG),
        (killed(signal.SIGKILL), False, False, True, Cause.BOOT_FAILURE),  # hung while loading
        (exited(exitcodes.JOB_TIMEOUT), True, False, False, Cause.DEADLINE),
        (exited(exitcodes.JOB_CANCELLED), True, False, False, Cause.CANCELLED),
        (exited(exitcodes.ORPHANED), True, False, False, Cause.ORPHANED),
        (exited(0), True, False, False, Cause.CLEAN),
        (exited(0), False, False, False, Cause.BOOT_FAILURE),  # gone before ready: no tight restart loop
        (exited(exitcodes.ORPHANED), False, False, False, Cause.BOOT_FAILURE),
        (exited(0), False, True, False, Cause.STOPPED),  # asked to stop while booting
        (exited(0), True, True, False, Cause.STOPPED),
        (killed(signal.SIGKILL), True, True, False, Cause.STOPPED),  # grace period ran out
        (killed(signal.SIGTERM), True, True, False, Cause.STOPPED),
    ],
)
def test_classify(status: int, ready: bool, stop: bool, hung: bool, cause: Cause) -> None:
    assert classify(42, status, was_ready=ready, stop_requested=stop, hung_killed=hung).cause is cause


def test_describe_names_signal_and_oom() -> None:
    text = classify(1, killed(signal.SIGKILL), was_ready=True, stop_requested=False, hung_killed=False).describe()
    assert "SIGKILL" in text and "possibly out of memory" in text
    assert "boot failure" in classify(1, exited(3), was_ready=False, stop_requested=False, hung_killed=False).describe()


def test_cancelled_exit_is_named_and_not_a_crash() -> None:
    died = classify(1, exited(exitcodes.JOB_CANCELLED), was_ready=True, stop_requested=False, hung_killed=False)
    assert "cancelled" in died.describe() and not died.counts_as_crash and not died.counts_as_boot_failure


def test_backoff_doubles_and_caps() -> None:
    policy = RestartPolicy(backoff_base_s=1.0, backoff_max_s=10.0)
    assert [policy.backoff(n) for n in range(0, 7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_crash_backoff_per_slot_and_stable_reset() -> None:
    policy = RestartPolicy(backoff_base_s=1.0, backoff_max_s=60.0, max_crashes_in_window=100)
    delays = [policy.on_death(0, death(Cause.CRASH), float(t), stopping=False).delay_s for t in range(4)]
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert policy.on_death(1, death(Cause.CRASH), 5.0, stopping=False).delay_s == 1.0  # other slot unaffected
    policy.on_stable(0)
    assert policy.on_death(0, death(Cause.CRASH), 6.0, stopping=False).delay_s == 1.0


def test_boot_failures_halt_after_max_in_a_row() -> None:
    policy = RestartPolicy(max_boot_failures=3)
    boot = death(Cause.BOOT_FAILURE, exit_code=3, ready=False)
    assert policy.on_death(0, boot, 0.0, stopping=False).action is Action.RESTART
    assert policy.on_death(1, boot, 0.1, stopping=False).action is Action.RESTART
    decision = policy.on_death(0, boot, 0.2, stopping=False)
    assert decision.action is Action.HALT
    assert decision.halt_exit_code == exitcodes.BOOT_FAILURE
    assert "3 consecutive boot failures" in decision.reason


def test_ready_resets_boot_failure_streak() -> None:
    policy = RestartPolicy(max_boot_failures=2)
    boot = death(Cause.BOOT_FAILURE, exit_code=3, ready=False)
    assert policy.on_death(0, boot, 0.0, stopping=False).action is Action.RESTART
    policy.on_ready(1)
    assert policy.on_death(0, boot, 1.0, stopping=False).action is Action.RESTART
    assert policy.on_death(0, boot, 2.0, stopping=False).action is Action.HALT


def test_crash_window_slides() -> None:
    policy = RestartPolicy(crash_window_s=10.0, max_crashes_in_window=3)
    crash = death(Cause.CRASH)
    assert policy.on_death(0, crash, 0.0, stopping=False).action is Action.RESTART
    assert policy.on_death(0, crash, 5.0, stopping=False).action is Action.RESTART
    # the first crash left the window: still only two inside
    assert policy.on_death(0, crash, 10.5, stopping=False).action is Action.RESTART
    decision = policy.on_death(0, death(Cause.OOM_SUSPECTED, exit_code=None, sig=9), 11.0, stopping=False)
    assert decision.action is Action.HALT and decision.halt_exit_code == exitcodes.CRASH


def test_hung_counts_as_crash() -> None:
    policy = RestartPolicy(max_crashes_in_window=2)
    assert policy.on_death(0, death(Cause.HUNG, exit_code=None, sig=9), 0.0, stopping=False).action is Action.RESTART
    assert policy.on_death(0, death(Cause.HUNG, exit_code=None, sig=9), 1.0, stopping=False).action is Action.HALT


@pytest.mark.parametrize("cause", [Cause.DEADLINE, Cause.CANCELLED, Cause.ORPHANED, Cause.CLEAN])
def test_uncounted_exits_restart_at_once(cause: Cause) -> None:
    policy = RestartPolicy(max_crashes_in_window=1, max_boot_failures=1)
    for t in range(5):
        decision = policy.on_death(0, death(cause, exit_code=4), float(t), stopping=False)
        assert decision.action is Action.RESTART and decision.delay_s == 0.0
    assert not policy.crash_times and policy.boot_failures == 0


def test_no_restart_while_stopping() -> None:
    policy = RestartPolicy()
    assert policy.on_death(0, death(Cause.CRASH), 0.0, stopping=True).action is Action.NONE
    assert policy.on_death(0, death(Cause.STOPPED, exit_code=0), 0.0, stopping=False).action is Action.NONE


@pytest.mark.parametrize(
    ("consumers", "threads", "cores", "expected"),
    [
        ("auto", None, 8, (8, 1, False)),
        ("auto", 2, 8, (4, 2, False)),
        ("auto", 3, 8, (2, 3, False)),
        ("auto", 16, 8, (1, 16, True)),  # explicit threads above the cores: the user's choice
        (2, None, 8, (2, 4, False)),
        (3, None, 8, (3, 2, False)),
        (4, None, 2, (4, 1, True)),  # more processes than cores: at least one thread each
        (2, 4, 2, (2, 4, True)),
        (1, None, 1, (1, 1, False)),
    ],
)
def test_plan_threads(consumers: int | str, threads: int | None, cores: int, expected: tuple[int, int, bool]) -> None:
    plan = plan_threads(consumers, threads, cores)
    assert (plan.consumers, plan.threads, plan.oversubscribed) == expected
    if not plan.oversubscribed:
        assert plan.consumers * plan.threads <= cores


def test_plan_threads_gpu_auto_is_one_consumer() -> None:
    plan = plan_threads("auto", None, 16, gpu=True)
    assert (plan.consumers, plan.threads, plan.oversubscribed) == (1, 16, False)
    assert plan_threads(3, None, 16, gpu=True).consumers == 3  # explicit: share the GPU


def test_heartbeat_read(tmp_path: Path) -> None:
    path = tmp_path / "hb.json"
    assert heartbeat.read(path) is None
    path.write_text(json.dumps({"pid": 7, "state": "busy", "job_id": "j1", "ts": 1.0, "extra": 1}))
    beat = heartbeat.read(path)
    assert beat is not None and beat.ready and beat.body is not None and beat.body.job_id == "j1"
    path.write_text('{"pid": 7, "state": "booting", "error": "model dir /x missing"}')
    beat = heartbeat.read(path)
    assert beat is not None and not beat.ready and beat.body is not None and beat.body.error == "model dir /x missing"
    path.write_text("{half")
    beat = heartbeat.read(path)
    assert beat is not None and beat.body is None and beat.mtime > 0
