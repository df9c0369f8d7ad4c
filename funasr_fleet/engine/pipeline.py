"""One FunASR pipeline (ASR + fsmn-vad + punctuation + CAM++) per process: ``Engine``.

Why one class: the model is loaded once at construction (seconds to minutes for real weights) and
then serves many ``transcribe`` calls; everything FunASR-specific (argument quirks, result shapes,
silent input, per-call diarization) stays here, and callers get plain ``Transcript`` dataclasses.

NOT thread-safe: FunASR's AutoModel mutates its own config on every call (upstream issues 865,
2051). An Engine binds to the first thread that calls ``transcribe`` and refuses any other; build
one Engine per process (the fleet runs one consumer process per engine).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from funasr_fleet.engine.audio import SAMPLE_RATE, DecodedAudio, check_length, decode
from funasr_fleet.engine.threads import configure_threads
from funasr_fleet.engine.transcript import (
    ModelIdentity,
    Sentence,
    Token,
    TranscribeOptions,
    Transcript,
    Turn,
)
from funasr_fleet.errors import EngineError, FleetError, ModelLoadError
from funasr_fleet.logs import get_logger
from funasr_fleet.settings import EngineSettings

AudioInput = str | Path | DecodedAudio | np.ndarray

_MIB = 1024 * 1024
_SMALL_FILE = 4 * _MIB  # hashed whole; larger files: size + first and last MiB (GB weights stay cheap)
_STAGES = (("model", "asr"), ("vad_model", "vad"), ("punc_model", "punc"), ("spk_model", "spk"))
_PUNCT = set("，。？！、；：,.?!;:\"'“”‘’（）()[]【】《》<>-—…·")

log = get_logger(__name__)


class Engine:
    """Loads the configured models once; ``transcribe`` turns audio into a ``Transcript``."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self.threads = configure_threads(settings.threads)  # before funasr imports torch's kernels
        if settings.model_cache_dir:
            cache = str(Path(settings.model_cache_dir).expanduser().resolve())
            os.environ["MODELSCOPE_CACHE"] = cache
            os.environ["HF_HOME"] = cache
        self._refs = {key: resolve_model_ref(getattr(settings, key), key, required=key in ("model", "vad_model"))
                      for key, _ in _STAGES}  # fmt: skip
        self._owner: int | None = None
        self._lock = threading.Lock()
        start = time.perf_counter()
        self._model = self._load()
        self.load_s = time.perf_counter() - start
        self.identity = self._identity()
        log.info(
            "engine.loaded",
            load_s=round(self.load_s, 3),
            threads=self.threads,
            device=self.identity.device,
            backend=f"{settings.backend}/{settings.quantize}" if settings.backend != "torch" else "torch",
            fingerprint=self.identity.fingerprint[:16],
            **{stage: self._refs[key] or "-" for key, stage in _STAGES},
        )

    # --- loading -------------------------------------------------------------------------------
    def _load(self) -> Any:
        try:
            AutoModel = import_funasr()
        except Exception as exc:  # a broken install (e.g. an incompatible torchaudio) fails here
            raise ModelLoadError(f"cannot import funasr: {exc}") from exc
        s = self.settings
        refs = self._onnx_refs() if s.backend == "onnx" else self._refs
        kwargs: dict[str, Any] = {
            "model": refs["model"],
            "vad_model": refs["vad_model"],
            "vad_kwargs": {"max_end_silence_time": s.max_end_silence_ms},
            "hub": s.hub,
            "device": s.device,
            "ncpu": self.threads,
            "disable_update": True,
            "disable_pbar": True,
            "disable_log": True,
            "log_level": "ERROR",
        }
        if refs["punc_model"]:
            kwargs["punc_model"] = refs["punc_model"]
        if refs["spk_model"]:
            kwargs["spk_model"] = refs["spk_model"]
        try:
            # FunASR prints (its version, download failures) to stdout; stdout belongs to commands
            with contextlib.redirect_stdout(sys.stderr):
                model = AutoModel(**kwargs)
        except FleetError:
            raise
        except Exception as exc:
            names = ", ".join(f"{k}={v}" for k, v in self._refs.items() if v)
            raise ModelLoadError(f"loading the FunASR pipeline failed ({names}): {exc}") from exc
        # FunASR resets the torch thread count from ncpu; keep ours in force.
        configure_threads(self.threads)
        return model

    def _onnx_refs(self) -> dict[str, str | None]:
        """Model refs with VAD, ASR and punctuation replaced by their (cached) ONNX exports."""
        from funasr_fleet.engine import onnx

        onnx.register()
        s = self.settings
        return onnx.prepare(self._refs, quantize=s.quantize, hub=s.hub, threads=self.threads,
                            cache_root=s.onnx_cache_dir, digest_of=directory_digest)  # fmt: skip

    def _identity(self) -> ModelIdentity:
        import funasr
        import torch

        paths = {
            "asr": _model_path(self._model.kwargs),
            "vad": _model_path(getattr(self._model, "vad_kwargs", None)),
            "punc": _model_path(getattr(self._model, "punc_kwargs", None)) if self._refs["punc_model"] else None,
            "spk": _model_path(getattr(self._model, "spk_kwargs", None)) if self._refs["spk_model"] else None,
        }
        # the device FunASR resolved (it falls back to cpu when cuda is absent); type only, so the
        # fingerprint does not change with the GPU index a pod happens to get
        device = torch.device(str(self._model.kwargs.get("device") or "cpu")).type
        names = {stage: self._refs[key] or "" for key, stage in _STAGES}
        # Content, not location: a model directory that moves (another mount, another pod) keeps
        # its fingerprint; a hub name counts only when its files cannot be found.
        digest_input = {
            "names": {stage: None if paths[stage] else names[stage] for stage in names},
            "files": {stage: model_digest(p) if p else None for stage, p in paths.items()},
            "funasr": funasr.__version__,
            "device": device,
            # settings that change the words or their grouping are part of what a result depends on
            "max_end_silence_ms": self.settings.max_end_silence_ms,
            "turn_gap_s": self.settings.turn_gap_s,
        }
        if self.settings.backend != "torch":
            digest_input["backend"] = [self.settings.backend, self.settings.quantize]
        fingerprint = hashlib.sha256(json.dumps(digest_input, sort_keys=True).encode()).hexdigest()
        return ModelIdentity(
            asr=names["asr"], vad=names["vad"], punc=names["punc"], spk=names["spk"],
            funasr_version=funasr.__version__, device=device, fingerprint=fingerprint,
        )  # fmt: skip

    @property
    def diarization_available(self) -> bool:
        return self._model.spk_model is not None

    # --- inference -----------------------------------------------------------------------------
    def load_audio(self, audio: AudioInput) -> DecodedAudio:
        """Decode (paths) or validate (arrays) with this engine's length limits."""
        s = self.settings
        if isinstance(audio, (str, Path)):
            return decode(audio, min_audio_s=s.min_audio_s, max_audio_s=s.max_audio_s)
        decoded = audio if isinstance(audio, DecodedAudio) else DecodedAudio.from_array(audio)
        check_length(decoded.duration_s, min_audio_s=s.min_audio_s, max_audio_s=s.max_audio_s, name=decoded.info.container)
        return decoded

    def warmup(self) -> float:
        """One short call so lazy initialisation happens before the first real job; returns seconds."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(SAMPLE_RATE * 2) * 0.01).astype(np.float32)
        self._generate(noise, TranscribeOptions(diarize=False))  # does not bind the engine to this thread
        return time.perf_counter() - start

    def transcribe(self, audio: AudioInput, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
        """Transcribe one input. Audio errors raise ``AudioError`` subclasses, model failures ``EngineError``."""
        self._check_thread()
        decoded = self.load_audio(audio)
        start = time.perf_counter()
        raw = self._generate(decoded.samples, options)
        sentences = self._sentences(raw, decoded.duration_ms, diarized=options.diarize and self.diarization_available)
        turns = merge_turns(sentences, gap_ms=int(self.settings.turn_gap_s * 1000))
        speakers = tuple(sorted({s.speaker for s in sentences if s.speaker is not None}))
        wall = time.perf_counter() - start
        return Transcript(
            sentences=sentences,
            turns=turns,
            speakers=speakers,
            duration_ms=decoded.duration_ms,
            model=self.identity,
            options=options,
            language=options.language,
            wall_s=wall,
            decode_s=decoded.decode_s,
        )

    def _check_thread(self) -> None:
        me = threading.get_ident()
        with self._lock:
            if self._owner is None:
                self._owner = me
            elif self._owner != me:
                raise RuntimeError(
                    "Engine is not thread-safe: it is bound to the first thread that called transcribe(); "
                    "build one Engine per thread (or per process)"
                )

    def _generate(self, samples: np.ndarray, options: TranscribeOptions) -> dict[str, Any]:
        cfg: dict[str, Any] = {"batch_size_s": self.settings.batch_size_s}
        if options.hotwords:
            cfg["hotword"] = " ".join(options.hotwords)
        if options.language:
            cfg["language"] = options.language
        diarize = options.diarize and self.diarization_available
        if diarize and options.num_speakers:
            cfg["preset_spk_num"] = int(options.num_speakers)
        if not diarize and model_has_punc(self._model):
            cfg["sentence_timestamp"] = True  # sentences split at punctuation, with times
        model = self._model
        spk_model = model.spk_model
        try:
            if not diarize:
                model.spk_model = None  # this call only: skip embeddings and clustering entirely
            results = model.generate(input=samples, **cfg)
        except FleetError:
            raise
        except Exception as exc:
            raise EngineError(f"FunASR failed: {exc.__class__.__name__}: {exc}") from exc
        finally:
            model.spk_model = spk_model
        if not results:
            return {}
        return dict(results[0])

    def _sentences(self, raw: dict[str, Any], duration_ms: int, *, diarized: bool) -> tuple[Sentence, ...]:
        items = raw.get("sentence_info")
        if not items and str(raw.get("text", "")).strip():
            items = _sentences_from_tokens(raw, gap_ms=self.settings.max_end_silence_ms)
        # Per-token times: FunASR's sentence splitter can be off by one token at sentence edges, but
        # the whole-result text and timestamp lists line up; hand tokens to sentences by time.
        all_tokens = _TokenIndex(_tokens(str(raw.get("text", "")), raw.get("timestamp") or [], duration_ms))
        sentences: list[Sentence] = []
        for item in items or []:
            text = str(item.get("text", "")).strip()
            if not text:
                continue
            if all(c in _PUNCT or c.isspace() for c in text):
                # FunASR's splitter sometimes leaves a sentence-final mark on its own: glue it back
                if sentences:
                    last = sentences[-1]
                    glued = last.text if last.text[-1] in _PUNCT else last.text + text
                    end = _clamp(int(item.get("end", last.end_ms)), last.end_ms, duration_ms)
                    sentences[-1] = replace(last, text=glued, end_ms=end)
                continue
            start = _clamp(int(item.get("start", 0)), 0, duration_ms)
            end = _clamp(int(item.get("end", start)), start, duration_ms)
            spk = item.get("spk") if diarized else None
            sentences.append(
                Sentence(
                    start_ms=start,
                    end_ms=end,
                    text=text,
                    speaker=int(spk) if spk is not None else (0 if diarized else None),
                    tokens=_tokens(text, item.get("timestamp") or [], duration_ms)
                    or all_tokens.between(start, end),
                )
            )
        sentences.sort(key=lambda s: (s.start_ms, s.end_ms))
        return _relabel_speakers(_absorb_noise_label(sentences))


# --- helpers (pure; tested directly) ------------------------------------------------------------
class _QuietFunasr(logging.Filter):
    """FunASR logs through the root logger; drop its per-call chatter unless debugging."""

    _NOISE = ("trust_remote_code", "download models from", "decoding, utt", "Loading ", "ckpt:", "scope_map",
              "excludes:", "Building ", "rtf_avg")  # fmt: skip

    def filter(self, record: logging.LogRecord) -> bool:
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        msg = str(record.msg)
        return not any(msg.startswith(n) for n in self._NOISE)


def import_funasr() -> Any:
    """Import FunASR with its import-time ``print`` sent to stderr (stdout belongs to commands)."""
    root = logging.getLogger()
    if not any(isinstance(f, _QuietFunasr) for f in root.filters):
        root.addFilter(_QuietFunasr())
    with contextlib.redirect_stdout(sys.stderr):
        from funasr import AutoModel
    return AutoModel


def resolve_model_ref(value: str, key: str, *, required: bool) -> str | None:
    """A hub name stays a name; a path (absolute, ./, ~, or an existing dir) must be a model dir."""
    env = f"FLEET_ENGINE__{key.upper()}"
    value = (value or "").strip()
    if not value:
        if required:
            raise ModelLoadError(f"{env} is empty: a model name or directory is required")
        return None
    if value.startswith(("/", ".", "~")) or Path(value).is_dir():
        path = Path(value).expanduser().resolve()
        if not path.is_dir():
            raise ModelLoadError(f"{env}={value}: no such directory")
        if not (path / "config.yaml").is_file():
            raise ModelLoadError(f"{env}={value}: not a FunASR model directory (no config.yaml)")
        return str(path)
    return value


def model_has_punc(model: Any) -> bool:
    return getattr(model, "punc_model", None) is not None


def _model_path(kwargs: dict[str, Any] | None) -> Path | None:
    if not kwargs:
        return None
    value = kwargs.get("model_path")
    if isinstance(value, str) and Path(value).is_dir():
        return Path(value)
    return None


def directory_digest(path: Path) -> str:
    """Stable digest of a model directory: relative names, sizes and (sampled) contents."""
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if "__pycache__" in file.parts or file.suffix in (".lock", ".pyc"):
            continue
        rel = file.relative_to(path).as_posix()
        h.update(rel.encode() + b"\0")
        h.update(file_digest(file).encode() + b"\0")
    return h.hexdigest()


def model_digest(path: Path) -> str:
    """``directory_digest``, except that an ONNX export counts as the model it was exported from
    (its stamp records that digest; the export's own files carry build metadata)."""
    from funasr_fleet.engine.onnx.export import stamp_of

    source = stamp_of(path).get("digest")
    return str(source) if source else directory_digest(path)


def file_digest(path: Path) -> str:
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode() + b"\0")
    with path.open("rb") as f:
        if size <= _SMALL_FILE:
            h.update(f.read())
        else:
            h.update(f.read(_MIB))
            f.seek(size - _MIB)
            h.update(f.read(_MIB))
    return h.hexdigest()


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, max(low, high)))


