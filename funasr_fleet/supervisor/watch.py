"""Reading children's heartbeats: readiness, stability, and hung children (SIGABRT, then SIGKILL).

The heartbeat file's mtime proves liveness; a child silent past ``supervisor.boot_timeout_s``
(never ready yet) or ``supervisor.heartbeat_timeout_s`` (after) is hung: SIGABRT, so faulthandler
prints where it hung, then SIGKILL after ``supervisor.abort_grace_s``.
"""

from __future__ import annotations

from funasr_fleet import heartbeat
from funasr_fleet.logs import get_logger
from funasr_fleet.settings import SupervisorSettings
from funasr_fleet.supervisor.child import Child, Phase
from funasr_fleet.supervisor.policy import RestartPolicy

log = get_logger("supervisor")


def read_beat(child: Child) -> heartbeat.Beat | None:
    """Read ``child``'s heartbeat file into it (time, state, job, boot error); None before the first beat."""
    beat = heartbeat.read(child.hb_path)
    if beat is None:
        return None
    child.last_beat_wall = max(child.last_beat_wall, beat.mtime)
    if beat.body is not None:
        child.beat_state = beat.body.state
        child.job_id = beat.body.job_id
        if beat.body.error:
            child.error = beat.body.error
    return beat


class HeartbeatWatch:
    """Moves each child along its lifecycle from what its heartbeat says (and does not say)."""

    def __init__(self, sup: SupervisorSettings, policy: RestartPolicy) -> None:
        self.sup = sup
        self.policy = policy

    def check(self, child: Child, now: float, now_wall: float) -> None:
        """``now``: time.monotonic(); ``now_wall``: time.time() (heartbeat mtimes are wall clock)."""
        beat = read_beat(child)
        if beat is not None and beat.ready and child.became_ready(now):
            self.policy.on_ready(child.slot)
            boot_s = round(now - child.started_mono, 3)
            log.info(f"{child.name} ready", slot=child.slot, pid=child.pid, boot_s=boot_s)
        if child.became_stable(now, self.policy.stable_after_s):
            self.policy.on_stable(child.slot)
        if child.phase is Phase.HUNG:
            if child.kill_at is not None and now >= child.kill_at:
                log.warning("consumer did not exit: SIGKILL", slot=child.slot, pid=child.pid)
                child.kill()
            return
        if child.phase is Phase.KILLED:
            return
        limit = self.sup.heartbeat_timeout_s if child.was_ready else self.sup.boot_timeout_s
        silent = now_wall - child.last_beat_wall
        if silent > limit:
            log.error(
                "consumer hung: heartbeat silent, sending SIGABRT then SIGKILL",
                slot=child.slot,
                pid=child.pid,
                silent_s=round(silent, 1),
                limit_s=limit,
                phase="running" if child.was_ready else "booting",
                job_id=child.job_id,
            )
            child.abort(kill_at=now + self.sup.abort_grace_s)
