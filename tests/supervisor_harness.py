"""Helpers for supervisor tests: run `funasr-fleet supervise` as a real process and watch it.

A stand-in consumer (STANDIN below) follows the consumer contract (heartbeat file, exit codes,
SIGTERM drain, parent watch) without a model or a broker, so the arbiter's mechanics are tested
in seconds; tests/test_supervisor.py also runs the real consumer end to end.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

STANDIN = r'''
"""Stand-in consumer: heartbeat + exit codes per docs/internals.md, behaviour from STANDIN_* env."""
import json, os, signal, sys, time

hb = os.environ["FLEET_CONSUMER__HEARTBEAT_FILE"]
sup = int(os.environ["FLEET_SUPERVISOR_PID"])
mode = os.environ.get("STANDIN_MODE", "ok")
boot_s = float(os.environ.get("STANDIN_BOOT_S", "0.1"))
drain_s = float(os.environ.get("STANDIN_DRAIN_S", "0"))
life_s = float(os.environ.get("STANDIN_LIFE_S", "0.5"))
journal = os.environ.get("STANDIN_JOURNAL")
terms = 0

def write(state, error=None, job_id=None):
    body = {"pid": os.getpid(), "state": state, "job_id": job_id, "ts": time.time(),
            "threads": os.environ.get("FLEET_ENGINE__THREADS"), "omp": os.environ.get("OMP_NUM_THREADS")}
    if error:
        body["error"] = error
    tmp = hb + ".tmp"
    with open(tmp, "w") as f:
        json.dump(body, f)
    os.replace(tmp, hb)

def note(event):
    if journal:
        with open(journal, "a") as f:
            f.write(f"{os.getpid()} {event}\n")

def on_term(signum, frame):
    global terms
    terms += 1
    note("sigterm")
    if terms > 1:
        sys.exit(0)

signal.signal(signal.SIGTERM, on_term)
note("start")
write("booting")
first = True
if journal and os.path.exists(journal):
    first = sum(1 for line in open(journal) if line.endswith(" start\n")) == 1
if mode == "boot_fail" or (mode == "boot_fail_once" and first):
    print("stand-in: loading model /nonexistent/model: no such directory", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "boot_crash":
    raise RuntimeError("stand-in import exploded")
deadline = time.time() + boot_s
while time.time() < deadline:
    if mode != "boot_silent":
        write("booting")
    time.sleep(0.05)
write("ready")
started = time.time()
while not terms:
    if os.getppid() != sup:
        note("orphaned")
        sys.exit(5)
    busy = mode == "busy"
    write("busy" if busy else "ready", job_id="job-1" if busy else None)
    alive = time.time() - started
    if alive > life_s:
        if mode == "crash" or (mode == "crash_once" and first):
            print("stand-in: segfault-ish crash", file=sys.stderr, flush=True)
            os._exit(1)
        if mode == "deadline" and first:
            os._exit(4)
    time.sleep(0.1)
end = time.time() + drain_s
while time.time() < end:
    write("draining", job_id="job-1")
    time.sleep(0.1)
note("drained")
write("draining")
sys.exit(0)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "") -> T:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class Fleet:
    """A `funasr-fleet supervise` process with its HTTP port, env and stderr file."""

    def __init__(self, tmp: Path, env: dict[str, str], args: list[str], consumer_command: list[str] | None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.stderr_path = tmp / f"supervisor-{self.port}.log"
        self.env = {**env, "FLEET_SUPERVISOR__HTTP_HOST": "127.0.0.1", "FLEET_SUPERVISOR__HTTP_PORT": str(self.port)}
        self.env.setdefault("FLEET_SUPERVISOR__STATE_DIR", str(tmp / "state"))
        self.env.setdefault("FLEET_LOG__FORMAT", "json")
        # the announcer sidecar needs the test's broker and S3; the tests that exercise it turn it on
        self.env.setdefault("FLEET_SUPERVISOR__ANNOUNCER", "false")
        cmd = [sys.executable, "-m", "funasr_fleet", "supervise", *args]
        if consumer_command:
            cmd += ["--consumer-command", " ".join(consumer_command)]
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=self._stderr)
        self.seen_pids: set[int] = set()

    # --- observation ---
    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b""

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        if code != 200:
            return {}
        data = json.loads(body)
        self.seen_pids.update(c["pid"] for c in data["consumers"])
        if data.get("zygote"):
            self.seen_pids.add(data["zygote"]["pid"])
        return data

    def ready_pids(self) -> list[int]:
        data = self.status()
        return sorted(c["pid"] for c in data.get("consumers", []) if c["serving"] and c["state"] in ("ready", "busy"))

    def wait_ready(self, count: int, timeout: float = 30.0) -> list[int]:
        return wait_for(
            lambda: pids if len(pids := self.ready_pids()) >= count else None,
            timeout,
            what=f"{count} ready consumers",
        )

    def metric(self, name_and_labels: str) -> float:
        code, body = self.get("/metrics")
        assert code == 200
        for line in body.decode().splitlines():
            if line.startswith(name_and_labels + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def log_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                out.append(item)
        return out

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running after {timeout}s:\n{self.log_text()[-4000:]}") from None

    # --- teardown ---
    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        for pid in self.seen_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._stderr.close()
