"""Per-child memory (supervisor/memory.py) and the spawner keeping its Popen objects until the reap.

The /proc parser is pure; the sampler, /status and /metrics run against a real supervisor with the
stand-in consumer (tests/supervisor_harness.py); the Popen test runs the real Spawner.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from funasr_fleet import metrics
from funasr_fleet.settings import Settings
from funasr_fleet.supervisor.memory import Memory, MemoryWatch, parse_status, read, slot_label
from funasr_fleet.supervisor.policy import ThreadPlan
from funasr_fleet.supervisor.spawn import Spawner
from tests.supervisor_harness import STANDIN, Fleet, pid_alive, wait_for
from tests.test_supervisor import FAST

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t  912340 kB
VmSize:\t  900000 kB
VmHWM:\t  523456 kB
VmRSS:\t  400000 kB
RssAnon:\t  300000 kB
Threads:\t5
"""

ZOMBIE = """Name:\tpython3
State:\tZ (zombie)
Pid:\t4242
Threads:\t1
"""


# --- the parser (pure) -------------------------------------------------------------------------


def test_parse_status_reads_peak_and_current_rss_in_bytes() -> None:
    assert parse_status(STATUS) == Memory(rss_bytes=400000 * 1024, peak_rss_bytes=523456 * 1024)


def test_parse_status_without_vm_lines_is_none() -> None:
    """A zombie (or a kernel thread) has no address space: no sample, the last one is kept."""
    assert parse_status(ZOMBIE) is None
    assert parse_status("") is None
    assert parse_status("VmRSS:\t 10 kB\n") is None  # half a sample is no sample


def test_parse_status_refuses_an_unknown_unit_or_number() -> None:
    assert parse_status("VmHWM:\t 10 MB\nVmRSS:\t 5 MB\n") is None
    assert parse_status("VmHWM:\t ten kB\nVmRSS:\t 5 kB\n") is None


def test_read_this_process_and_a_missing_one() -> None:
    own = read(os.getpid())
    assert own is not None and 0 < own.rss_bytes <= own.peak_rss_bytes
    assert read(2**22 + 12345) is None  # above pid_max's default: never a process


def test_slot_labels() -> None:
    assert [slot_label(s) for s in (-1, 0, 3)] == ["zygote", "0", "3"]


def test_metrics_expose_the_last_samples_and_forget_gone_slots() -> None:
    metrics.consumer_memory({"0": (100, 300), "zygote": (50, 60)})
    text = metrics.render()[0].decode()
    assert 'fleet_consumer_rss_bytes{slot="0"} 100.0' in text
    assert 'fleet_consumer_peak_rss_bytes{slot="0"} 300.0' in text
    assert 'fleet_consumer_peak_rss_bytes{slot="zygote"} 60.0' in text
    metrics.consumer_memory({"1": (7, 8)})
    text = metrics.render()[0].decode()
    assert 'slot="0"' not in text and 'fleet_consumer_peak_rss_bytes{slot="1"} 8.0' in text
    metrics.consumer_memory({})


def test_memory_watch_samples_at_its_interval() -> None:
    from funasr_fleet.supervisor.child import Child

    me = Child(slot=0, generation=1, pid=os.getpid(), hb_path=Path("/none"), started_mono=0.0, last_beat_wall=0.0)
    watch = MemoryWatch(every_s=10.0)
    watch.step(100.0, {me.pid: me}, {0: me.pid})
    assert me.memory is not None
    me.memory = None
    watch.step(105.0, {me.pid: me}, {0: me.pid})  # not due yet
    assert me.memory is None
    watch.step(110.0, {me.pid: me}, {0: me.pid})
    assert me.memory is not None
    metrics.consumer_memory({})


# --- a real supervisor ---------------------------------------------------------------------------


def test_status_and_metrics_show_rss_per_consumer(tmp_path: Path) -> None:
    standin = tmp_path / "standin_consumer.py"
    standin.write_text(STANDIN)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLEET_", "STANDIN_"))}
    fleet = Fleet(tmp_path, {**env, **FAST}, ["--consumers", "2", "--threads", "1"], [sys.executable, str(standin)])
    try:
        _check_memory_of(fleet)
    finally:
        fleet.stop()


