"""The announcer sidecar: one ``funasr-fleet announce`` child per supervisor (``supervisor.announcer``).

Why here: without it a broker dead-letter (a job that crashed or OOM-killed its consumer on every
delivery) has no ``job.failed`` event and a waiting client waits until its own timeout. Running it
beside the consumers makes that work on the default deployment; several announcers (one per pod)
are safe (funasr_fleet.announce). It is not a consumer: not counted in readiness, in the crash
budget or in the halt rules; restarted with its own backoff; SIGTERM when the supervisor drains.

The arbiter reaps every child with ``waitpid(-1)`` and hands this one's exit to :meth:`reaped`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

from funasr_fleet.logs import get_logger

log = get_logger("supervisor.announcer")

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
STABLE_AFTER_S = 60.0
"""An announcer that lived this long (monotonic s) restarts at once again (its failure streak is forgotten)."""


def announcer_command() -> list[str]:
    return [sys.executable, "-m", "funasr_fleet", "announce"]


class AnnouncerSidecar:
    """One announcer child: started when due, restarted with backoff after any exit, stopped on drain."""

    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or announcer_command()
        self.pid: int | None = None
        self.started_at = 0.0
        self.due_at = 0.0  # monotonic; when to (re)start it
        self.failures = 0
        self.stopping = False
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def alive(self) -> bool:
        return self.pid is not None

    def step(self, now: float) -> None:
        """Start it if due (``now``: monotonic s). Start failures are logged and retried later."""
        if self.stopping or self.pid is not None or now < self.due_at:
            return
        try:
            self._popen = subprocess.Popen(
                self.command,
                env={**os.environ, "FLEET_SUPERVISOR_PID": str(os.getpid())},
                stdin=subprocess.DEVNULL,
                close_fds=True,
                process_group=0,  # a terminal's Ctrl-C reaches the supervisor only, which then drains it
            )
        except OSError as exc:
            self._schedule(now, f"cannot start: {exc}")
            return
        self.pid, self.started_at = self._popen.pid, now
        log.info("announcer started", pid=self.pid)

    def reaped(self, pid: int, status: int, now: float) -> bool:
        """The arbiter reaped ``pid``: True when it was this child (then restart is scheduled)."""
        if pid != self.pid:
            return False
        code = os.waitstatus_to_exitcode(status)
        if self._popen is not None:
            self._popen.returncode = code  # reaped already: Popen must not wait for it
        self.pid = self._popen = None
        if self.stopping:
            log.info("announcer stopped", exit_code=code)
        else:
            if now - self.started_at >= STABLE_AFTER_S:
                self.failures = 0
            self._schedule(now, f"exited with {code}")
        return True

    def _schedule(self, now: float, why: str) -> None:
        self.failures += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (self.failures - 1))
        self.due_at = now + delay
        log.warning("announcer " + why + "; restarting", retry_in_s=delay)

    def stop(self) -> None:
        """SIGTERM (the announcer finishes the message in hand and exits); no restart after this."""
        self.stopping = True
        self.send(signal.SIGTERM)

    def send(self, sig: int) -> None:
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
