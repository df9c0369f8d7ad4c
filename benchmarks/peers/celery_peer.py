"""The Celery peer: the same engine and files under Celery's prefork worker with RabbitMQ.

Configured as a careful Celery deployment of this workload would be:
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a killed child's task is redelivered;
- ``worker_prefetch_multiplier=1`` and ``-O fair``: one task per child at a time;
- a durable classic queue, JSON serializer, ``rpc://`` results. (A quorum queue, as the fleet's
  jobs queue, makes Celery >= 5.5 declare its 28-queue native-delayed-delivery topology on the
  vhost at every worker start; the peer keeps the shared broker clean instead.);
- ONE model per child, loaded in ``worker_process_init`` (the parent never imports torch, so
  each forked child starts clean), with ``cores // concurrency`` threads, like the fleet.

The task does the fleet's per-job work: download from S3, decode, transcribe, write JSON+SRT to
S3, then a small manifest. It returns timings so the runner can split inference from overhead.

Worker: ``python -m celery -A benchmarks.peers.celery_peer:app worker -P prefork -c N ...``
(:func:`benchmarks.peers.run_celery.CeleryWorker` starts it). Configuration comes from the
environment: ``PEER_BROKER_URL``, ``PEER_QUEUE``, ``PEER_READY_DIR``, ``PEER_THREADS`` and the
fleet's own ``FLEET_*`` variables (S3 endpoint and keys, engine model directories).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals
from kombu import Queue

BROKER_URL = os.environ.get("PEER_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = os.environ.get("PEER_QUEUE", "fleet-peer.celery")
READY_DIR = os.environ.get("PEER_READY_DIR")

app = Celery("fleet_peer", broker=BROKER_URL, backend="rpc://")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_queues=[Queue(QUEUE, routing_key=QUEUE, durable=True)],
    task_create_missing_queues=False,
    worker_proc_alive_timeout=600,  # model load happens in worker_process_init
    worker_hijack_root_logger=False,
    worker_disable_rate_limits=True,
    broker_connection_retry_on_startup=True,
    result_persistent=False,
    task_track_started=False,
)

_engine: Any = None
_storage: Any = None
_settings: Any = None


@signals.worker_process_init.connect
def _load_model(**_: Any) -> None:
    """Runs in each prefork child: one Engine per child, threads pinned first."""
    global _engine, _storage, _settings
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(int(os.environ.get("PEER_THREADS", "1")))
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.logs import setup_logging
    from funasr_fleet.settings import Settings
    from funasr_fleet.storage import Storage

    _settings = Settings()
    setup_logging(_settings.log.level, _settings.log.format)
    _engine = Engine(_settings.engine)
    _engine.warmup()
    _storage = Storage(_settings.s3)
    if READY_DIR:
        Path(READY_DIR, str(os.getpid())).write_text("ready")


@app.task(name="peer.transcribe", acks_late=True)
def transcribe(
    job_id: str, bucket: str, key: str, out_bucket: str, out_prefix: str, formats: list[str]
) -> dict[str, Any]:
    from funasr_fleet.engine.audio import decode
    from funasr_fleet.outputs import FORMATS, OutputMeta, render

    start = time.perf_counter()
    s = _settings
    tmp = Path(tempfile.mkdtemp(prefix="peer-job-"))
    try:
        dl = _storage.download(bucket, key, tmp / f"audio{Path(key).suffix}", max_bytes=s.s3.max_object_bytes)
        decoded = decode(dl.path, min_audio_s=s.engine.min_audio_s, max_audio_s=s.engine.max_audio_s)
        transcript = _engine.transcribe(decoded)
        meta = OutputMeta(source=f"s3://{bucket}/{key}", job_id=job_id, audio=decoded.info.as_dict())
        outputs = []
        for fmt in formats:
            spec = FORMATS[fmt]
            okey = f"{out_prefix}/{spec.filename()}"
            _storage.upload_chunks(out_bucket, okey, (c.encode() for c in render(fmt, transcript, meta)),
                                   content_type=spec.content_type)  # fmt: skip
            outputs.append(f"s3://{out_bucket}/{okey}")
        _storage.put_json(out_bucket, f"{out_prefix}/manifest.json", {"job_id": job_id, "outputs": outputs})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "job_id": job_id,
        "pid": os.getpid(),
        "inference_s": transcript.wall_s,
        "audio_duration_s": transcript.duration_ms / 1000,
        "task_s": time.perf_counter() - start,
        "outputs": outputs,
    }
