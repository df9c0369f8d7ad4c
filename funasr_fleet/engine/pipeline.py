"""One FunASR pipeline (ASR + fsmn-vad + punctuation + CAM++) per process: ``Engine``.

Why one class: the model is loaded once at construction (seconds to minutes for real weights) and
then serves many ``transcribe`` calls; everything FunASR-specific (argument quirks, result shapes,
silent input, per-call diarization) stays here, and callers get plain ``Transcript`` dataclasses.

NOT thread-safe: FunASR's AutoModel mutates its own config on every call (upstream issues 865,
2051). An Engine binds to the first thread that calls ``transcribe`` and refuses any other; build
one Engine per process (the fleet runs one consumer process per engine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from funasr_fleet.engine import hotwords
from funasr_fleet.engine.audio import SAMPLE_RATE, AudioSource, check_length, decode
from funasr_fleet.engine.channels import plan_channels
from funasr_fleet.engine.clustering import CLUSTERING_VERSION, ClusterBackendSlot
from funasr_fleet.engine.multichannel import channel_options, merge_channels
from funasr_fleet.engine.sentences import SENTENCE_RULES, sentences_from_result
from funasr_fleet.engine.speaker_count import SpeakerCount, transcript_warnings
from funasr_fleet.engine.threads import configure_threads
from funasr_fleet.engine.transcript import (
    ChannelUse,
    ModelIdentity,
    TranscribeOptions,
    Transcript,
    TranscriptWarning,
    WarningCode,
)
from funasr_fleet.engine.turns import absorb_noise_label, merge_turns, relabel_speakers
from funasr_fleet.errors import EngineError, FleetError, JobError, ModelLoadError
from funasr_fleet.logs import get_logger
from funasr_fleet.settings import EngineSettings

AudioInput = str | Path | AudioSource | np.ndarray

_MIB = 1024 * 1024
_SMALL_FILE = 4 * _MIB  # hashed whole; larger files: size + first and last MiB (GB weights stay cheap)
_STAGES = (("model", "asr"), ("vad_model", "vad"), ("punc_model", "punc"), ("spk_model", "spk"))

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
        # FunASR's ClusterBackend returns one speaker below 20 windows whatever was asked, and has no
        # ranges: every diarized call clusters through cluster_speakers with that call's request.
        self._clusters = ClusterBackendSlot()
        if self._model.spk_model is not None:
            self._model.cb_model = self._clusters
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
            "sentence_rules": SENTENCE_RULES,
            "speaker_clustering": CLUSTERING_VERSION,
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
    def load_audio(self, audio: AudioInput) -> AudioSource:
        """Decode (paths: staged in the system temp dir) or validate (arrays, sources) with this engine's
        length limits. The caller closes a source built from a path or array (``with`` works)."""
        s = self.settings
        if isinstance(audio, (str, Path)):
            return decode(audio, min_audio_s=s.min_audio_s, max_audio_s=s.max_audio_s)
        decoded = audio if isinstance(audio, AudioSource) else AudioSource.from_array(audio)
        check_length(
            decoded.duration_s, min_audio_s=s.min_audio_s, max_audio_s=s.max_audio_s, name=decoded.info.container
        )
        return decoded

    def warmup(self) -> float:
        """One short call so lazy initialisation happens before the first real job; returns seconds."""
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(SAMPLE_RATE * 2) * 0.01).astype(np.float32)
        self._generate(noise, TranscribeOptions(diarize=False))  # does not bind the engine to this thread
        return time.perf_counter() - start

    def transcribe(self, audio: AudioInput, options: TranscribeOptions = TranscribeOptions()) -> Transcript:
        """Transcribe one input. Audio errors raise ``AudioError`` subclasses, model failures ``EngineError``.

        Channels follow ``options.channels`` (``engine/channels.py``): one transcription of the mix or
        of one channel, or each channel on its own merged into one timeline (``engine/multichannel.py``).
        """
        self._check_thread()
        speaker_count(options)  # an invalid request fails before decoding
        source = self.load_audio(audio)
        try:
            use, warnings = plan_channels(source.stats, options.channels)
            if source.channels > 1:
                log.info("engine.channels", mode=use.mode, used=list(use.channels), warnings=[w.code for w in warnings],
                         stats=source.stats.as_dict())  # fmt: skip
            return self._transcribe_source(source, options, use, warnings)
        finally:
            if not isinstance(audio, AudioSource):
                source.close()  # staged here, for this call only

    def _transcribe_source(
        self, source: AudioSource, options: TranscribeOptions, use: ChannelUse, warnings: tuple[TranscriptWarning, ...]
    ) -> Transcript:
        if use.mode != "split":
            t = self._transcribe_samples(source.read(channels=use.channels), source.duration_ms, options)
            return replace(t, decode_s=source.decode_s, warnings=warnings + t.warnings, channel_use=use)
        per_channel = channel_options(options, len(use.channels))
        parts = [(c, self._transcribe_samples(source.read_isolated(channel=c), source.duration_ms, per_channel))
                 for c in use.channels]  # fmt: skip
        gap_ms = int(self.settings.turn_gap_s * 1000)
        pause_ms = self.settings.max_end_silence_ms
        merged = merge_channels(parts, channel_use=use, warnings=warnings, options=options,
                                make_turns=lambda sentences: merge_turns(sentences, gap_ms=gap_ms, max_pause_ms=pause_ms))  # fmt: skip
        return replace(merged, decode_s=source.decode_s)

    def _transcribe_samples(self, samples: np.ndarray, duration_ms: int, options: TranscribeOptions) -> Transcript:
        count = speaker_count(options)
        start = time.perf_counter()
        self._clusters.reset(count)
        raw = self._generate(samples, options)
        pause_ms = self.settings.max_end_silence_ms  # no sentence or turn spans a longer pause
        diarized = options.diarize and self.diarization_available
        found = sentences_from_result(raw, duration_ms, diarized=diarized, max_pause_ms=pause_ms)
        sentences = relabel_speakers(absorb_noise_label(found))
        turns = merge_turns(sentences, gap_ms=int(self.settings.turn_gap_s * 1000), max_pause_ms=pause_ms)
        speakers = tuple(sorted({s.speaker for s in sentences if s.speaker is not None}))
        warnings: tuple[TranscriptWarning, ...] = ()
        if diarized:
            warnings = transcript_warnings(count, len(speakers), self._clusters.last)
        elif options.diarize and count.requested:
            warnings = (TranscriptWarning(WarningCode.DIARIZATION_UNAVAILABLE.value,
                        f"asked for {count.describe()}, but this engine has no speaker model"),)  # fmt: skip
        wall = time.perf_counter() - start
        return Transcript(
            sentences=sentences,
            turns=turns,
            speakers=speakers,
            duration_ms=duration_ms,
            model=self.identity,
            options=options,
            language=options.language,
            wall_s=wall,
            warnings=warnings,
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
        if options.language:
            cfg["language"] = options.language
        diarize = options.diarize and self.diarization_available  # the speaker request goes via self._clusters
        if not diarize and model_has_punc(self._model):
            cfg["sentence_timestamp"] = True  # sentences split at punctuation, with times
        model = self._model
        spk_model = model.spk_model
        try:
            if not diarize:
                model.spk_model = None  # this call only: skip embeddings and clustering entirely
            with hotwords.as_file(options.hotwords) as hotword_file:
                if hotword_file is not None:
                    cfg["hotword"] = hotword_file  # never the words themselves: see engine/hotwords.py
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


def speaker_count(options: TranscribeOptions) -> SpeakerCount:
    """The speaker request of ``options`` (exact count wins over a range); ``JobError`` if invalid."""
    try:
        return SpeakerCount.from_options(options.num_speakers, options.min_speakers, options.max_speakers)
    except ValueError as exc:
        raise JobError(f"invalid speaker request: {exc}") from exc


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
