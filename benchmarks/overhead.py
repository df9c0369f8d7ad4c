"""Per-job fixed overhead, fleet vs the Celery peer, and the side-by-side makespan.

Overhead of one job = (publish → final result received) - inference wall time reported by the
worker (``real_time_factor × audio_duration_s`` in the fleet's ``job.succeeded`` event; the task's
``inference_s`` in Celery). Jobs are sent one at a time to ONE worker process (threads = cores), so
there is no queueing: what remains is download, decode, upload of JSON+SRT, manifest, events/acks,
broker round trips. Goal (issue 7): fleet p50 ≤ 100 ms beyond inference for a 10 s clip.

The side-by-side part runs the same K files through N fleet consumers and through a Celery prefork
worker with N children (acks_late, prefetch 1, one model per child), and reads each worker's RSS.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from benchmarks import common
from benchmarks.peers import run_celery


def fleet_sequential(settings: Any, s3: common.S3, key: str, count: int, work: Any, threads: int) -> dict[str, Any]:
    jobs = common.Jobs(settings)
    fleet = common.Fleet(settings, 1, threads, work).start()
    try:
        fleet.wait_ready(1)
        common.warm_up(jobs, s3, key, 1)
        tag = uuid.uuid4().hex[:6]
        latency, overhead, inference = [], [], []
        for i in range(count):
            job_id = f"o{tag}-{i:04d}"
            jobs.submit(s3.bucket, key, job_id)
            jobs.wait([job_id], 600)
            final = jobs.first(job_id)
            if final.kind != "succeeded":
                raise RuntimeError(f"overhead job failed: {final.data}")
            lat = final.at - jobs.submitted_at[job_id]
            inf = float(final.data.get("real_time_factor") or 0) * float(final.data.get("audio_duration_s") or 0)
            latency.append(lat)
            inference.append(inf)
            overhead.append(lat - inf)
        return {"latency_s": latency, "overhead_s": overhead, "inference_s": inference}
    finally:
        fleet.stop()
        jobs.close()
        common.delete_topology(settings)


def fleet_batch_on(jobs: common.Jobs, s3: common.S3, keys: list[str], timeout: float = 1800.0) -> dict[str, Any]:
    """K jobs at once into an already running, warmed fleet; makespan to the last final event."""
    tag = uuid.uuid4().hex[:6]
    ids = [f"p{tag}-{i:04d}" for i in range(len(keys))]
    t0 = time.monotonic()
    for job_id, key in zip(ids, keys, strict=True):
        jobs.submit(s3.bucket, key, job_id)
    jobs.wait(ids, timeout)
    finals = [jobs.first(j) for j in ids]
    return {
        "makespan_s": max(f.at for f in finals) - t0,
        "failed": sum(1 for f in finals if f.kind != "succeeded"),
        "inference_s": [
            float(f.data.get("real_time_factor") or 0) * float(f.data.get("audio_duration_s") or 0) for f in finals
        ],
    }


def celery_sequential(settings: Any, s3: common.S3, key: str, count: int, work: Any, threads: int) -> dict[str, Any]:
    worker = run_celery.CeleryWorker(settings, 1, threads, work).start()
    try:
        worker.wait_ready()
        run_celery.sequential(worker, s3.bucket, key, 2)  # warm-up, as for the fleet
        return run_celery.sequential(worker, s3.bucket, key, count)
    finally:
        worker.stop()


def _summary(samples: dict[str, Any]) -> dict[str, float]:
    ms = [1000 * v for v in samples["overhead_s"]]
    return {
        "overhead_p50_ms": common.percentile(ms, 50),
        "overhead_p95_ms": common.percentile(ms, 95),
        "latency_p50_ms": common.percentile([1000 * v for v in samples["latency_s"]], 50),
        "inference_p50_ms": common.percentile([1000 * v for v in samples["inference_s"]], 50),
        "samples": len(ms),
    }


def run(quick: bool = True, *, cores: int | None = None) -> dict[str, Any]:
    from funasr_fleet.settings import usable_cores

    cores = cores or usable_cores()
    count = 20 if quick else 60
    k = 8 if quick else 16
    rounds = 3 if quick else 5
    batch_clip = common.clip(30 if quick else 60)
    src = common.clip(10)
    work = common.workdir("fleet-bench-overhead-")
    s3 = common.S3(work).start()
    try:
        key = s3.upload(src, "overhead/clip10.wav")
        duration = common.audio_seconds(src)
        common.log(f"overhead: {count} sequential jobs of a {duration:.1f}s clip, fleet then Celery")
        fleet_seq = fleet_sequential(common.bench_settings(s3, threads=cores), s3, key, count, work, cores)
        celery_seq = celery_sequential(common.bench_settings(s3, threads=cores), s3, key, count, work, cores)

        # side by side: the same K files, N = cores workers of one thread each. Both systems are
        # booted and warmed, then batches ALTERNATE (fleet, Celery, fleet, Celery...) so a change
        # in background load hits both; each side's makespan is the median of its rounds.
        keys = s3.upload_copies(batch_clip, k, "peer")
        batch_s = common.audio_seconds(batch_clip)
        common.log(f"peer batch: {k} x {batch_s:.1f}s clips, {cores} workers, {rounds} alternating rounds")
        settings = common.bench_settings(s3, threads=1)
        jobs = common.Jobs(settings)
        fleet = common.Fleet(settings, cores, 1, work).start()
        worker = run_celery.CeleryWorker(common.bench_settings(s3, threads=1), cores, 1, work).start()
        try:
            fleet.wait_ready(cores)
            worker.wait_ready()
            common.warm_up(jobs, s3, keys[0], cores)
            run_celery.batch(worker, s3.bucket, keys[: 2 * cores])
            fleet_rounds, celery_rounds = [], []
            for r in range(rounds):
                fleet_rounds.append(fleet_batch_on(jobs, s3, keys))
                celery_rounds.append(run_celery.batch(worker, s3.bucket, keys))
                common.log(f"round {r + 1}: fleet {fleet_rounds[-1]['makespan_s']:.2f}s, "
                           f"Celery {celery_rounds[-1]['makespan_s']:.2f}s")  # fmt: skip
            fleet_mem = [common.mem_mb(p) for p in fleet.ready_pids()]
            celery_mem = [common.mem_mb(p) for p in worker.child_pids()]
            celery_parent = common.mem_mb(worker.proc.pid) if worker.proc else {}
            supervisor_mem = common.mem_mb(fleet.proc.pid) if fleet.proc else {}
        finally:
            worker.stop()
            fleet.stop()
            jobs.close()
            common.delete_topology(settings)
    finally:
        s3.stop()
        common.remove(work)

    fleet_o, celery_o = _summary(fleet_seq), _summary(celery_seq)
    fb_makespan = common.percentile([b["makespan_s"] for b in fleet_rounds], 50)
    cb_makespan = common.percentile([b["makespan_s"] for b in celery_rounds], 50)
    fb_inf = [x for b in fleet_rounds for x in b["inference_s"]]
    cb_inf = [x for b in celery_rounds for x in b["inference_s"]]

    def avg(rows: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows) if rows else float("nan")

    return {
        "clip_s": duration,
        "batch_clip_s": batch_s,
        "batch_jobs": k,
        "workers": cores,
        "rounds": rounds,
        "fleet": {
            **fleet_o,
            "makespan_s": fb_makespan,
            "makespans_s": [round(b["makespan_s"], 2) for b in fleet_rounds],
            "failed": sum(b["failed"] for b in fleet_rounds),
            "batch_inference_mean_s": sum(fb_inf) / len(fb_inf),
            "rss_mb": avg(fleet_mem, "rss_mb"),
            "pss_mb": avg(fleet_mem, "pss_mb"),
            "parent_rss_mb": supervisor_mem.get("rss_mb", float("nan")),
        },
        "celery": {
            **celery_o,
            "makespan_s": cb_makespan,
            "makespans_s": [round(b["makespan_s"], 2) for b in celery_rounds],
            "failed": 0,
            "batch_inference_mean_s": sum(cb_inf) / len(cb_inf),
            "rss_mb": avg(celery_mem, "rss_mb"),
            "pss_mb": avg(celery_mem, "pss_mb"),
            "parent_rss_mb": celery_parent.get("rss_mb", float("nan")),
        },
        "overhead_p50_ms": fleet_o["overhead_p50_ms"],
        "overhead_p95_ms": fleet_o["overhead_p95_ms"],
        "celery_makespan_ratio": fb_makespan / cb_makespan,
    }


def tables(result: dict[str, Any]) -> str:
    f, c = result["fleet"], result["celery"]
    rows = [
        ("fleet (supervise + consume)", f["overhead_p50_ms"], f["overhead_p95_ms"], f["inference_p50_ms"],
         f["makespan_s"], f["batch_inference_mean_s"], f["rss_mb"], f["pss_mb"]),
        ("Celery prefork peer", c["overhead_p50_ms"], c["overhead_p95_ms"], c["inference_p50_ms"],
         c["makespan_s"], c["batch_inference_mean_s"], c["rss_mb"], c["pss_mb"]),
    ]  # fmt: skip
    text = common.table(
        f"Fleet vs Celery peer: overhead on a {result['clip_s']:.0f} s clip "
        f"({f['samples']} sequential jobs, 1 worker); "
        f"makespan of {result['batch_jobs']} x {result['batch_clip_s']:.0f} s on {result['workers']} workers",
        ["", "overhead p50 ms", "overhead p95 ms", "inference p50 ms", "batch makespan s",
         "batch inference mean s", "RSS/worker MiB", "PSS/worker MiB"],
        rows,
    )  # fmt: skip
    text += (
        f"\nfleet ÷ Celery makespan (median of {result['rounds']} alternating rounds): "
        f"**{result['celery_makespan_ratio']:.3f}** (fleet {f['makespans_s']}, Celery {c['makespans_s']}); "
        f"fleet overhead p50 "
        f"**{result['overhead_p50_ms']:.0f} ms** (goal <= 100 ms), p95 {result['overhead_p95_ms']:.0f} ms; "
        f"supervisor RSS {f['parent_rss_mb']:.0f} MiB, Celery parent process RSS {c['parent_rss_mb']:.0f} MiB\n"
    )
    return text


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    res = run(quick="--quick" in sys.argv)
    print(tables(res))
    print(json.dumps(res, indent=2, default=str))
