"""What a job-status transition costs on S3: ``jobstate.record`` (GET + conditional PUT) and ``read``.

    python -m benchmarks.jobstate [--n 200]

Starts its own SeaweedFS (``weed mini``) on loopback. Prints p50/p95 in ms for: one transition with
no contention, one status read, and transitions while four threads write the same job (lost races
are re-read and re-applied). Figures only; a shared machine gives upper bounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from funasr_fleet import jobstate
from funasr_fleet.jobstatus import JobState, Update
from funasr_fleet.seaweed import SeaweedServer
from funasr_fleet.settings import S3Settings, Settings
from funasr_fleet.storage import Storage


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
        finally:
            server.stop()


if __name__ == "__main__":
    main()
