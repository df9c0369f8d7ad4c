"""Long recordings: peak RSS and wall time by length, with and without ``num_speakers = 2``.

    python -m benchmarks long [--quick]          (through the aggregate runner: --only long)
    python -m benchmarks.long [--quick] [--sizes 10,45,120,240] [--json FILE]

Audio: synthetic two-voice speech (espeak-ng + sox ``-R -D``, deterministic) with realistic pauses:
a block of dialogue lines separated by 0.3..6 s silences, repeated to the length wanted. Each
(length, hint) pair runs in its own fresh interpreter (``--worker``): decode to the int16 temp
file as the consumer does, then ``Engine.transcribe``; peak RSS is the worker's VmHWM, wall time
is decode + transcribe (model load excluded). Tiny random models, 1 thread: the figures measure
the pipeline (windows, VAD, features, embeddings, clustering), not a real model's speed.

Goals (issue 12): 4 h peak RSS <= 1.5 x the 10-min peak; wall time per audio hour at 4 h <= 1.2 x
that at 10 min; hinted <= 1.2 x unhinted at every length. ``run(quick) -> dict`` for the runner.
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
MODELS = REPO / ".cache" / "tiny-models"
AUDIO_CACHE = REPO / ".cache" / "bench-audio"
FULL_MINUTES = (10, 45, 120, 240)
QUICK_MINUTES = (10, 20)
PAUSES_S = (0.4, 0.9, 1.6, 0.5, 2.8, 0.3, 1.1, 6.0, 0.7, 1.3, 0.4, 3.5)  # between lines, cycled
LINES = (
    "Good morning. Did the numbers for the third quarter arrive yesterday?",
    "They came in last night, and revenue is up by about four percent.",
    "Better than expected. What happened to the costs in the same period?",
    "Costs stayed flat, so margins improved a little, mostly in the north.",
    "Then we should talk about hiring before the budget meeting next week.",
    "I agree. Let me put together a short plan with two options for that.",
)


def _log(msg: str) -> None:
    print(f"[bench long {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def block(path: Path) -> Path:
    """About 1.5 minutes of two-voice dialogue with varied pauses (16 kHz mono WAV)."""
    from funasr_fleet.devaudio import VOICES, run_tool, silence, speak

    parts: list[str] = []
    tmp = path.parent / f".{path.stem}-parts"
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(2 * len(PAUSES_S)):
        voice, pitch = VOICES[i % 2]
        parts.append(str(speak(LINES[i % len(LINES)], voice, pitch, tmp / f"line{i:02d}.wav")))
        parts.append(str(silence(tmp / f"pause{i:02d}.wav", PAUSES_S[i % len(PAUSES_S)])))
    run_tool(["sox", "-R", "-D", *parts, str(path)])
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    return path


def speech(minutes: int) -> Path:
    """A cached file of exactly ``minutes`` of ``block`` repeated (ffmpeg concat, then sox trim)."""
    from funasr_fleet.devaudio import ffmpeg, run_tool

    AUDIO_CACHE.mkdir(parents=True, exist_ok=True)
    path = AUDIO_CACHE / f"long-{minutes}min.wav"
    if path.is_file():
        return path
    base = AUDIO_CACHE / "long-block.wav"
    if not base.is_file():
        block(base)
    base_s = float(subprocess.run(["soxi", "-D", str(base)], capture_output=True, text=True, check=True).stdout)
    listing = AUDIO_CACHE / f"long-{minutes}min.txt"
    listing.write_text("".join(f"file '{base}'\n" for _ in range(int(minutes * 60 // base_s) + 1)))
    joined = path.with_suffix(".joined.wav")
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(joined))
    run_tool(["sox", "-R", "-D", str(joined), str(path.with_suffix(".part.wav")), "trim", "0", str(minutes * 60)])
    joined.unlink()
    listing.unlink()
    os.replace(path.with_suffix(".part.wav"), path)
    return path


# --- the measured process ----------------------------------------------------------------------
def _hwm_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024


def worker(path: str, num_speakers: int | None, window_s: float | None, diarize: bool = True) -> dict[str, Any]:
    """In a fresh interpreter: load the engine, decode ``path`` to disk, transcribe, measure."""
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(1)
    from funasr_fleet.engine.audio import decode
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.engine.sizing import current_rss_mb
    from funasr_fleet.engine.transcript import TranscribeOptions
    from funasr_fleet.settings import load_settings

    settings = load_settings().engine
    if window_s:
        settings = settings.model_copy(update={"window_s": window_s})
    engine = Engine(settings)
    base = current_rss_mb()
    options = TranscribeOptions(num_speakers=num_speakers, diarize=diarize)
    fractions: list[float] = []
    t0 = time.perf_counter()
    with decode(path, max_audio_s=settings.max_audio_s) as source:
        estimate = engine.check_memory(source.duration_s, options)
        t = engine.transcribe(source, options, progress=fractions.append)
    wall = time.perf_counter() - t0
    return {
        "audio_s": t.duration_ms / 1000, "wall_s": round(wall, 2), "decode_s": round(t.decode_s, 2),
        "base_mb": round(base, 1), "peak_mb": round(_hwm_mb(), 1), "estimate_mb": round(estimate.peak_rss_mb, 1),
        "windows": len(fractions), "sentences": len(t.sentences), "speakers": len(t.speakers),
        "warnings": [w.code for w in t.warnings], "window_s": settings.window_s,
    }  # fmt: skip


def measure(minutes: int, num_speakers: int | None, window_s: float | None = None) -> dict[str, Any]:
    from funasr_fleet.devmodels import build_tiny_models

    path = speech(minutes)
    env = {**os.environ, **build_tiny_models(MODELS).env(), "FLEET_ENGINE__THREADS": "1", "FLEET_LOG__LEVEL": "WARNING",
           "PYTHONPATH": str(REPO)}  # fmt: skip
    cmd = [sys.executable, "-m", "benchmarks.long", "--worker", str(path), "--num-speakers", str(num_speakers or 0)]
    if window_s:
        cmd += ["--window-s", str(window_s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(minutes=minutes, hint=num_speakers or 0)
    _log(json.dumps(row))
    return row


def run(quick: bool = False, sizes: tuple[int, ...] | None = None) -> dict[str, Any]:
    sizes = sizes or (QUICK_MINUTES if quick else FULL_MINUTES)
    rows = []
    for minutes in sizes:
        for hint in (None, 2):
            rows.append(measure(minutes, hint))
    return {"rows": rows, "ratios": ratios(rows), "cores": os.cpu_count(), "load_avg": os.getloadavg()}


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The goals' ratios: longest vs shortest size (unhinted), and hinted vs unhinted per size."""
    plain = {r["minutes"]: r for r in rows if not r["hint"]}
    out: dict[str, float] = {}
    if len(plain) >= 2:
        short, long = plain[min(plain)], plain[max(plain)]
        out["rss_long_over_short"] = round(long["peak_mb"] / short["peak_mb"], 3)
        per_h = {k: r["wall_s"] / (r["audio_s"] / 3600) for k, r in plain.items()}
        out["wall_per_hour_long_over_short"] = round(per_h[max(plain)] / per_h[min(plain)], 3)
    for r in rows:
        if r["hint"] and r["minutes"] in plain:
            out[f"hinted_over_unhinted_{r['minutes']}min"] = round(r["wall_s"] / plain[r["minutes"]]["wall_s"], 3)
    return out


