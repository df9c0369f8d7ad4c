"""Fleet benchmark: the supervisor's layout choices measured end to end.

    python -m benchmarks.fleet [--quick] [--json FILE]

For K jobs through the real broker and a SeaweedFS started here:
- makespan with N=1 and N=2 consumers, threads per consumer chosen BY THE SUPERVISOR
  (``--consumers N`` without ``--threads``: usable cores // N);
- ratio fleet ÷ in-process engine on the same files (one bare process, threads = cores, the same
  JSON+SRT written to local disk; ``benchmarks.scaling.bare_batch``);
- per-job overhead = (publish → final event) - inference, jobs sent one at a time to one consumer
  (no queueing), p50/p95;
- RSS (and USS) per consumer after the batch.

Tiny offline models: the figures measure the fleet's costs, not a real model's speed. Figures are
printed; nothing is asserted. ``run(quick) -> dict`` for an aggregate runner.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import common


class SupervisorChoosesThreads(common.Fleet):
    """`supervise --consumers N` without ``--threads``: the supervisor plans the threads."""

    def start(self) -> SupervisorChoosesThreads:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in self.env.items() if k != "FLEET_ENGINE__THREADS"}
        cmd = [sys.executable, "-m", "funasr_fleet", "supervise", "--consumers", str(self.consumers)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=common.REPO, stdout=subprocess.DEVNULL, stderr=self._log)
        return self


def fleet_batch(s3: common.S3, keys: list[str], consumers: int, work: Path) -> dict[str, Any]:
    """Ready consumers, warm-up, then K jobs published at once; makespan to the last final event."""
    settings = common.bench_settings(s3)
    jobs = common.Jobs(settings)
    fleet = SupervisorChoosesThreads(settings, consumers, 0, work)
    t_start = time.monotonic()
    fleet.start()
    try:
        pids = fleet.wait_ready(consumers)
        boot_s = time.monotonic() - t_start
        threads = int(fleet.status().get("threads_per_consumer") or 0)
        common.warm_up(jobs, s3, keys[0], consumers)
        tag = uuid.uuid4().hex[:6]
        ids = [f"f{tag}-{i:04d}" for i in range(len(keys))]
        t0 = time.monotonic()
        for job_id, key in zip(ids, keys, strict=True):
            jobs.submit(s3.bucket, key, job_id)
        jobs.wait(ids, 1800)
        finals = [jobs.first(j) for j in ids]
        makespan = max(f.at for f in finals) - t0
        mem = [common.mem_mb(p) for p in pids]
        return {
            "consumers": consumers,
            "threads": threads,
            "boot_s": boot_s,
            "makespan_s": makespan,
            "failed": sum(1 for f in finals if f.kind != "succeeded"),
            "rss_mb": [m["rss_mb"] for m in mem],
            "uss_mb": [m["uss_mb"] for m in mem],
        }
    finally:
        fleet.stop()
        jobs.close()
        common.delete_topology(settings)


def _twice(what: str, fn: Any) -> Any:
    """Run a phase; once more if the shared broker was bounced under it (other suites do that)."""
    import pika.exceptions

    try:
        return fn()
    except (pika.exceptions.AMQPError, ConnectionError) as exc:
        common.log(f"{what}: broker connection lost ({type(exc).__name__}); running the phase again")
        time.sleep(10)
        return fn()


def run(quick: bool = True) -> dict[str, Any]:
    from benchmarks.overhead import fleet_sequential
    from benchmarks.scaling import bare_batch
    from funasr_fleet.settings import usable_cores

    cores = usable_cores()
    clip_s, k, seq = (30, 6, 8) if quick else (60, 16, 30)
    src = common.clip(clip_s)
    duration = common.audio_seconds(src)
    work = common.workdir("fleet-bench-fleet-")
    s3 = common.S3(work).start()
    try:
        keys = s3.upload_copies(src, k, "fleet")
        common.log(f"fleet: K={k} x {duration:.1f}s, {cores} usable cores")
        bare = bare_batch([src] * k, 1, cores, work / "bare-out")
        common.log(f"in-process engine 1x{cores}: {bare['makespan_s']:.2f}s")
        batches = []
        for n in (1, 2):
            batch = _twice(f"fleet N={n}", lambda n=n: fleet_batch(s3, keys, n, work))
            batches.append(batch)
            common.log(f"fleet N={n} (threads {batch['threads']}): {batch['makespan_s']:.2f}s failed={batch['failed']}")
        settings = common.bench_settings(s3, threads=cores)
        samples = _twice("overhead", lambda: fleet_sequential(settings, s3, keys[0], seq, work, cores))
    finally:
        s3.stop()
        common.remove(work)
    overhead_ms = [1000 * v for v in samples["overhead_s"]]
    return {
        "cores": cores,
        "clip_s": duration,
        "jobs": k,
        "in_process_makespan_s": bare["makespan_s"],
        "fleet": batches,
        "ratio_n1_over_in_process": batches[0]["makespan_s"] / bare["makespan_s"],
        "ratio_n2_over_in_process": batches[1]["makespan_s"] / bare["makespan_s"],
        "speedup_n2_over_n1": batches[0]["makespan_s"] / batches[1]["makespan_s"],
        "overhead_p50_ms": common.percentile(overhead_ms, 50),
        "overhead_p95_ms": common.percentile(overhead_ms, 95),
        "inference_p50_ms": common.percentile([1000 * v for v in samples["inference_s"]], 50),
        "overhead_samples": len(overhead_ms),
    }


def tables(result: dict[str, Any]) -> str:
    rows = [("in-process engine", 1, result["cores"], result["in_process_makespan_s"], 1.0, "-", "-", "-")]
    for b in result["fleet"]:
        rows.append(
            (
                f"fleet N={b['consumers']}",
                b["consumers"],
                b["threads"],
                b["makespan_s"],
                b["makespan_s"] / result["in_process_makespan_s"],
                b["boot_s"],
                " / ".join(f"{v:.0f}" for v in b["rss_mb"]),
                " / ".join(f"{v:.0f}" for v in b["uss_mb"]),
            )
        )
    out = common.table(
        f"K={result['jobs']} jobs x {result['clip_s']:.1f} s audio, {result['cores']} usable cores",
        ["layout", "processes", "threads each", "makespan s", "÷ in-process", "boot s", "RSS MiB each", "USS MiB each"],
        rows,
    )
    out += "\n" + common.table(
        f"per-job overhead, one consumer, jobs sent one at a time ({result['overhead_samples']} jobs)",
        ["overhead p50 ms", "overhead p95 ms", "inference p50 ms", "N=2 speed-up over N=1"],
        [
            (
                result["overhead_p50_ms"],
                result["overhead_p95_ms"],
                result["inference_p50_ms"],
                result["speedup_n2_over_n1"],
            )
        ],
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter jobs (about two minutes on 2 cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    print(tables(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
