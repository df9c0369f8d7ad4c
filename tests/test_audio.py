"""Audio decoding: every container to 16 kHz staged samples (channels kept), typed errors, limits, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from funasr_fleet.engine.audio import SAMPLE_RATE, AudioInfo, AudioSource, DecodedAudio, check_length, decode, probe
from funasr_fleet.errors import (
    AudioError,
    AudioTooLong,
    AudioTooShort,
    EmptyAudio,
    NoAudioStream,
    TooManyChannels,
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


# --- staged samples, channels --------------------------------------------------------------------
def _wav_samples(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return pcm.reshape(-1, w.getnchannels())


def test_16bit_16k_sources_round_trip_exactly(audio_dir: Path, channels_dir: Path) -> None:
    for path in (audio_dir / "dialogue.wav", channels_dir / "call-centre.wav", channels_dir / "six.wav"):
        pcm = _wav_samples(path)
        with decode(path) as audio:
            assert audio.channels == pcm.shape[1] and audio.num_samples == pcm.shape[0]
            assert np.array_equal(audio.read_frames(), pcm.astype(np.float32) / 32768), path.name
            for c in range(audio.channels):
                assert np.array_equal(audio.read(channels=[c]), pcm[:, c].astype(np.float32) / 32768)


def test_read_windows_equal_slices_of_the_whole(audio_dir: Path, channels_dir: Path) -> None:
    for path in (audio_dir / "stereo44k.wav", audio_dir / "dialogue.m4a", channels_dir / "six.wav"):
        with decode(path) as audio:
            n = audio.num_samples
            for channels in (None, (0,), (audio.channels - 1,), tuple(range(audio.channels))):
                whole = audio.read(channels=channels)
                assert whole.dtype == np.float32 and whole.shape == (n,)
                for start, stop in ((0, 1), (123, 4567), (n // 3, n // 3 + SAMPLE_RATE * 31), (n - 10, n + 99)):
                    window = audio.read(start, stop, channels)
                    assert np.array_equal(window, whole[start:stop]), (path.name, channels, start, stop)
            assert np.array_equal(audio.samples, audio.read())
            assert audio.read(n, n + 5).shape == (0,)


def test_the_mix_averages_the_channels(channels_dir: Path) -> None:
    with decode(channels_dir / "out-of-phase.wav") as audio:
        assert audio.channels == 2 and float(np.abs(audio.samples).max()) == 0.0  # what mixing used to give
        left = audio.read(channels=(0,))
        assert np.array_equal(audio.read(channels=(1,)), -left) and float(np.abs(left).max()) > 0.1
    with decode(channels_dir / "call-centre.wav") as audio:
        frames = audio.read_frames()
        assert np.allclose(audio.read(), frames.mean(axis=1), atol=1e-7)


def test_channels_beyond_eight_are_a_permanent_error(channels_dir: Path) -> None:
    with pytest.raises(TooManyChannels) as info:
        decode(channels_dir / "nine.wav")
    assert info.value.code == "too_many_channels" and info.value.permanent and "9" in str(info.value)
    assert isinstance(info.value, AudioError)
    with pytest.raises(TooManyChannels):
        AudioSource.from_array(np.zeros((SAMPLE_RATE, 9), dtype=np.float32))
    with decode(channels_dir / "six.wav") as six:
        assert six.channels == 6 and six.info.channels == 6


def test_staged_file_lives_in_tmp_dir_and_close_deletes_it(audio_dir: Path, tmp_path: Path) -> None:
    def staged() -> list[str]:
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)):
                out.append(target)
        return out

    audio = decode(audio_dir / "dialogue.wav", tmp_dir=tmp_path)
    assert len(staged()) == 1 and list(tmp_path.iterdir()) == []  # unnamed: nothing to leak on SIGKILL
    with audio:
        assert audio.read(0, 10).shape == (10,)
    assert staged() == []
    with pytest.raises(ValueError, match="closed"):
        audio.read(0, 10)
    audio.close()  # idempotent
    assert audio.duration_ms > 0 and audio.info.codec == "pcm_s16le"  # metadata stays readable


def test_failed_decode_leaves_nothing_staged(audio_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AudioTooLong):
        decode(audio_dir / "streamed.webm", max_audio_s=3, tmp_dir=tmp_path)
    with pytest.raises(AudioTooShort):
        decode(audio_dir / "short.wav", min_audio_s=0.5, tmp_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_read_rejects_bad_channels(audio_dir: Path) -> None:
    with decode(audio_dir / "stereo44k.wav") as audio:
        for bad in ((), (2,), (-1,)):
            with pytest.raises(ValueError):
                audio.read(0, 10, bad)


def test_array_sources_keep_channels_and_float_values() -> None:
    rng = np.random.default_rng(5)
    stereo = rng.uniform(-0.5, 0.5, (SAMPLE_RATE, 2)).astype(np.float32)
    src = AudioSource.from_array(stereo)
    assert src.channels == 2 and src.num_samples == SAMPLE_RATE and src.info.channels == 2
    assert np.array_equal(src.read(channels=(1,)), stereo[:, 1])
    assert np.allclose(src.read(), stereo.mean(axis=1), atol=1e-7)
    assert src.stats.channels == 2 and DecodedAudio is AudioSource


@pytest.mark.slow
def test_45_minutes_decode_with_bounded_memory(tmp_path: Path) -> None:
    """45 min of speech (m4a) decodes with peak RSS far below the samples' size (they are staged on disk)."""
    from tests.fixtures.audio import synth_speech

    wav = synth_speech(tmp_path / "long.wav", 45 * 60)
    m4a = tmp_path / "long.m4a"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", "aac", "-b:a", "48k", str(m4a)], check=True
    )
    duration, rss_mib = _decode_peak_rss(m4a, tmp_path)
    assert duration >= 45 * 60 - 1
    print(
        f"45 min decode: peak RSS {rss_mib:.0f} MiB (float32 mono samples would be {duration * 4 / 2**20 * SAMPLE_RATE:.0f} MiB)"
    )
    assert rss_mib < 250, rss_mib


def _decode_peak_rss(path: Path, tmp_dir: Path) -> tuple[float, float]:
    """Decode ``path`` in a fresh process; return (seconds decoded, peak RSS in MiB)."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve, so a child would report pytest's peak
    code = (
        "import re,sys;from funasr_fleet.engine.audio import decode;"
        "a=decode(sys.argv[1], tmp_dir=sys.argv[2]);"
        "print(a.duration_s, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_dir)], capture_output=True, text=True, check=True
    )
    duration, rss_kib = out.stdout.split()
    return float(duration), int(rss_kib) / 1024


def test_decode_memory_does_not_grow_with_duration(tmp_path: Path) -> None:
    """One hour of 6-channel audio (FLAC) decodes in the memory of a few seconds of it."""
    hour = tmp_path / "hour.flac"
    # noise bursts on six channels: 1 h x 6 ch would be 1.3 GB as float32 in RAM
    subprocess.run(
        ["sox", "-R", "-D", "-n", "-r", "16000", "-c", "6", "-b", "16", str(hour), "synth", "3600", "pinknoise",
         "tremolo", "0.3", "90", "vol", "0.3"],
        check=True,
    )  # fmt: skip
    duration, rss_mib = _decode_peak_rss(hour, tmp_path)
    assert duration == pytest.approx(3600, abs=0.1)
    print(f"1 h x 6 channels decode: peak RSS {rss_mib:.0f} MiB")
    assert rss_mib < 250, rss_mib  # a short file's decode peaks at about the same (interpreter + numpy + PyAV)
