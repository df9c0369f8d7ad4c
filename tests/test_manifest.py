"""The manifest predicates (pure): which manifest answers which job, whichever job id wrote it."""

from __future__ import annotations

from typing import Any

import pytest

from funasr_fleet.manifest import (
    Manifest,
    ManifestInput,
    answer_event_data,
    answers,
    options_hash,
    records_object,
    same_bytes,
)

ETAG = "767dddaa00308cf6d8074da22f36206d"
SHA = "a" * 64
FP = "f" * 64
OPTS = options_hash({"diarize": True, "hotwords": []}, ["json", "srt"])


def manifest(**changes: Any) -> Manifest:
    values: dict[str, Any] = {
        "job_id": "s3-written-by-this-id",
        "input": ManifestInput(bucket="inbox", key="calls/x.wav", etag=ETAG, size=10, sha256=SHA),
        "engine_fingerprint": FP,
        "options_hash": OPTS,
        "formats": ["json", "srt"],
        "outputs": ["s3://results/r/calls/x.wav/transcript.json", "s3://results/r/calls/x.wav/manifest.json"],
        "event": {"job_id": "s3-written-by-this-id", "status": "succeeded", "attempt": 1, "metadata": {"a": 1},
                  "outputs": ["s3://results/r/calls/x.wav/transcript.json"], "input": "s3://inbox/calls/x.wav"},
        "created": "2026-11-30T18:00:00+00:00",
    }  # fmt: skip
    values.update(changes)
    return Manifest(**values)


def ask(m: Manifest, **changes: Any) -> bool:
    values: dict[str, Any] = {
        "job_id": "s3-another-id",
        "bucket": "inbox",
        "key": "calls/x.wav",
        "engine_fingerprint": FP,
        "opts_hash": OPTS,
        "etag": ETAG,
    }
    values.update(changes)
    return answers(m, **values)


def test_a_manifest_of_another_job_for_the_same_input_answers() -> None:
    assert ask(manifest())  # another job id, same bucket/key/bytes/engine/options: an answer, not a conflict
    assert ask(manifest(), job_id="s3-written-by-this-id")
    assert ask(manifest(), etag=f'"{ETAG}"')  # S3 quotes eTags


@pytest.mark.parametrize(
    "changes",
    [
        {"bucket": "other"},
        {"key": "calls/y.wav"},
        {"key": "calls/x.wav "},
        {"engine_fingerprint": "e" * 64},
        {"opts_hash": options_hash({"diarize": False, "hotwords": []}, ["json", "srt"])},
        {"opts_hash": options_hash({"diarize": True, "hotwords": []}, ["json"])},
        {"etag": "0" * 32},  # new bytes under the key
        {"etag": None, "sha256": "b" * 64},
    ],
)
def test_anything_else_differs_means_no_answer(changes: dict[str, Any]) -> None:
    assert not ask(manifest(), **changes)


def test_sha256_decides_over_etags() -> None:
    assert ask(manifest(), etag="0" * 32, sha256=SHA)  # same bytes uploaded another way (multipart eTag)
    assert not ask(manifest(), etag=ETAG, sha256="c" * 64)


def test_unknown_bytes_answer_only_the_manifests_own_job() -> None:
    """The input was deleted after success (delete_source): its own job is answered, no other."""
    assert ask(manifest(), job_id="s3-written-by-this-id", etag=None)
    assert not ask(manifest(), etag=None)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((ETAG, SHA), (ETAG, SHA), True),
        ((ETAG, SHA), (f'"{ETAG}"', None), True),
        ((ETAG, None), ("1" * 32, None), False),
        ((None, SHA), (None, SHA), True),
        ((None, SHA), (ETAG, None), None),
        (("", None), ("", None), None),
        ((ETAG, "x"), (ETAG, "y"), False),
    ],
)
def test_same_bytes(a: tuple[str | None, str | None], b: tuple[str | None, str | None], expected: bool | None) -> None:
    assert same_bytes(a[0], a[1], b[0], b[1]) is expected


def test_records_object() -> None:
    raw = manifest().model_dump(mode="json")
    assert records_object(raw, "inbox", "calls/x.wav", ETAG)
    assert records_object(raw, "inbox", "calls/x.wav", f'"{ETAG}"')
    assert not records_object(raw, "inbox", "calls/x.wav", "0" * 32)
    assert not records_object(raw, "inbox", "calls/y.wav", ETAG)
    assert not records_object(raw, "inbox", "calls/x.wav", None)
    assert not records_object({"job_id": "j", "outputs": []}, "inbox", "calls/x.wav", ETAG)


def test_answer_event_data_speaks_for_the_asking_job() -> None:
    data = answer_event_data(manifest(), job_id="s3-another-id", attempt=2, metadata={"ticket": 7})
    assert data["job_id"] == "s3-another-id" and data["attempt"] == 2 and data["metadata"] == {"ticket": 7}
    assert data["reused"] == "manifest"
    assert data["outputs"] == manifest().event["outputs"] and data["input"] == "s3://inbox/calls/x.wav"
