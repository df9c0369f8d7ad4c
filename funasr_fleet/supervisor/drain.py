"""Stopping the fleet: drain (SIGTERM to every child, wait up to ``supervisor.grace_period_s``), then SIGKILL.

The arbiter's loop calls :func:`drain_step` every tick once it is stopping, and nothing else starts.
"""

from __future__ import annotations

import signal
from enum import StrEnum
from typing import TYPE_CHECKING

from funasr_fleet.logs import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from funasr_fleet.supervisor.arbiter import Arbiter

log = get_logger("supervisor")


class FleetState(StrEnum):
    RUNNING = "running"
    DRAINING = "draining"  # SIGTERM sent to every child; waiting up to grace_period_s
    KILLING = "killing"  # grace period over: SIGKILL sent to what was left


def begin_stop(arbiter: Arbiter, now: float) -> None:
    """Start draining: nothing more starts, every child (and the sidecar) is asked to stop, the grace period runs."""
    arbiter.state = FleetState.DRAINING
    arbiter.pending.clear()
    arbiter.rolling.clear()
    arbiter.stop_deadline = now + arbiter.sup.grace_period_s
    for child in list(arbiter.children.values()):
        child.stop()
    if arbiter.sidecar is not None:
        arbiter.sidecar.stop()


def drain_step(arbiter: Arbiter, now: float) -> bool:
    """True when every child is gone; SIGKILL for what is left once the grace period is over."""
    if not arbiter.children and (arbiter.sidecar is None or not arbiter.sidecar.alive):
        return True
    if arbiter.state is FleetState.DRAINING and arbiter.stop_deadline is not None and now >= arbiter.stop_deadline:
        arbiter.state = FleetState.KILLING
        if arbiter.sidecar is not None:
            arbiter.sidecar.send(signal.SIGKILL)
        for child in list(arbiter.children.values()):
            log.warning(
                "grace period over: SIGKILL",
                slot=child.slot,
                pid=child.pid,
                state=child.beat_state,
                job_id=child.job_id,
            )
            child.send(signal.SIGKILL)
    return False
