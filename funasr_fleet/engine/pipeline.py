"""One FunASR pipeline (ASR + fsmn-vad + punctuation + CAM++) per process: ``Engine``.

Why one class: the model is loaded once at construction (seconds to minutes for real weights) and
then serves many ``transcribe`` calls; everything FunASR-specific (argument quirks, result shapes,
silent input, per-call diarization) stays here, and callers get plain ``Transcript`` dataclasses.

Where the parts live: loading and the fingerprint in ``loading.py`` (helpers in ``models.py``);
long audio in windows in ``windowed.py`` (cuts: ``windows.py``, speakers: ``window_speakers.py``);
sentences → ``Transcript`` in ``assembly.py``; the memory estimate in ``sizing.py``.

NOT thread-safe: FunASR's AutoModel mutates its own config on every call (upstream issues 865,
2051). An Engine binds to the first thread that calls ``transcribe`` and refuses any other; build
one Engine per process (the fleet runs one consumer process per engine).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from funasr_fleet.engine import hotwords, sizing
from funasr_fleet.engine.assembly import build_transcript, with_no_speech
from funasr_fleet.engine.audio import SAMPLE_RATE, AudioSource, check_length, decode
from funasr_fleet.engine.channels import plan_channels
from funasr_fleet.engine.clustering import ClusterBackendSlot
from funasr_fleet.engine.loading import identity_of, load_pipeline
from funasr_fleet.engine.models import (
    STAGES,
    directory_digest,
    file_digest,
    import_funasr,
    model_digest,
    model_has_punc,
    resolve_model_ref,
)
from funasr_fleet.engine.multichannel import channel_options, merge_channels
from funasr_fleet.engine.sentences import sentences_from_result
from funasr_fleet.engine.sizing import JobEstimate
from funasr_fleet.engine.speaker_count import SpeakerCount
from funasr_fleet.engine.threads import configure_threads
from funasr_fleet.engine.transcript import ChannelUse, TranscribeOptions, Transcript, TranscriptWarning
from funasr_fleet.engine.turns import merge_turns
from funasr_fleet.engine.window_speakers import EmbeddingCollector
from funasr_fleet.engine.windowed import transcribe_windows
from funasr_fleet.errors import EngineError, FleetError, JobError
from funasr_fleet.logs import get_logger
from funasr_fleet.settings import EngineSettings

__all__ = [
    "Engine", "JobEstimate", "directory_digest", "file_digest", "import_funasr", "merge_turns", "model_digest",
    "resolve_model_ref", "speaker_count",
]  # fmt: skip

AudioInput = str | Path | AudioSource | np.ndarray
Progress = Callable[[float], None]
_DEFAULT_OPTIONS = TranscribeOptions()  # frozen: one shared default is safe
_STAGES = STAGES

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
        self._model = load_pipeline(settings, self._refs, self.threads)
        # FunASR's ClusterBackend returns one speaker below 20 windows whatever was asked, and has no
        # ranges: every diarized call clusters through cluster_speakers with that call's request.
        self._clusters = ClusterBackendSlot()
        if self._model.spk_model is not None:
            self._model.cb_model = self._clusters
        self.load_s = time.perf_counter() - start
        self.identity = identity_of(self._model, self._refs, settings)
        self.base_rss_mb = sizing.current_rss_mb()  # models loaded, nothing run: the floor of every estimate
        log.info(
            "engine.loaded",
            load_s=round(self.load_s, 3),
            threads=self.threads,
            device=self.identity.device,
            backend=f"{settings.backend}/{settings.quantize}" if settings.backend != "torch" else "torch",
            fingerprint=self.identity.fingerprint[:16],
            **{stage: self._refs[key] or "-" for key, stage in _STAGES},
        )

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

    def transcribe(
        self, audio: AudioInput, options: TranscribeOptions = _DEFAULT_OPTIONS, progress: Progress | None = None
    ) -> Transcript:
        """Transcribe one input. Audio errors raise ``AudioError`` subclasses, model failures ``EngineError``.

        Channels follow ``options.channels`` (``engine/channels.py``): one transcription of the mix or
        of one channel, or each channel on its own merged into one timeline (``engine/multichannel.py``).
        Audio longer than ``engine.window_s`` runs in windows (``engine/windowed.py``); shorter audio
        in one FunASR call. ``progress(fraction)`` (0..1] is called after every window (at least
        once); an exception it raises stops the transcription and propagates (cancellation).
        """
        self._check_thread()
        speaker_count(options)  # an invalid request fails before decoding
        source = self.load_audio(audio)
        try:
            use, warnings = plan_channels(source.stats, options.channels)
            if source.channels > 1:
                log.info("engine.channels", mode=use.mode, used=list(use.channels), warnings=[w.code for w in warnings],
                         stats=source.stats.as_dict())  # fmt: skip
            return with_no_speech(self._transcribe_source(source, options, use, warnings, progress))
        finally:
            if not isinstance(audio, AudioSource):
                source.close()  # staged here, for this call only

    def check_memory(self, duration_s: float, options: TranscribeOptions = _DEFAULT_OPTIONS) -> JobEstimate:
        """The peak-RSS estimate of transcribing ``duration_s`` of audio with ``options`` in this
        process (``engine/sizing.py``: measured constants); raises ``AudioTooLong`` (permanent) when it
        exceeds ``engine.max_memory_mb``. Cheap: call it with the container's duration before decoding."""
        s = self.settings
        est = sizing.estimate(duration_s, window_s=s.window_s, diarize=options.diarize and self.diarization_available,
                              base_mb=self.base_rss_mb, limit_mb=s.max_memory_mb)  # fmt: skip
        est.check()
        return est

    def _transcribe_source(
        self, source: AudioSource, options: TranscribeOptions, use: ChannelUse,
        warnings: tuple[TranscriptWarning, ...], progress: Progress | None,
    ) -> Transcript:  # fmt: skip
        if use.mode != "split":
            t = self._transcribe_channel(
                lambda a, b: source.read(a, b, channels=use.channels), source, options, progress
            )
            return replace(t, decode_s=source.decode_s, warnings=warnings + t.warnings, channel_use=use)
        per_channel = channel_options(options, len(use.channels))
        parts = []
        for k, c in enumerate(use.channels):  # channel k covers progress [k/n, (k+1)/n]
            part = _scaled(progress, k, len(use.channels))
            reader = (lambda ch: lambda a, b: source.read_isolated(a, b, channel=ch))(c)
            parts.append((c, self._transcribe_channel(reader, source, per_channel, part)))
        gap_ms = int(self.settings.turn_gap_s * 1000)
        pause_ms = self.settings.max_end_silence_ms
        merged = merge_channels(
            parts, channel_use=use, warnings=warnings, options=options,
            make_turns=lambda sentences: merge_turns(sentences, gap_ms=gap_ms, max_pause_ms=pause_ms),
        )  # fmt: skip
        return replace(merged, decode_s=source.decode_s)

    def _transcribe_channel(
        self, read: Callable[[int, int], np.ndarray], source: AudioSource, options: TranscribeOptions,
        progress: Progress | None,
    ) -> Transcript:  # fmt: skip
        """One mono signal (``read(start, stop)``) of ``source``: in one call when it fits one window."""
        count = speaker_count(options)
        start = time.perf_counter()
        pause_ms = self.settings.max_end_silence_ms  # no sentence or turn spans a longer pause
        diarized = options.diarize and self.diarization_available
        if source.num_samples <= int(self.settings.window_s * 1000) * 16:
            self._clusters.reset(count)
            raw = self._generate(read(0, source.num_samples), options)
            found = sentences_from_result(raw, source.duration_ms, diarized=diarized, max_pause_ms=pause_ms)
            clustering = self._clusters.last
            if progress is not None:
                progress(1.0)
        else:
            found, clustering = transcribe_windows(
                self, read, source.num_samples, options, count=count, diarized=diarized,
                window_s=self.settings.window_s, max_pause_ms=pause_ms, progress=progress,
                max_dense=self._clusters.max_dense, seed=self._clusters.seed,
            )  # fmt: skip
        return build_transcript(
            found, duration_ms=source.duration_ms, options=options, count=count, diarized=diarized,
            clustering=clustering, model=self.identity, gap_ms=int(self.settings.turn_gap_s * 1000),
            max_pause_ms=pause_ms, wall_s=time.perf_counter() - start,
        )  # fmt: skip

    # --- WindowBackend (engine/windowed.py) ------------------------------------------------------
    def generate_window(
        self, samples: np.ndarray, options: TranscribeOptions, collector: EmbeddingCollector | None
    ) -> dict[str, Any]:
        """One window through FunASR; with ``collector`` its embeddings are kept, not clustered."""
        if collector is None:
            return self._generate(samples, options)
        with collector.installed(self._model):
            return self._generate(samples, options)

    def speech_segments(self, samples: np.ndarray) -> list[list[int]]:
        """The VAD alone over ``samples``: ``[[start_ms, end_ms], ...]`` of speech."""
        model = self._model
        try:
            with contextlib.redirect_stdout(sys.stderr):
                res = model.inference(samples, input_len=None, model=model.vad_model, kwargs=model.vad_kwargs)
        except Exception as exc:
            raise EngineError(f"FunASR VAD failed: {exc.__class__.__name__}: {exc}") from exc
        return [[int(s), int(e)] for s, e in (res[0].get("value") or [])] if res else []

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


def speaker_count(options: TranscribeOptions) -> SpeakerCount:
    """The speaker request of ``options`` (exact count wins over a range); ``JobError`` if invalid."""
    try:
        return SpeakerCount.from_options(options.num_speakers, options.min_speakers, options.max_speakers)
    except ValueError as exc:
        raise JobError(f"invalid speaker request: {exc}") from exc


def _scaled(progress: Progress | None, part: int, parts: int) -> Progress | None:
    """``progress`` for part ``part`` of ``parts`` equal parts (split channels run one after another)."""
    if progress is None:
        return None
    return lambda fraction: progress((part + fraction) / parts)
