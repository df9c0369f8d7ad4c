"""Pure transcript writers: JSON, SRT, VTT, TXT and RTTM (Transcript in, text chunks out).

Writers do no I/O (``write_file`` is the one exception) so the consumer can stream a result
straight into an upload, and a cached JSON result can be re-rendered for another job without
running the model again (``parse_json`` is the exact inverse of the JSON writer).

Every writer yields chunks (a header, then batches of cues/lines); nothing builds the whole
document in memory first. Output is deterministic: the same inputs give the same bytes.

This module is the registry and the entry points; each writer family lives in its own module
(``jsondoc``, ``subtitles``, ``txt``, ``rttm``). The names below are the public API.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from funasr_fleet.engine.transcript import Transcript
from funasr_fleet.errors import TranscriptParseError, UnsupportedFormat
from funasr_fleet.outputs.jsondoc import SCHEMA_ID, json_schema, parse_json, render_json
from funasr_fleet.outputs.meta import OutputMeta, speaker_channel
from funasr_fleet.outputs.rttm import render_rttm, rttm_file_id
from funasr_fleet.outputs.subtitles import render_srt, render_vtt
from funasr_fleet.outputs.txt import render_txt

__all__ = [
    "FORMATS",
    "SCHEMA_ID",
    "OutputFormat",
    "OutputMeta",
    "TranscriptParseError",
    "json_schema",
    "parse_json",
    "render",
    "render_bytes",
    "rttm_file_id",
    "speaker_channel",
    "write_file",
]

Writer = Callable[[Transcript, OutputMeta], Iterator[str]]


@dataclass(frozen=True)
class OutputFormat:
    """One output format: ``extension`` has no dot (``srt``); ``content_type`` is for the upload."""

    name: str
    extension: str
    content_type: str
    writer: Writer

    def filename(self, stem: str = "transcript") -> str:
        """``transcript.srt``: the object name the consumer uploads under the job's prefix."""
        return f"{stem}.{self.extension}"


FORMATS: dict[str, OutputFormat] = {
    f.name: f
    for f in (
        OutputFormat("json", "json", "application/json", render_json),
        OutputFormat("srt", "srt", "application/x-subrip; charset=utf-8", render_srt),
        OutputFormat("vtt", "vtt", "text/vtt; charset=utf-8", render_vtt),
        OutputFormat("txt", "txt", "text/plain; charset=utf-8", render_txt),
        OutputFormat("rttm", "rttm", "text/plain; charset=utf-8", render_rttm),
    )
}


def _format(fmt: str) -> OutputFormat:
    try:
        return FORMATS[fmt]
    except (KeyError, TypeError):
        raise UnsupportedFormat(f"unsupported output format {fmt!r}; supported: {list(FORMATS)}") from None


def render(fmt: str, transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    """Stream one format as text chunks. Unknown ``fmt`` raises UnsupportedFormat at once."""
    return _format(fmt).writer(transcript, meta)


def render_bytes(fmt: str, transcript: Transcript, meta: OutputMeta) -> bytes:
    """The whole document as UTF-8 bytes (exactly the streamed chunks, concatenated)."""
    writer = _format(fmt).writer
    return b"".join(chunk.encode("utf-8") for chunk in writer(transcript, meta))


def write_file(fmt: str, transcript: Transcript, meta: OutputMeta, path: Path) -> Path:
    """Stream one format into ``path`` atomically (temp file + rename); returns ``path``."""
    writer = _format(fmt).writer
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            for chunk in writer(transcript, meta):
                fh.write(chunk)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a result file is meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
