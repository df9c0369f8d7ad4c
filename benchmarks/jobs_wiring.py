"""What the consumer's status writes and cancel checks cost per job on S3.

    python -m benchmarks.jobs_wiring [--n 100]

Starts its own SeaweedFS (``weed mini``) on loopback and replays, per job, exactly the S3 requests
a consumer adds for issue 13 (consumer/status.py, consumer/cancelling.py): at start ``running``
(GET + conditional PUT) and a cancel-marker GET; at each of the four stage boundaries ``running``
with the stage and a marker GET; ``succeeded`` before the final event. The publisher's ``queued``
write is not counted (it is the client's). Prints p50/p95 of the whole per-job sum in ms, and per
request kind. Figures only; a shared machine gives upper bounds.
"""

from __future__ import annotations

import argparse
import tempfile
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
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = SeaweedServer(Path(tmp), access_key="AKBENCH", secret_key="benchsecret123").start()
        try:
            s3 = S3Settings(endpoint_url=server.endpoint_url, access_key="AKBENCH", secret_key="benchsecret123",
                            results_bucket="bench-results")  # fmt: skip
            settings = Settings(s3=s3)
            storage = Storage(s3)
            storage.ensure_bucket("bench-results")
            per_job, writes, marker_reads = [], [], []
            for i in range(args.n):
                job_id = f"j-{i}"
                jobstate.record(storage, settings, Update(job_id=job_id, state=JobState.QUEUED, by="publisher"))
                total = 0.0
                for stage in [None, *STAGES]:
                    t0 = time.perf_counter()
                    progress = events.STAGE_PROGRESS.get(stage, 0.0) if stage else 0.0
                    jobstate.record(storage, settings, Update(job_id=job_id, state=JobState.RUNNING, by="consumer",
                                                              stage=stage, progress=progress))  # fmt: skip
                    t1 = time.perf_counter()
                    cancel.read_marker(storage, settings, job_id)
                    t2 = time.perf_counter()
                    writes.append(t1 - t0)
                    marker_reads.append(t2 - t1)
                    total += t2 - t0
                t0 = time.perf_counter()
                jobstate.record(storage, settings, Update(job_id=job_id, state=JobState.SUCCEEDED, by="consumer"))
                writes.append(time.perf_counter() - t0)
                total += time.perf_counter() - t0
                per_job.append(total)
            print(f"jobs: {args.n}; per job: 6 transitions (GET + conditional PUT) + 5 marker GETs = 17 requests")
            print(f"per job total    p50 {pct(per_job, 0.5):7.1f} ms  p95 {pct(per_job, 0.95):7.1f} ms")
            print(f"one transition   p50 {pct(writes, 0.5):7.1f} ms  p95 {pct(writes, 0.95):7.1f} ms")
            print(f"one marker GET   p50 {pct(marker_reads, 0.5):7.1f} ms  p95 {pct(marker_reads, 0.95):7.1f} ms")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
