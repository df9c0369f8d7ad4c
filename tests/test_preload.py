"""``supervisor.preload = "fork"``: consumers forked from a zygote that loaded the model once.

Real processes throughout (supervisor, zygote, forked consumers, RabbitMQ, SeaweedFS, FunASR with
the tiny models): the forks must behave exactly like exec'd consumers (same outputs, same
restart/hung/drain/rolling behaviour) while the model is loaded once per zygote, not per consumer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from funasr_fleet import exitcodes
from funasr_fleet.consumer import zygote
from tests.supervisor_harness import Fleet, pid_alive, wait_for
from tests.test_supervisor import _manifests, _started_busy, fleets, real_fleet  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("fleets")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _smaps_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def _transcript(storage: Any, final: dict[str, Any]) -> dict[str, Any]:
    """The job's JSON transcript without what legitimately differs between two runs."""
    uri = next(u for u in final["data"]["outputs"] if u.endswith(".json"))
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    doc = json.loads(storage.get_bytes(bucket, key))
    for volatile in ("job_id", "processing"):
        doc.pop(volatile, None)
    return doc


def _engine_loads(fleet: Fleet) -> int:
    return sum(1 for e in fleet.logs() if e.get("event") == "engine.loaded")


def _zygote(fleet: Fleet) -> dict[str, Any] | None:
    return fleet.status().get("zygote")


def _ready_zygote(fleet: Fleet, not_pid: int | None = None) -> int | None:
    z = _zygote(fleet)
    return z["pid"] if z and z["state"] == "ready" and z["pid"] != not_pid else None


def test_forked_consumers_share_the_model_and_behave_like_consumers(real_fleet, storage) -> None:  # type: ignore[no-untyped-def]
    start_real, bus, upload, settings = real_fleet
    bucket = settings.s3.inbox_bucket
    short, long = upload("short"), upload("long", 120)
    fleet = start_real("--consumers", "2", "--threads", "1", "--preload", "fork")
    pids = fleet.wait_ready(2, timeout=120)
    status = fleet.status()
    assert status["preload"] == "fork" and status["alive"] == 2, status
    zyg = status["zygote"]["pid"]
    sup = fleet.proc.pid
    # forks of the zygote, re-parented to the supervisor (a subreaper), which reaps and watches them
    assert _ppid(zyg) == sup and all(_ppid(p) == sup for p in pids)
    assert _engine_loads(fleet) == 1  # the zygote's; the consumers inherited it

    # the same work as exec'd consumers: jobs succeed, outputs intact
    bus.publish("pre-a", bucket, short)
    bus.publish("pre-b", bucket, short)
    a, b = bus.wait_final("pre-a", 120), bus.wait_final("pre-b", 120)
    assert a["type"].endswith("succeeded") and b["type"].endswith("succeeded"), (a, b)
    assert _transcript(storage, a) == _transcript(storage, b)
    for p in pids:  # the weights are shared: most of each consumer's resident memory is the zygote's
        mem = _smaps_kib(p)
        assert mem["Pss"] < 0.8 * mem["Rss"], mem

    # SIGKILL mid-job: replaced by a new fork (no model load); the job completes exactly once
    bus.publish("pre-kill", bucket, long)
    victim = wait_for(lambda: _started_busy(fleet, bus, "pre-kill"), 60, interval=0.05, what="busy consumer")
    os.kill(victim, signal.SIGKILL)
    final = bus.wait_final("pre-kill", 240)
    assert final["type"].endswith("succeeded")
    assert bus.kinds("pre-kill").count("succeeded") == 1
    assert len(_manifests(storage, settings, "pre-kill")) == 1
    wait_for(lambda: fleet.metric('fleet_consumer_restarts_total{cause="oom_suspected"}') == 1, 10, what="kill counted")
    pids = fleet.wait_ready(2, timeout=60)
    assert _engine_loads(fleet) == 1

    # SIGSTOP a consumer: detected as hung through its heartbeat, replaced
    victim = pids[0]
    os.kill(victim, signal.SIGSTOP)
    wait_for(lambda: not pid_alive(victim), 30, what="hung consumer killed")
    wait_for(lambda: fleet.metric('fleet_consumer_restarts_total{cause="hung"}') == 1, 10, what="hung counted")
    pids = fleet.wait_ready(2, timeout=60)

    # the zygote dies: running consumers are untouched, a new zygote loads the model again
    os.kill(zyg, signal.SIGKILL)
    new_zyg = wait_for(lambda: _ready_zygote(fleet, not_pid=zyg), 120, what="new zygote")
    assert all(pid_alive(p) for p in pids) and fleet.ready_pids() == pids
    assert _engine_loads(fleet) == 2
    bus.publish("pre-after-zygote", bucket, short)
    assert bus.wait_final("pre-after-zygote", 120)["type"].endswith("succeeded")

    # SIGHUP: a new zygote (a changed model would be picked up), then every consumer rolled from it
    fleet.proc.send_signal(signal.SIGHUP)
    roll_zyg = wait_for(lambda: _ready_zygote(fleet, not_pid=new_zyg), 120, what="rolled zygote")
    wait_for(lambda: (r := fleet.ready_pids()) and len(r) == 2 and not set(r) & set(pids), 120, what="rolled consumers")
    assert not pid_alive(new_zyg)
    assert fleet.metric('fleet_consumer_restarts_total{cause="rolling"}') == 2
    assert _engine_loads(fleet) == 3
    rolled = fleet.ready_pids()
    assert all(_ppid(p) == sup for p in rolled) and _ppid(roll_zyg) == sup

    # SIGTERM during a job: drained like exec'd consumers; zygote and consumers gone; exit 0
    bus.publish("pre-drain", bucket, long)
    wait_for(lambda: _started_busy(fleet, bus, "pre-drain"), 60, interval=0.05, what="busy consumer")
    fleet.proc.send_signal(signal.SIGTERM)
    assert fleet.wait_exit(180) == 0
    assert bus.wait_final("pre-drain", 10)["type"].endswith("succeeded")
    assert not any(pid_alive(p) for p in [*rolled, roll_zyg])
    assert bus.queue_depth() == 0

    # the same audio through a fresh-interpreter consumer gives the same transcript
    exec_fleet = start_real("--consumers", "1", "--threads", "1")
    exec_fleet.wait_ready(1, timeout=120)
    bus.publish("exec-a", bucket, short)
    e = bus.wait_final("exec-a", 120)
    assert e["type"].endswith("succeeded")
    assert _transcript(storage, e) == _transcript(storage, a)