def tables(result: dict[str, Any]) -> str:
    head = (
        "| audio | hint | windows | wall s | wall s per audio h | base MB | peak RSS MB | estimate MB "
        "| sentences | speakers |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in result["rows"]:
        per_h = r["wall_s"] / (r["audio_s"] / 3600)
        lines.append(
            f"| {r['minutes']} min | {r['hint'] or '-'} | {r['windows']} | {r['wall_s']:.1f} | {per_h:.0f} "
            f"| {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {r['estimate_mb']:.0f} | {r['sentences']} | {r['speakers']} |"
        )
    goals = {"rss_long_over_short": 1.5, "wall_per_hour_long_over_short": 1.2}
    lines.append("")
    for key, value in result["ratios"].items():
        goal = goals.get(key, 1.2)
        lines.append(f"- {key}: {value:.3f} (goal <= {goal}: {'met' if value <= goal else 'NOT met'})")
    lines.append(f"- cores: {result['cores']}, load average at the end: {result['load_avg']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.long", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_MINUTES} minutes")
    parser.add_argument("--sizes", default="", help="comma-separated minutes (default: 10,45,120,240)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--num-speakers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--window-s", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-diarize", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.num_speakers or None, args.window_s, not args.no_diarize)))
        return 0
    sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip()) or None
    result = run(quick=args.quick, sizes=sizes)
    print(tables(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
