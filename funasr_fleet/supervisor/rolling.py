"""SIGHUP: replace every child one slot at a time, the new one ready before the old one stops.

With ``preload = fork`` the zygote's slot comes first (slots are rolled in sorted order, the
zygote's is -1), so the new consumers are forks of the new zygote.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from funasr_fleet import metrics
from funasr_fleet.errors import SpawnError
from funasr_fleet.logs import get_logger
from funasr_fleet.supervisor.child import ZYGOTE, Child

log = get_logger("supervisor")


class RollPhase(StrEnum):
    STARTING = "starting"  # the new child boots; the old one still serves the slot
    RETIRING = "retiring"  # the new child serves; the old one drains and exits


@dataclass
class Roll:
    slot: int
    old_pid: int
    new_pid: int
    phase: RollPhase = RollPhase.STARTING


class Fleet(Protocol):
    """What a rolling restart needs of the arbiter."""

    children: dict[int, Child]
    slots: dict[int, int]
    pending: dict[int, float]

    def can_spawn(self, slot: int) -> bool: ...
    def spawn(self, slot: int) -> Child: ...


class RollingRestart:
    """The slots still to roll, and the one rolling now."""

    def __init__(self) -> None:
        self.queue: deque[int] = deque()
        self.current: Roll | None = None

    @property
    def active(self) -> bool:
        return self.current is not None or bool(self.queue)

    def request(self, slots: list[int]) -> None:
        self.queue.extend(sorted(slots))
        log.info("rolling restart requested", slots=list(self.queue))

    def clear(self) -> None:
        self.queue.clear()
        self.current = None

    def child_died(self, child: Child) -> None:
        """A new child that dies before it was ready aborts the whole rolling restart."""
        roll = self.current
        if roll is not None and child.pid == roll.new_pid and roll.phase is RollPhase.STARTING:
            log.error("rolling restart aborted: the new consumer died before it was ready", slot=child.slot)
            self.clear()

    def step(self, fleet: Fleet) -> None:
        if self.current is None:
            self._start_next(fleet)
        elif self.current.phase is RollPhase.STARTING:
            self._promote_when_ready(fleet, self.current)
        elif self.current.old_pid not in fleet.children:
            self.current = None
            if not self.queue:
                log.info("rolling restart finished")

    def _start_next(self, fleet: Fleet) -> None:
        while self.queue:
            slot = self.queue.popleft()
            old_pid = fleet.slots.get(slot)
            if old_pid is None or slot in fleet.pending:
                continue  # restarting anyway
            if not fleet.can_spawn(slot):
                self.queue.appendleft(slot)  # wait for the (new) zygote
                return
            try:
                new = fleet.spawn(slot)
            except SpawnError as exc:
                log.error("rolling restart: zygote could not fork a consumer", slot=slot, error=str(exc))
                self.queue.appendleft(slot)
                return
            self.current = Roll(slot=slot, old_pid=old_pid, new_pid=new.pid)
            log.info(f"rolling restart: new {new.name} starting", slot=slot, old_pid=old_pid, new_pid=new.pid)
            return

    def _promote_when_ready(self, fleet: Fleet, roll: Roll) -> None:
        new = fleet.children.get(roll.new_pid)
        if new is None:
            self.current = None
            return
        if not new.was_ready:
            return
        roll.phase = RollPhase.RETIRING
        fleet.slots[roll.slot] = new.pid
        old = fleet.children.get(roll.old_pid)
        if old is not None:
            old.stop()
        log.info(f"rolling restart: new {new.name} ready, stopping the old one", slot=roll.slot, old_pid=roll.old_pid)
        if roll.slot != ZYGOTE:
            metrics.consumer_restarted("rolling")
