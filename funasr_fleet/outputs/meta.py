"""What every writer knows besides the transcript: the job's OutputMeta, and which channel a speaker spoke on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from funasr_fleet.engine.transcript import Transcript


@dataclass(frozen=True)
class OutputMeta:
    """What the transcript itself does not know: where the audio came from and for which job."""

    source: str  # s3://... URI or local path of the audio
    job_id: str | None = None
    audio: dict[str, Any] | None = None  # container/codec/sample_rate/channels as the decoder saw them


def speaker_channel(transcript: Transcript, speaker: int | None) -> int | None:
    """0-based source channel a speaker came from (channels split), else None."""
    if speaker is None or not transcript.speaker_channels:
        return None
    try:
        index = transcript.speakers.index(speaker)
    except ValueError:
        return None
    return transcript.speaker_channels[index] if index < len(transcript.speaker_channels) else None
