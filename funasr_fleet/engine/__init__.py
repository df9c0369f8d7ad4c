"""The transcription engine: audio decoding, one FunASR pipeline, plain transcript dataclasses.

Knows nothing of brokers or storage. Import ``Engine`` from ``funasr_fleet.engine.pipeline``
(it imports torch; the dataclasses here do not).
"""

from funasr_fleet.engine.transcript import (
    ModelIdentity,
    Sentence,
    Token,
    TranscribeOptions,
    Transcript,
    Turn,
)

__all__ = ["ModelIdentity", "Sentence", "Token", "TranscribeOptions", "Transcript", "Turn"]
