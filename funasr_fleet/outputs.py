"""Pure transcript writers: JSON, SRT, VTT, TXT and RTTM (Transcript in, text chunks out).

Writers do no I/O (``write_file`` is the one exception) so the consumer can stream a result
straight into an upload, and a cached JSON result can be re-rendered for another job without
running the model again (``parse_json`` is the exact inverse of the JSON writer).

Every writer yields chunks (a header, then batches of cues/lines); nothing builds the whole
document in memory first. Output is deterministic: the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

from funasr_fleet.engine.transcript import (
    ChannelUse,
    ModelIdentity,
    Sentence,
    Token,
    TranscribeOptions,
    Transcript,
    TranscriptWarning,
    Turn,
    speaker_label,
)
from funasr_fleet.errors import TranscriptParseError, UnsupportedFormat

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

SCHEMA_ID = "funasr-fleet.transcript/1"
RTTM_NO_SPEAKER = "SPEECH"  # RTTM needs a speaker name; diarization-off segments get this one
_BATCH = 256  # items per yielded chunk: big enough to be cheap, small enough to stream


@dataclass(frozen=True)
class OutputMeta:
    """What the transcript itself does not know: where the audio came from and for which job."""

    source: str  # s3://... URI or local path of the audio
    job_id: str | None = None
    audio: dict[str, Any] | None = None  # container/codec/sample_rate/channels as the decoder saw them


# --- small helpers ---------------------------------------------------------------------------
_LINE_BREAKS = re.compile(r"\s*[\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029]+\s*")
_WHITESPACE = re.compile(r"\s+")


def _one_line(text: str) -> str:
    """Cue text on one line: line breaks would end a cue (SRT/VTT) or a record (TXT/RTTM)."""
    return _LINE_BREAKS.sub(" ", text).strip()


def _clock(ms: int, frac_sep: str | None) -> str:
    """HH:MM:SS[<sep>mmm]; hours keep counting past 99 (no wrap at 24 h)."""
    ms = max(0, int(ms))
    hours, rem = divmod(ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    seconds, millis = divmod(rem, 1000)
    base = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return base if frac_sep is None else f"{base}{frac_sep}{millis:03d}"


def _seconds(ms: int) -> str:
    """Integer milliseconds as exact decimal seconds (no float rounding): 1234 -> '1.234'."""
    ms = max(0, int(ms))
    return f"{ms // 1000}.{ms % 1000:03d}"


def _span(sentence: Sentence | Turn) -> tuple[int, int]:
    """(start, end) clamped so players never see a negative time or an end before the start."""
    start = max(0, int(sentence.start_ms))
    return start, max(start, int(sentence.end_ms))


def _batched(lines: Iterable[str], size: int = _BATCH) -> Iterator[str]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield "".join(batch)
            batch.clear()
    if batch:
        yield "".join(batch)


def rttm_file_id(source: str) -> str:
    """RTTM <file> field: the source's stem (last path segment, no extension), no whitespace.

    In an ``s3://`` URI everything after the bucket is the key, literally (``#`` and ``?`` are key
    characters: ``jobs.parse_s3_uri``); only http(s) URLs have a query and fragment to drop.
    """
    name = source.split("?", 1)[0].split("#", 1)[0] if source.startswith(("http://", "https://")) else source
    name = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    stem = PurePosixPath(name).stem if name not in ("", ".", "..") else ""
    stem = _WHITESPACE.sub("_", stem.strip())
    return stem or "audio"


# --- JSON ------------------------------------------------------------------------------------
def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), allow_nan=False, default=str)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _sorted_keys(value: Any) -> Any:
    """Decoder metadata made deterministic (sorted keys) and valid JSON (no NaN/inf)."""
    if isinstance(value, dict):
        return {str(k): _sorted_keys(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_sorted_keys(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf; a decoder's odd duration must not fail the job
    return value


def speaker_channel(transcript: Transcript, speaker: int | None) -> int | None:
    """0-based source channel a speaker came from (channels split), else None."""
    if speaker is None or not transcript.speaker_channels:
        return None
    try:
        index = transcript.speakers.index(speaker)
    except ValueError:
        return None
    return transcript.speaker_channels[index] if index < len(transcript.speaker_channels) else None


def _speaker_rows(transcript: Transcript) -> list[dict[str, Any]]:
    talk: dict[int, int] = {}
    sentences: dict[int, int] = {}
    turns: dict[int, int] = {}
    for s in transcript.sentences:
        if s.speaker is not None:
            start, end = _span(s)
            talk[s.speaker] = talk.get(s.speaker, 0) + (end - start)
            sentences[s.speaker] = sentences.get(s.speaker, 0) + 1
    for t in transcript.turns:
        if t.speaker is not None:
            turns[t.speaker] = turns.get(t.speaker, 0) + 1
    return [
        {
            "id": spk,
            "label": speaker_label(spk),
            "talk_ms": talk.get(spk, 0),
            "turn_count": turns.get(spk, 0),
            "sentence_count": sentences.get(spk, 0),
            "channel": speaker_channel(transcript, spk),
        }
        for spk in transcript.speakers
    ]


def _turn_row(t: Turn) -> dict[str, Any]:
    return {
        "speaker": t.speaker,
        "start_ms": t.start_ms,
        "end_ms": t.end_ms,
        "first_sentence": t.first_sentence,
        "last_sentence": t.last_sentence,
        "text": t.text,
    }


def _sentence_row(s: Sentence) -> dict[str, Any]:
    return {
        "start_ms": s.start_ms,
        "end_ms": s.end_ms,
        "speaker": s.speaker,
        "text": s.text,
        "tokens": [[tok.text, tok.start_ms, tok.end_ms] for tok in s.tokens],
    }


def _json_array(name: str, rows: Iterable[str], last: bool) -> Iterator[str]:
    """``"name": [`` + one element per line + ``]``, yielded in batches."""
    tail = "\n" if last else ",\n"
    it = iter(rows)
    first = next(it, None)
    if first is None:
        yield f'  "{name}": []{tail}'
        return

    def lines() -> Iterator[str]:
        yield f'  "{name}": [\n    {first}'
        for row in it:
            yield f",\n    {row}"
        yield f"\n  ]{tail}"

    yield from _batched(lines())


def _channel_use_row(use: ChannelUse | None) -> dict[str, Any] | None:
    return None if use is None else {"mode": use.mode, "channels": list(use.channels)}


def _render_json(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    m: ModelIdentity = transcript.model
    o: TranscribeOptions = transcript.options
    header = {
        "schema": SCHEMA_ID,
        "job_id": meta.job_id,
        "audio": {
            "source": meta.source,
            "duration_ms": transcript.duration_ms,
            "media": _sorted_keys(meta.audio) if meta.audio is not None else None,
            "channel_use": _channel_use_row(transcript.channel_use),
        },
        "language": transcript.language,
        "model": {
            "asr": m.asr,
            "vad": m.vad,
            "punc": m.punc,
            "spk": m.spk,
            "funasr_version": m.funasr_version,
            "device": m.device,
            "fingerprint": m.fingerprint,
        },
        "options": {
            "hotwords": list(o.hotwords),
            "diarize": o.diarize,
            "num_speakers": o.num_speakers,
            "language": o.language,
            "min_speakers": o.min_speakers,
            "max_speakers": o.max_speakers,
            "channels": o.channels,
        },
        "processing": {
            "wall_s": _finite(transcript.wall_s),
            "decode_s": _finite(transcript.decode_s),
            "real_time_factor": _finite(round(transcript.real_time_factor, 6)),
        },
        "warnings": [{"code": w.code, "message": w.message} for w in transcript.warnings],
    }
    yield "{\n" + "".join(f'  "{key}": {_dump(value)},\n' for key, value in header.items())
    yield from _json_array("speakers", (_dump(r) for r in _speaker_rows(transcript)), last=False)
    yield from _json_array("turns", (_dump(_turn_row(t)) for t in transcript.turns), last=False)
    yield from _json_array("sentences", (_dump(_sentence_row(s)) for s in transcript.sentences), last=True)
    yield "}\n"


def _opt_float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer or null, got {value!r}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _choice(value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"expected one of {allowed}, got {value!r}")
    return str(value)


def _parse_channel_use(value: Any) -> ChannelUse | None:
    if value is None:
        return None
    mode = _choice(value["mode"], ("mix", "split", "single"))
    return ChannelUse(mode=mode, channels=tuple(_int(c) for c in value["channels"]))  # type: ignore[arg-type]


def parse_json(data: bytes) -> tuple[Transcript, OutputMeta]:
    """The JSON writer's exact inverse: render(parse_json(render_bytes(...))) is byte-identical.

    Raises TranscriptParseError for anything that is not a ``funasr-fleet.transcript/1`` document
    (a reuse cache treats that as a miss and transcribes again). Documents written before channels,
    speaker ranges and warnings existed read with those at their defaults: no warnings,
    ``channel_use`` None (not recorded), no speaker channels, ``channels`` ``"auto"``.
    """
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TranscriptParseError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TranscriptParseError("a transcript document must be a JSON object")
    if doc.get("schema") != SCHEMA_ID:
        raise TranscriptParseError(f"unknown transcript schema {doc.get('schema')!r}; this reader knows {SCHEMA_ID!r}")
    try:
        audio, model, opts, proc = doc["audio"], doc["model"], doc["options"], doc["processing"]
        media = audio["media"]
        if media is not None and not isinstance(media, dict):
            raise TypeError("audio.media must be an object or null")
        sentences = tuple(
            Sentence(
                start_ms=_int(s["start_ms"]),
                end_ms=_int(s["end_ms"]),
                text=_str(s["text"]),
                speaker=_opt_int(s["speaker"]),
                tokens=tuple(Token(_str(t), _int(a), _int(b)) for t, a, b in s["tokens"]),
            )
            for s in doc["sentences"]
        )
        turns = tuple(
            Turn(
                speaker=_opt_int(t["speaker"]),
                start_ms=_int(t["start_ms"]),
                end_ms=_int(t["end_ms"]),
                text=_str(t["text"]),
                first_sentence=_int(t["first_sentence"]),
                last_sentence=_int(t["last_sentence"]),
            )
            for t in doc["turns"]
        )
        channels = tuple(_opt_int(s.get("channel")) for s in doc["speakers"])
        transcript = Transcript(
            sentences=sentences,
            turns=turns,
            speakers=tuple(_int(s["id"]) for s in doc["speakers"]),
            duration_ms=_int(audio["duration_ms"]),
            model=ModelIdentity(**{f.name: _str(model[f.name]) for f in fields(ModelIdentity)}),
            options=TranscribeOptions(
                hotwords=tuple(_str(h) for h in opts["hotwords"]),
                diarize=bool(opts["diarize"]),
                num_speakers=_opt_int(opts["num_speakers"]),
                language=_opt_str(opts["language"]),
                min_speakers=_opt_int(opts.get("min_speakers")),
                max_speakers=_opt_int(opts.get("max_speakers")),
                channels=_choice(opts.get("channels", "auto"), ("auto", "mix", "split")),  # type: ignore[arg-type]
            ),
            language=_opt_str(doc["language"]),
            wall_s=_opt_float(proc["wall_s"]),
            decode_s=_opt_float(proc["decode_s"]),
            warnings=tuple(TranscriptWarning(_str(w["code"]), _str(w["message"])) for w in doc.get("warnings", [])),
            channel_use=_parse_channel_use(audio.get("channel_use")),
            speaker_channels=channels if any(c is not None for c in channels) else (),
        )
        meta = OutputMeta(source=_str(audio["source"]), job_id=_opt_str(doc["job_id"]), audio=media)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TranscriptParseError(f"malformed transcript document: {exc!r}") from None
    return transcript, meta


def json_schema() -> dict[str, Any]:
    """The JSON-Schema (draft 2020-12) of the JSON output, shipped as package data."""
    text = resources.files("funasr_fleet").joinpath("schemas/transcript.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


# --- SRT / VTT / TXT / RTTM -------------------------------------------------------------------
def _cues(transcript: Transcript) -> Iterator[tuple[int, int, int, str, int | None]]:
    """(number, start, end, one-line text, speaker) for every sentence with text."""
    n = 0
    for s in transcript.sentences:
        text = _one_line(s.text)
        if not text:
            continue
        n += 1
        start, end = _span(s)
        yield n, start, end, text, s.speaker


def _render_srt(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    def lines() -> Iterator[str]:
        for n, start, end, text, spk in _cues(transcript):
            prefix = "" if spk is None else f"{speaker_label(spk)}: "
            yield f"{n}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{prefix}{text}\n\n"

    yield from _batched(lines())


def _vtt_escape(text: str) -> str:
    # '&' first; '>' too, so no cue text can contain the '-->' separator.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render_vtt(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    yield "WEBVTT\n\n"

    def lines() -> Iterator[str]:
        for n, start, end, text, spk in _cues(transcript):
            voice = "" if spk is None else f"<v {speaker_label(spk)}>"
            yield f"{n}\n{_clock(start, '.')} --> {_clock(end, '.')}\n{voice}{_vtt_escape(text)}\n\n"

    yield from _batched(lines())


def _render_txt(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    units: Iterable[Turn | Sentence] = transcript.turns or transcript.sentences

    def lines() -> Iterator[str]:
        for unit in units:
            text = _one_line(unit.text)
            if not text:
                continue
            prefix = "" if unit.speaker is None else f"{speaker_label(unit.speaker)}: "
            yield f"[{_clock(_span(unit)[0], None)}] {prefix}{text}\n"

    yield from _batched(lines())


def _render_rttm(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    file_id = rttm_file_id(meta.source)
    # RTTM channels count from 1; a mixed (or unrecorded) source is channel 1
    channels = {spk: ch + 1 for spk in transcript.speakers if (ch := speaker_channel(transcript, spk)) is not None}

    def lines() -> Iterator[str]:
        for s in transcript.sentences:
            start, end = _span(s)
            if end <= start:
                continue
            spk = RTTM_NO_SPEAKER if s.speaker is None else speaker_label(s.speaker)
            channel = 1 if s.speaker is None else channels.get(s.speaker, 1)
            yield f"SPEAKER {file_id} {channel} {_seconds(start)} {_seconds(end - start)} <NA> <NA> {spk} <NA> <NA>\n"

    yield from _batched(lines())


# --- registry and entry points ----------------------------------------------------------------
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
        OutputFormat("json", "json", "application/json", _render_json),
        OutputFormat("srt", "srt", "application/x-subrip; charset=utf-8", _render_srt),
        OutputFormat("vtt", "vtt", "text/vtt; charset=utf-8", _render_vtt),
        OutputFormat("txt", "txt", "text/plain; charset=utf-8", _render_txt),
        OutputFormat("rttm", "rttm", "text/plain; charset=utf-8", _render_rttm),
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
