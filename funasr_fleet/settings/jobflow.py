"""``[outputs]``, ``[intake]``, ``[jobs]``: what a job writes, which bucket drops become jobs, status and cancel."""

from __future__ import annotations

from pydantic import Field, field_validator

from funasr_fleet.settings.section import Section

ALL_FORMATS = ("json", "srt", "vtt", "txt", "rttm")


class OutputSettings(Section):
    default_formats: list[str] = Field(
        default_factory=lambda: ["json", "srt"], description="Formats written when a job names none."
    )

    @field_validator("default_formats")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(ALL_FORMATS))
        if unknown:
            raise ValueError(f"unknown format(s) {unknown}; known: {list(ALL_FORMATS)}")
        return value


class IntakeSettings(Section):
    suffixes: list[str] = Field(
        default_factory=lambda: [".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".opus", ".webm", ".mp4", ".mov"],
        description="Only objects with these suffixes become jobs (case-insensitive).",
    )
    formats: list[str] = Field(
        default_factory=lambda: ["json", "srt"], description="Formats for jobs made from bucket drops and the sweep."
    )
    sweep_interval_s: float = Field(300.0, gt=0, description="Period of `funasr-fleet sweep` without --once.")
    sweep_recent_s: float = Field(
        3600.0, ge=0, description="The sweep skips objects it (or an event) enqueued less than this long ago."
    )


class JobsSettings(Section):
    status: bool = Field(
        True,
        description="Record each job's status in `_fleet/jobs/<job_id>.json` (results bucket): written by publishers, "
        "consumers and the announcer; read by `funasr-fleet status`.",
    )
    status_history: int = Field(32, ge=1, description="Transitions kept in a status object (oldest dropped).")
    cancel_grace_s: float = Field(
        10.0,
        gt=0,
        description="A running job told to cancel has this long to reach a stage boundary; then its consumer abandons "
        "the model call and exits (replaced, not counted as a crash).",
    )
    cancel_poll_s: float = Field(
        15.0,
        gt=0,
        description="A busy consumer re-reads the job's cancel marker this often (the broadcast is the fast path).",
    )
