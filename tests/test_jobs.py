"""Pure unit tests of the job request (funasr_fleet.jobs): every error code, ids, prefixes, allow-list."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from funasr_fleet import jobs
from funasr_fleet.errors import (
    BadS3Uri,
    BucketNotAllowed,
    FleetError,
    JobError,
    MalformedMessage,
    OutputPrefixInvalid,
    SchemaInvalid,
    UnsupportedFormat,
    UnsupportedSchemaVersion,
)
from funasr_fleet.jobs import (
    derived_job_id,
    job_id_for_object,
    message_kind,
    parse_job,
)
from funasr_fleet.s3uri import S3Location, parse_s3_uri, safe_prefix
from funasr_fleet.settings import Settings

AUDIO = "s3://fleet-audio/calls/2026/a.wav"


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No FLEET_* variable or config/fleet.toml of the machine leaks into Settings()."""
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def body(**fields: Any) -> bytes:
    data: dict[str, Any] = {"audio": AUDIO}
    data.update(fields)
    return json.dumps(data).encode()


def settings(**s3: Any) -> Settings:
    return Settings(s3=s3)


def raises(exc: type[FleetError], code: str, payload: bytes, cfg: Settings | None = None) -> FleetError:
    with pytest.raises(exc) as info:
        parse_job(payload, cfg)
    err = info.value
    assert err.code == code
    assert isinstance(err, JobError) and err.permanent, "a bad request can never succeed on retry"
    assert err.message
    return err


# --- the happy path --------------------------------------------------------------------------------
def test_minimal_job_defaults() -> None:
    job = parse_job(body())
    assert job.audio == S3Location(bucket="fleet-audio", key="calls/2026/a.wav")
    assert job.schema_version == 1 and job.output is None and job.formats == []
    assert job.options.diarize is True and job.options.hotwords == [] and job.metadata == {}
    assert re.fullmatch(r"j-[0-9a-f]{32}", str(job.job_id))


def test_full_job() -> None:
    job = parse_job(
        body(
            job_id="call-42.v2",
            output={"bucket": "fleet-results", "prefix": "team/x/"},
            formats=[" SRT", "json", "srt", "RTTM"],
            options={"hotwords": ["FunASR"], "diarize": False, "num_speakers": 2, "language": "zh"},
            metadata={"ticket": 7, "nested": {"a": [1, 2]}},
            delete_source=True,
        )
    )
    assert job.job_id == "call-42.v2"
    assert job.output == S3Location(bucket="fleet-results", key="team/x")
    assert job.formats == ["srt", "json", "rttm"]  # normalised and de-duplicated, order kept
    assert job.options.num_speakers == 2 and job.delete_source is True
    assert job.metadata == {"ticket": 7, "nested": {"a": [1, 2]}}


def test_audio_as_object() -> None:
    job = parse_job(body(audio={"bucket": "fleet-audio", "key": "x y/é.m4a"}))
    assert job.audio.uri == "s3://fleet-audio/x y/é.m4a" and str(job.audio) == job.audio.uri


def test_to_body_round_trips() -> None:
    job = parse_job(body(formats=["vtt"], metadata={"k": "v"}))
    again = parse_job(job.to_body())
    assert again == job and again.job_id == job.job_id


# --- every error code ------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [b"", b"not json", b"{", b"\xff\xfe\x00", b"{'a': 1}"])
def test_malformed_message(payload: bytes) -> None:
    raises(MalformedMessage, "malformed_message", payload)


@pytest.mark.parametrize("payload", [b"[]", b"[1, 2]", b'"s3://fleet-audio/a.wav"', b"42", b"null", b"true"])
def test_not_an_object(payload: bytes) -> None:
    err = raises(MalformedMessage, "malformed_message", payload)
    assert "JSON object" in err.message


