"""What a job asks about speakers (``SpeakerCount``) and the warnings when a transcript misses it.

Pure and light (no numpy): the CLI and job validation use it without loading the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from funasr_fleet.engine.transcript import TranscriptWarning, WarningCode

if TYPE_CHECKING:
    from funasr_fleet.engine.clustering import Clustering

MAX_SPEAKERS = 32  # the most a job may ask for (num_speakers / min_speakers / max_speakers)
AUTO_MAX_SPEAKERS = 15  # FunASR's SpectralCluster default: the eigengap looks at 1..15 speakers


@dataclass(frozen=True, slots=True)
class SpeakerCount:
    """What a job asked for: an exact count, or a range (either end optional), or nothing.

    Values are 1..32; ``exact`` excludes ``min``/``max``; ``min <= max``. Raises ``ValueError``.
    """

    exact: int | None = None
    min: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        for name in ("exact", "min", "max"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_SPEAKERS):  # fmt: skip
                raise ValueError(f"{name} speakers must be an integer from 1 to {MAX_SPEAKERS}, not {value!r}")
        if self.exact is not None and (self.min is not None or self.max is not None):
            raise ValueError("an exact speaker count excludes min/max speakers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min speakers ({self.min}) is greater than max speakers ({self.max})")

    @classmethod
    def from_options(cls, num: int | None, min_: int | None = None, max_: int | None = None) -> SpeakerCount:
        """From ``TranscribeOptions``' num/min/max_speakers: an exact count wins over a range."""
        return cls(exact=num) if num is not None else cls(min=min_, max=max_)

    @property
    def requested(self) -> bool:
        return self.exact is not None or self.min is not None or self.max is not None

    def bounds(self) -> tuple[int, int]:
        """(lowest, highest) count to consider; without an upper bound, FunASR's 15 (or ``min``)."""
        if self.exact is not None:
            return self.exact, self.exact
        low = self.min or 1
        return low, self.max if self.max is not None else max(AUTO_MAX_SPEAKERS, low)

    def allows(self, speakers: int) -> bool:
        """Whether ``speakers`` satisfies the request (anything does when nothing was asked)."""
        if self.exact is not None:
            return speakers == self.exact
        return (self.min or 1) <= speakers <= (self.max if self.max is not None else MAX_SPEAKERS)

    def describe(self) -> str:
        if self.exact is not None:
            return f"exactly {_speakers(self.exact)}"
        if self.min is not None and self.max is not None:
            return f"{self.min} to {self.max} speakers" if self.min != self.max else f"exactly {_speakers(self.min)}"
        if self.min is not None:
            return f"at least {_speakers(self.min)}"
        if self.max is not None:
            return f"at most {_speakers(self.max)}"
        return "any number of speakers"


NO_REQUEST = SpeakerCount()  # nothing asked: the clustering chooses (1..15 speakers)


def transcript_warnings(
    count: SpeakerCount, speakers: int, clustering: Clustering | None
) -> tuple[TranscriptWarning, ...]:
    """The speaker warnings a transcript carries: the clustering's own, or one when the transcript's
    ``speakers`` (those holding a sentence) miss a request the clustering met. ``clustering`` is None
    when nothing was clustered (no speech windows)."""
    if clustering is not None and clustering.warnings:
        return clustering.warnings
    if not count.requested or count.allows(speakers):
        return ()
    if clustering is None:
        return (not_met(count, speakers, "no speech windows were found to tell speakers apart"),)
    return (not_met(count, speakers, (
        f"the speech windows were clustered into {_speakers(clustering.speakers)}, but only {speakers} of them "
        "hold a sentence (each sentence goes to the speaker heard most in it, and speaker turns shorter "
        "than 0.7 s are merged into their neighbours)")),)  # fmt: skip


def not_met(count: SpeakerCount, found: int, why: str) -> TranscriptWarning:
    """A ``speaker_count_not_met`` warning: what was asked, what was found, why."""
    return TranscriptWarning(
        code=WarningCode.SPEAKER_COUNT_NOT_MET.value,
        message=f"asked for {count.describe()}, found {found}: {why}",
    )


def _speakers(k: int) -> str:
    return f"{k} speaker" if k == 1 else f"{k} speakers"
