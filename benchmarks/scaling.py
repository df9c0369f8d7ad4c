"""Fleet vs bare in-process engines, and N=1 vs N=2 consumers (plus oversubscribed layouts).

- ``bare_batch``: N plain processes (multiprocessing, spawn), each loading one Engine, pulling local
  file paths from a shared queue and writing JSON+SRT to local disk: the floor a fleet is judged by.
- ``fleet``: the same K files in S3, N consumers under `funasr-fleet supervise`, jobs published at
  once to RabbitMQ, makespan = first publish → last ``job.succeeded`` event (consumers ready first).

Goals (issue 7): fleet ÷ bare makespan ≤ 1.03; N=2 ÷ N=1 throughput ≥ 1.8× on 2 cores.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import time
from pathlib import Path
from typing import Any

from benchmarks import common


# --- bare engines ------------------------------------------------------------------------------
def _bare_worker(threads: int, tasks: Any, results: Any, ready: Any, go: Any, out_dir: str) -> None:
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(threads)
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.outputs import OutputMeta, write_file

    engine = Engine(common.engine_settings(threads))
    engine.warmup()
    ready.put(1)
    go.wait()
    while True:
        try:
            item = tasks.get(timeout=0.5)
        except queue_mod.Empty:
            return
        if item is None:
            return
        index, path = item
        start = time.monotonic()
        transcript = engine.transcribe(path)
        meta = OutputMeta(source=str(path), job_id=f"bare-{index}", audio=None)
        for fmt, ext in (("json", ".json"), ("srt", ".srt")):
            write_file(fmt, transcript, meta, Path(out_dir) / f"{index:04d}{ext}")
        results.put((index, transcript.wall_s, time.monotonic() - start, time.monotonic()))


def bare_batch(paths: list[Path], procs: int, threads: int, out_dir: Path) -> dict[str, Any]:
    """K files through ``procs`` bare engine processes; makespan from 'go' to the last result."""
    ctx = mp.get_context("spawn")
    tasks, results, ready = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        tasks.put((i, str(p)))
    for _ in range(procs):
        tasks.put(None)
    workers = [ctx.Process(target=_bare_worker, args=(threads, tasks, results, ready, go, str(out_dir)))
               for _ in range(procs)]  # fmt: skip
    for w in workers:
        w.start()
    try:
        for _ in range(procs):
            ready.get(timeout=300)
        t0 = time.monotonic()
        go.set()
        got = [results.get(timeout=1800) for _ in paths]
        makespan = max(r[3] for r in got) - t0
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    return {"makespan_s": makespan, "inference_s": [r[1] for r in got], "job_s": [r[2] for r in got]}


# --- the benchmark -----------------------------------------------------------------------------
def run(quick: bool = True, *, cores: int | None = None) -> dict[str, Any]:
    from funasr_fleet.settings import usable_cores

    cores = cores or usable_cores()
    clip_s = 30 if quick else 60
    k = 12 if quick else 16
    src = common.clip(clip_s)
    duration = common.audio_seconds(src)
    work = common.workdir("fleet-bench-scaling-")
    s3 = common.S3(work).start()
    rows: list[dict[str, Any]] = []
    try:
        keys = s3.upload_copies(src, k, "scaling")
        paths = [src] * k
        common.log(f"scaling: K={k} x {duration:.1f}s clips, {cores} cores")

        # bare in-process engines: one per core, one thread each (the floor)
        bare = bare_batch(paths, cores, 1, work / "bare-out")
        rows.append({"layout": f"bare {cores}x1", "kind": "bare", "procs": cores, "threads": 1,
                     "makespan_s": bare["makespan_s"], "failed": 0})  # fmt: skip
        common.log(f"bare {cores}x1: {bare['makespan_s']:.2f}s")

        layouts = [(1, 1), (cores, 1)]
        if cores >= 2:
            layouts += [(cores, cores), (2 * cores, 1)]  # oversubscribed (threads) and more processes than cores
        if quick:
            layouts = layouts[:3]
        for consumers, threads in layouts:
            settings = common.bench_settings(s3, threads=threads)
            batch = common.run_fleet_batch(settings, s3, keys, consumers, threads, work)
            label = f"fleet {consumers}x{threads}"
            if consumers * threads > cores:
                label += " (oversubscribed)"
            rows.append({"layout": label, "kind": "fleet", "procs": consumers, "threads": threads,
                         "makespan_s": batch.makespan_s, "failed": batch.failed})  # fmt: skip
            common.log(f"{label}: {batch.makespan_s:.2f}s failed={batch.failed}")
    finally:
        s3.stop()
        common.remove(work)

    for row in rows:
        row["jobs_per_min"] = 60.0 * k / row["makespan_s"]
        row["audio_x_realtime"] = k * duration / row["makespan_s"]
    by = {(r["kind"], r["procs"], r["threads"]): r for r in rows}
    n1 = by[("fleet", 1, 1)]
    nc = by.get(("fleet", cores, 1), n1)
    result = {
        "clip_s": duration,
        "jobs": k,
        "cores": cores,
        "rows": rows,
        "fleet_overhead_ratio": nc["makespan_s"] / bare["makespan_s"],
        "scaling_n2_over_n1": n1["makespan_s"] / nc["makespan_s"],
    }
    over = by.get(("fleet", cores, cores))
    if over is not None:
        result["oversubscribed_over_n2"] = over["makespan_s"] / nc["makespan_s"]
    return result


def tables(result: dict[str, Any]) -> str:
    rows = [
        (r["layout"], r["makespan_s"], r["jobs_per_min"], r["audio_x_realtime"], r["failed"]) for r in result["rows"]
    ]
    text = common.table(
        f"Scaling: {result['jobs']} jobs x {result['clip_s']:.0f} s audio on {result['cores']} cores",
        ["layout (procs x threads)", "makespan s", "jobs/min", "audio x realtime", "failed"],
        rows,
    )
    text += (
        f"\nfleet {result['cores']}x1 / bare {result['cores']}x1 makespan: **{result['fleet_overhead_ratio']:.3f}**"
        f" (goal <= 1.03); N={result['cores']} / N=1 throughput: **{result['scaling_n2_over_n1']:.2f}x**"
        f" (goal >= 1.8)\n"
    )
    return text


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    res = run(quick="--quick" in sys.argv)
    print(tables(res))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2))
