"""Plain, immutable results of one transcription (faster-whisper style: data, no behaviour).

Times are integer milliseconds from the start of the audio. Speakers are small integers as
FunASR's clustering gives them (0, 1, ...); ``speaker_label`` renders them for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

ChannelMode = Literal["auto", "mix", "split"]
"""What a job asks for: ``mix`` (down-mix to mono), ``split`` (each channel on its own, speaker =
channel) or ``auto`` (split when the channels carry different speech, mix otherwise)."""


def speaker_label(speaker: int | None) -> str:
    return "SPEAKER_??" if speaker is None else f"SPEAKER_{speaker:02d}"


class WarningCode(StrEnum):
    """Stable codes of the warnings a transcript (and its ``job.succeeded`` event) can carry.

    A warning means: the transcript is usable, but the fleet could not do exactly what was asked or
    what the input suggested, and says so instead of failing silently. Codes are a public contract
    (documented in docs/audio-and-speakers.md, "Warnings"): never rename one.
    """

    CHANNELS_CANCELLED = "channels_cancelled"  # the down-mix would destroy speech; a channel was used instead
    CHANNEL_SILENT = "channel_silent"  # a channel holds no usable signal and was left out
    SPEAKER_COUNT_NOT_MET = "speaker_count_not_met"  # num/min/max_speakers could not be honoured
    DIARIZATION_UNAVAILABLE = "diarization_unavailable"  # asked for speakers, the engine has no speaker model
    NO_SPEECH = "no_speech"  # decoded fine, but no speech was found


@dataclass(frozen=True, slots=True)
class TranscriptWarning:
    """One thing a reader of the transcript must know (``code`` from ``WarningCode``)."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ChannelUse:
    """What was done with the source's channels.

    ``mode``: ``mix`` (the listed channels averaged to one), ``split`` (each listed channel
    transcribed on its own; speakers carry their channel) or ``single`` (one channel only, e.g. a
    mono source or a fallback when the mix would cancel). ``channels``: 0-based source channels used.
    """

    mode: Literal["mix", "split", "single"]
    channels: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True, slots=True)
class Sentence:
    start_ms: int
    end_ms: int
    text: str
    speaker: int | None = None
    tokens: tuple[Token, ...] = ()


@dataclass(frozen=True, slots=True)
class Turn:
    """Consecutive sentences of one speaker, merged while the gap stays under the threshold."""

    speaker: int | None
    start_ms: int
    end_ms: int
    text: str
    first_sentence: int
    last_sentence: int


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    asr: str
    vad: str
    punc: str
    spk: str
    funasr_version: str
    device: str
    fingerprint: str  # stable hash of the above + model file digests; part of the idempotency key


@dataclass(frozen=True, slots=True)
class TranscribeOptions:
    hotwords: tuple[str, ...] = ()
    diarize: bool = True
    num_speakers: int | None = None  # exact speaker count requested
    language: str | None = None
    min_speakers: int | None = None  # range requested (inclusive); ignored when num_speakers is set
    max_speakers: int | None = None
    channels: ChannelMode = "auto"


@dataclass(frozen=True, slots=True)
class Transcript:
    sentences: tuple[Sentence, ...]
    turns: tuple[Turn, ...]
    speakers: tuple[int, ...]
    duration_ms: int
    model: ModelIdentity
    options: TranscribeOptions = field(default_factory=TranscribeOptions)
    language: str | None = None
    wall_s: float = 0.0  # inference wall time (decode excluded)
    decode_s: float = 0.0
    warnings: tuple[TranscriptWarning, ...] = ()
    channel_use: ChannelUse | None = None  # None: not recorded (transcripts from before channels)
    speaker_channels: tuple[int | None, ...] = ()  # parallel to ``speakers`` when channels were split

    @property
    def real_time_factor(self) -> float:
        return self.wall_s / (self.duration_ms / 1000) if self.duration_ms else 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences if s.text)
