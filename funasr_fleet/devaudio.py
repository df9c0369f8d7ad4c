"""Deterministic synthetic speech (espeak-ng + sox + ffmpeg) for tests, the demo and benchmarks.

Two espeak voices alternate lines, so the dialogue has two speakers. sox runs with ``-R -D`` (no
random dither): the same machine makes the same bytes every time.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

VOICES = (("en-us+f3", "75"), ("en-gb+m3", "25"))  # (espeak voice, pitch): two clearly different speakers
LINES = (
    "Good morning. Did the numbers arrive?",
    "They came in last night. Revenue is up.",
    "Better than expected. And the costs?",
    "Costs stayed flat, so margins improved.",
)
PAUSE_S = 0.6
TOOLS = ("espeak-ng", "sox", "ffmpeg")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def run_tool(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-800:]}")


def ffmpeg(*args: str) -> None:
    run_tool(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args])


def speak(text: str, voice: str, pitch: str, out: Path) -> Path:
    """One line spoken by one espeak voice: 16 kHz mono 16-bit WAV at ``out``."""
    raw = out.with_suffix(".raw.wav")
    run_tool(["espeak-ng", "-v", voice, "-p", pitch, "-s", "190", "-w", str(raw), text])
    run_tool(["sox", "-R", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)])
    raw.unlink()
    return out


def silence(path: Path, seconds: float) -> Path:
    run_tool(["sox", "-R", "-D", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "trim", "0", str(seconds)])
    return path


def synth_dialogue(path: Path | str, lines: tuple[str, ...] = LINES, pause_s: float = PAUSE_S) -> Path:
    """A two-speaker dialogue: lines alternate between two voices, with pauses between them."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="fleet-synth-") as tmp:
        pause = silence(Path(tmp) / "pause.wav", pause_s)
        parts: list[str] = [str(pause)]
        for i, line in enumerate(lines):
            voice, pitch = VOICES[i % len(VOICES)]
            part = Path(tmp) / f"line{i:02d}.wav"
            speak(line, voice, pitch, part)
            parts += [str(part), str(pause)]
        run_tool(["sox", "-R", "-D", *parts, str(path)])
    return path


def synth_speech(path: Path | str, seconds: float) -> Path:
    """At least ``seconds`` of two-voice dialogue (the base dialogue repeated), 16 kHz mono WAV."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="fleet-synth-") as tmp:
        base = synth_dialogue(Path(tmp) / "base.wav")
        base_s = float(subprocess.run(["soxi", "-D", str(base)], capture_output=True, text=True, check=True).stdout)
        copies = max(1, int(-(-seconds // base_s)))
        listing = Path(tmp) / "list.txt"
        listing.write_text("".join(f"file '{base}'\n" for _ in range(copies)))
        ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(path))
    return path
