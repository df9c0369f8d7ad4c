"""Pure decisions of the supervisor: why a child died, whether and when to restart it, when to halt.

No processes, no clocks of its own (callers pass ``now``), so every rule is unit-tested
without spawning anything (tests/test_supervisor_policy.py).
"""

from __future__ import annotations

import os
import signal
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from funasr_fleet import exitcodes
from funasr_fleet.settings import SupervisorSettings


class Cause(StrEnum):
    """Why a consumer went away; also the ``cause`` label of ``fleet_consumer_restarts_total``."""

    CLEAN = "clean"  # exit 0 while we did not ask it to stop
    BOOT_FAILURE = "boot_failure"  # died before it was ever ready (exit 3, 78, crash or hung while booting)
    CRASH = "crash"  # died after being ready: non-zero exit or a signal we did not send
    OOM_SUSPECTED = "oom_suspected"  # SIGKILL we did not send: most often the kernel OOM killer
    HUNG = "hung"  # heartbeat went silent; we sent SIGABRT, then SIGKILL
    DEADLINE = "deadline"  # exit 4: a job passed its deadline; replaced without counting as a crash
    CANCELLED = "cancelled"  # exit 6: its job was cancelled inside a model call; replaced, not a crash
    ORPHANED = "orphaned"  # exit 5: the child believed its supervisor was gone
    STOPPED = "stopped"  # we asked it to stop (drain, rolling restart, halt)


@dataclass(frozen=True)
class Death:
    """One reaped child, classified."""

    pid: int
    exit_code: int | None  # None when killed by a signal
    signal: int | None
    cause: Cause
    was_ready: bool

    @property
    def counts_as_crash(self) -> bool:
        return self.cause in (Cause.CRASH, Cause.OOM_SUSPECTED, Cause.HUNG)

    @property
    def counts_as_boot_failure(self) -> bool:
        return self.cause is Cause.BOOT_FAILURE

    def describe(self) -> str:
        """Human sentence for logs and halt messages."""
        if self.signal is not None:
            name = _signame(self.signal)
            text = f"killed by {name}"
            if self.cause is Cause.OOM_SUSPECTED:
                text += " (not sent by the supervisor: possibly out of memory, see `dmesg` / container OOM events)"
            elif self.cause is Cause.HUNG:
                text += " (heartbeat silent: killed as hung)"
        else:
            text = f"exit code {self.exit_code}"
            meaning = _EXIT_MEANINGS.get(self.exit_code or 0)
            if meaning:
                text += f" ({meaning})"
        return text


_EXIT_MEANINGS = {
    exitcodes.OK: "clean stop",
    exitcodes.CRASH: "crash",
    exitcodes.BOOT_FAILURE: "boot failure",
    exitcodes.JOB_TIMEOUT: "job deadline passed",
    exitcodes.ORPHANED: "orphaned",
    exitcodes.JOB_CANCELLED: "job cancelled inside a model call",
    exitcodes.CONFIG: "invalid settings",
}


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def classify(pid: int, status: int, *, was_ready: bool, stop_requested: bool, hung_killed: bool) -> Death:
    """Turn a raw ``waitpid`` status into a :class:`Death` with its cause.

    ``stop_requested``: we sent SIGTERM on purpose (drain, rolling restart, halt).
    ``hung_killed``: we sent SIGABRT/SIGKILL because the heartbeat went silent.
    """
    if os.WIFSIGNALED(status):
        exit_code, sig = None, os.WTERMSIG(status)
    else:
        exit_code, sig = os.WEXITSTATUS(status), None
    return Death(pid, exit_code, sig, _cause(exit_code, sig, was_ready, stop_requested, hung_killed), was_ready)


def _cause(exit_code: int | None, sig: int | None, was_ready: bool, stop_requested: bool, hung_killed: bool) -> Cause:
    if hung_killed:
        return Cause.HUNG if was_ready else Cause.BOOT_FAILURE
    if stop_requested and (exit_code == exitcodes.OK or sig in (signal.SIGTERM, signal.SIGKILL)):
        return Cause.STOPPED
    if not was_ready and exit_code in (exitcodes.OK, exitcodes.ORPHANED):
        # Never ready yet gone "cleanly": e.g. a --consumer-command wrapper that forks, so the
        # consumer's parent is not the supervisor. Count it, or it would restart in a tight loop.
        return Cause.BOOT_FAILURE
    if exit_code == exitcodes.JOB_TIMEOUT:
        return Cause.DEADLINE
    if exit_code == exitcodes.JOB_CANCELLED:
        return Cause.CANCELLED
    if exit_code == exitcodes.ORPHANED:
        return Cause.ORPHANED
    if exit_code == exitcodes.OK:
        return Cause.STOPPED if stop_requested else Cause.CLEAN
    if not was_ready:
        return Cause.BOOT_FAILURE
    if sig == signal.SIGKILL:
        return Cause.OOM_SUSPECTED
    return Cause.CRASH


class Action(StrEnum):
    RESTART = "restart"
    NONE = "none"  # stopping on purpose: nothing to replace
    HALT = "halt"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay_s: float = 0.0
    halt_exit_code: int = 0
    reason: str = ""


