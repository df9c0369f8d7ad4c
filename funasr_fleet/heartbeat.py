"""The heartbeat file between a consumer (or the zygote) and its supervisor (contract: docs/internals.md).

One JSON object ``{"pid", "state", "job_id", "ts"[, "error"]}``. The consumer rewrites it
atomically (temp file + rename, so a reader never sees half an object) from the thread that
services its AMQP connection, so a wedged connection loop stops beating even while inference goes
on. The supervisor only reads: the file's mtime proves liveness, ``state`` says readiness, and
``error`` (one line) names why a boot failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class BeatState(StrEnum):
    """The ``state`` a process reports; unknown values from a newer writer are read as plain strings."""

    BOOTING = "booting"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"


READY_STATES = frozenset({BeatState.READY, BeatState.BUSY})
"""States in which a consumer takes (or runs) jobs: the supervisor counts it as ready."""


class HeartbeatBody(BaseModel):
    """The JSON a consumer writes. Unknown fields are ignored so the contract can grow."""

    model_config = ConfigDict(extra="ignore")

    pid: int | None = None
    state: BeatState | str = BeatState.BOOTING
    job_id: str | None = None
    ts: float | None = None  # wall clock (time.time()) of the write
    error: str | None = None  # set by a consumer that fails to boot: the cause, one line


# --- the writer (consumer, zygote) ----------------------------------------------------------------
class Heartbeat:
    """Atomic writer of the heartbeat file; a no-op without a path (a consumer run by hand)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._last = 0.0

    def write(self, state: BeatState, job_id: str | None = None, error: str | None = None) -> None:
        """Rewrite the file now. ``error`` is cut to its first line (500 chars). Raises OSError."""
        if self.path is None:
            return
        body: dict[str, object] = {"pid": os.getpid(), "state": str(state), "job_id": job_id, "ts": time.time()}
        if error:
            body["error"] = error.splitlines()[0][:500] if error.strip() else error
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)
            self._last = time.monotonic()

    def maybe_write(self, state: BeatState, job_id: str | None = None, every_s: float = 0.5) -> None:
        """Write unless the last write is younger than ``every_s`` seconds (keeps a loop cheap).

        Never raises: a missing beat already tells the supervisor something is wrong, and the
        connection loop must not die over the file.
        """
        if time.monotonic() - self._last >= every_s:
            try:
                self.write(state, job_id)
            except OSError:
                self._last = time.monotonic()


class BootBeater:
    """Beats ``booting`` from a small thread while the model loads (the loop does not run yet)."""

    def __init__(self, heartbeat: Heartbeat, interval_s: float = 0.5) -> None:
        self._hb = heartbeat
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="boot-heartbeat", daemon=True)

    def __enter__(self) -> BootBeater:
        self._hb.write(BeatState.BOOTING)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(OSError):
                self._hb.write(BeatState.BOOTING)


# --- the reader (supervisor) ----------------------------------------------------------------------
@dataclass(frozen=True)
class Beat:
    """One read of the file."""

    mtime: float  # wall clock (time.time()) of the last rewrite
    body: HeartbeatBody | None  # None when the content could not be parsed

    @property
    def state(self) -> str | None:
        return self.body.state if self.body else None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


def read(path: Path) -> Beat | None:
    """The latest beat, or None if the file does not exist yet."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    try:
        body: HeartbeatBody | None = HeartbeatBody.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        body = None
    return Beat(mtime=mtime, body=body)
