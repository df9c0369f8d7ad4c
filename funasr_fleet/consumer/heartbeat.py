"""Writing the heartbeat file the supervisor watches (contract: docs/internals.md).

Rewritten atomically (temp file + rename) so a reader never sees half a JSON object. Written
from the thread that services the AMQP connection, so a wedged connection loop stops beating
even while inference goes on.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Literal

State = Literal["booting", "ready", "busy", "draining"]


class Heartbeat:
    """Atomic writer of ``{"pid", "state", "job_id", "ts"[, "error"]}``; a no-op without a path."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._last = 0.0

    def write(self, state: State, job_id: str | None = None, error: str | None = None) -> None:
        if self.path is None:
            return
        body: dict[str, object] = {"pid": os.getpid(), "state": state, "job_id": job_id, "ts": time.time()}
        if error:
            body["error"] = error.splitlines()[0][:500] if error.strip() else error
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)
            self._last = time.monotonic()

    def maybe_write(self, state: State, job_id: str | None = None, every_s: float = 0.5) -> None:
        """Write unless the last write is younger than ``every_s`` (keeps the loop cheap)."""
        if time.monotonic() - self._last >= every_s:
            try:
                self.write(state, job_id)
            except OSError:
                # Never take the connection loop down over the file: a missing beat already tells
                # the supervisor something is wrong.
                self._last = time.monotonic()


class BootBeater:
    """Beats ``booting`` from a small thread while the model loads (the loop does not run yet)."""

    def __init__(self, heartbeat: Heartbeat, interval_s: float = 0.5) -> None:
        self._hb = heartbeat
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="boot-heartbeat", daemon=True)

    def __enter__(self) -> BootBeater:
        self._hb.write("booting")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._hb.write("booting")
            except OSError:
                pass
