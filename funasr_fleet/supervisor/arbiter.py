"""The arbiter: one loop that keeps N consumer processes alive (after gunicorn's arbiter).

Signal handlers only enqueue the signal (the C-level wakeup fd interrupts the loop's sleep);
all work happens in the loop: reap children (``waitpid(-1, WNOHANG)``), read heartbeats, kill
hung children, restart dead ones with backoff, roll on SIGHUP, drain on SIGTERM/SIGINT.

Consumers are fresh interpreters (``python -m funasr_fleet consume``), never forks of this
process: forking after imports is unsafe with CUDA and threads. With ``supervisor.preload =
"fork"`` they are forks of a zygote instead (a fresh interpreter that loaded the model with one
thread and never runs it; consumer/zygote.py): the zygote is a child in slot ``ZYGOTE`` with its
own heartbeat, restart policy and rolling restart, and its forks are re-parented to this process
(a child subreaper), so everything below treats them like exec'd consumers. Children run in their
own process group so a terminal's Ctrl-C reaches only the supervisor, which then drains them once
(a second signal would make a consumer abandon its job). The supervisor never imports the engine.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from funasr_fleet import exitcodes, metrics
from funasr_fleet.logs import get_logger
from funasr_fleet.pids import pid_alive
from funasr_fleet.settings import Settings
from funasr_fleet import heartbeat
from funasr_fleet.supervisor import preload
from funasr_fleet.supervisor.policy import Action, Cause, RestartPolicy, ThreadPlan, classify

log = get_logger("supervisor")

TICK_S = 0.25
STDERR_TAIL_LINES = 20
HEALTHZ_STALE_S = 10.0
ZYGOTE = -1  # the slot of the zygote (preload = fork); consumer slots are 0..N-1
SPAWN_TIMEOUT_S = 10.0  # a zygote that does not answer a spawn request in this time is killed
SPAWN_RETRY_S = 1.0


def default_consumer_command() -> list[str]:
    return [sys.executable, "-m", "funasr_fleet", "consume"]


@dataclass
class Child:
    """One consumer process as the arbiter sees it."""

    slot: int
    gen: int
    pid: int
    hb_path: Path
    started_mono: float
    last_beat_wall: float
    state: str = "booting"
    job_id: str | None = None
    error: str | None = None
    ever_ready: bool = False
    ready_since: float | None = None
    stable: bool = False
    stop_requested: bool = False
    hung_killed: bool = False
    kill_at: float | None = None
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    reader: threading.Thread | None = None
    returncode: int | None = None
    sock: socket.socket | None = None  # the zygote's: spawn requests go through it

    @property
    def name(self) -> str:
        return "zygote" if self.slot == ZYGOTE else "consumer"

    def last_words(self) -> str:
        """The best one-line reason for a failure: the heartbeat's error, else stderr's last line."""
        if self.error:
            return self.error
        for line in reversed(self.stderr_tail):
            if line.strip():
                return line.strip()
        return ""


@dataclass
class Rolling:
    slot: int
    old_pid: int
    new_pid: int
    promoted: bool = False


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
        self.policy = RestartPolicy(
            backoff_base_s=self.sup.restart_backoff_base_s,
            backoff_max_s=self.sup.restart_backoff_max_s,
            max_boot_failures=self.sup.max_boot_failures,
            crash_window_s=self.sup.crash_window_s,
            max_crashes_in_window=self.sup.max_crashes_in_window,
            stable_after_s=self.sup.restart_backoff_max_s,
        )
        self.run_dir = run_dir or make_run_dir(self.sup.state_dir)
        self.hb_dir = self.run_dir / "heartbeats"
        metrics.enable_multiprocess(self.run_dir / "metrics")
        self.hb_dir.mkdir(parents=True, exist_ok=True)
        self.children: dict[int, Child] = {}  # pid -> child, every live process we started
        self.slots: dict[int, int] = {}  # slot -> pid of the child serving it
        self.pending: dict[int, float] = {}  # slot -> monotonic time to (re)start it
        self.gens: dict[int, int] = {}
        self.rolling: Rolling | None = None
        self.roll_queue: deque[int] = deque()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.killed_leftovers = False
        self.exit_code = exitcodes.OK
        self.halt_reason: str | None = None
        self.last_tick = time.monotonic()
        self.started_wall = time.time()
        self._signals: deque[int] = deque()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._stderr_lock = threading.Lock()

    # --- public -------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
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
                if not preload.become_subreaper():
                    self.halt_reason = "supervisor.preload = fork needs Linux (PR_SET_CHILD_SUBREAPER)"
                    self.exit_code = exitcodes.CONFIG
                    return self.exit_code
                self.pending[ZYGOTE] = time.monotonic()
            while True:
                now = time.monotonic()
                self.last_tick = now
                self._handle_signals(now)
                self._reap(now)
                self._check_heartbeats(now)
                if self.stopping:
                    if self._drain_step(now):
                        break
                else:
                    self._rolling_step(now)
                    self._spawn_due(now)
                self._update_gauges()
                self._sleep()
        finally:
            self._restore_signals()
        if self.halt_reason:
            log.error("supervisor halted", reason=self.halt_reason, exit_code=self.exit_code)
        else:
            log.info("supervisor stopped", exit_code=self.exit_code)
        return self.exit_code

    def cleanup(self) -> None:
        """Remove this run's directory (heartbeats, metrics shards): it is per run by design."""
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        """A snapshot for /readyz and /status (read from the HTTP thread: plain values only)."""
        now_wall = time.time()
        consumers = []
        zygote = None
        for child in list(self.children.values()):
            if child.slot == ZYGOTE:
                if self.slots.get(ZYGOTE) == child.pid or zygote is None:
                    zygote = {"pid": child.pid, "generation": child.gen, "state": child.state,
                              "heartbeat_age_s": round(now_wall - child.last_beat_wall, 3)}  # fmt: skip
                continue
            consumers.append(
                {
                    "slot": child.slot,
                    "pid": child.pid,
                    "generation": child.gen,
                    "state": child.state,
                    "job_id": child.job_id,
                    "serving": self.slots.get(child.slot) == child.pid,
                    "heartbeat_age_s": round(now_wall - child.last_beat_wall, 3),
                }
            )
        return {
            "pid": os.getpid(),
            "stopping": self.stopping,
            "halt_reason": self.halt_reason,
            "consumers_wanted": self.plan.consumers,
            "threads_per_consumer": self.plan.threads,
            "ready": self.ready_count(),
            "alive": self.alive_count(),
            "loop_age_s": round(time.monotonic() - self.last_tick, 3),
            "preload": self.sup.preload,
            "zygote": zygote,
            "consumers": consumers,
        }

    def loop_alive(self) -> bool:
        return time.monotonic() - self.last_tick < HEALTHZ_STALE_S

    def ready_count(self) -> int:
        return sum(1 for slot in list(self.slots) if slot != ZYGOTE and self._serving_ready(slot) is not None)

    def alive_count(self) -> int:
        return sum(1 for child in list(self.children.values()) if child.slot != ZYGOTE)

    def _serving_ready(self, slot: int) -> Child | None:
        """The child serving ``slot`` if it is ready and beating, else None."""
        pid = self.slots.get(slot)
        child = self.children.get(pid) if pid is not None else None
        if (
            child is not None
            and child.state in heartbeat.READY_STATES
            and not child.hung_killed
            and child.kill_at is None
            and time.time() - child.last_beat_wall <= self.sup.heartbeat_timeout_s
        ):
            return child
        return None

    def _can_spawn(self, slot: int) -> bool:
        """Forked consumers need a ready zygote; everything else can start any time."""
        return not self.preload or slot == ZYGOTE or self._serving_ready(ZYGOTE) is not None

    # --- signals ------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, self._enqueue)

    def _enqueue(self, signum: int, frame: object) -> None:
        # Only enqueue: the loop does the work (no logging, no locks in a signal handler).
        self._signals.append(signum)

    def _restore_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None

    def _sleep(self) -> None:
        timeout = TICK_S
        due = [t for slot, t in self.pending.items() if self._can_spawn(slot)]
        if due and not self.stopping:
            timeout = max(0.0, min(timeout, min(due) - time.monotonic()))
        if self._signals:
            timeout = 0.0
        assert self._wake_r is not None
        try:
            select.select([self._wake_r], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            pass
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self, now: float) -> None:
        while self._signals:
            sig = self._signals.popleft()
            if sig == signal.SIGCHLD:
                continue  # reaping happens every tick
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                if not self.stopping:
                    log.info("drain requested", signal=signal.Signals(sig).name, grace_period_s=self.sup.grace_period_s)
                    self._begin_stop(now)
                else:
                    # A second request: consumers treat a second SIGTERM as "requeue and exit now".
                    log.warning("second stop signal: asking consumers to requeue their jobs and exit now")
                    for child in list(self.children.values()):
                        self._send(child, signal.SIGTERM)
            elif sig == signal.SIGHUP:
                if self.stopping:
                    continue
                if self.rolling or self.roll_queue:
                    log.info("rolling restart already in progress")
                    continue
                self.roll_queue.extend(sorted(self.slots))
                log.info("rolling restart requested", slots=list(self.roll_queue))

    # --- processes ----------------------------------------------------------------------------

    def _child_overrides(self, slot: int, hb_path: Path) -> dict[str, str]:
        """What a child's environment sets on top of the supervisor's (forked children get only this)."""
        # the zygote loads with one thread: an OpenMP pool started before fork deadlocks children
        threads = "1" if slot == ZYGOTE else str(self.plan.threads)
        base_id = self.settings.consumer.id or socket.gethostname()
        env = {
            "FLEET_CONSUMER__HEARTBEAT_FILE": str(hb_path),
            "FLEET_ENGINE__THREADS": threads,
            "FLEET_CONSUMER__ID": f"{base_id}-zygote" if slot == ZYGOTE else f"{base_id}-c{slot}",
            "FLEET_SUPERVISOR_PID": str(os.getpid()),
            metrics.MULTIPROC_ENV: str(self.run_dir / "metrics"),
        }
        # OpenMP/BLAS read these at library load: the plan wins over inherited values (the
        # engine's configure_threads sets the same from FLEET_ENGINE__THREADS).
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = threads
        # spinning threads stall the other consumers
        env["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
        return env

    def _spawn(self, slot: int) -> Child:
        gen = self.gens[slot] = self.gens.get(slot, 0) + 1
        hb_path = self.hb_dir / (f"zygote.{gen}.json" if slot == ZYGOTE else f"consumer-{slot}.{gen}.json")
        overrides = self._child_overrides(slot, hb_path)
        sock: socket.socket | None = None
        if slot != ZYGOTE and self.preload:
            pid, stderr = self._fork_consumer(overrides)
        else:
            pid, stderr, sock = self._exec_child(slot, overrides)
        now = time.monotonic()
        child = Child(slot=slot, gen=gen, pid=pid, hb_path=hb_path, started_mono=now, last_beat_wall=time.time(), sock=sock)
        child.reader = threading.Thread(
            target=self._pump_stderr, args=(stderr, child.stderr_tail), name=f"stderr-{pid}", daemon=True
        )
        child.reader.start()
        self.children[pid] = child
        log.info(f"{child.name} started", slot=slot, pid=pid, generation=gen, forked=slot != ZYGOTE and self.preload)
        return child

    def _fork_consumer(self, overrides: dict[str, str]) -> tuple[int, IO[bytes]]:
        """A consumer forked by the ready zygote: (pid, its stderr)."""
        zygote = self._serving_ready(ZYGOTE)
        assert zygote is not None and zygote.sock is not None, "spawn without a ready zygote"
        pid, stderr_fd = preload.request_spawn(zygote.sock, overrides, SPAWN_TIMEOUT_S)
        return pid, os.fdopen(stderr_fd, "rb")

    def _exec_child(self, slot: int, overrides: dict[str, str]) -> tuple[int, IO[bytes], socket.socket | None]:
        """A fresh interpreter (a consumer, or the zygote with its socket): (pid, its stderr, socket)."""
        command, pass_fds = self.command, ()
        sock = their = None
        if slot == ZYGOTE:
            sock, their = preload.socket_pair()
            command, pass_fds = preload.zygote_command(), (their.fileno(),)
            overrides = {**overrides, preload.ZYGOTE_FD_ENV: str(their.fileno())}
        try:
            popen = subprocess.Popen(  # noqa: S603 - our own interpreter and command
                command,
                env={**os.environ, **overrides},
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                close_fds=True,
                pass_fds=pass_fds,
                process_group=0,
            )
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        finally:
            if their is not None:
                their.close()
        assert popen.stderr is not None
        return popen.pid, popen.stderr, sock

    def _pump_stderr(self, stream: IO[bytes], tail: deque[str]) -> None:
        """Forward a child's stderr line by line, keeping the last lines for failure messages."""
        out = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
        try:
            for raw in iter(stream.readline, b""):
                tail.append(raw.decode("utf-8", "replace").rstrip("\n"))
                if out is not None:
                    with self._stderr_lock:
                        try:
                            out.write(raw)
                            out.flush()
                        except (OSError, ValueError):
                            pass
        finally:
            stream.close()

    def _send(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def _spawn_due(self, now: float) -> None:
        for slot, due in sorted(self.pending.items()):
            if due <= now and self._can_spawn(slot):
                del self.pending[slot]
                if slot not in self.slots:
                    try:
                        self.slots[slot] = self._spawn(slot).pid
                    except preload.SpawnError as exc:
                        self._spawn_failed(slot, exc, now)
                    except (FileNotFoundError, PermissionError) as exc:  # the command itself is wrong
                        self.halt_reason = f"cannot start the consumer command {self.command}: {exc}"
                        self.exit_code = exitcodes.CONFIG
                        log.error("supervisor halting: " + self.halt_reason, exit_code=self.exit_code)
                        self._begin_stop(now)
                        return
                    except OSError as exc:  # fork/exec failed (EAGAIN, ENOMEM): try again later
                        delay = self.policy.backoff_max_s
                        log.error("cannot start consumer", slot=slot, error=repr(exc), retry_in_s=delay)
                        self.pending[slot] = now + delay

    def _spawn_failed(self, slot: int, exc: preload.SpawnError, now: float) -> None:
        """The zygote did not fork a consumer: retry soon; an unresponsive zygote is replaced."""
        log.error("zygote could not fork a consumer", slot=slot, error=str(exc), retry_in_s=SPAWN_RETRY_S)
        self.pending[slot] = now + SPAWN_RETRY_S
        zygote = self._serving_ready(ZYGOTE)
        if zygote is not None and exc.zygote_unresponsive:
            zygote.hung_killed = True  # classified as hung: replaced by the restart policy
            self._send(zygote, signal.SIGKILL)

    def _reap(self, now: float) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            metrics.mark_process_dead(pid)
            if child is None:
                continue
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.sock is not None:
                child.sock.close()
            if child.reader is not None:
                child.reader.join(timeout=1.0)  # let the last stderr lines arrive
            self._read_beat(child)  # a boot error written just before exit
            death = classify(
                pid, status, was_ready=child.ever_ready, stop_requested=child.stop_requested, hung_killed=child.hung_killed
            )
            serving = self.slots.get(child.slot) == pid
            if serving:
                del self.slots[child.slot]
            fields: dict[str, Any] = {
                "slot": child.slot,
                "pid": pid,
                "exit_code": death.exit_code,
                "signal": death.signal,
                "cause": death.cause.value,
                "uptime_s": round(now - child.started_mono, 3),
            }
            if death.cause not in (Cause.STOPPED, Cause.CLEAN):
                fields["last_words"] = child.last_words()
            log_fn = log.info if death.cause in (Cause.STOPPED, Cause.CLEAN, Cause.DEADLINE) else log.warning
            log_fn(f"{child.name} exited: " + death.describe(), **fields)
            try:
                child.hb_path.unlink(missing_ok=True)
            except OSError:
                pass

            if self.rolling and pid == self.rolling.new_pid and not self.rolling.promoted:
                log.error("rolling restart aborted: the new consumer died before it was ready", slot=child.slot)
                self.rolling = None
                self.roll_queue.clear()
            if not serving:
                # a retired (rolling) or never-promoted child: its slot is served by another, and
                # a new consumer failing during a rolling restart must not halt a working fleet
                continue
            decision = self.policy.on_death(child.slot, death, now, stopping=self.stopping)
            if decision.action is Action.RESTART:
                if child.slot != ZYGOTE:
                    metrics.consumer_restarted(death.cause.value)
                self.pending[child.slot] = now + decision.delay_s
                if decision.delay_s > 0:
                    log.info("consumer restart scheduled", slot=child.slot, delay_s=decision.delay_s)
            elif decision.action is Action.HALT and not self.stopping:
                detail = child.last_words()
                self.halt_reason = ("zygote (preload = fork): " if child.slot == ZYGOTE else "") + decision.reason
                self.halt_reason += f"; cause: {detail}" if detail else ""
                self.exit_code = decision.halt_exit_code
                log.error(
                    "supervisor halting: " + self.halt_reason,
                    exit_code=self.exit_code,
                    last_stderr=list(child.stderr_tail)[-10:],
                )
                self._begin_stop(now)

    def _read_beat(self, child: Child) -> heartbeat.Beat | None:
        beat = heartbeat.read(child.hb_path)
        if beat is None:
            return None
        child.last_beat_wall = max(child.last_beat_wall, beat.mtime)
        if beat.body is not None:
            child.state = beat.body.state
            child.job_id = beat.body.job_id
            if beat.body.error:
                child.error = beat.body.error
        return beat

    def _check_heartbeats(self, now: float) -> None:
        now_wall = time.time()
        for child in list(self.children.values()):
            beat = self._read_beat(child)
            if beat is not None and beat.ready and not child.ever_ready:
                child.ever_ready = True
                child.ready_since = now
                self.policy.on_ready(child.slot)
                log.info(f"{child.name} ready", slot=child.slot, pid=child.pid, boot_s=round(now - child.started_mono, 3))
            if child.ever_ready and not child.stable and child.ready_since is not None:
                if now - child.ready_since >= self.policy.stable_after_s:
                    child.stable = True
                    self.policy.on_stable(child.slot)
            if child.kill_at is not None:
                if now >= child.kill_at:
                    log.warning("consumer did not exit: SIGKILL", slot=child.slot, pid=child.pid)
                    self._send(child, signal.SIGKILL)
                    child.kill_at = None
                continue
            if child.hung_killed:
                continue
            limit = self.sup.heartbeat_timeout_s if child.ever_ready else self.sup.boot_timeout_s
            silent = now_wall - child.last_beat_wall
            if silent > limit:
                child.hung_killed = True
                log.error(
                    "consumer hung: heartbeat silent, sending SIGABRT then SIGKILL",
                    slot=child.slot,
                    pid=child.pid,
                    silent_s=round(silent, 1),
                    limit_s=limit,
                    phase="running" if child.ever_ready else "booting",
                    job_id=child.job_id,
                )
                self._send(child, signal.SIGABRT)
                # A stopped (SIGSTOP) or wedged process never acts on SIGABRT: escalate.
                child.kill_at = now + self.sup.abort_grace_s

    # --- drain and rolling restart ------------------------------------------------------------

    def _begin_stop(self, now: float) -> None:
        self.stopping = True
        self.pending.clear()
        self.roll_queue.clear()
        self.rolling = None
        self.stop_deadline = now + self.sup.grace_period_s
        for child in list(self.children.values()):
            child.stop_requested = True
            self._send(child, signal.SIGTERM)

    def _drain_step(self, now: float) -> bool:
        """True when every child is gone."""
        if not self.children:
            return True
        if not self.killed_leftovers and self.stop_deadline is not None and now >= self.stop_deadline:
            self.killed_leftovers = True
            for child in list(self.children.values()):
                log.warning(
                    "grace period over: SIGKILL", slot=child.slot, pid=child.pid, state=child.state, job_id=child.job_id
                )
                self._send(child, signal.SIGKILL)
        return False

    def _rolling_step(self, now: float) -> None:
        roll = self.rolling
        if roll is None:
            while self.roll_queue:
                slot = self.roll_queue.popleft()
                old_pid = self.slots.get(slot)
                if old_pid is None or slot in self.pending:
                    continue  # restarting anyway
                if not self._can_spawn(slot):
                    self.roll_queue.appendleft(slot)  # wait for the (new) zygote
                    return
                try:
                    new = self._spawn(slot)
                except preload.SpawnError as exc:
                    log.error("rolling restart: zygote could not fork a consumer", slot=slot, error=str(exc))
                    self.roll_queue.appendleft(slot)
                    return
                self.rolling = Rolling(slot=slot, old_pid=old_pid, new_pid=new.pid)
                log.info(f"rolling restart: new {new.name} starting", slot=slot, old_pid=old_pid, new_pid=new.pid)
                return
            return
        new = self.children.get(roll.new_pid)
        if not roll.promoted:
            if new is None:
                self.rolling = None
                return
            if new.ever_ready:
                roll.promoted = True
                self.slots[roll.slot] = new.pid
                old = self.children.get(roll.old_pid)
                if old is not None:
                    old.stop_requested = True
                    self._send(old, signal.SIGTERM)
                    old.kill_at = None
                log.info(f"rolling restart: new {new.name} ready, stopping the old one", slot=roll.slot, old_pid=roll.old_pid)
                if roll.slot != ZYGOTE:
                    metrics.consumer_restarted("rolling")
            return
        if roll.old_pid not in self.children:
            self.rolling = None
            if not self.roll_queue:
                log.info("rolling restart finished")

    def _update_gauges(self) -> None:
        metrics.consumers(alive=self.alive_count(), ready=self.ready_count())


def make_run_dir(state_dir: Path | None) -> Path:
    """A fresh directory for this supervisor run (heartbeats, metrics shards)."""
    base = state_dir or Path(tempfile.gettempdir()) / f"funasr-fleet-{os.getuid()}"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("run-*"):
        # Leftovers of supervisors that are gone (killed, host reboot) would mix into metrics.
        try:
            pid = int(old.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(old, ignore_errors=True)
    run_dir = base / f"run-{os.getpid()}-{int(time.time() * 1000)}"
    run_dir.mkdir()
    return run_dir


    return True