@pytest.mark.parametrize(
    ("payload", "where"),
    [
        (b"{}", "audio"),
        (body(extra_field=1), "extra_field"),
        (body(job_id="../etc/passwd"), "job_id"),
        (body(job_id=""), "job_id"),
        (body(job_id="-starts-with-dash"), "job_id"),
        (body(job_id="x" * 129), "job_id"),
        (body(job_id=5), "job_id"),
        (body(formats="json"), "formats"),
        (body(formats=[1]), "formats"),
        (body(options={"num_speakers": 0}), "options.num_speakers"),
        (body(options={"num_speakers": 33}), "options.num_speakers"),
        (body(options={"hotwords": ["w"] * 201}), "options.hotwords"),
        (body(options={"language": "x" * 17}), "options.language"),
        (body(options={"beam": 5}), "options.beam"),
        (body(metadata=[1]), "metadata"),
        (body(delete_source="maybe"), "delete_source"),
        (body(schema_version="one"), "schema_version"),
        (b'{"audio": "s3://fleet-audio/a.wav", "options": {"num_speakers": NaN}}', "options.num_speakers"),
        (body(options={"min_speakers": 0}), "options.min_speakers"),
        (body(options={"max_speakers": 33}), "options.max_speakers"),
        (body(options={"min_speakers": "two"}), "options.min_speakers"),
        (body(options={"channels": "stereo"}), "options.channels"),
        (body(options={"channels": None}), "options.channels"),
        (body(options={"num_speakers": 2, "min_speakers": 1}), "cannot be combined with min_speakers/max_speakers"),
        (body(options={"num_speakers": 2, "max_speakers": 3}), "num_speakers (an exact count)"),
        (body(options={"min_speakers": 4, "max_speakers": 3}), "min_speakers (4) is greater than max_speakers (3)"),
    ],
)
def test_schema_invalid(payload: bytes, where: str) -> None:
    err = raises(SchemaInvalid, "schema_invalid", payload)
    assert where in err.message


def test_body_too_large() -> None:
    big = body(metadata={"blob": "x" * jobs.MAX_BODY_BYTES})
    err = raises(SchemaInvalid, "schema_invalid", big)
    assert str(jobs.MAX_BODY_BYTES) in err.message


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_unsupported_schema_version(version: int) -> None:
    err = raises(UnsupportedSchemaVersion, "unsupported_schema_version", body(schema_version=version))
    assert str(version) in err.message


@pytest.mark.parametrize(
    "audio",
    [
        "fleet-audio/a.wav",
        "http://fleet-audio/a.wav",
        "s3:/fleet-audio/a.wav",
        "s3://fleet-audio",
        "s3://fleet-audio/",
        "s3://Fleet-Audio/a.wav",
        "s3://fl/a.wav",
        "s3://" + "b" * 64 + "/a.wav",
        "s3://bucket_name/a.wav",
        "s3://-bucket/a.wav",
        "s3://user@bucket/a.wav",
        "s3://bucket:9000/a.wav",
        "s3://fleet-audio?x/a.wav",
        "s3://fleet-audio#x/a.wav",
        " s3://fleet-audio/a.wav",
        "s3://fleet-audio/\ud800.wav",
        "s3://fleet-audio/" + "k" * 1025,
        {"bucket": "fleet-audio"},
        {"bucket": "fleet-audio", "key": ""},
        {"bucket": 1, "key": "a.wav"},
        {"key": "a.wav"},
        5,
        None,
        ["s3://fleet-audio/a.wav"],
    ],
)
def test_bad_s3_uri(audio: Any) -> None:
    raises(BadS3Uri, "bad_s3_uri", body(audio=audio))


@pytest.mark.parametrize("output", ["not-a-uri", "s3://Bad_Bucket/x", {"bucket": "x"}, 3])
def test_bad_output_uri(output: Any) -> None:
    raises(BadS3Uri, "bad_s3_uri", body(output=output))


