"""What makes a consumer give up: its supervisor gone, or a job past its deadline (pure checks)."""

from __future__ import annotations

import os

from funasr_fleet.settings import ConsumerSettings


class ParentWatch:
    """``gone()`` once this process's parent is no longer the supervisor that started it.

    ``supervisor_pid``: from ``FLEET_SUPERVISOR_PID``; None (a consumer run by hand) never reports gone.
    """

    def __init__(self, supervisor_pid: int | None) -> None:
        self.supervisor_pid = supervisor_pid

    def gone(self) -> bool:
        return self.supervisor_pid is not None and os.getppid() != self.supervisor_pid


def deadline_at(started_at: float, audio_s: float, consumer: ConsumerSettings) -> float:
    """When a job that started at ``started_at`` (monotonic s) over ``audio_s`` seconds of audio
    must be done: ``deadline_base_s + deadline_factor × audio_s`` later."""
    return started_at + consumer.deadline_base_s + consumer.deadline_factor * audio_s
