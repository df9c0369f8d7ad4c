"""Plain, immutable results of one transcription (faster-whisper style: data, no behaviour).

Times are integer milliseconds from the start of the audio. Speakers are small integers as
FunASR's clustering gives them (0, 1, ...); ``speaker_label`` renders them for people.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def speaker_label(speaker: int | None) -> str:
    return "SPEAKER_??" if speaker is None else f"SPEAKER_{speaker:02d}"


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
    num_speakers: int | None = None
    language: str | None = None


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

    @property
    def real_time_factor(self) -> float:
        return self.wall_s / (self.duration_ms / 1000) if self.duration_ms else 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences if s.text)
