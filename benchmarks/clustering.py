"""Speaker clustering: FunASR's ClusterBackend vs the fleet's cluster_speakers, side by side.

    python -m benchmarks.clustering [--quick] [--json FILE]

Input: synthetic CAM++-sized embeddings (192-d) of two voices taking turns of random length
(mean 8 windows, about 6 s), window-to-window cosine about 0.55 within a voice and 0.2 between
voices, noise in a 32-d subspace (real embeddings vary along few directions). N windows stand for
N x 0.75 s of speech: 500 = 6 min, 2048 = 26 min, 5000 = 1 h, 19200 = 4 h.

Table 1, for N x request (none / exact 2 / range 2..4) and each backend: what ran, wall seconds
and peak memory of the clustering call alone (VmHWM reset through /proc/self/clear_refs before the
call, minus the resident size then; glibc's mmap threshold is fixed so that memory freed by the
warm-up is not counted as already resident), the number of speakers found and the adjusted Rand index
against the truth. Each row runs in a fresh process with one BLAS/OpenMP thread (a consumer's
layout) after one warm-up call at 2100 windows, so one-time costs (numba's JIT for UMAP) are in
the warm-up column, not in the row. FunASR's ClusterBackend has no ranges: its "2..4" row is its
unhinted run.

Table 2 (in-process, seconds): few windows without a count, one voice vs two voices at harder
settings, false splits and false merges in 100 trials for FunASR, the fleet, and the fleet's
spectral+merge without its 6-window floor — the measurement behind clustering.MIN_SPLIT_N.

Table 3 (in-process): an exact count past 2048 windows with unequal voices (one dominant, some
rare): FunASR's KMeansCluster vs cluster_speakers, accuracy and seconds.

Figures only, no pass/fail. Re-run on a quiet machine: ``python -m benchmarks.clustering``.
``run(quick) -> dict`` is the entry point for ``python -m benchmarks``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SIZES = (500, 2048, 5000, 19200)
QUICK_SIZES = (500, 2048, 5000)
REQUESTS = ("none", "exact=2", "2..4")
DIM = 192
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
              # a fixed mmap threshold: freed large arrays leave the RSS, so one call's peak is its own
              "MALLOC_MMAP_THRESHOLD_": "131072"}  # fmt: skip


def _log(msg: str) -> None:
    print(f"[bench clustering {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dialogue(n: int, *, voices: int = 2, rho: float = 0.55, beta: float = 0.2, eff: int = 32, seed: int = 0,
             shares: tuple[float, ...] | None = None) -> Any:  # fmt: skip
    """(embeddings (n, 192) float32, true labels (n,)): ``voices`` taking turns of random length, or
    (``shares``) each window's voice drawn with those probabilities (a dominant voice and rare ones)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    voices = len(shares) if shares else voices
    common = rng.standard_normal(DIM)
    common /= np.linalg.norm(common)
    unique = rng.standard_normal((voices, DIM))
    unique -= np.outer(unique @ common, common)
    unique /= np.linalg.norm(unique, axis=1, keepdims=True)
    centres = np.sqrt(beta) * common + np.sqrt(1 - beta) * unique
    truth = np.empty(n, dtype=np.int64)
    i, speaker = (n, 0) if shares else (0, 0)
    if shares:
        truth = rng.choice(voices, size=n, p=np.asarray(shares) / sum(shares))
    while i < n:
        length = int(rng.geometric(1 / 8))
        truth[i : i + length] = speaker
        i += length
        speaker = (speaker + 1 + int(rng.integers(0, voices - 1))) % voices if voices > 1 else 0
    basis = np.linalg.qr(rng.standard_normal((DIM, eff)))[0]
    noise = rng.standard_normal((n, eff)) @ basis.T
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    x = centres[truth] + np.sqrt((1 - rho) / rho) * noise
    return x.astype(np.float32), truth


