"""Shared pieces of the fleet benchmarks (overhead, scaling, memory, the Celery peer).

Everything here talks to REAL services: a private SeaweedFS (`weed mini`) started in a temp dir,
the local RabbitMQ, `funasr-fleet supervise` as a real process with real consumers. Models are the
tiny offline ones (``funasr_fleet.devmodels``): inference is cheap, so these figures measure the
fleet's own costs (broker, S3, events, process layout) rather than a real model's speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY_MODELS_DIR = REPO / ".cache" / "tiny-models"
AMQP_URL = os.environ.get("FLEET_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
MIB = 1024 * 1024


# --- small utilities --------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    lines = [f"### {title}", "", "| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "") -> Any:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


# --- process memory ----------------------------------------------------------------------------
def mem_mb(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private) of one process in MiB, from /proc/<pid>/smaps_rollup."""
    out = {"rss_mb": float("nan"), "pss_mb": float("nan"), "uss_mb": float("nan")}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    fields: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1])
    kib = 1024.0
    out["rss_mb"] = fields.get("Rss", 0) / kib
    out["pss_mb"] = fields.get("Pss", 0) / kib
    out["uss_mb"] = (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / kib
    return out


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/*/stat)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(entry.name))
    return sorted(kids)


def system_memory_mb() -> float:
    """MemTotal - MemAvailable: memory in use machine-wide, in MiB."""
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024.0


# --- audio and models --------------------------------------------------------------------------
def tiny_models_env() -> dict[str, str]:
    from funasr_fleet.devmodels import build_tiny_models

    return build_tiny_models(TINY_MODELS_DIR).env()


def engine_settings(threads: int) -> Any:
    from funasr_fleet.settings import EngineSettings

    env = tiny_models_env()
    return EngineSettings(
        model=env["FLEET_ENGINE__MODEL"],
        vad_model=env["FLEET_ENGINE__VAD_MODEL"],
        punc_model=env["FLEET_ENGINE__PUNC_MODEL"],
        spk_model=env["FLEET_ENGINE__SPK_MODEL"],
        threads=threads,
    )


_CLIP_CACHE = REPO / ".cache" / "bench-audio"


def clip(seconds: float) -> Path:
    """A deterministic two-voice WAV of at least ``seconds`` (cached under .cache/bench-audio)."""
    from funasr_fleet.devaudio import synth_speech

    _CLIP_CACHE.mkdir(parents=True, exist_ok=True)
    path = _CLIP_CACHE / f"dialogue-{int(seconds)}s-exact.wav"
    if not path.exists():
        from funasr_fleet.devaudio import run_tool

        long = path.with_suffix(".long.wav")
        synth_speech(long, seconds)
        tmp = path.with_suffix(".part.wav")
        run_tool(["sox", "-R", "-D", str(long), str(tmp), "trim", "0", str(seconds)])  # exactly `seconds`
        long.unlink()
        tmp.rename(path)
    return path


def audio_seconds(path: Path) -> float:
    from funasr_fleet.engine.audio import probe

    return float(probe(path).duration_s or 0.0)


# --- S3 ----------------------------------------------------------------------------------------
class S3:
    """A private SeaweedFS with one bucket holding the benchmark's audio."""

    def __init__(self, root: Path) -> None:
        from funasr_fleet.seaweed import SeaweedServer

        self.root = root
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self.server = SeaweedServer(root / "s3", access_key=self.access_key, secret_key=self.secret_key)
        self.bucket = f"bench-{uuid.uuid4().hex[:10]}"
        self.storage: Any = None

    def start(self) -> S3:
        from funasr_fleet.storage import Storage

        self.server.start()
        self.storage = Storage(self.settings())
        self.storage.ensure_bucket(self.bucket)
        return self

    def settings(self) -> Any:
        from pydantic import SecretStr

        from funasr_fleet.settings import S3Settings

        return S3Settings(
            endpoint_url=self.server.endpoint_url,
            access_key=SecretStr(self.access_key),
            secret_key=SecretStr(self.secret_key),
            results_bucket=self.bucket,
            inbox_bucket=self.bucket,
        )

    def upload(self, path: Path, key: str) -> str:
        self.storage.upload_file(path, self.bucket, key)
        return key

    def upload_copies(self, path: Path, count: int, prefix: str) -> list[str]:
        keys = []
        for i in range(count):
            keys.append(self.upload(path, f"{prefix}/{i:04d}{path.suffix}"))
        return keys

    def stop(self) -> None:
        self.server.stop()


# --- fleet settings and processes --------------------------------------------------------------
def bench_settings(s3: S3, *, threads: int = 1, tag: str | None = None, **sections: dict[str, Any]) -> Any:
    """A full Settings for one benchmark fleet: tiny models, unique AMQP names, the bench bucket."""
    from funasr_fleet.settings import AmqpSettings, Settings

    tag = tag or uuid.uuid4().hex[:8]
    base = AmqpSettings()
    names = {
        n: f"bench-{tag}.{getattr(base, n)}"
        for n in ("jobs_exchange", "jobs_queue", "dead_letter_exchange", "dead_letter_queue", "retry_exchange",
                  "events_exchange")
    }  # fmt: skip
    values: dict[str, Any] = {
        "engine": engine_settings(threads).model_dump(),
        "amqp": {"url": AMQP_URL, **names},
        "s3": {**s3.settings().model_dump(), "access_key": s3.access_key, "secret_key": s3.secret_key},
        "consumer": {"result_reuse": False, "tmp_dir": str(s3.root / "stage")},
        "log": {"level": "WARNING", "format": "json"},
    }
    for key, extra in sections.items():
        values[key] = {**values.get(key, {}), **extra}
    return Settings(**values)


def settings_env(settings: Any) -> dict[str, str]:
    """``FLEET_<SECTION>__<KEY>`` variables reproducing ``settings`` in a subprocess."""
    return dict(settings.to_env())


def clean_env(settings: Any | None = None, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    if settings is not None:
        base.update(settings_env(settings))
    base.update(extra)
    return base


class Fleet:
    """`python -m funasr_fleet supervise` as a real process, watched through its /status endpoint."""

    def __init__(
        self, settings: Any, consumers: int, threads: int, workdir: Path, *, extra_env: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.consumers = consumers
        self.threads = threads
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / f"supervisor-{self.port}.log"
        self.env = clean_env(
            settings,
            FLEET_SUPERVISOR__HTTP_HOST="127.0.0.1",
            FLEET_SUPERVISOR__HTTP_PORT=str(self.port),
            FLEET_SUPERVISOR__STATE_DIR=str(workdir / f"state-{self.port}"),
            **(extra_env or {}),
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.seen_pids: set[int] = set()

    def start(self) -> Fleet:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "funasr_fleet", "supervise", "--consumers", str(self.consumers),
               "--threads", str(self.threads)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._log)
        return self

    def status(self) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=5) as resp:
                data = json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            return {}
        self.seen_pids.update(c["pid"] for c in data.get("consumers", []))
        return data

    def ready_pids(self) -> list[int]:
        return sorted(
            c["pid"] for c in self.status().get("consumers", []) if c.get("serving") and c["state"] in ("ready", "busy")
        )

    def wait_ready(self, count: int | None = None, timeout: float = 180.0) -> list[int]:
        count = self.consumers if count is None else count

        def ready() -> list[int] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited {self.proc.returncode}: {self.log_tail()}")
            pids = self.ready_pids()
            return pids if len(pids) >= count else None

        return wait_for(ready, timeout, what=f"{count} ready consumers")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for pid in self.seen_pids:  # consumers never outlive the run
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


# --- AMQP: submit jobs, collect final events ---------------------------------------------------
@dataclass
class Final:
    job_id: str
    kind: str  # succeeded | failed
    data: dict[str, Any]
    at: float  # time.monotonic() when received


@dataclass
class Jobs:
    """One connection: publishes job requests (confirmed) and consumes final events."""

    settings: Any
    finals: dict[str, list[Final]] = field(default_factory=dict)
    submitted_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import pika

        from funasr_fleet import topology

        params = pika.URLParameters(self.settings.amqp.url.get_secret_value())
        params.heartbeat = 60
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        topology.declare(self.ch, self.settings.amqp, self.settings.consumer)
        self.ch.confirm_delivery()
        q = self.ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        for kind in ("succeeded", "failed"):
            self.ch.queue_bind(q, self.settings.amqp.events_exchange, routing_key=f"job.{kind}")
        self.ch.basic_consume(q, self._on_event, auto_ack=True)

    def _on_event(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        now = time.monotonic()
        event = json.loads(body)
        kind = str(event.get("type", "")).rsplit(".", 1)[-1]
        data = event.get("data") or {}
        self.finals.setdefault(data.get("job_id", "?"), []).append(Final(data.get("job_id", "?"), kind, data, now))

    def submit(self, bucket: str, key: str, job_id: str, formats: Sequence[str] = ("json", "srt")) -> None:
        import pika

        body = json.dumps({"job_id": job_id, "audio": f"s3://{bucket}/{key}", "formats": list(formats)}).encode()
        props = pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=job_id,
                                     timestamp=int(time.time()))  # fmt: skip
        self.submitted_at[job_id] = time.monotonic()
        self.ch.basic_publish(self.settings.amqp.jobs_exchange, self.settings.amqp.jobs_routing_key, body, props,
                              mandatory=True)  # fmt: skip

    def wait(self, job_ids: Iterable[str], timeout: float) -> None:
        pending = set(job_ids)
        end = time.monotonic() + timeout
        while True:
            pending = {j for j in pending if j not in self.finals}
            if not pending:
                return
            if time.monotonic() > end:
                raise TimeoutError(f"{len(pending)} jobs unfinished after {timeout:.0f}s")
            self.conn.process_data_events(time_limit=0.05)

    def first(self, job_id: str) -> Final:
        return self.finals[job_id][0]

    def close(self) -> None:
        import pika.exceptions

        with contextlib.suppress(pika.exceptions.AMQPError, OSError):  # closing a dead connection
            self.conn.close()


def warm_up(jobs: Jobs, s3: S3, key: str, consumers: int, timeout: float = 600.0) -> None:
    """2 x consumers jobs so every consumer has paid its first-call costs before anything is timed."""
    tag = uuid.uuid4().hex[:6]
    ids = [f"w{tag}-{i}" for i in range(2 * consumers)]
    for job_id in ids:
        jobs.submit(s3.bucket, key, job_id)
    jobs.wait(ids, timeout)


def delete_topology(settings: Any) -> None:
    import pika
    import pika.exceptions

    from funasr_fleet import topology

    try:
        conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
    except (pika.exceptions.AMQPError, OSError):
        return
    try:
        topology.delete(conn.channel(), settings.amqp, settings.consumer)
    except (pika.exceptions.AMQPError, OSError):
        pass  # best effort: the broker is shared and may be bouncing
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            conn.close()


@dataclass
class FleetBatch:
    makespan_s: float
    jobs: int
    failed: int
    inference_s: list[float]
    latency_s: list[float]
    audio_s: float


def run_fleet_batch(settings: Any, s3: S3, keys: Sequence[str], consumers: int, threads: int, workdir: Path,
                    *, timeout: float = 1800.0, keep: Callable[[Fleet], None] | None = None) -> FleetBatch:  # fmt: skip
    """Start a fleet, wait until every consumer is ready, publish all jobs at once, wait for all.

    Makespan: first publish → last final event. ``keep`` is called with the running fleet after the
    batch (e.g. to read memory) before it is stopped.
    """
    jobs = Jobs(settings)
    fleet = Fleet(settings, consumers, threads, workdir).start()
    try:
        fleet.wait_ready(consumers)
        warm_up(jobs, s3, keys[0], consumers)
        tag = uuid.uuid4().hex[:6]
        ids = [f"b{tag}-{i:04d}" for i in range(len(keys))]
        t0 = time.monotonic()
        for job_id, key in zip(ids, keys, strict=True):
            jobs.submit(s3.bucket, key, job_id)
        jobs.wait(ids, timeout)
        last = max(jobs.first(j).at for j in ids)
        finals = [jobs.first(j) for j in ids]
        if keep is not None:
            keep(fleet)
        return FleetBatch(
            makespan_s=last - t0,
            jobs=len(ids),
            failed=sum(1 for f in finals if f.kind != "succeeded"),
            inference_s=[
                float(f.data.get("real_time_factor") or 0) * float(f.data.get("audio_duration_s") or 0) for f in finals
            ],
            latency_s=[f.at - jobs.submitted_at[f.job_id] for f in finals],
            audio_s=sum(float(f.data.get("audio_duration_s") or 0) for f in finals),
        )
    finally:
        fleet.stop()
        jobs.close()
        delete_topology(settings)


def workdir(prefix: str = "fleet-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
