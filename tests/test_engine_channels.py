"""Channels end to end on FunASR's real code path (tiny models): mix, split, fallbacks, limits.

Random weights: the words mean nothing, but the same samples give the same words, so a channel
transcribed alone is compared with the mono control it was made from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from funasr_fleet.engine.audio import decode
from funasr_fleet.engine.pipeline import Engine
from funasr_fleet.engine.transcript import ChannelUse, TranscribeOptions, Transcript
from funasr_fleet.errors import TooManyChannels
from tests.fixtures.audio import voice_tracks
from tests.test_engine import assert_well_formed

REPO = Path(__file__).resolve().parents[1]


def tokens(t: Transcript) -> int:
    return sum(len(s.tokens) for s in t.sentences)


def codes(t: Transcript) -> list[str]:
    return [w.code for w in t.warnings]


@pytest.fixture(scope="module")
def control(engine: Engine, channels_dir: Path) -> Transcript:
    t = engine.transcribe(channels_dir / "mono-control.wav")
    assert len(t.sentences) >= 2 and t.channel_use == ChannelUse("single", (0,)) and t.warnings == ()
    return t


def test_out_of_phase_stereo_is_transcribed_like_the_mono_control(
    engine: Engine, channels_dir: Path, control: Transcript
) -> None:
    t = engine.transcribe(channels_dir / "out-of-phase.wav")
    assert t.channel_use == ChannelUse("single", (0,)) and codes(t) == ["channels_cancelled"]
    assert t.sentences == control.sentences and t.duration_ms == control.duration_ms  # the left channel IS the control
    assert_well_formed(t, diarized=True)


def test_out_of_phase_mp3_at_44k_too(engine: Engine, channels_dir: Path, control: Transcript) -> None:
    t = engine.transcribe(channels_dir / "out-of-phase.mp3")
    assert t.channel_use == ChannelUse("single", (0,)) and codes(t) == ["channels_cancelled"]
    assert abs(t.duration_ms - control.duration_ms) < 150  # codec padding only
    assert t.sentences  # how many: the random punctuation model's call; the tokens are the measure
    assert 0.7 * tokens(control) <= tokens(t) <= 1.3 * tokens(control)


def test_asking_to_mix_an_out_of_phase_file_still_falls_back(engine: Engine, channels_dir: Path) -> None:
    t = engine.transcribe(channels_dir / "out-of-phase.wav", TranscribeOptions(channels="mix"))
    assert t.channel_use == ChannelUse("single", (0,)) and codes(t) == ["channels_cancelled"] and t.sentences


def test_partial_inverse_falls_back_too(engine: Engine, channels_dir: Path, control: Transcript) -> None:
    t = engine.transcribe(channels_dir / "partial-inverse.wav")
    assert t.channel_use == ChannelUse("single", (0,)) and codes(t) == ["channels_cancelled"]
    assert t.sentences == control.sentences


def test_call_centre_stereo_is_split_one_speaker_per_channel(
    engine: Engine, channels_dir: Path, tmp_path: Path
) -> None:
    t = engine.transcribe(channels_dir / "call-centre.wav")
    assert t.channel_use == ChannelUse("split", (0, 1)) and t.warnings == ()
    assert t.speakers == (0, 1) and t.speaker_channels == (0, 1)
    assert_well_formed(t, diarized=True)
    # words are where their channel's voice speaks: the other party's -30 dB bleed is not transcribed
    # twice (sentences themselves may still run across a pause: punctuation decides them)
    a, b = voice_tracks(tmp_path / "voices")
    placed = []
    for s in t.sentences:
        own, other = (a, b) if s.speaker == 0 else (b, a)
        for tok in s.tokens:
            span = slice(tok.start_ms * 16, tok.end_ms * 16)
            placed.append(np.abs(own[span]).sum() >= np.abs(other[span]).sum())
    assert len(placed) >= 10 and sum(placed) / len(placed) > 0.9, placed
    assert [s.start_ms for s in t.sentences] == sorted(s.start_ms for s in t.sentences)
    assert {s.speaker for s in t.sentences} == {0, 1}


def test_call_centre_split_without_diarization_still_names_channels(engine: Engine, channels_dir: Path) -> None:
    t = engine.transcribe(channels_dir / "call-centre.wav", TranscribeOptions(diarize=False, num_speakers=2))
    assert t.channel_use == ChannelUse("split", (0, 1)) and t.speaker_channels == (0, 1)
    assert all(s.speaker in (0, 1) for s in t.sentences) and t.options.diarize is False


def test_call_centre_mixed_when_asked(engine: Engine, channels_dir: Path) -> None:
    t = engine.transcribe(channels_dir / "call-centre.wav", TranscribeOptions(channels="mix"))
    assert t.channel_use == ChannelUse("mix", (0, 1)) and t.warnings == () and t.speaker_channels == ()


def test_dual_mono_is_mixed_and_equals_the_mono(engine: Engine, channels_dir: Path, control: Transcript) -> None:
    t = engine.transcribe(channels_dir / "dual-mono.wav")
    assert t.channel_use == ChannelUse("mix", (0, 1)) and t.warnings == ()
    assert t.sentences == control.sentences  # (x + x) / 2 is x, exactly
    split = engine.transcribe(channels_dir / "dual-mono.wav", TranscribeOptions(channels="split"))
    assert split.channel_use == ChannelUse("split", (0, 1)) and split.speaker_channels[:1] == (0,)


def test_silent_channel_is_left_out_with_a_warning(engine: Engine, channels_dir: Path, control: Transcript) -> None:
    t = engine.transcribe(channels_dir / "silent-right.wav", TranscribeOptions(channels="split"))
    assert t.channel_use == ChannelUse("single", (0,)) and codes(t) == ["channel_silent"]
    assert "channel 1 of 2" in t.warnings[0].message
    assert t.sentences == control.sentences


def test_six_channels_split_the_three_talking(engine: Engine, channels_dir: Path) -> None:
    t = engine.transcribe(channels_dir / "six.wav")
    assert t.channel_use == ChannelUse("split", (0, 1, 2)) and codes(t) == ["channel_silent"]
    assert set(t.speaker_channels) <= {0, 1, 2} and len(t.speaker_channels) == len(t.speakers) >= 2
    used = [c for c in t.speaker_channels if c is not None]
    assert used == sorted(used) == list(t.speaker_channels)  # numbered channel by channel
    assert_well_formed(t, diarized=True)


def test_nine_channels_fail_with_a_permanent_code(engine: Engine, channels_dir: Path) -> None:
    with pytest.raises(TooManyChannels) as info:
        engine.transcribe(channels_dir / "nine.wav")
    assert info.value.code == "too_many_channels" and info.value.permanent


def test_a_caller_owned_source_stays_open(engine: Engine, channels_dir: Path) -> None:
    with decode(channels_dir / "call-centre.wav") as audio:
        first = engine.transcribe(audio)
        assert engine.transcribe(audio).sentences == first.sentences  # still readable after a call
    stereo = np.stack([np.zeros(32000, np.float32), np.zeros(32000, np.float32)], axis=1)
    assert engine.transcribe(stereo).channel_use == ChannelUse("mix", (0, 1))  # (samples, channels) arrays


def test_cli_reports_warnings_and_the_channel_limit(
    engine_env: dict[str, str], channels_dir: Path, tmp_path: Path
) -> None:
    files = [channels_dir / "out-of-phase.wav", channels_dir / "nine.wav"]
    proc = subprocess.run(
        [sys.executable, "-m", "funasr_fleet", "transcribe", *map(str, files), "-o", str(tmp_path), "-f", "json"],
        env={**os.environ, **engine_env}, cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "out-of-phase.wav: warning channels_cancelled" in proc.stderr
    assert "nine.wav: FAILED too_many_channels" in proc.stderr
    assert (tmp_path / "out-of-phase.json").is_file()
