"""The JSON writer and its exact inverse: the ``funasr-fleet.transcript/1`` document.

``parse_json`` reads back what ``render_json`` wrote, so a cached JSON result can be re-rendered
for another job without running the model again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import fields
from importlib import resources
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
from funasr_fleet.errors import TranscriptParseError
from funasr_fleet.outputs.lines import batched, span
from funasr_fleet.outputs.meta import OutputMeta, speaker_channel

SCHEMA_ID = "funasr-fleet.transcript/1"


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


def _speaker_rows(transcript: Transcript) -> list[dict[str, Any]]:
    talk: dict[int, int] = {}
    sentences: dict[int, int] = {}
    turns: dict[int, int] = {}
    for s in transcript.sentences:
        if s.speaker is not None:
            start, end = span(s)
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

    yield from batched(lines())


def _channel_use_row(use: ChannelUse | None) -> dict[str, Any] | None:
    return None if use is None else {"mode": use.mode, "channels": list(use.channels)}


def render_json(transcript: Transcript, meta: OutputMeta) -> Iterator[str]:
    """The JSON document: a header object, then speakers, turns and sentences one element per line."""
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