def _units(text: str) -> list[str]:
    """Token units as FunASR timestamps count them: CJK characters one by one, other words whole."""
    units: list[str] = []
    for word in text.split():
        for piece in re.findall(r"[\u3400-\u9fff\uf900-\ufaff]|[^\u3400-\u9fff\uf900-\ufaff]+", word):
            piece = "".join(c for c in piece if c not in _PUNCT)
            if piece:
                units.append(piece)
    return units


def _tokens(text: str, stamps: list[Any], duration_ms: int) -> tuple[Token, ...]:
    units = _units(text)
    pairs = [(int(t[0]), int(t[1])) for t in stamps if isinstance(t, (list, tuple)) and len(t) >= 2]
    if not pairs or len(units) != len(pairs):
        return ()
    out = []
    for unit, (s, e) in zip(units, pairs):
        s = _clamp(s, 0, duration_ms)
        out.append(Token(unit, s, _clamp(e, s, duration_ms)))
    return tuple(out)


class _TokenIndex:
    """Tokens sorted by midpoint; ``between`` is a binary search (hours of audio: 10^4+ tokens)."""

    def __init__(self, tokens: tuple[Token, ...]) -> None:
        self._tokens = sorted(tokens, key=_mid)
        self._mids = [_mid(t) for t in self._tokens]

    def between(self, start_ms: int, end_ms: int) -> tuple[Token, ...]:
        lo = bisect.bisect_left(self._mids, start_ms)
        hi = bisect.bisect_left(self._mids, end_ms, lo)
        return tuple(self._tokens[lo:hi])