def _status_mib(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def _call(backend: str, x: Any, request: str) -> tuple[Any, str]:
    """One clustering call; returns (labels, what ran)."""
    if backend == "funasr":
        from funasr.models.campplus.cluster_backend import ClusterBackend

        oracle = 2 if request == "exact=2" else None
        n = x.shape[0]
        method = "single" if n < 20 else "spectral" if n < 2048 else "kmeans" if oracle else "umap+hdbscan"
        return ClusterBackend()(x, oracle_num=oracle), method + ("+merge" if oracle is None and n >= 20 else "")
    from funasr_fleet.engine.clustering import SpeakerCount, cluster_speakers

    count = {"none": SpeakerCount(), "exact=2": SpeakerCount(exact=2), "2..4": SpeakerCount(min=2, max=4)}[request]
    result = cluster_speakers(x, count)
    return result.labels, result.method


def worker(backend: str, n: int, request: str) -> dict[str, Any]:
    """In a fresh process: warm up, then time and measure one clustering call."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    warm_x, _ = dialogue(2100, seed=99)
    t = time.perf_counter()
    _call(backend, warm_x, "none")  # first call pays one-time costs (numba JIT for UMAP)
    warmup_s = time.perf_counter() - t
    x, truth = dialogue(n)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = _status_mib("VmRSS")
    t = time.perf_counter()
    labels, method = _call(backend, x, request)
    seconds = time.perf_counter() - t
    peak = _status_mib("VmHWM") - base
    labels = np.asarray(labels)
    return {
        "backend": backend, "n": n, "request": request, "method": method, "seconds": seconds,
        "peak_mib": peak, "warmup_s": warmup_s, "speakers": len(set(labels.tolist())),
        "noise_windows": int((labels < 0).sum()), "ari": float(adjusted_rand_score(truth, labels)),
    }  # fmt: skip


def _spawn(backend: str, n: int, request: str) -> dict[str, Any]:
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "benchmarks.clustering", "--worker", backend, str(n), request]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        return {"backend": backend, "n": n, "request": request, "error": proc.stderr[-500:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def small_n(trials: int = 100) -> list[dict[str, Any]]:
    """False splits (one voice -> 2+ speakers) and false merges (two voices -> 1) without a count."""
    import numpy as np
    from funasr.models.campplus.cluster_backend import ClusterBackend

    from funasr_fleet.engine import clustering as cl

    funasr = ClusterBackend()

    def no_floor(x: Any) -> Any:  # the fleet's spectral+merge without the MIN_SPLIT_N floor
        x = cl._unit_rows(x.astype(np.float64))
        return cl.merge_close(cl.spectral_cluster(1, 15, 0)(x.copy()), x, cl.MERGE_COS) if len(x) >= 3 else [0]

    backends = {"funasr": lambda x: funasr(x), "fleet": lambda x: cl.cluster_speakers(x).labels, "no_floor": no_floor}
    rows = []
    for rho, beta in ((0.55, 0.2), (0.45, 0.3), (0.35, 0.1)):
        for n in (2, 3, 4, 5, 6, 8, 10, 13, 16, 19, 25, 40):
            split = dict.fromkeys(backends, 0)
            merged = dict.fromkeys(backends, 0)
            for t in range(trials):
                one, _ = dialogue(n, voices=1, rho=rho, beta=beta, eff=16, seed=t)
                two, truth = dialogue(n, voices=2, rho=rho, beta=beta, eff=16, seed=10_000 + t)
                if len(set(truth.tolist())) < 2:
                    two, truth = dialogue(n, voices=2, rho=rho, beta=beta, eff=16, seed=20_000 + t)
                for name, fn in backends.items():
                    split[name] += len(set(np.asarray(fn(one)).tolist())) > 1
                    merged[name] += len(set(np.asarray(fn(two)).tolist())) < 2
            rows.append({"rho": rho, "beta": beta, "n": n, "trials": trials,
                         **{f"split_{k}": v for k, v in split.items()},
                         **{f"merge_{k}": v for k, v in merged.items()}})  # fmt: skip
    return rows


def imbalance(sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    """Exact counts past 2048 windows with unequal voices: FunASR's KMeansCluster (its path for a
    count at that size) vs cluster_speakers, adjusted Rand index and seconds (in-process)."""
    from funasr.models.campplus.cluster_backend import KMeansCluster
    from sklearn.metrics import adjusted_rand_score

    from funasr_fleet.engine.clustering import SpeakerCount, cluster_speakers

    rows = []
    for n in sizes:
        for shares in ((0.5, 0.5), (0.9, 0.1), (0.97, 0.03), (0.4, 0.3, 0.2, 0.1), (0.7, 0.1, 0.1, 0.05, 0.05)):
            x, truth = dialogue(n, shares=shares, rho=0.45)
            t = time.perf_counter()
            kmeans = KMeansCluster()(x, len(shares))
            t_kmeans = time.perf_counter() - t
            t = time.perf_counter()
            fleet = cluster_speakers(x, SpeakerCount(exact=len(shares))).labels
            t_fleet = time.perf_counter() - t
            rows.append({"n": n, "shares": shares, "kmeans_ari": float(adjusted_rand_score(truth, kmeans)),
                         "kmeans_s": t_kmeans, "fleet_ari": float(adjusted_rand_score(truth, fleet)),
                         "fleet_s": t_fleet})  # fmt: skip
    return rows


def run(quick: bool = False) -> dict[str, Any]:
    for key, value in ONE_THREAD.items():
        os.environ.setdefault(key, value)
    rows = []
    for n in QUICK_SIZES if quick else SIZES:
        for request in REQUESTS:
            for backend in ("funasr", "fleet"):
                if backend == "funasr" and request == "2..4":
                    continue  # no ranges in FunASR: the same as its unhinted run
                _log(f"N={n} {request} {backend}")
                rows.append(_spawn(backend, n, request))
                _log(f"  -> {rows[-1]}")
    _log("small N without a count")
    few = small_n(40 if quick else 100)
    _log("exact counts with unequal voices")
    return {"quick": quick, "rows": rows, "small_n": few, "imbalance": imbalance((5000,) if quick else (5000, 19200)),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": os.cpu_count()}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    from benchmarks.common import table

    by = {(r["n"], r["request"], r["backend"]): r for r in result["rows"]}

    def cells(r: dict[str, Any] | None) -> list[Any]:
        if r is None:
            return ["(= none)", "", "", "", ""]
        if "error" in r:
            return ["error", "", "", "", r["error"][-60:]]
        noise = f" ({r['noise_windows']} noise)" if r.get("noise_windows") else ""
        return [
            r["method"],
            round(r["seconds"], 2),
            round(r["peak_mib"], 1),
            f"{r['speakers']}{noise}",
            round(r["ari"], 3),
        ]

    rows = []
    for n, request in dict.fromkeys((r["n"], r["request"]) for r in result["rows"]):
        rows.append([n, request, *cells(by.get((n, request, "funasr"))), *cells(by.get((n, request, "fleet")))])
    cols = ["N", "request", "FunASR ran", "s", "peak MiB", "speakers", "ARI",
            "fleet ran", "s", "peak MiB", "speakers", "ARI"]  # fmt: skip
    out = table("Clustering: FunASR ClusterBackend vs cluster_speakers (2 voices, 1 thread)", cols, rows)
    warm = sorted({(r["backend"], round(r.get("warmup_s", 0), 1)) for r in result["rows"] if "warmup_s" in r})
    funasr_w = max((w for b, w in warm if b == "funasr"), default=0.0)
    fleet_w = max((w for b, w in warm if b == "fleet"), default=0.0)
    out += (
        f"\nWarm-up call at 2100 windows (first call in a process): FunASR up to {funasr_w} s, "
        f"fleet up to {fleet_w} s.\n\n"
    )
    small = [[r["n"], f"{r['rho']}/{r['beta']}", f"{r['split_funasr']}/{r['trials']}",
              f"{r['merge_funasr']}/{r['trials']}", f"{r['split_fleet']}/{r['trials']}",
              f"{r['merge_fleet']}/{r['trials']}", f"{r['split_no_floor']}/{r['trials']}",
              f"{r['merge_no_floor']}/{r['trials']}"] for r in result["small_n"]]  # fmt: skip
    out += table("Few windows, no count: false splits (1 voice) and false merges (2 voices)",
                 ["N", "cos within/between", "FunASR split", "FunASR merge", "fleet split", "fleet merge",
                  "no 6-window floor: split", "merge"], small)  # fmt: skip
    unequal = [[r["n"], "/".join(f"{v:g}" for v in r["shares"]), round(r["kmeans_ari"], 3), round(r["kmeans_s"], 2),
                round(r["fleet_ari"], 3), round(r["fleet_s"], 2)] for r in result.get("imbalance", [])]  # fmt: skip
    out += "\n" + table("Exact count, unequal voices (window cosine 0.45 within, 0.2 between): adjusted Rand index",
                        ["N", "shares", "FunASR KMeans ARI", "s", "fleet ARI", "s"], unequal)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.clustering", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N up to 5000 (no 4 h size); fewer small-N trials")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "N", "REQUEST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        backend, n, request = args.worker
        print(json.dumps(worker(backend, int(n), request)))
        return 0
    result = run(quick=args.quick)
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
