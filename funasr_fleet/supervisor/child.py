"""One child process as the supervisor sees it, and its life as one explicit state.

::

    BOOTING ──ready beat──> READY ──ready for stable_after_s──> STABLE
       │                      │                                    │
       └───────── stop requested (drain, rolling restart, halt) ───┴──> STOPPING
       └──── heartbeat silent (any of the above) ──> HUNG (SIGABRT sent; SIGKILL due at kill_at)
                                                       └──> KILLED (SIGKILL sent by us)

A hung child stays HUNG/KILLED when a stop is requested (it is killed anyway). Whether the child
was ever ready (``ready_since``) is kept across every state: the cause of its death depends on it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import subprocess

    from funasr_fleet.supervisor.memory import Memory

STDERR_TAIL_LINES = 20
ZYGOTE = -1
"""The slot of the zygote (``supervisor.preload = "fork"``); consumer slots are 0..N-1."""


class Phase(StrEnum):
    BOOTING = "booting"  # started; no ready beat yet (supervisor.boot_timeout_s applies)
    READY = "ready"  # beat ready/busy at ready_since (supervisor.heartbeat_timeout_s applies)
    STABLE = "stable"  # ready for stable_after_s: its slot's failure streak was forgiven
    STOPPING = "stopping"  # we sent SIGTERM on purpose (drain, rolling restart, halt)
    HUNG = "hung"  # heartbeat silent: SIGABRT sent, SIGKILL due at kill_at
    KILLED = "killed"  # we sent SIGKILL (hung past abort_grace_s, or a zygote that stopped answering)


@dataclass(eq=False)
class Child:
    """A consumer (slot 0..N-1) or the zygote (slot :data:`ZYGOTE`) that this supervisor started."""

    slot: int
    generation: int  # 1, 2, ... per slot: the heartbeat file name carries it
    pid: int
    hb_path: Path
    started_mono: float  # time.monotonic() at spawn
    last_beat_wall: float  # time.time() of the newest heartbeat (spawn time until the first)
    phase: Phase = Phase.BOOTING
    ready_since: float | None = None  # monotonic; set by the first ready beat, kept whatever follows
    kill_at: float | None = None  # monotonic; only while HUNG
    beat_state: str = "booting"  # what the heartbeat says (booting/ready/busy/draining)
    job_id: str | None = None
    error: str | None = None  # the heartbeat's boot error, if any
    stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_TAIL_LINES))
    reader: threading.Thread | None = None  # forwards stderr (supervisor/spawn.py)
    sock: socket.socket | None = None  # the zygote's: spawn requests go through it
    # an exec'd child's Popen, held until we reap it: a Popen dropped while its child runs is
    # polled (waitpid) by the next Popen anywhere in this process, which would steal the exit
    # status from the supervisor's waitpid(-1). None for forked consumers (the zygote's children).
    process: subprocess.Popen[bytes] | None = None
    memory: Memory | None = None  # the last sample (supervisor/memory.py)

    @property
    def name(self) -> str:
        return "zygote" if self.slot == ZYGOTE else "consumer"

    # --- what the death classifier needs (policy.classify) ---------------------------------------
    @property
    def was_ready(self) -> bool:
        return self.ready_since is not None

    @property
    def stop_requested(self) -> bool:
        return self.phase is Phase.STOPPING

    @property
    def hung(self) -> bool:
        return self.phase in (Phase.HUNG, Phase.KILLED)

    # --- transitions -----------------------------------------------------------------------------
    def became_ready(self, now: float) -> bool:
        """A ready beat at ``now`` (monotonic). True the first time (the caller logs and tells the policy)."""
        if self.ready_since is not None:
            return False
        self.ready_since = now
        if self.phase is Phase.BOOTING:
            self.phase = Phase.READY
        return True

    def became_stable(self, now: float, stable_after_s: float) -> bool:
        """True once, when a READY child has been ready for ``stable_after_s`` seconds."""
        if self.phase is not Phase.READY or self.ready_since is None or now - self.ready_since < stable_after_s:
            return False
        self.phase = Phase.STABLE
        return True

    def stop(self) -> None:
        """Ask it to stop (SIGTERM): drain its job and exit. A hung child is left to its kill."""
        if not self.hung:
            self.phase = Phase.STOPPING
        self.send(signal.SIGTERM)

    def abort(self, kill_at: float) -> None:
        """Heartbeat silent: SIGABRT (faulthandler prints every thread's stack); SIGKILL at ``kill_at``.

        A stopped (SIGSTOP) or wedged process never acts on SIGABRT, hence the deadline.
        """
        self.phase, self.kill_at = Phase.HUNG, kill_at
        self.send(signal.SIGABRT)

    def kill(self) -> None:
        self.phase, self.kill_at = Phase.KILLED, None
        self.send(signal.SIGKILL)

    def reaped(self, status: int) -> None:
        """Our waitpid collected it (``status``: the raw wait status): tell its Popen, then let it go."""
        if self.process is not None:
            self.process.returncode = os.waitstatus_to_exitcode(status)
            self.process = None

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # exited; the reaper will see it
            os.kill(self.pid, sig)

    def last_words(self) -> str:
        """The best one-line reason for a failure: the heartbeat's error, else stderr's last line."""
        if self.error:
            return self.error
        for line in reversed(self.stderr_tail):
            if line.strip():
                return line.strip()
        return ""