def test_zygote_boot_failure_halts_with_the_cause(real_fleet) -> None:  # type: ignore[no-untyped-def]
    start_real, _bus, _upload, _settings = real_fleet
    fleet = start_real("--consumers", "2", "--threads", "1", "--preload", "fork",
                       FLEET_ENGINE__MODEL="/nonexistent/asr-model", FLEET_SUPERVISOR__MAX_BOOT_FAILURES="2")  # fmt: skip
    assert fleet.wait_exit(90) == exitcodes.BOOT_FAILURE
    halt = [e for e in fleet.logs() if e.get("event", "").startswith("supervisor halting")]
    assert halt, fleet.log_text()[-3000:]
    assert "zygote" in halt[0]["event"] and "/nonexistent/asr-model" in halt[0]["event"], halt[0]
    assert not [e for e in fleet.logs() if e.get("event") == "consumer started"]  # never forked


def test_consumers_exit_when_the_supervisor_is_killed(real_fleet) -> None:  # type: ignore[no-untyped-def]
    start_real, _bus, _upload, _settings = real_fleet
    fleet = start_real("--consumers", "1", "--threads", "1", "--preload", "fork")
    pids = fleet.wait_ready(1, timeout=120)
    pids.append(_zygote(fleet)["pid"])  # type: ignore[index]
    fleet.proc.send_signal(signal.SIGKILL)
    fleet.proc.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, what="zygote and consumers exit on their own")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--preload", "fork"], {"FLEET_ENGINE__DEVICE": "cuda:0"}, "CPU only"),
        (["--preload", "fork", "--consumer-command", "true"], {}, "--consumer-command"),
        (["--preload", "spawn"], {}, "invalid choice"),
    ],
)
def test_preload_fork_refuses_what_it_cannot_do(args: list[str], env: dict[str, str], message: str) -> None:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    full.update(env, FLEET_SUPERVISOR__HTTP_PORT="0")
    proc = subprocess.run([sys.executable, "-m", "funasr_fleet", "supervise", *args], env=full,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode in (exitcodes.CONFIG, 2), proc
    assert message in proc.stderr, proc.stderr


def test_zygote_refuses_to_fork_while_it_has_threads() -> None:
    """Forking a multi-threaded process can hand children locks nobody will release."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        reply = zygote._spawn({"op": "spawn", "env": {}}, [w], theirs, engine=None)
    finally:
        stop.set()
        thread.join()
        for fd in (r, w):
            os.close(fd)
        ours.close()
        theirs.close()
    assert "error" in reply and "threads" in reply["error"] and reply["replace"], reply


def test_setting_is_documented(tmp_path: Path) -> None:
    from funasr_fleet.settings import Settings

    assert Settings().supervisor.preload == "none"  # fresh interpreters stay the default
    assert Settings(supervisor={"preload": "fork"}).supervisor.preload == "fork"
