"""The one worker thread: runs each job the loop hands it, so the loop thread never blocks on one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import structlog

from funasr_fleet.consumer.bridge import Bridge
from funasr_fleet.consumer.delivery import RunningJob

log = structlog.get_logger("funasr_fleet.consumer.worker")

Runner = Callable[[RunningJob, Bridge], None]
"""Runs one job to its end (settling the message through the bridge); must not raise."""


class Worker:
    """A daemon thread fed by :meth:`submit`; ``on_done`` runs after every job (the loop wakes up)."""

    def __init__(self, runner: Runner, bridge: Bridge, on_done: Callable[[], None]) -> None:
        self.runner = runner
        self._bridge = bridge
        self._on_done = on_done
        self._jobs: queue.Queue[RunningJob | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="job-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: RunningJob) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self.runner(job, self._bridge)
            except BaseException as exc:
                log.exception("job runner crashed", error=repr(exc))
            finally:
                structlog.contextvars.clear_contextvars()
                job.done.set()
                self._on_done()
