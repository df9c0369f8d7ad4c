"""What job status costs on S3: ``jobstate.record`` (GET + conditional PUT) and ``read``, and what
the consumer's status writes and cancel checks add per job.

    python -m benchmarks.jobstate [--n 200]

Starts its own SeaweedFS (``weed mini``) on loopback. Prints p50/p95 in ms for: one transition with
no contention, one status read, transitions while four threads write the same job (lost races
are re-read and re-applied); then, per job, exactly the S3 requests a consumer adds
(consumer/status.py, consumer/cancelling.py): ``running`` at start and at each of the four stage
boundaries, each with a cancel-marker GET, and ``succeeded`` (the publisher's ``queued`` write is
the client's and not counted). Figures only; a shared machine gives upper bounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from funasr_fleet import cancel, events, jobstate
from funasr_fleet.jobstatus import JobState, Update
from funasr_fleet.seaweed import SeaweedServer
from funasr_fleet.settings import S3Settings, Settings
from funasr_fleet.storage import Storage

STAGES = ["downloaded", "decoded", "transcribed", "uploaded"]


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = SeaweedServer(Path(tmp), access_key="AKBENCH", secret_key="benchsecret123").start()
        try:
            s3 = S3Settings(endpoint_url=server.endpoint_url, access_key="AKBENCH", secret_key="benchsecret123",
                            results_bucket="bench-results")  # fmt: skip
            settings = Settings(s3=s3)
            storage = Storage(s3)
            storage.ensure_bucket("bench-results")
            write, read = [], []
            for i in range(args.n):
                t0 = time.perf_counter()
                jobstate.record(storage, settings, Update(job_id=f"j-{i}", state=JobState.QUEUED, by="bench"))
                write.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                jobstate.read(storage, settings, f"j-{i}")
                read.append(time.perf_counter() - t0)
            contended: list[float] = []
            lock = threading.Lock()

            def writer(k: int) -> None:
                for i in range(args.n // 4):
                    t0 = time.perf_counter()
                    jobstate.record(
                        storage, settings, Update(job_id="j-hot", state=JobState.RUNNING, by="b", stage=f"{k}-{i}")
                    )
                    with lock:
                        contended.append(time.perf_counter() - t0)

            threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for name, values in (
                ("record (no contention)", write),
                ("read", read),
                ("record, 4 writers on one job", contended),
            ):
                print(f"{name:32} n={len(values):4}  p50 {pct(values, 0.5):6.1f} ms  p95 {pct(values, 0.95):6.1f} ms"
                      f"  mean {statistics.mean(values) * 1000:6.1f} ms")  # fmt: skip
            consumer_per_job(storage, settings, args.n // 2)
        finally:
            server.stop()


def consumer_per_job(storage: Storage, settings: Settings, n: int) -> None:
    """The consumer's status writes and cancel-marker reads of ``n`` jobs, timed per job."""
    per_job, writes, marker_reads = [], [], []
    for i in range(n):
        job_id = f"c-{i}"
        jobstate.record(storage, settings, Update(job_id=job_id, state=JobState.QUEUED, by="publisher"))
        total = 0.0
        for stage in [None, *STAGES]:
            t0 = time.perf_counter()
            progress = events.STAGE_PROGRESS.get(stage, 0.0) if stage else 0.0
            update = Update(job_id=job_id, state=JobState.RUNNING, by="consumer", stage=stage, progress=progress)
            jobstate.record(storage, settings, update)
            t1 = time.perf_counter()
            cancel.read_marker(storage, settings, job_id)
            t2 = time.perf_counter()
            writes.append(t1 - t0)
            marker_reads.append(t2 - t1)
            total += t2 - t0
        t0 = time.perf_counter()
        jobstate.record(storage, settings, Update(job_id=job_id, state=JobState.SUCCEEDED, by="consumer"))
        writes.append(time.perf_counter() - t0)
        per_job.append(total + time.perf_counter() - t0)
    print(f"consumer, {n} jobs: 6 transitions (GET + conditional PUT) + 5 marker GETs = 17 requests per job")
    print(f"per job total    p50 {pct(per_job, 0.5):7.1f} ms  p95 {pct(per_job, 0.95):7.1f} ms")
    print(f"one transition   p50 {pct(writes, 0.5):7.1f} ms  p95 {pct(writes, 0.95):7.1f} ms")
    print(f"one marker GET   p50 {pct(marker_reads, 0.5):7.1f} ms  p95 {pct(marker_reads, 0.95):7.1f} ms")


if __name__ == "__main__":
    main()
