"""Start the Celery peer worker as a real process and drive it (makespan, per-job overhead, RSS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import common


class CeleryWorker:
    """``celery worker -P prefork -c N`` on a unique classic queue; ready when every child loaded its model."""

    def __init__(self, settings: Any, concurrency: int, threads: int, workdir: Path) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.threads = threads
        self.queue = f"bench-peer-{uuid.uuid4().hex[:8]}"
        self.ready_dir = workdir / f"peer-ready-{self.queue}"
        self.ready_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.queue}.log"
        broker = settings.amqp.url.get_secret_value()
        self.env = common.clean_env(
            settings,
            PEER_BROKER_URL=broker,
            PEER_QUEUE=self.queue,
            PEER_READY_DIR=str(self.ready_dir),
            PEER_THREADS=str(threads),
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> CeleryWorker:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [
            sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_peer:app", "worker",
            "-P", "prefork", "-c", str(self.concurrency), "-O", "fair", "-Q", self.queue,
            "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "WARNING",
            "-n", f"{self.queue}@%h",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=common.REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 300.0) -> list[int]:
        def ready() -> list[int] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"celery worker exited {self.proc.returncode}: {self.log_tail()}")
            pids = [int(p.name) for p in self.ready_dir.iterdir()]
            return pids if len(pids) >= self.concurrency else None

        return common.wait_for(ready, timeout, what=f"{self.concurrency} celery children with a model")

    def child_pids(self) -> list[int]:
        return common.children_of(self.proc.pid) if self.proc else []

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        _delete_entities(self.settings, self.queue)


def _delete_entities(settings: Any, name: str) -> None:
    """The worker's queue and the exchange Celery declared for it (the broker is shared)."""
    import pika
    import pika.exceptions

    try:
        conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
        try:
            ch = conn.channel()
            ch.queue_delete(name)
            ch.exchange_delete(name)
            # what Celery declares besides: the client's default queue exchange, remote control
            for extra in ("fleet-peer.celery", "celery.pidbox", "reply.celery.pidbox", "celeryev"):
                ch.exchange_delete(extra)
        finally:
            conn.close()
    except (pika.exceptions.AMQPError, OSError):
        pass  # best effort: the broker is shared and may already have dropped them


def _app_for(worker: CeleryWorker) -> Any:
    """The client side: the same app object, pointed at the worker's queue."""
    from kombu import Queue

    from benchmarks.peers import celery_peer

    app = celery_peer.app
    app.conf.broker_url = worker.env["PEER_BROKER_URL"]
    if worker.queue not in app.amqp.queues:  # the app caches its queues: add each worker's own
        app.amqp.queues.add(Queue(worker.queue, routing_key=worker.queue, durable=True))
    return celery_peer.transcribe


def batch(worker: CeleryWorker, bucket: str, keys: Sequence[str], timeout: float = 1800.0) -> dict[str, Any]:
    """All tasks at once; makespan = first send → last result received."""
    task = _app_for(worker)
    tag = uuid.uuid4().hex[:6]
    t0 = time.monotonic()
    results = []
    for i, key in enumerate(keys):
        job_id = f"c{tag}-{i:04d}"
        results.append(task.apply_async(args=(job_id, bucket, key, bucket, f"peer/{job_id}", ["json", "srt"]),
                                        queue=worker.queue, routing_key=worker.queue))  # fmt: skip
    out = [r.get(timeout=timeout) for r in results]
    makespan = time.monotonic() - t0
    return {"makespan_s": makespan, "inference_s": [o["inference_s"] for o in out], "results": out}


def sequential(worker: CeleryWorker, bucket: str, key: str, count: int, timeout: float = 600.0) -> dict[str, Any]:
    """One task at a time: latency (send → result) minus the task's own inference time."""
    task = _app_for(worker)
    tag = uuid.uuid4().hex[:6]
    latency, overhead, inference = [], [], []
    for i in range(count):
        job_id = f"s{tag}-{i:04d}"
        t0 = time.monotonic()
        res = task.apply_async(args=(job_id, bucket, key, bucket, f"peer/{job_id}", ["json", "srt"]),
                               queue=worker.queue, routing_key=worker.queue).get(timeout=timeout)  # fmt: skip
        lat = time.monotonic() - t0
        latency.append(lat)
        inference.append(res["inference_s"])
        overhead.append(lat - res["inference_s"])
    return {"latency_s": latency, "overhead_s": overhead, "inference_s": inference}
