"""The RTTM writer: one ``SPEAKER`` record per timed sentence, for diarization scoring tools."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import PurePosixPath

from funasr_fleet.engine.transcript import Transcript, speaker_label
from funasr_fleet.outputs.lines import batched, seconds, span
from funasr_fleet.outputs.meta import OutputMeta, speaker_channel

RTTM_NO_SPEAKER = "SPEECH"  # RTTM needs a speaker name; diarization-off segments get this one
_WHITESPACE = re.compile(r"\s+")


def rttm_file_id(source: str) -> str:
    """RTTM <file> field: the source's stem (last path segment, no extension), no whitespace.

    In an ``s3://`` URI everything after the bucket is the key, literally (``#`` and ``?`` are key
    characters: ``s3uri.parse_s3_uri``); only http(s) URLs have a query and fragment to drop.
    """
    name = source.split("?", 1)[0].split("#", 1)[0] if source.startswith(("http://", "https://")) else source
    name = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = PurePosixPath(name).stem if name not in ("", ".", "..") else ""
    stem = _WHITESPACE.sub("_", stem.strip())
    return stem or "audio"


def render_rttm(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    """RTTM records; times in exact decimal seconds, channel 1-based (1 for a mixed source)."""
    file_id = rttm_file_id(meta.source)
    # RTTM channels count from 1; a mixed (or unrecorded) source is channel 1
    channels = {spk: ch + 1 for spk in transcript.speakers if (ch := speaker_channel(transcript, spk)) is not None}

    def lines() -> Iterator[str]:
        for s in transcript.sentences:
            start, end = span(s)
            if end <= start:
                continue
            spk = RTTM_NO_SPEAKER if s.speaker is None else speaker_label(s.speaker)
            channel = 1 if s.speaker is None else channels.get(s.speaker, 1)
            yield f"SPEAKER {file_id} {channel} {seconds(start)} {seconds(end - start)} <NA> <NA> {spk} <NA> <NA>\n"

    yield from batched(lines())
