"""Backends side by side: torch fp32, onnx fp32, onnx int8 — throughput, peak RSS, token parity.

    python -m benchmarks.backends [--quick] [--size tiny|full] [--layouts 1x2,2x1] [--json FILE]

For each backend, the engine runs in fresh worker processes (threads set before torch is
imported, as in a consumer) in each layout (``PxT``: P processes side by side, T threads each),
every process transcribing the same speech once after a warm-up; throughput = audio seconds
transcribed by all processes / the slowest process's wall seconds. Peak RSS is each worker's
VmHWM (after load, warm-up and the run). Parity: the ASR token sequence (punctuation removed) of
onnx fp32 against torch fp32, and int8 against onnx fp32, on the same files; "identical" = tokens
in matching runs / tokens of the longer sequence (difflib), "boundary" = punctuation marks agreeing.

Exports are made (and cached next to the models) in a preparation run before anything is timed.
Models: ``--size tiny`` the test models (pipeline cost, not model cost); ``--size full`` the
real-size random models (``funasr-fleet dev models --size full``; ~2 GB, each process holds its
own copy: 2x1 at full size needs ~8 GB free). ``run(quick, size) -> dict`` for aggregate runners.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BACKENDS = (("torch", "none"), ("onnx", "none"), ("onnx", "int8"))
_PUNCT = set("，。？！、,.?!")


def _log(msg: str) -> None:
    print(f"[bench backends {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def models_env(size: str) -> dict[str, str]:
    from funasr_fleet.devmodels import build_models

    return build_models(REPO / ".cache" / f"{size}-models", size).env()  # type: ignore[arg-type]


# --- the measured process ----------------------------------------------------------------------
def worker(files: list[str], threads: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: threads first, then the engine (backend from the environment)."""
    from funasr_fleet.engine.threads import configure_threads

    configure_threads(threads)
    from benchmarks.engine import peak_rss_mib
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.engine.transcript import TranscribeOptions
    from funasr_fleet.settings import load_settings

    engine = Engine(load_settings().engine)
    warmup_s = engine.warmup()  # ONNX sessions open here (first inference in this process)
    runs = []
    for f in files:
        start = time.perf_counter()
        t = engine.transcribe(f, TranscribeOptions(diarize=True))
        runs.append({"file": Path(f).name, "audio_s": t.duration_ms / 1000, "wall_s": time.perf_counter() - start,
                     "text": t.text})  # fmt: skip
    return {"load_s": engine.load_s, "warmup_s": warmup_s, "runs": runs, "peak_rss_mib": peak_rss_mib()}