def _mid(token: Token) -> int:
    return (token.start_ms + token.end_ms) // 2


def _sentences_from_tokens(raw: dict[str, Any], *, gap_ms: int) -> list[dict[str, Any]]:
    """No punctuation model: split the token stream at pauses so sentences still have times."""
    stamps = [t for t in raw.get("timestamp") or [] if isinstance(t, (list, tuple)) and len(t) >= 2]
    text = str(raw.get("text", "")).strip()
    units = _units(text)
    if not stamps or len(units) != len(stamps):
        start = int(stamps[0][0]) if stamps else 0
        end = int(stamps[-1][1]) if stamps else 0
        return [{"start": start, "end": end, "text": text, "timestamp": stamps}]
    out: list[dict[str, Any]] = []
    cur_units: list[str] = []
    cur_stamps: list[Any] = []
    for unit, stamp in zip(units, stamps):
        if cur_stamps and int(stamp[0]) - int(cur_stamps[-1][1]) >= max(gap_ms, 1):
            out.append(_group(cur_units, cur_stamps))
            cur_units, cur_stamps = [], []
        cur_units.append(unit)
        cur_stamps.append(stamp)
    if cur_stamps:
        out.append(_group(cur_units, cur_stamps))
    return out


def _group(units: list[str], stamps: list[Any]) -> dict[str, Any]:
    return {"start": int(stamps[0][0]), "end": int(stamps[-1][1]), "text": join_text(units), "timestamp": stamps}