@dataclass
class RestartPolicy:
    """Restart with exponential backoff per slot; halt on repeated boot failures or a crash storm.

    - Boot failures are counted consecutively across all slots; any consumer reaching ready resets
      the count. ``max_boot_failures`` in a row halt with exit 3: restarting cannot fix a bad model
      path or bad settings, and a crash loop would only hide the message.
    - Runtime crashes (crash, suspected OOM, hung) are counted in a sliding window;
      ``max_crashes_in_window`` within ``crash_window_s`` halt with exit 1.
    - The restart delay of a slot doubles with each consecutive failure of that slot
      (``base``, ``2·base``, ... capped at ``max``) and resets once a child of that slot has stayed
      ready for ``stable_after_s``.
    - Deadline (exit 4), orphaned (5), job cancelled (6) and clean exits are replaced at once and never
      counted.
    """

    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_boot_failures: int = 3
    crash_window_s: float = 300.0
    max_crashes_in_window: int = 10
    stable_after_s: float = 60.0
    boot_failures: int = 0
    crash_times: deque[float] = field(default_factory=deque)
    slot_failures: dict[int, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, sup: SupervisorSettings) -> RestartPolicy:
        """The ``supervisor.*`` limits; a child counts as stable after ``restart_backoff_max_s`` ready."""
        return cls(
            backoff_base_s=sup.restart_backoff_base_s,
            backoff_max_s=sup.restart_backoff_max_s,
            max_boot_failures=sup.max_boot_failures,
            crash_window_s=sup.crash_window_s,
            max_crashes_in_window=sup.max_crashes_in_window,
            stable_after_s=sup.restart_backoff_max_s,
        )

    def backoff(self, failures: int) -> float:
        """Delay before restarting after ``failures`` consecutive failures of one slot (0 → none)."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_max_s, self.backoff_base_s * (2 ** (failures - 1)))

    def on_ready(self, slot: int) -> None:
        """A consumer reached ready: the install and settings work."""
        self.boot_failures = 0

    def on_stable(self, slot: int) -> None:
        """A consumer stayed ready long enough: forget its slot's failure streak."""
        self.slot_failures.pop(slot, None)

    def on_death(self, slot: int, death: Death, now: float, *, stopping: bool) -> Decision:
        """What to do about ``slot`` after ``death`` at ``now`` (monotonic s): restart (with a delay), nothing, halt."""
        if stopping or death.cause is Cause.STOPPED:
            return Decision(Action.NONE, reason=death.describe())
        if death.counts_as_boot_failure:
            self.boot_failures += 1
            failures = self.slot_failures[slot] = self.slot_failures.get(slot, 0) + 1
            if self.boot_failures >= self.max_boot_failures:
                return Decision(
                    Action.HALT,
                    halt_exit_code=exitcodes.BOOT_FAILURE,
                    reason=f"{self.boot_failures} consecutive boot failures (last: {death.describe()})",
                )
            return Decision(Action.RESTART, self.backoff(failures), reason=death.describe())
        if death.counts_as_crash:
            self.crash_times.append(now)
            while self.crash_times and self.crash_times[0] <= now - self.crash_window_s:
                self.crash_times.popleft()
            if len(self.crash_times) >= self.max_crashes_in_window:
                return Decision(
                    Action.HALT,
                    halt_exit_code=exitcodes.CRASH,
                    reason=(
                        f"{len(self.crash_times)} consumer crashes within {self.crash_window_s:g} s "
                        f"(last: {death.describe()})"
                    ),
                )
            failures = self.slot_failures[slot] = self.slot_failures.get(slot, 0) + 1
            return Decision(Action.RESTART, self.backoff(failures), reason=death.describe())
        # deadline, cancelled, orphaned, clean: replace now, no penalty
        return Decision(Action.RESTART, 0.0, reason=death.describe())


@dataclass(frozen=True)
class ThreadPlan:
    consumers: int
    threads: int
    cores: int
    oversubscribed: bool


def plan_threads(consumers: int | str, threads: int | None, cores: int, *, gpu: bool = False) -> ThreadPlan:
    """How many consumers and threads each, so consumers × threads ≤ usable cores.

    ``auto`` consumers = cores ÷ threads (threads default 1). An explicit count with no thread
    setting gets cores ÷ count (at least 1). Only explicit choices of both can oversubscribe,
    which the caller logs as a warning (OpenMP spin-waits make oversubscription very slow).
    With ``gpu`` (engine on CUDA) ``auto`` means ONE consumer: every consumer holds its own copy
    of the model in GPU memory, so sharing a GPU must be asked for with an explicit count.
    """
    cores = max(1, cores)
    if consumers == "auto" and gpu:
        t = threads or cores
        return ThreadPlan(consumers=1, threads=t, cores=cores, oversubscribed=t > cores)
    if consumers == "auto":
        t = threads or 1
        n = max(1, cores // t)
    else:
        n = int(consumers)
        if n < 1:
            raise ValueError("consumers must be >= 1 or 'auto'")
        t = threads if threads is not None else max(1, cores // n)
    return ThreadPlan(consumers=n, threads=t, cores=cores, oversubscribed=n * t > cores)