@pytest.mark.parametrize(
    "prefix",
    ["/abs", "a/../b", "..", "../x", "a/./b", ".", "a//b", "a\\b", "a\x00b", "a/b/../../.."],
)
def test_output_prefix_invalid(prefix: str) -> None:
    raises(OutputPrefixInvalid, "output_prefix_invalid", body(output={"bucket": "fleet-results", "key": prefix}))


def test_output_prefix_invalid_in_uri_form() -> None:
    raises(OutputPrefixInvalid, "output_prefix_invalid", body(output="s3://fleet-results/a/../../b"))


@pytest.mark.parametrize("formats", [["pdf"], ["json", "docx"], ["srt", ""], ["json ", "mp3"]])
def test_unsupported_format(formats: list[str]) -> None:
    err = raises(UnsupportedFormat, "unsupported_format", body(formats=formats))
    assert "supported" in err.message


@pytest.mark.parametrize(
    ("cfg", "payload"),
    [
        (settings(allowed_buckets=["other"]), body()),
        (settings(allowed_buckets=["fleet-audio"]), body(output="s3://elsewhere/p")),
    ],
)
def test_bucket_not_allowed(cfg: Settings, payload: bytes) -> None:
    raises(BucketNotAllowed, "bucket_not_allowed", payload, cfg)


# --- allow-list -------------------------------------------------------------------------------------
def test_allow_list() -> None:
    open_cfg = settings(allowed_buckets=[])
    assert parse_job(body(output="s3://anywhere/p"), open_cfg).output == S3Location(bucket="anywhere", key="p")
    closed = settings(allowed_buckets=["fleet-audio", "archive"], results_bucket="fleet-results")
    assert parse_job(body(), closed).audio.bucket == "fleet-audio"
    assert parse_job(body(audio="s3://archive/x.mp3", output="s3://archive/out"), closed)
    assert parse_job(body(output="s3://fleet-results/custom"), closed)  # the results bucket is always allowed
    assert parse_job(body(audio="s3://not-listed/x.wav")).audio.bucket == "not-listed"  # no settings: no check


# --- output location and prefix safety -------------------------------------------------------------
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("", ""), ("a", "a"), ("a/b/", "a/b"), ("a/b", "a/b"), ("a..b/c.d", "a..b/c.d"), ("日本/語", "日本/語")],
)
def test_safe_prefix_accepts(prefix: str, expected: str) -> None:
    assert safe_prefix(prefix) == expected


def test_output_location() -> None:
    cfg = settings(results_bucket="fleet-results", results_prefix="results")
    job = parse_job(body(job_id="abc"))
    assert job.output_location(cfg) == S3Location(bucket="fleet-results", key="results/abc")
    assert job.output_location(settings(results_prefix="")) == S3Location(bucket="fleet-results", key="abc")
    assert job.output_location(settings(results_prefix="deep/er/")).key == "deep/er/abc"
    with pytest.raises(OutputPrefixInvalid):
        job.output_location(settings(results_prefix="../escape"))
    explicit = parse_job(body(job_id="abc", output="s3://mine/p/q"))
    assert explicit.output_location(cfg) == S3Location(bucket="mine", key="p/q")
    root = parse_job(body(output="s3://mine"))
    assert root.output_location(cfg) == S3Location(bucket="mine", key="")


def test_effective_formats() -> None:
    cfg = Settings(outputs={"default_formats": ["json", "vtt"]})
    assert parse_job(body()).effective_formats(cfg) == ["json", "vtt"]
    assert parse_job(body(formats=["txt"])).effective_formats(cfg) == ["txt"]


# --- deterministic ids -------------------------------------------------------------------------------
def test_derived_id_is_stable_across_runs_and_versions() -> None:
    """Ids are idempotency keys: a change here re-runs every job ever submitted without one.

    The literal pins the canonical form (sha256 of the sorted-key JSON dump minus job_id/metadata);
    update it only together with a note in the changelog.
    """
    job = parse_job(b'{"audio": "s3://fleet-audio/calls/2026/a.wav", "formats": ["srt"]}')
    assert job.job_id == derived_job_id(job) == "j-bfbb7f4edd852e10c364c9ef1a605d1c"