def _check_memory_of(fleet: Fleet) -> None:
    pids = fleet.wait_ready(2)

    def sampled() -> list[dict[str, int]] | None:
        rows = [c for c in fleet.status().get("consumers", []) if c["serving"]]
        return rows if len(rows) == 2 and all(c["peak_rss_bytes"] for c in rows) else None

    rows = wait_for(sampled, 10, what="memory samples in /status")
    assert sorted(c["pid"] for c in rows) == pids
    for row in rows:
        own = read(row["pid"])
        assert own is not None
        # a stand-in interpreter: some MiB, and the sample is the same process's (within a few MiB)
        assert 5 * 2**20 < row["rss_bytes"] <= row["peak_rss_bytes"] < 2**31
        assert abs(row["peak_rss_bytes"] - own.peak_rss_bytes) < 16 * 2**20
    for slot in ("0", "1"):
        assert fleet.metric(f'fleet_consumer_peak_rss_bytes{{slot="{slot}"}}') > 5 * 2**20
        assert fleet.metric(f'fleet_consumer_rss_bytes{{slot="{slot}"}}') > 5 * 2**20


# --- the spawner keeps its Popen until the supervisor reaps ------------------------------------


def test_spawned_child_exit_status_is_left_for_the_supervisors_waitpid(tmp_path: Path) -> None:
    """A Popen dropped while its child runs joins subprocess's list of children to poll, and the
    next Popen anywhere in the process reaps it: the supervisor's waitpid would never see the exit."""
    command = [sys.executable, "-c", "import sys; sys.exit(7)"]
    spawner = Spawner(Settings(), ThreadPlan(1, 1, 1, False), command, tmp_path)
    child = spawner.start(slot=0, generation=1, zygote=None)
    gc.collect()
    wait_for(lambda: not pid_alive(child.pid), 15, what="the child to exit")
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # a new Popen polls subprocess's list
    pid, status = os.waitpid(child.pid, 0)  # ChildProcessError if it was reaped behind our back
    assert pid == child.pid and os.waitstatus_to_exitcode(status) == 7
    assert child.process is not None and child.process.pid == child.pid
    process = child.process
    child.reaped(status)
    assert child.process is None and process.returncode == 7
    del process
    gc.collect()
    subprocess.run([sys.executable, "-c", "pass"], check=True)  # nothing left to poll: no error


def test_status_json_has_memory_keys_for_the_zygote_too() -> None:
    """The /status shape: consumers and the zygote carry rss_bytes and peak_rss_bytes (None before a sample)."""
    from types import SimpleNamespace

    from funasr_fleet.supervisor.child import ZYGOTE, Child
    from funasr_fleet.supervisor.status import snapshot

    zyg = Child(slot=ZYGOTE, generation=1, pid=11, hb_path=Path("/none"), started_mono=0.0, last_beat_wall=0.0)
    con = Child(slot=0, generation=1, pid=12, hb_path=Path("/none"), started_mono=0.0, last_beat_wall=0.0)
    con.memory = Memory(rss_bytes=1, peak_rss_bytes=2)
    arbiter = SimpleNamespace(
        children={11: zyg, 12: con},
        slots={ZYGOTE: 11, 0: 12},
        stopping=False,
        halt_reason=None,
        plan=ThreadPlan(1, 1, 1, False),
        ready_count=lambda: 0,
        alive_count=lambda: 1,
        last_tick=0.0,
        settings=Settings(),
    )
    data = json.loads(json.dumps(snapshot(arbiter)))  # type: ignore[arg-type]
    assert data["consumers"][0]["rss_bytes"] == 1 and data["consumers"][0]["peak_rss_bytes"] == 2
    assert data["zygote"]["rss_bytes"] is None and data["zygote"]["peak_rss_bytes"] is None