def join_text(parts: list[str]) -> str:
    """Join text pieces: no space between CJK characters, one space between other words."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out and (out[-1].isascii() or part[0].isascii()) and not part[0] in "，。？！、,.?!":
            out += " "
        out += part
    return out


def _absorb_noise_label(sentences: list[Sentence]) -> list[Sentence]:
    """HDBSCAN (FunASR's clusterer past ~25 min of speech) labels outliers -1; that is not a
    speaker. Such a sentence takes its neighbour's speaker (previous, else next)."""
    if not any(s.speaker is not None and s.speaker < 0 for s in sentences):
        return sentences
    out = list(sentences)
    last: int | None = None
    for i, s in enumerate(out):
        if s.speaker is not None and s.speaker < 0:
            if last is None:
                last = next((t.speaker for t in out[i:] if t.speaker is not None and t.speaker >= 0), 0)
            out[i] = replace(s, speaker=last)
        elif s.speaker is not None:
            last = s.speaker
    return out


def _relabel_speakers(sentences: list[Sentence]) -> tuple[Sentence, ...]:
    """Number speakers by first appearance (0, 1, ...): cluster ids are arbitrary, order is not."""
    mapping: dict[int, int] = {}
    out = []
    for s in sentences:
        if s.speaker is None:
            out.append(s)
            continue
        new = mapping.setdefault(s.speaker, len(mapping))
        out.append(s if new == s.speaker else replace(s, speaker=new))
    return tuple(out)


def merge_turns(sentences: tuple[Sentence, ...], *, gap_ms: int) -> tuple[Turn, ...]:
    """Consecutive sentences of one speaker become one turn while the pause stays under ``gap_ms``."""
    turns: list[Turn] = []
    for i, s in enumerate(sentences):
        last = turns[-1] if turns else None
        if last is not None and last.speaker == s.speaker and s.start_ms - last.end_ms < gap_ms:
            turns[-1] = Turn(
                speaker=last.speaker,
                start_ms=last.start_ms,
                end_ms=max(last.end_ms, s.end_ms),
                text=join_text([last.text, s.text]),
                first_sentence=last.first_sentence,
                last_sentence=i,
            )
        else:
            turns.append(Turn(s.speaker, s.start_ms, s.end_ms, s.text, i, i))
    return tuple(turns)