def test_options_added_later_do_not_change_ids_or_hashes_at_their_defaults() -> None:
    """channels / min_speakers / max_speakers came after the first release: a body without them
    keeps its derived id, options_hash and result-reuse key (else every such job would re-run)."""
    from funasr_fleet.manifest import options_hash

    spelled = parse_job(body(options={"channels": "auto", "min_speakers": None, "max_speakers": None}))
    assert spelled.job_id == parse_job(body()).job_id
    dump = parse_job(body()).options.model_dump(mode="json")
    assert dump == {"hotwords": [], "diarize": True, "num_speakers": None, "language": None}
    assert options_hash(dump, ["json"]) == "359698f48b64da8a0a26a6d8f7aa9f30"  # the value before these options
    split = parse_job(body(options={"channels": "split", "min_speakers": 2, "max_speakers": 4}))
    assert split.options.model_dump(mode="json") == {**dump, "channels": "split", "min_speakers": 2, "max_speakers": 4}
    assert parse_job(split.to_body()) == split


def test_options_map_to_the_engine() -> None:
    from funasr_fleet.engine.transcript import TranscribeOptions

    job = parse_job(body(options={"hotwords": ["FunASR"], "diarize": False, "language": "zh", "min_speakers": 2,
                                  "max_speakers": 5, "channels": "split"}))  # fmt: skip
    assert job.options.transcribe_options() == TranscribeOptions(
        hotwords=("FunASR",), diarize=False, language="zh", min_speakers=2, max_speakers=5, channels="split"
    )
    assert parse_job(body()).options.transcribe_options() == TranscribeOptions()
    assert parse_job(body(options={"num_speakers": 3})).options.transcribe_options().num_speakers == 3
    exact = parse_job(body(options={"min_speakers": 2, "max_speakers": 2})).options  # a range of one is fine
    assert (exact.min_speakers, exact.max_speakers) == (2, 2)


def test_derived_id_ignores_key_order_metadata_and_format_spelling() -> None:
    a = parse_job(b'{"audio": "s3://fleet-audio/a.wav", "formats": ["srt", "json"], "metadata": {"x": 1}}')
    b = parse_job(b'{"formats": ["SRT", " json"], "audio": {"bucket": "fleet-audio", "key": "a.wav"}}')
    assert a.job_id == b.job_id
    assert parse_job(body(options={"diarize": True})).job_id == parse_job(body()).job_id  # defaults spelled out


@pytest.mark.parametrize(
    "changed",
    [
        {"audio": "s3://fleet-audio/b.wav"},
        {"formats": ["vtt"]},
        {"formats": ["json", "srt"]},
        {"options": {"diarize": False}},
        {"options": {"hotwords": ["x"]}},
        {"options": {"channels": "split"}},
        {"options": {"channels": "mix"}},
        {"options": {"min_speakers": 2}},
        {"options": {"max_speakers": 3}},
        {"output": "s3://fleet-results/p"},
        {"delete_source": True},
    ],
)
def test_derived_id_changes_with_what_matters(changed: dict[str, Any]) -> None:
    assert parse_job(body(**changed)).job_id != parse_job(body()).job_id


def test_explicit_id_is_kept() -> None:
    assert parse_job(body(job_id="A1")).job_id == "A1"


def test_job_id_for_object() -> None:
    a = job_id_for_object("inbox", "a.wav", '"0123abcd"')
    assert a == job_id_for_object("inbox", "a.wav", "0123abcd")  # S3 quotes ETags; MinIO events do not
    assert re.fullmatch(r"s3-[0-9a-f]{32}", a)
    assert a != job_id_for_object("inbox", "a.wav", "0123abce")  # a new version is a new job
    assert a != job_id_for_object("inbox2", "a.wav", "0123abcd")
    assert job_id_for_object("ab", "c", "e") != job_id_for_object("a", "bc", "e")  # no ambiguity in joins
    assert jobs.JOB_ID_RE.match(a), "object ids must be valid job ids"