def _spawn(env: dict[str, str], files: list[Path], threads: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "benchmarks.backends", "--worker", "--threads", str(threads), *map(str, files)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=7200)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}): {err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _env(size: str, backend: str, quantize: str, threads: int) -> dict[str, str]:
    return {**os.environ, **models_env(size), "FLEET_ENGINE__BACKEND": backend, "FLEET_ENGINE__QUANTIZE": quantize,
            "FLEET_ENGINE__THREADS": str(threads), "FLEET_LOG__LEVEL": "WARNING",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip


# --- parity (pure) ------------------------------------------------------------------------------
def tokens(text: str) -> list[str]:
    """ASR tokens of a transcript text: CJK characters one by one, other words whole; no punctuation."""
    from funasr_fleet.engine.pipeline import _units

    return _units("".join(" " if c in _PUNCT else c for c in text))


def agreement(a: list[str], b: list[str]) -> float:
    """Share of tokens in matching runs, over the longer sequence (1.0 = identical; both empty = 1.0)."""
    if not a and not b:
        return 1.0
    blocks = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks()
    return sum(m.size for m in blocks) / max(len(a), len(b))


def marks(text: str) -> list[str]:
    """The punctuation decision after each token ("" = none): where sentences and commas fall."""
    out: list[str] = []
    for piece in text.replace(" ", ""):
        if piece in _PUNCT and out:
            out[-1] = piece
        elif piece not in _PUNCT:
            out.append("")
    return out


# --- the run ------------------------------------------------------------------------------------
def run(
    quick: bool = False, size: str = "tiny", layouts: tuple[tuple[int, int], ...] = ((1, 2), (2, 1))
) -> dict[str, Any]:
    from benchmarks.engine import speech

    seconds = (30 if size == "full" else 60) if quick else 120
    audio = [speech(seconds)]
    _log(f"size {size}, audio {seconds} s, layouts {layouts}; preparing exports")
    for backend, quantize in BACKENDS[1:]:
        _collect(_spawn(_env(size, backend, quantize, 1), [], 1))  # exports (cached), nothing timed
    rows, texts = [], {}
    for backend, quantize in BACKENDS:
        for procs, threads in layouts:
            _log(f"{backend}/{quantize}: {procs} proc x {threads} thr")
            started = [_spawn(_env(size, backend, quantize, threads), audio, threads) for _ in range(procs)]
            results = [_collect(p) for p in started]
            walls = [r["runs"][0]["wall_s"] for r in results]
            audio_s = results[0]["runs"][0]["audio_s"]
            rows.append({"backend": backend, "quantize": quantize, "procs": procs, "threads": threads,
                         "audio_s": audio_s, "max_wall_s": max(walls), "throughput": procs * audio_s / max(walls),
                         "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                         "load_s": max(r["load_s"] for r in results),
                         "warmup_s": max(r["warmup_s"] for r in results)})  # fmt: skip
            texts.setdefault(f"{backend}/{quantize}", results[0]["runs"][0]["text"])
    parity = []
    for a, b in (("torch/none", "onnx/none"), ("onnx/none", "onnx/int8")):
        ta, tb = tokens(texts[a]), tokens(texts[b])
        ma, mb = marks(texts[a]), marks(texts[b])
        same_marks = sum(x == y for x, y in zip(ma, mb, strict=False)) / max(len(ma), len(mb), 1)  # lengths may differ
        parity.append({"a": a, "b": b, "tokens_a": len(ta), "tokens_b": len(tb), "identical": agreement(ta, tb),
                       "punctuation_agrees": same_marks if ta == tb else None})  # fmt: skip
    return {"size": size, "quick": quick, "cores": len(os.sched_getaffinity(0)), "rows": rows, "parity": parity,
            "load_avg": os.getloadavg()[0]}  # fmt: skip


def render(result: dict[str, Any]) -> str:
    title = (f"## Backends ({result['size']} models, {result['cores']} cores, load average {result['load_avg']:.1f} "
             f"at the end{', quick' if result['quick'] else ''})")  # fmt: skip
    lines = [title, "",
             "| backend | layout | audio s | slowest wall s | throughput (audio s / s) "
             "| peak RSS / proc MiB | load s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        layout = "fp32" if r["quantize"] == "none" else r["quantize"]
        lines.append(f"| {r['backend']} {layout} | {r['procs']} x {r['threads']} | "
                     f"{r['audio_s']:.0f} | {r['max_wall_s']:.2f} | {r['throughput']:.2f} | {r['peak_rss_mib']:.0f} | "
                     f"{r['load_s']:.1f} |")  # fmt: skip
    lines += ["", "| parity | tokens | identical tokens | punctuation agrees |", "|---|---|---|---|"]
    for p in result["parity"]:
        punct = "-" if p["punctuation_agrees"] is None else f"{100 * p['punctuation_agrees']:.1f} %"
        lines.append(
            f"| {p['b']} vs {p['a']} | {p['tokens_b']} vs {p['tokens_a']} | {100 * p['identical']:.1f} % | {punct} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short file (60 s tiny, 30 s full)")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--layouts", default="1x2,2x1", help="PxT list, e.g. 1x2,2x1 (default) or 1x1")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.files, args.threads)))
        return 0
    layouts = tuple(tuple(int(x) for x in lay.split("x")) for lay in args.layouts.split(",") if lay)
    result = run(quick=args.quick, size=args.size, layouts=layouts)  # type: ignore[arg-type]
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
