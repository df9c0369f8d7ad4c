"""A child's lifecycle (supervisor/child.py), pure: transitions and what the death classifier reads."""

from __future__ import annotations

import signal
from pathlib import Path

from funasr_fleet.supervisor.child import ZYGOTE, Child, Phase


class Recorded(Child):
    """A child whose signals are recorded instead of sent (no process behind it)."""

    sent: list[int]

    def send(self, sig: int) -> None:
        self.sent.append(sig)


def child(slot: int = 0) -> Recorded:
    c = Recorded(slot=slot, generation=1, pid=10**7, hb_path=Path("/none"), started_mono=0.0, last_beat_wall=0.0)
    c.sent = []
    return c


def test_booting_to_ready_to_stable() -> None:
    c = child()
    assert c.phase is Phase.BOOTING and not c.was_ready
    assert not c.became_stable(100.0, 60.0)  # never ready: never stable
    assert c.became_ready(5.0) and c.phase is Phase.READY and c.ready_since == 5.0
    assert not c.became_ready(6.0)  # once
    assert not c.became_stable(64.0, 60.0)
    assert c.became_stable(65.0, 60.0) and c.phase is Phase.STABLE
    assert not c.became_stable(200.0, 60.0)  # once


def test_stop_is_remembered_for_the_classifier() -> None:
    c = child()
    c.became_ready(1.0)
    c.stop()
    assert c.phase is Phase.STOPPING and c.stop_requested and c.was_ready and not c.hung
    assert c.sent == [signal.SIGTERM]
    assert not c.became_stable(1000.0, 60.0)  # a child we are stopping earns nothing


def test_hung_then_killed() -> None:
    c = child()
    c.abort(kill_at=12.5)
    assert c.phase is Phase.HUNG and c.kill_at == 12.5 and c.hung and not c.was_ready
    c.kill()
    assert c.phase is Phase.KILLED and c.kill_at is None and c.hung
    assert c.sent == [signal.SIGABRT, signal.SIGKILL]


def test_a_hung_child_stays_hung_when_stopped() -> None:
    """Its death is classified as hung, and its SIGKILL deadline still applies."""
    c = child()
    c.became_ready(1.0)
    c.abort(kill_at=30.0)
    c.stop()
    assert c.phase is Phase.HUNG and c.kill_at == 30.0 and not c.stop_requested
    assert c.sent == [signal.SIGABRT, signal.SIGTERM]


def test_ready_after_a_stop_is_still_recorded() -> None:
    """A child stopped while booting that reports ready before exiting counts as was_ready."""
    c = child()
    c.stop()
    assert c.became_ready(3.0) and c.phase is Phase.STOPPING and c.was_ready


def test_names_and_last_words() -> None:
    assert child(ZYGOTE).name == "zygote" and child(2).name == "consumer"
    c = child()
    assert c.last_words() == ""
    c.stderr_tail.extend(["Traceback ...", "ValueError: boom", "  "])
    assert c.last_words() == "ValueError: boom"
    c.error = "model dir /x missing"
    assert c.last_words() == "model dir /x missing"
