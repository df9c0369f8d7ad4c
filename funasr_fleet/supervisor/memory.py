"""Resident memory of each child, read from ``/proc/<pid>/status``, for /status and /metrics.

An operator sizes pods from these: ``peak_rss_bytes`` is the kernel's high-water mark of the
process's resident set (``VmHWM``), so a short spike between two samples is still seen;
``rss_bytes`` is the resident set at the last sample (``VmRSS``). Both count pages shared with
other processes (a zygote's model weights in every forked consumer): for the fleet's sum, PSS
(``/proc/<pid>/smaps_rollup``) is the honest figure, which benchmarks/memory.py measures.

The supervisor reads only its own children, and a child's pid cannot be reused before the
supervisor reaps it; a child that already exited (a zombie) has no ``Vm*`` lines, so its last
sample is kept. Off Linux nothing is read and the fields stay ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from funasr_fleet import metrics
from funasr_fleet.supervisor.child import ZYGOTE, Child

SAMPLE_EVERY_S = 1.0
"""How often the supervisor re-reads every child's memory (one /proc read, ~0.15 ms per child measured)."""
_KIB = 1024


@dataclass(frozen=True)
class Memory:
    """One sample, in bytes: ``rss_bytes`` now, ``peak_rss_bytes`` since the process started."""

    rss_bytes: int
    peak_rss_bytes: int


def parse_status(text: str) -> Memory | None:
    """``/proc/<pid>/status`` text -> Memory, or None when it has no ``VmRSS``/``VmHWM`` (a zombie, a
    kernel thread). The kernel writes both as ``Name:<spaces>N kB`` (kB = KiB)."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name in ("VmRSS", "VmHWM"):
            number, _, unit = value.strip().partition(" ")
            if not number.isdigit() or unit.strip() != "kB":
                return None
            found[name] = int(number) * _KIB
    if len(found) != 2:
        return None
    return Memory(rss_bytes=found["VmRSS"], peak_rss_bytes=found["VmHWM"])


def read(pid: int) -> Memory | None:
    """The memory of process ``pid`` now, or None (gone, a zombie, no /proc)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            return parse_status(f.read())
    except OSError:
        return None


def slot_label(slot: int) -> str:
    """The ``slot`` label of the gauges: ``"0"``.. for consumers, ``"zygote"`` for the zygote."""
    return "zygote" if slot == ZYGOTE else str(slot)


class MemoryWatch:
    """Samples every child's memory each :data:`SAMPLE_EVERY_S` and publishes the gauges.

    Only the child serving a slot is published (during a rolling restart a slot briefly has two
    children; the retiring one still shows in /status). A slot without a serving child has no sample.
    """

    def __init__(self, every_s: float = SAMPLE_EVERY_S) -> None:
        self.every_s = every_s
        self.next_at = 0.0  # monotonic

    def step(self, now: float, children: Mapping[int, Child], slots: Mapping[int, int]) -> None:
        """``children``: pid -> Child; ``slots``: slot -> pid of its serving child; ``now``: monotonic."""
        if now < self.next_at:
            return
        self.next_at = now + self.every_s
        self.sample(children.values())
        serving = ((slot, children.get(pid)) for slot, pid in slots.items())
        metrics.consumer_memory(
            {slot_label(slot): (c.memory.rss_bytes, c.memory.peak_rss_bytes) for slot, c in serving if c and c.memory}
        )

    @staticmethod
    def sample(children: Iterable[Child]) -> None:
        for child in children:
            child.memory = read(child.pid) or child.memory
