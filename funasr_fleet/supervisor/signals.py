"""The supervisor's signals: handlers only enqueue; the loop sleeps on a wakeup pipe and does the work.

Python's C-level wakeup fd writes a byte to the pipe when a signal arrives, which interrupts the
loop's ``select`` at once (gunicorn's arbiter does the same with its own pipe).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections import deque
from types import FrameType

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT)


class SignalQueue:
    """Install with :meth:`install` (main thread), read with :meth:`pop`, restore with :meth:`restore`."""

    def __init__(self) -> None:
        self._signals: deque[int] = deque()
        self._wake_r: int | None = None
        self._wake_w: int | None = None

    def install(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in HANDLED:
            signal.signal(sig, self._enqueue)

    def restore(self) -> None:
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None

    def _enqueue(self, signum: int, frame: FrameType | None) -> None:
        # Only enqueue: no logging, no locks in a signal handler.
        self._signals.append(signum)

    def pop(self) -> int | None:
        """The oldest signal not handled yet, or None."""
        return self._signals.popleft() if self._signals else None

    def sleep(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` seconds, less if a signal arrives (none waits when one is queued)."""
        if self._signals:
            timeout_s = 0.0
        assert self._wake_r is not None, "install() first"
        with contextlib.suppress(InterruptedError):  # pragma: no cover - PEP 475 retries
            select.select([self._wake_r], [], [], timeout_s)
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
