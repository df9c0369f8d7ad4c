"""The terminal progress bar ``wait --progress`` draws from a job's events."""

from __future__ import annotations

from typing import TextIO

from funasr_fleet import events


class ProgressBar:
    """A one-line progress bar fed by job events (redrawn on a TTY, one line per stage otherwise)."""

    WIDTH = 30

    def __init__(self, job_id: str, stream: TextIO) -> None:
        self.job_id = job_id
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = ""
        self._drawn = False

    def update(self, event: events.CloudEvent) -> None:
        data = event.data
        if event.kind == "started":
            fraction, label = 0.0, f"started (attempt {data.attempt})"
        elif event.kind == "progress":
            fraction = data.progress or 0.0
            label = data.stage or "running"
            if data.stage == "retrying" and data.error is not None:
                label = f"retrying after {data.error.code}"
        elif event.kind == "succeeded":
            fraction, label = 1.0, "succeeded"
        elif event.kind == "cancelled":
            fraction, label = data.progress or 0.0, "cancelled"
        else:
            fraction, label = data.progress or 0.0, f"failed: {data.error.code if data.error else '?'}"
        filled = round(self.WIDTH * max(0.0, min(1.0, fraction)))
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:5.1f}% {label}"
        if line == self._last:
            return
        self._last = line
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
            self._drawn = True
        else:
            self.stream.write(f"{self.job_id}: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
