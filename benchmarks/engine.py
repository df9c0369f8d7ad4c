"""Engine benchmark: model load time, real-time factor, peak RSS, threads-per-process layouts.

    python -m benchmarks.engine [--quick] [--json FILE]

Every measurement runs in a fresh subprocess (``--worker``), so load time includes nothing
cached in this process, RSS is one engine's own, and thread settings are applied before torch is
imported, as in a consumer. Models are the tiny offline ones (``funasr-fleet dev tiny-models``):
the figures measure the pipeline (decode, VAD, features, clustering, process layout), not a real
model's speed. ``run(quick) -> dict`` is the entry point for an aggregate runner.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / ".cache" / "tiny-models"
AUDIO_CACHE = REPO / ".cache" / "bench-audio"


def _log(msg: str) -> None:
    print(f"[bench engine {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def speech(seconds: int) -> Path:
    """A cached two-voice dialogue of at least ``seconds`` (espeak-ng + sox, deterministic)."""
    from funasr_fleet.devaudio import synth_speech

    AUDIO_CACHE.mkdir(parents=True, exist_ok=True)
    path = AUDIO_CACHE / f"engine-{seconds}s.wav"
    if not path.is_file():
        tmp = path.with_suffix(".tmp.wav")
        synth_speech(tmp, seconds)
        os.replace(tmp, path)
    return path


def _env(threads: int) -> dict[str, str]:
    from funasr_fleet.devmodels import build_tiny_models

    models = build_tiny_models(MODELS)
    return {**os.environ, **models.env(), "FLEET_ENGINE__THREADS": str(threads), "FLEET_LOG__LEVEL": "WARNING"}


# --- the measured process ----------------------------------------------------------------------
def worker(files: list[str], threads: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: configure threads, load the engine, transcribe ``files``."""
    t0 = time.perf_counter()
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(threads)
    from funasr_fleet.engine.pipeline import Engine, import_funasr
    from funasr_fleet.settings import load_settings

    import_funasr()
    t_import = time.perf_counter() - t0
    engine = Engine(load_settings().engine)
    warmup_s = engine.warmup()  # lazy initialisation is not part of a job's cost
    runs = []
    for f in files:
        start = time.perf_counter()
        t = engine.transcribe(f)
        runs.append({"file": Path(f).name, "audio_s": t.duration_ms / 1000, "wall_s": time.perf_counter() - start,
                     "decode_s": t.decode_s, "infer_s": t.wall_s, "sentences": len(t.sentences)})  # fmt: skip
    return {
        "import_s": t_import,
        "load_s": engine.load_s,
        "warmup_s": warmup_s,
        "runs": runs,
        "peak_rss_mib": peak_rss_mib(),
        "threads": threads,
    }


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry the parent's peak over execve)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spawn(files: list[Path], threads: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "benchmarks.engine", "--worker", "--threads", str(threads), *map(str, files)]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(threads), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def layout(procs: int, threads: int, audio: Path) -> dict[str, Any]:
    """``procs`` engines side by side, each transcribing ``audio`` once; makespan of the inference."""
    started = [_spawn([audio], threads) for _ in range(procs)]
    results = [_collect(p) for p in started]
    walls = [r["runs"][0]["wall_s"] for r in results]
    audio_s = results[0]["runs"][0]["audio_s"]
    return {
        "procs": procs,
        "threads": threads,
        "audio_s": audio_s,
        "max_wall_s": max(walls),
        "mean_wall_s": sum(walls) / len(walls),
        "throughput_audio_s_per_s": procs * audio_s / max(walls),
    }


def run(quick: bool = False) -> dict[str, Any]:
    """All measurements as one dict (see the module docstring)."""
    short_s, long_s, layout_s = (60, 120, 60) if quick else (60, 600, 120)
    _log(f"synthesising speech ({short_s}s, {long_s}s)")
    short, long = speech(short_s), speech(long_s)
    layout_audio = speech(layout_s)
    cores = len(os.sched_getaffinity(0))
    _log("single engine, 2 threads: load + RTF")
    single = _collect(_spawn([short, long], 2))
    layouts = []
    for procs, threads in ((1, 1), (1, 2), (2, 1), (2, 2)):
        _log(f"layout {procs} proc x {threads} thread(s)")
        layouts.append(layout(procs, threads, layout_audio))
    return {
        "cores": cores,
        "quick": quick,
        "import_s": single["import_s"],
        "load_s": single["load_s"],
        "peak_rss_mib": single["peak_rss_mib"],
        "rtf": [{**r, "rtf": r["wall_s"] / r["audio_s"]} for r in single["runs"]],
        "layouts": layouts,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"## Engine (tiny models, {result['cores']} cores{', quick' if result['quick'] else ''})",
        "",
        f"funasr import {result['import_s']:.2f} s, model load {result['load_s']:.3f} s, "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB (2 threads, after the runs below)",
        "",
        "| audio | wall s | decode s | RTF | sentences |",
        "|---|---|---|---|---|",
    ]
    for r in result["rtf"]:
        lines.append(
            f"| {r['audio_s']:.0f} s | {r['wall_s']:.2f} | {r['decode_s']:.3f} | {r['rtf']:.4f} | {r['sentences']} |"
        )
    lines += [
        "",
        "| layout | audio per proc | slowest proc wall s | throughput (audio s / s) |",
        "|---|---|---|---|",
    ]
    for lay in result["layouts"]:
        lines.append(
            f"| {lay['procs']} proc x {lay['threads']} thr | {lay['audio_s']:.0f} s | {lay['max_wall_s']:.2f} | "
            f"{lay['throughput_audio_s_per_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.engine", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter audio (60 s / 2 min)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.files, args.threads)))
        return 0
    result = run(quick=args.quick)
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
