"""The arbiter: one loop that keeps N consumer processes alive (after gunicorn's arbiter).

Signal handlers only enqueue the signal (supervisor/signals.py); all work happens in the loop,
every :data:`TICK_S` or at once on a signal: handle signals, reap children
(``waitpid(-1, WNOHANG)``; settling and logging a death: supervisor/exits.py), read heartbeats
(supervisor/watch.py), then either drain (SIGTERM, SIGINT; supervisor/drain.py) or roll (SIGHUP,
supervisor/rolling.py) and start what is due. Each child's life is one
:class:`~funasr_fleet.supervisor.child.Phase`; why it died and what to do next are pure decisions
(supervisor/policy.py); starting one is supervisor/spawn.py.

With ``supervisor.preload = "fork"`` the zygote is a child in slot ``ZYGOTE`` with its own
heartbeat, restart policy and rolling restart, and its forks are re-parented to this process (a
child subreaper), so everything here treats them like exec'd consumers. The supervisor never
imports the engine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from funasr_fleet import exitcodes, metrics
from funasr_fleet.errors import SpawnError
from funasr_fleet.heartbeat import READY_STATES
from funasr_fleet.logs import get_logger
from funasr_fleet.settings import Settings
from funasr_fleet.supervisor.child import ZYGOTE, Child
from funasr_fleet.supervisor.drain import FleetState, begin_stop, drain_step
from funasr_fleet.supervisor.exits import log_death, settle
from funasr_fleet.supervisor.memory import MemoryWatch
from funasr_fleet.supervisor.policy import Action, Death, RestartPolicy, ThreadPlan
from funasr_fleet.supervisor.rolling import RollingRestart
from funasr_fleet.supervisor.rundir import make_run_dir
from funasr_fleet.supervisor.sidecar import AnnouncerSidecar
from funasr_fleet.supervisor.signals import SignalQueue
from funasr_fleet.supervisor.spawn import Spawner, become_subreaper, default_consumer_command
from funasr_fleet.supervisor.status import snapshot
from funasr_fleet.supervisor.watch import HeartbeatWatch

log = get_logger("supervisor")

TICK_S = 0.25
HEALTHZ_STALE_S = 10.0
SPAWN_RETRY_S = 1.0


class Arbiter:
    """Spawn, watch, restart and drain consumers. ``run()`` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        plan: ThreadPlan,
        *,
        consumer_command: list[str] | None = None,
        run_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.sup = settings.supervisor
        self.plan = plan
        self.command = consumer_command or default_consumer_command()
        self.preload = self.sup.preload == "fork"
        self.policy = RestartPolicy.from_settings(self.sup)
        self.run_dir = run_dir or make_run_dir(self.sup.state_dir)
        metrics.enable_multiprocess(self.run_dir / "metrics")
        self.spawner = Spawner(settings, plan, self.command, self.run_dir)
        self.watch = HeartbeatWatch(self.sup, self.policy)
        self.children: dict[int, Child] = {}  # pid -> child, every live process we started
        self.slots: dict[int, int] = {}  # slot -> pid of the child serving it
        self.pending: dict[int, float] = {}  # slot -> monotonic time to (re)start it
        self.generations: dict[int, int] = {}  # slot -> children started for it so far
        self.rolling = RollingRestart()
        self.state = FleetState.RUNNING
        self.stop_deadline: float | None = None
        self.exit_code = exitcodes.OK
        self.halt_reason: str | None = None
        self.last_tick = time.monotonic()
        self.signals = SignalQueue()
        self.memory = MemoryWatch()
        self.sidecar = AnnouncerSidecar() if self.sup.announcer else None  # not a consumer (supervisor/sidecar.py)

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> int:
        self.signals.install()
        log.info(
            "supervisor starting",
            consumers=self.plan.consumers,
            threads_per_consumer=self.plan.threads,
            usable_cores=self.plan.cores,
            run_dir=str(self.run_dir),
            command=self.command,
            preload=self.sup.preload,
        )
        try:
            self.pending = {slot: time.monotonic() for slot in range(self.plan.consumers)}
            if self.preload:
                if not become_subreaper():
                    self.halt_reason = "supervisor.preload = fork needs Linux (PR_SET_CHILD_SUBREAPER)"
                    self.exit_code = exitcodes.CONFIG
                    return self.exit_code
                self.pending[ZYGOTE] = time.monotonic()
            while True:
                now = self.last_tick = time.monotonic()
                self._handle_signals(now)
                self._reap(now)
                now_wall = time.time()
                for child in list(self.children.values()):
                    self.watch.check(child, now, now_wall)
                self.memory.step(now, self.children, self.slots)
                if self.stopping:
                    if drain_step(self, now):
                        break
                else:
                    self.rolling.step(self)
                    self._spawn_due(now)
                    if self.sidecar is not None:
                        self.sidecar.step(now)
                metrics.consumers(alive=self.alive_count(), ready=self.ready_count())
                self.signals.sleep(self._sleep_s())
        finally:
            self.signals.restore()
        if self.halt_reason:
            log.error("supervisor halted", reason=self.halt_reason, exit_code=self.exit_code)
        else:
            log.info("supervisor stopped", exit_code=self.exit_code)
        return self.exit_code

    def _sleep_s(self) -> float:
        due = [t for slot, t in self.pending.items() if self.can_spawn(slot)]
        if due and not self.stopping:
            return max(0.0, min(TICK_S, min(due) - time.monotonic()))
        return TICK_S

    def cleanup(self) -> None:
        """Remove this run's directory (heartbeats, metrics shards): it is per run by design."""
        shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- what /healthz, /readyz and /status read (HTTP thread: plain values only) -------------------
    @property
    def stopping(self) -> bool:
        return self.state is not FleetState.RUNNING

    def loop_alive(self) -> bool:
        return time.monotonic() - self.last_tick < HEALTHZ_STALE_S

    def ready_count(self) -> int:
        return sum(1 for slot in list(self.slots) if slot != ZYGOTE and self.serving_ready(slot) is not None)

    def alive_count(self) -> int:
        return sum(1 for child in list(self.children.values()) if child.slot != ZYGOTE)

    def serving_ready(self, slot: int) -> Child | None:
        """The child serving ``slot`` if its heartbeat is fresh and says ready or busy, else None."""
        pid = self.slots.get(slot)
        child = self.children.get(pid) if pid is not None else None
        if (
            child is not None
            and child.beat_state in READY_STATES
            and not child.hung
            and time.time() - child.last_beat_wall <= self.sup.heartbeat_timeout_s
        ):
            return child
        return None

    def status(self) -> dict[str, Any]:
        """A snapshot for /status (supervisor/status.py)."""
        return snapshot(self)

    # --- signals ---------------------------------------------------------------------------------
    def _handle_signals(self, now: float) -> None:
        while (sig := self.signals.pop()) is not None:
            if sig == signal.SIGCHLD:
                continue  # reaping happens every tick
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                if not self.stopping:
                    name = signal.Signals(sig).name
                    log.info("drain requested", signal=name, grace_period_s=self.sup.grace_period_s)
                    begin_stop(self, now)
                else:
                    # A second request: consumers treat a second SIGTERM as "requeue and exit now".
                    log.warning("second stop signal: asking consumers to requeue their jobs and exit now")
                    for child in list(self.children.values()):
                        child.send(signal.SIGTERM)
            elif sig == signal.SIGHUP and not self.stopping:
                if self.rolling.active:
                    log.info("rolling restart already in progress")
                else:
                    self.rolling.request(list(self.slots))

    # --- starting children -------------------------------------------------------------------------
    def can_spawn(self, slot: int) -> bool:
        """Forked consumers need a ready zygote; everything else can start any time."""
        return not self.preload or slot == ZYGOTE or self.serving_ready(ZYGOTE) is not None

    def spawn(self, slot: int) -> Child:
        """Start a child for ``slot`` (not yet serving it). Raises what Spawner.start raises."""
        generation = self.generations[slot] = self.generations.get(slot, 0) + 1
        forked = slot != ZYGOTE and self.preload
        child = self.spawner.start(slot, generation, self.serving_ready(ZYGOTE) if forked else None)
        self.children[child.pid] = child
        log.info(f"{child.name} started", slot=slot, pid=child.pid, generation=generation, forked=forked)
        return child

    def _spawn_due(self, now: float) -> None:
        for slot, due in sorted(self.pending.items()):
            if due > now or not self.can_spawn(slot):
                continue
            del self.pending[slot]
            if slot in self.slots:
                continue
            try:
                self.slots[slot] = self.spawn(slot).pid
            except SpawnError as exc:
                self._spawn_failed(slot, exc, now)
            except (FileNotFoundError, PermissionError) as exc:  # the command itself is wrong
                self._halt(f"cannot start the consumer command {self.command}: {exc}", exitcodes.CONFIG, now)
                return
            except OSError as exc:  # fork/exec failed (EAGAIN, ENOMEM): try again later
                delay = self.policy.backoff_max_s
                log.error("cannot start consumer", slot=slot, error=repr(exc), retry_in_s=delay)
                self.pending[slot] = now + delay

    def _spawn_failed(self, slot: int, exc: SpawnError, now: float) -> None:
        """The zygote did not fork a consumer: retry soon; an unresponsive zygote is replaced."""
        log.error("zygote could not fork a consumer", slot=slot, error=str(exc), retry_in_s=SPAWN_RETRY_S)
        self.pending[slot] = now + SPAWN_RETRY_S
        zygote = self.serving_ready(ZYGOTE)
        if zygote is not None and exc.zygote_unresponsive:
            zygote.kill()  # counted as hung: replaced by the restart policy

    # --- children that exited ----------------------------------------------------------------------
    def _reap(self, now: float) -> None:
        """Collect every exited child without blocking; classify each death and act on it."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            metrics.mark_process_dead(pid)
            child = self.children.pop(pid, None)
            if child is not None:
                child.reaped(status)
                self._on_exit(child, status, now)
            elif self.sidecar is not None:
                self.sidecar.reaped(pid, status, now)

    def _on_exit(self, child: Child, status: int, now: float) -> None:
        death = settle(child, status)
        serving = self.slots.get(child.slot) == child.pid
        if serving:
            del self.slots[child.slot]
        log_death(child, death, now)
        with contextlib.suppress(OSError):
            child.hb_path.unlink(missing_ok=True)
        self.rolling.child_died(child)
        if serving:
            # only a serving child is replaced: a retired (rolling) or never-promoted one's slot is
            # served by another, and a new consumer failing during a rolling restart must not
            # halt a working fleet
            self._replace(child, death, now)

    def _replace(self, child: Child, death: Death, now: float) -> None:
        """Restart the slot (with the policy's delay) or halt the fleet, as the policy decides."""
        decision = self.policy.on_death(child.slot, death, now, stopping=self.stopping)
        if decision.action is Action.RESTART:
            if child.slot != ZYGOTE:
                metrics.consumer_restarted(death.cause.value)
            self.pending[child.slot] = now + decision.delay_s
            if decision.delay_s > 0:
                log.info("consumer restart scheduled", slot=child.slot, delay_s=decision.delay_s)
        elif decision.action is Action.HALT and not self.stopping:
            detail = child.last_words()
            reason = ("zygote (preload = fork): " if child.slot == ZYGOTE else "") + decision.reason
            reason += f"; cause: {detail}" if detail else ""
            self._halt(reason, decision.halt_exit_code, now, last_stderr=list(child.stderr_tail)[-10:])

    # --- stopping ----------------------------------------------------------------------------------
    def _halt(self, reason: str, exit_code: int, now: float, **fields: Any) -> None:
        self.halt_reason, self.exit_code = reason, exit_code
        log.error("supervisor halting: " + reason, exit_code=exit_code, **fields)
        begin_stop(self, now)
