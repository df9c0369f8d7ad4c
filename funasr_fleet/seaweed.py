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
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import structlog

from funasr_fleet.pids import pid_alive
from funasr_fleet.weedmini import (
    PORT_FLAGS,
    SeaweedError,
    die_with_parent,
    find_weed,
    free_ports,
    port_busy,
    s3_answers,
    volume_registered,
    weed_command,
    write_identity,
)

log = structlog.get_logger(__name__)

_STATE_FILE = "fleet-seaweed.json"
_live: set[SeaweedServer] = set()


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
            dict(ports) if ports else dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS), host), strict=True))
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
        """The `weed mini` argv this server runs."""
        return weed_command(self.weed, self.data_dir, self.host, self.ports)

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
                self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS), self.host), strict=True))
        return self  # pragma: no cover

    def _start_once(self, *, timeout_s: float, detach: bool) -> None:
        busy = [f"{f}={p}" for f, p in self.ports.items() if port_busy(self.host, p)]
        if busy:
            raise SeaweedError(f"ports already in use: {', '.join(busy)}")
        write_identity(self.data_dir, self.access_key, self.secret_key)
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
                preexec_fn=die_with_parent
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
            if s3_answers(self.endpoint_url) and volume_registered(self.host, self.ports["master.port"]):
                return
            time.sleep(0.2)
        raise SeaweedError(f"weed mini did not answer on {self.endpoint_url} within {timeout_s:.0f}s")

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
        while time.monotonic() < deadline and port_busy(self.host, self.ports["s3.port"]):
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
        ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS), args.host), strict=True))
        ports["s3.port"] = args.port
    args.dir.mkdir(parents=True, exist_ok=True)
    server = SeaweedServer(args.dir, access_key=access, secret_key=secret, host=args.host, ports=ports)
    server.start(detach=True)
    print(server.endpoint_url)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
