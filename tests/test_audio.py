"""Audio decoding: every container to float32 16 kHz mono, typed errors, limits, bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from funasr_fleet.engine.audio import SAMPLE_RATE, AudioInfo, DecodedAudio, _Buffer, check_length, decode, probe
from funasr_fleet.errors import (
    AudioError,
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    NoAudioStream,
    UndecodableAudio,
)

GOOD = [
    "dialogue.wav", "dialogue.mp3", "dialogue.m4a", "dialogue.mp4", "dialogue.mov", "dialogue.flac",
    "dialogue.ogg", "dialogue.opus", "dialogue.webm", "streamed.webm", "stereo44k.wav", "8k.wav",
]  # fmt: skip


@pytest.fixture(scope="module")
def reference(audio_dir: Path) -> DecodedAudio:
    return decode(audio_dir / "dialogue.wav")


@pytest.mark.parametrize("name", GOOD)
def test_every_container_decodes_to_16k_mono_float32(audio_dir: Path, reference: DecodedAudio, name: str) -> None:
    audio = decode(audio_dir / name, min_audio_s=0.5, max_audio_s=3600)
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert abs(audio.duration_s - reference.duration_s) < 0.15  # codec padding only
    assert 0.05 < float(np.abs(audio.samples).max()) <= 1.0
    assert audio.info.sample_rate > 0 and audio.info.channels >= 1 and audio.info.codec
    assert audio.info.size_bytes == (audio_dir / name).stat().st_size
    assert audio.decode_s > 0


def test_source_info_describes_the_input(audio_dir: Path) -> None:
    stereo = probe(audio_dir / "stereo44k.wav")
    assert (stereo.container, stereo.codec, stereo.sample_rate, stereo.channels) == ("wav", "pcm_s16le", 44100, 2)
    video = probe(audio_dir / "dialogue.mp4")
    assert video.has_video and video.codec == "aac"
    assert video.duration_s is not None and abs(video.duration_s - probe(audio_dir / "dialogue.wav").duration_s) < 0.1
    info = decode(audio_dir / "8k.wav").info.as_dict()
    assert info["sample_rate"] == 8000 and set(info) >= {"container", "codec", "sample_rate", "channels", "duration_s"}


def test_probe_gives_none_when_the_container_does_not_know(audio_dir: Path) -> None:
    assert probe(audio_dir / "streamed.webm").duration_s is None


def test_resampled_audio_matches_the_original(audio_dir: Path, reference: DecodedAudio) -> None:
    for name in ("stereo44k.wav", "8k.wav"):
        other = decode(audio_dir / name).samples
        n = min(len(other), len(reference.samples))
        corr = np.corrcoef(other[:n], reference.samples[:n])[0, 1]
        assert corr > 0.9, (name, corr)


@pytest.mark.parametrize(
    ("name", "error", "code"),
    [
        ("not_audio.wav", UndecodableAudio, "undecodable_audio"),
        ("corrupt.mp3", UndecodableAudio, "undecodable_audio"),
        ("no_audio.mp4", NoAudioStream, "no_audio_stream"),
        ("empty.wav", EmptyAudio, "empty_audio"),
        ("short.wav", AudioTooShort, "audio_too_short"),
        ("missing.wav", UndecodableAudio, "undecodable_audio"),
    ],
)
def test_bad_inputs_raise_typed_errors(audio_dir: Path, name: str, error: type[AudioError], code: str) -> None:
    with pytest.raises(error) as info:
        decode(audio_dir / name, min_audio_s=0.5, max_audio_s=3600)
    assert info.value.code == code and info.value.permanent
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["not_audio.wav", "no_audio.mp4", "empty.wav"])
def test_probe_raises_the_same_typed_errors(audio_dir: Path, name: str) -> None:
    with pytest.raises(AudioError):
        probe(audio_dir / name)


def test_silence_decodes(audio_dir: Path) -> None:
    audio = decode(audio_dir / "silence.wav", min_audio_s=0.5)
    assert audio.duration_ms == 3000 and float(np.abs(audio.samples).max()) == 0.0


def test_too_long_fails_fast_from_container_metadata(audio_dir: Path) -> None:
    with pytest.raises(AudioTooLong, match="longer than the maximum"):
        decode(audio_dir / "dialogue.mp3", max_audio_s=5)


def test_too_long_without_metadata_stops_decoding(audio_dir: Path) -> None:
    with pytest.raises(AudioTooLong, match="stopped decoding"):
        decode(audio_dir / "streamed.webm", max_audio_s=3)


def test_length_limits() -> None:
    check_length(1.0, min_audio_s=0.5, max_audio_s=2.0, name="x")
    with pytest.raises(AudioTooShort):
        check_length(0.4, min_audio_s=0.5, max_audio_s=2.0, name="x")
    with pytest.raises(AudioTooLong):
        check_length(2.1, min_audio_s=0.5, max_audio_s=2.0, name="x")
    with pytest.raises(EmptyAudio):
        check_length(0.0, min_audio_s=0.0, max_audio_s=None, name="x")


def test_array_input_is_validated() -> None:
    ok = DecodedAudio.from_array(np.zeros(SAMPLE_RATE, dtype=np.float64))
    assert ok.samples.dtype == np.float32 and ok.duration_ms == 1000 and isinstance(ok.info, AudioInfo)
    with pytest.raises(UndecodableAudio):
        DecodedAudio.from_array(np.zeros((2, SAMPLE_RATE), dtype=np.float32))
    with pytest.raises(UndecodableAudio):
        DecodedAudio.from_array(np.zeros(SAMPLE_RATE, dtype=np.int16))


def test_buffer_grows_without_keeping_chunks() -> None:
    buf = _Buffer(10)
    chunks = [np.full(7000, i / 10, dtype=np.float32) for i in range(10)]
    for c in chunks:
        buf.append(c)
    out = buf.finish()
    assert out.shape == (70000,) and np.array_equal(out, np.concatenate(chunks))


@pytest.mark.slow
def test_45_minutes_decode_with_bounded_memory(tmp_path: Path) -> None:
    """45 min of speech (m4a) decodes; peak RSS of a fresh process stays near the samples' size."""
    from tests.fixtures.audio import synth_speech

    wav = synth_speech(tmp_path / "long.wav", 45 * 60)
    m4a = tmp_path / "long.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "48k", str(m4a)], check=True)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so a child would report pytest's peak
    code = (
        "import re;from funasr_fleet.engine.audio import decode;"
        f"a=decode({str(m4a)!r});"
        "print(a.duration_s, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    duration, rss_kib = float(out[0]), int(out[1])
    assert duration >= 45 * 60 - 1
    samples_mib = duration * SAMPLE_RATE * 4 / 2**20  # ~165 MiB
    print(f"45 min decode: peak RSS {rss_kib / 1024:.0f} MiB for {samples_mib:.0f} MiB of samples")
    assert rss_kib / 1024 < samples_mib * 2.2 + 150, (rss_kib / 1024, samples_mib)
