"""Memory per consumer (1, 2, 4 consumers), and an experiment: share model weights by forking.

Part 1, the fleet as it is: ``supervise --consumers N`` starts N fresh interpreters. After every
consumer has run jobs, read each consumer's RSS, PSS (shared pages split between the processes
sharing them) and USS (private pages) from /proc/<pid>/smaps_rollup. RSS double-counts shared
library pages, so the marginal cost of one more consumer is measured with PSS:
``extra_consumer_rss_fraction = (ΣPSS(N=2) - ΣPSS(N=1)) / ΣPSS(N=1)``.

The same fleet with ``supervisor.preload = "fork"`` (consumers forked from a zygote that loaded
the model once): ΣPSS of consumers + zygote against the fresh-interpreter fleet, the batch
makespan of both (sharing pages must not slow inference), and the time from SIGKILL of a ready
consumer to its replacement being ready (a fork needs no model load).

Part 2, the experiment that decided how preload may work: a process loads the Engine, runs one
warm-up, then ``os.fork()``s children that transcribe with the inherited model. Measured: child
USS/PSS, whether the children's outputs are byte-identical to the parent's, and whether a child
hangs (a watchdog ``alarm``). Variants: ``gc.freeze()`` before fork; a parent that ran inference
with 2 OpenMP threads before forking (the classic fork-after-OpenMP hazard: it hangs, so the
fleet's zygote loads with one thread and never runs inference).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from benchmarks import common


# --- part 1: the fleet -------------------------------------------------------------------------
def fleet_memory(counts: list[int], jobs_per_consumer: int = 2, preload: str = "none") -> list[dict[str, Any]]:
    src = common.clip(10)
    work = common.workdir("fleet-bench-memory-")
    s3 = common.S3(work).start()
    rows = []
    try:
        key = s3.upload(src, "memory/clip10.wav")
        for n in counts:
            # restarts without backoff: "kill → replaced" then measures the boot itself
            settings = common.bench_settings(
                s3, threads=1, supervisor={"preload": preload, "restart_backoff_base_s": 0.01}
            )
            got: dict[str, Any] = {}

            def read(fleet: common.Fleet, got: dict[str, Any] = got) -> None:  # bound: called in this iteration
                got["consumers"] = [common.mem_mb(p) for p in fleet.ready_pids()]
                got["supervisor"] = common.mem_mb(fleet.proc.pid) if fleet.proc else {}
                zygote = fleet.status().get("zygote")
                got["zygote"] = common.mem_mb(zygote["pid"]) if zygote else {}
                got["replace_s"] = replace_time(fleet)

            batch = common.run_fleet_batch(settings, s3, [key] * (n * jobs_per_consumer), n, 1, work, keep=read)
            cons = got["consumers"]
            zygote_pss = got["zygote"].get("pss_mb", 0.0)
            rows.append({
                "preload": preload,
                "consumers": n,
                "rss_mb_each": sum(c["rss_mb"] for c in cons) / len(cons),
                "pss_mb_each": sum(c["pss_mb"] for c in cons) / len(cons),
                "uss_mb_each": sum(c["uss_mb"] for c in cons) / len(cons),
                "rss_mb_total": sum(c["rss_mb"] for c in cons),
                "pss_mb_total": sum(c["pss_mb"] for c in cons),
                "zygote_pss_mb": zygote_pss,
                "fleet_pss_mb": sum(c["pss_mb"] for c in cons) + zygote_pss,  # what the fleet costs
                "supervisor_rss_mb": got["supervisor"].get("rss_mb", float("nan")),
                "makespan_s": batch.makespan_s,
                "replace_s": got["replace_s"],
            })  # fmt: skip
            common.log(f"memory preload={preload} N={n}: RSS/consumer {rows[-1]['rss_mb_each']:.0f} MiB, "
                       f"PSS/consumer {rows[-1]['pss_mb_each']:.0f} MiB, "
                       f"fleet ΣPSS {rows[-1]['fleet_pss_mb']:.0f} MiB, "
                       f"replace {rows[-1]['replace_s']:.2f} s")  # fmt: skip
    finally:
        s3.stop()
        common.remove(work)
    return rows


def replace_time(fleet: common.Fleet, timeout: float = 180.0) -> float:
    """Seconds from SIGKILL of one ready consumer until the fleet has all its consumers ready again."""
    pids = fleet.ready_pids()
    victim = pids[0]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        now = fleet.ready_pids()
        if len(now) >= len(pids) and victim not in now:
            return time.monotonic() - t0
        time.sleep(0.02)
    return float("nan")


# --- part 2: copy-on-write experiment (runs in a fresh interpreter) -------------------------------
def _cow_main(config: dict[str, Any]) -> dict[str, Any]:
    import gc

    from funasr_fleet.engine.threads import configure_threads

    configure_threads(config["parent_threads"])
    import torch

    from funasr_fleet.engine.pipeline import Engine

    engine = Engine(common.engine_settings(config["parent_threads"]))
    clip = config["clip"]

    def content(t: Any) -> str:  # what a job's outputs are made of (timings excluded)
        return repr((t.sentences, t.turns, t.speakers, t.duration_ms))

    ref = content(engine.transcribe(clip))
    parent_before = common.mem_mb(os.getpid())
    if config["gc_freeze"]:
        gc.collect()
        gc.freeze()
    children: list[tuple[int, int, int]] = []  # pid, result fd, release fd
    for _ in range(config["children"]):
        r_res, w_res = os.pipe()
        r_rel, w_rel = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r_res)
            os.close(w_rel)
            # watchdog: SIGALRM's DEFAULT action kills the process even while it is stuck in C (a
            # Python handler would never run inside a deadlocked OpenMP call); shows as -14
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(config["watchdog_s"]))
            torch.set_num_threads(config["child_threads"])
            engine._owner = None  # the forked main thread is a "new" owner
            walls, same = [], True
            for _ in range(config["jobs"]):
                t = engine.transcribe(clip)
                walls.append(t.wall_s)
                same = same and content(t) == ref
            signal.alarm(0)
            os.write(w_res, json.dumps({"identical": same, "wall_s": walls}).encode())
            os.close(w_res)
            os.read(r_rel, 1)  # stay alive until the parent measured us
            os._exit(0)
        os.close(w_res)
        os.close(r_rel)
        children.append((pid, r_res, w_rel))
    results = []
    for _pid, r_res, _ in children:
        raw = b""
        while chunk := os.read(r_res, 65536):  # EOF when the child wrote or died (watchdog)
            raw += chunk
        results.append(json.loads(raw) if raw else None)
    mems = [common.mem_mb(pid) for pid, _, _ in children]
    parent_after = common.mem_mb(os.getpid())
    statuses = []
    for pid, _r_res, w_rel in children:
        with contextlib.suppress(OSError):  # the child already died (its watchdog)
            os.write(w_rel, b"x")
        _, status = os.waitpid(pid, 0)
        statuses.append(os.waitstatus_to_exitcode(status))
    ok = all(s == 0 for s in statuses) and all(r and r["identical"] for r in results)
    return {
        **{k: v for k, v in config.items() if k != "clip"},
        "ok": ok,
        "hung": sum(1 for s in statuses if s == -signal.SIGALRM),
        "exit_codes": statuses,
        "identical": [bool(r and r["identical"]) for r in results],
        "child_wall_s": [r["wall_s"] for r in results if r],
        "parent_pss_mb": parent_after["pss_mb"],
        "parent_rss_before_fork_mb": parent_before["rss_mb"],
        "child_rss_mb": [m["rss_mb"] for m in mems],
        "child_pss_mb": [m["pss_mb"] for m in mems],
        "child_uss_mb": [m["uss_mb"] for m in mems],
        "total_pss_mb": parent_after["pss_mb"] + sum(m["pss_mb"] for m in mems if m["pss_mb"] == m["pss_mb"]),
    }


def cow_probe(config: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    code = (
        "import json,sys; from benchmarks.memory import _cow_main; "
        "print('COW '+json.dumps(_cow_main(json.loads(sys.argv[1]))))"
    )
    env = common.clean_env(PYTHONPATH=str(common.REPO))
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=common.REPO, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the zygote and its forked children
        proc.communicate()
        return {**{k: v for k, v in config.items() if k != "clip"}, "ok": False, "error": "timeout"}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # never leave a stuck child behind
    for line in stdout.splitlines():
        if line.startswith("COW "):
            return json.loads(line[4:])
    return {**{k: v for k, v in config.items() if k != "clip"}, "ok": False,
            "error": f"exit {proc.returncode}: {stderr[-500:]}"}  # fmt: skip


def run(quick: bool = True) -> dict[str, Any]:
    counts = [1, 2, 4]
    rows = fleet_memory(counts)
    fork_rows = fleet_memory(counts, preload="fork")
    by = {r["consumers"]: r for r in rows}
    fby = {r["consumers"]: r for r in fork_rows}
    one, two = by[1], by[2]
    clip = str(common.clip(10))
    base = {"clip": clip, "children": 2, "jobs": 2 if quick else 5, "watchdog_s": 30}
    variants = [
        {**base, "parent_threads": 1, "child_threads": 1, "gc_freeze": False},
        {**base, "parent_threads": 1, "child_threads": 1, "gc_freeze": True},
        {**base, "parent_threads": 1, "child_threads": 2, "gc_freeze": True},
        {**base, "parent_threads": 2, "child_threads": 1, "gc_freeze": True},  # the fork-after-OpenMP hazard
    ]
    cow = []
    for v in variants:
        t = time.monotonic()
        res = cow_probe(v)
        common.log(f"cow {v['parent_threads']}->{v['child_threads']} freeze={v['gc_freeze']}: ok={res.get('ok')} "
                   f"({time.monotonic() - t:.0f}s)")  # fmt: skip
        cow.append(res)
    best = next((c for c in cow if c.get("ok") and c["parent_threads"] == 1 and c["gc_freeze"]), None)
    result: dict[str, Any] = {
        "rows": rows,
        "rss_per_consumer_mb": one["rss_mb_each"],
        "pss_per_consumer_mb": one["pss_mb_each"],
        "extra_consumer_rss_fraction": (two["pss_mb_total"] - one["pss_mb_total"]) / one["pss_mb_total"],
        "preload_rows": fork_rows,
        # supervisor.preload = fork against fresh interpreters (ΣPSS of consumers, + zygote for fork)
        "preload_saving_mb_n2": two["fleet_pss_mb"] - fby[2]["fleet_pss_mb"],
        "preload_saving_mb_n4": by[4]["fleet_pss_mb"] - fby[4]["fleet_pss_mb"],
        "preload_extra_consumer_pss_mb": fby[2]["fleet_pss_mb"] - fby[1]["fleet_pss_mb"],
        "preload_makespan_ratio_n2": fby[2]["makespan_s"] / two["makespan_s"],
        "replace_s_exec": two["replace_s"],
        "replace_s_fork": fby[2]["replace_s"],
        "cow": cow,
    }
    if best is not None and best.get("child_uss_mb"):
        # a forked child's own memory vs a fresh consumer's own memory
        child_uss = sum(best["child_uss_mb"]) / len(best["child_uss_mb"])
        result["cow_child_uss_mb"] = child_uss
        result["cow_two_children_total_pss_mb"] = best["total_pss_mb"]
        result["cow_saving_vs_two_consumers_mb"] = two["pss_mb_total"] - best["total_pss_mb"]
    return result


def tables(result: dict[str, Any]) -> str:
    text = common.table(
        "Memory per consumer (tiny models, after jobs ran); preload = fork adds the zygote to ΣPSS",
        [
            "preload",
            "consumers",
            "RSS/consumer MiB",
            "PSS/consumer MiB",
            "USS/consumer MiB",
            "ΣPSS MiB (+zygote)",
            "batch makespan s",
            "kill → replaced ready s",
        ],
        [
            (
                r["preload"],
                r["consumers"],
                r["rss_mb_each"],
                r["pss_mb_each"],
                r["uss_mb_each"],
                r["fleet_pss_mb"],
                r["makespan_s"],
                r["replace_s"],
            )
            for r in [*result["rows"], *result.get("preload_rows", [])]
        ],
    )
    fraction = result["extra_consumer_rss_fraction"]
    text += f"\nextra consumer / first consumer (PSS, fresh interpreters): **{fraction:.2f}**\n"
    if "preload_saving_mb_n2" in result:
        text += (f"preload = fork saves **{result['preload_saving_mb_n2']:.0f} MiB** (2 consumers) and "
                 f"**{result['preload_saving_mb_n4']:.0f} MiB** (4 consumers) of ΣPSS; "
                 f"one more forked consumer costs "
                 f"{result['preload_extra_consumer_pss_mb']:.0f} MiB; makespan fork ÷ exec (N=2) "
                 f"{result['preload_makespan_ratio_n2']:.2f}; a killed consumer is ready again in "
                 f"{result['replace_s_fork']:.2f} s (fork) vs {result['replace_s_exec']:.2f} s (exec)\n")  # fmt: skip
    text += "\n"

    def avg(xs: list[float]) -> float:
        return sum(xs) / len(xs) if xs else float("nan")

    text += common.table(
        "Copy-on-write experiment: load the model once, fork 2 children",
        [
            "parent threads → child",
            "gc.freeze",
            "ok (no hang, identical output)",
            "children hung",
            "child USS MiB",
            "child PSS MiB",
            "zygote+children ΣPSS MiB",
        ],
        [
            (
                f"{c['parent_threads']} → {c['child_threads']}",
                c["gc_freeze"],
                c.get("ok"),
                c.get("hung", c.get("error", "")),
                avg(c.get("child_uss_mb", [])),
                avg(c.get("child_pss_mb", [])),
                c.get("total_pss_mb", float("nan")),
            )
            for c in result["cow"]
        ],
    )
    if "cow_saving_vs_two_consumers_mb" in result:
        text += (f"\n2 forked children (with zygote) vs 2 fresh consumers: saves "
                 f"**{result['cow_saving_vs_two_consumers_mb']:.0f} MiB** ΣPSS\n")  # fmt: skip
    return text


if __name__ == "__main__":  # pragma: no cover
    res = run(quick="--quick" in sys.argv)
    print(tables(res))
    print(json.dumps(res, indent=2, default=str))