# --- small helpers -----------------------------------------------------------------------------------
def test_parse_s3_uri_forms() -> None:
    assert parse_s3_uri("s3://bkt/a/b.wav") == S3Location(bucket="bkt", key="a/b.wav")
    assert parse_s3_uri({"bucket": "bkt", "prefix": "p/"}, allow_empty_key=True) == S3Location(bucket="bkt", key="p/")
    loc = S3Location(bucket="bkt", key="k")
    assert parse_s3_uri(loc) == loc
    assert parse_s3_uri("s3://bkt", allow_empty_key=True).key == ""


def test_message_kind() -> None:
    assert message_kind({"audio": AUDIO}) == "job"
    assert message_kind({"Records": []}) == "s3-event"
    assert message_kind({"EventName": "s3:ObjectCreated:Put", "Key": "b/k"}) == "s3-event"


# --- callback ----------------------------------------------------------------------------------------
def test_callback_does_not_change_the_derived_id() -> None:
    plain = parse_job(b'{"audio": "s3://fleet-audio/calls/2026/a.wav", "formats": ["srt"]}')
    hooked = parse_job(
        b'{"audio": "s3://fleet-audio/calls/2026/a.wav", "formats": ["srt"], "callback": "https://hooks.example.com/x"}'
    )
    assert plain.job_id == hooked.job_id == "j-bfbb7f4edd852e10c364c9ef1a605d1c"
    assert hooked.callback == "https://hooks.example.com/x"
    assert b"callback" not in plain.to_body() and b"callback" in hooked.to_body()


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "hooks.example.com/x",
        "https://user:pw@hooks.example.com/x",
        "https:///nohost",
        "https://hooks.example.com/x#frag",
        "https://hooks.example.com/a b",
        "https://0x7f.1/x",
        "https://hooks.example.com:99999/x",
        "https://" + "a" * 2100 + ".com/",
        "",
        "javascript:alert(1)",
    ],
)
def test_bad_callback_is_a_permanent_error_at_validation(url: str) -> None:
    from funasr_fleet.errors import CallbackInvalid

    with pytest.raises(CallbackInvalid) as err:
        parse_job(body(callback=url))
    assert err.value.code == "callback_invalid" and err.value.permanent


def test_callback_type_must_be_a_string() -> None:
    with pytest.raises(FleetError):
        parse_job(body(callback=42))


@pytest.mark.parametrize(
    ("url", "settings_kw", "ok"),
    [
        ("https://hooks.example.com/x", {}, True),
        ("https://127.0.0.1/x", {}, False),
        ("https://[::1]/x", {}, False),
        ("https://10.0.0.5/x", {}, False),
        ("https://169.254.169.254/latest/meta-data", {}, False),
        ("https://localhost/x", {}, False),
        ("https://127.0.0.1/x", {"allow_private_networks": True}, True),
        ("https://hooks.example.com/x", {"allowed_hosts": ["*.example.com"]}, True),
        ("https://example.com/x", {"allowed_hosts": ["*.example.com"]}, False),
        ("https://evil.com/x", {"allowed_hosts": ["hooks.example.com"]}, False),
    ],
)
def test_callback_allow_list_and_addresses_with_settings(url: str, settings_kw: dict[str, Any], ok: bool) -> None:
    from funasr_fleet.errors import CallbackNotAllowed

    cfg = Settings(webhooks=settings_kw)
    if ok:
        assert parse_job(body(callback=url), cfg).callback == url
    else:
        with pytest.raises(CallbackNotAllowed) as err:
            parse_job(body(callback=url), cfg)
        assert err.value.code == "callback_not_allowed" and err.value.permanent
