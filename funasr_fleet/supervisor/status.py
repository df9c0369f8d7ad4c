"""The JSON of ``/status``: the fleet and each child, read from the HTTP thread (plain values only)."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from funasr_fleet.supervisor.child import ZYGOTE

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.supervisor.arbiter import Arbiter


def snapshot(arbiter: Arbiter) -> dict[str, Any]:
    """``{"pid", "stopping", "halt_reason", "consumers_wanted", "threads_per_consumer", "ready",
    "alive", "loop_age_s", "preload", "zygote", "consumers": [...]}``; each child with its slot,
    pid, generation, heartbeat ``state``, lifecycle ``phase``, job id, whether it serves its slot,
    its heartbeat's age in seconds, and its resident memory in bytes (``rss_bytes`` at the last
    sample, ``peak_rss_bytes`` its high-water mark; None before the first sample, see
    supervisor/memory.py)."""
    now_wall = time.time()
    consumers: list[dict[str, Any]] = []
    zygote: dict[str, Any] | None = None
    for child in list(arbiter.children.values()):
        entry = {
            "slot": child.slot,
            "pid": child.pid,
            "generation": child.generation,
            "state": child.beat_state,
            "phase": child.phase,
            "job_id": child.job_id,
            "serving": arbiter.slots.get(child.slot) == child.pid,
            "heartbeat_age_s": round(now_wall - child.last_beat_wall, 3),
            "rss_bytes": child.memory.rss_bytes if child.memory else None,
            "peak_rss_bytes": child.memory.peak_rss_bytes if child.memory else None,
        }
        if child.slot != ZYGOTE:
            consumers.append(entry)
        elif entry["serving"] or zygote is None:
            keys = ("pid", "generation", "state", "phase", "heartbeat_age_s", "rss_bytes", "peak_rss_bytes")
            zygote = {k: entry[k] for k in keys}
    return {
        "pid": os.getpid(),
        "stopping": arbiter.stopping,
        "halt_reason": arbiter.halt_reason,
        "consumers_wanted": arbiter.plan.consumers,
        "threads_per_consumer": arbiter.plan.threads,
        "ready": arbiter.ready_count(),
        "alive": arbiter.alive_count(),
        "loop_age_s": round(time.monotonic() - arbiter.last_tick, 3),
        "preload": arbiter.settings.supervisor.preload,
        "zygote": zygote,
        "consumers": consumers,
    }
