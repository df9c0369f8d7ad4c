"""Every key S3 accepts can be named: ``s3://bucket/key`` means everything after the bucket is the key,
literally (as the AWS CLI reads it), and every URI the fleet writes parses back to exactly its key.

A table of awkward keys goes through the pure paths (URIs, job bodies, MinIO's and AWS's event
encodings, output prefixes, RTTM ids), then a subset through the real S3 server and a real consumer:
``Client.submit``, ``funasr-fleet submit``, and a MinIO-format bucket notification.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pika
import pytest

from funasr_fleet import intake
from funasr_fleet.jobs import JobRequest, parse_job
from funasr_fleet.keys import join_key
from funasr_fleet.manifest import manifest_key
from funasr_fleet.outputs import rttm_file_id
from funasr_fleet.s3uri import S3Location, parse_s3_uri
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage

AWKWARD_KEYS = [
    "calls/take#2 (final)?.wav",
    "calls/#hash-first.wav",
    "calls/q?x=1&y=2.wav",
    "calls/a+b.wav",
    "calls/a b  c.wav",
    "calls/100%.wav",
    "calls/%2F-and-%20-literal.wav",
    "calls/%E4%BC%9A-looks-encoded.wav",
    "calls/ leading and trailing .wav ",
    "会议/录音 一.wav",
    "émoji/🎙️ take.wav",
    "calls/semi;colon,comma=eq@at$dollar!.wav",
    "calls/quote'\"back`tick.wav",
    "calls/brackets[{}]<>|^.wav",
    "calls/tilde~star*.wav",
    "calls/tab\tnew\nline\rcr.wav",
    "calls//double slash.wav",
    "calls/./dot/../up.wav",
    "calls/back\\slash.wav",
    "/leading-slash.wav",
    "calls/nbsp\u00a0and\u2028ls.wav",
    "s3://bucket/nested-uri.wav",
    "k" * 1020 + ".wav",
]

# (encoded as in a record, key) written out by hand: MinIO (Go url.QueryEscape: "/" is %2F) and AWS
# (form encoding, "/" kept) for the same keys.
EVENT_ENCODINGS = [
    ("calls%2Ftake%232+%28final%29%3F.wav", "calls/take#2 (final)?.wav"),  # MinIO
    ("calls/take%232+%28final%29%3F.wav", "calls/take#2 (final)?.wav"),  # AWS
    ("calls%2Fa%2Bb.wav", "calls/a+b.wav"),
    ("calls/a%2Bb.wav", "calls/a+b.wav"),
    ("calls%2F100%25.wav", "calls/100%.wav"),
    ("calls%2F%252F-and-%2520-literal.wav", "calls/%2F-and-%20-literal.wav"),
    ("calls%2Fq%3Fx%3D1%26y%3D2.wav", "calls/q?x=1&y=2.wav"),
    ("%E4%BC%9A%E8%AE%AE%2F%E5%BD%95%E9%9F%B3+%E4%B8%80.wav", "会议/录音 一.wav"),
    ("%E4%BC%9A%E8%AE%AE/%E5%BD%95%E9%9F%B3+%E4%B8%80.wav", "会议/录音 一.wav"),
    ("calls%2F+lead+%2B+trail++.wav", "calls/ lead + trail  .wav"),
    ("calls%2Ftab%09new%0Aline%0Dcr.wav", "calls/tab\tnew\nline\rcr.wav"),
    ("calls%2F%2Fdouble+slash.wav", "calls//double slash.wav"),
]


def _audio_key(key: str) -> str:
    """The key with an audio suffix (the intake filter), unchanged when it has one."""
    return key if key.lower().rstrip().endswith(".wav") and not key.endswith(" ") else key + ".wav"


def settings_for() -> Settings:
    return Settings(s3={"inbox_bucket": "inbox", "results_bucket": "results", "results_prefix": "results"})


def record_body(bucket: str, encoded_key: str, etag: str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9") -> dict[str, Any]:
    return {
        "EventName": "s3:ObjectCreated:Put",
        "Key": f"{bucket}/{encoded_key}",
        "Records": [
            {
                "eventName": "s3:ObjectCreated:Put",
                "s3": {"bucket": {"name": bucket}, "object": {"key": encoded_key, "size": 10, "eTag": etag}},
            }
        ],
    }


# --- pure ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_uri_round_trip(key: str) -> None:
    loc = S3Location(bucket="fleet-inbox", key=key)
    assert loc.uri == f"s3://fleet-inbox/{key}"
    assert parse_s3_uri(loc.uri) == loc
    assert parse_s3_uri(f"S3://fleet-inbox/{key}") == loc  # the scheme is case-insensitive


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_job_body_round_trip(key: str) -> None:
    uri = f"s3://fleet-inbox/{key}"
    job = parse_job(json.dumps({"audio": uri}).encode())
    assert job.audio.key == key and job.audio.uri == uri
    again = parse_job(job.to_body())
    assert again.audio == job.audio and again.job_id == job.job_id


def test_the_issue_example_is_accepted() -> None:
    job = parse_job(json.dumps({"audio": "s3://fleet-inbox/calls/take#2 (final)?.wav"}).encode())
    assert job.audio == S3Location(bucket="fleet-inbox", key="calls/take#2 (final)?.wav")


@pytest.mark.parametrize("key", AWKWARD_KEYS)
@pytest.mark.parametrize("encoding", ["minio", "aws"])
def test_event_encodings_decode_to_the_key(key: str, encoding: str) -> None:
    key = _audio_key(key)
    encoded = quote_plus(key, safe="" if encoding == "minio" else "/")
    job = _one(intake.parse_notification(record_body("inbox", encoded), settings_for()))
    assert job.audio.key == key
    assert parse_s3_uri(job.audio.uri) == job.audio
    assert job.output is not None and parse_s3_uri(job.output.uri, allow_empty_key=True) == job.output


@pytest.mark.parametrize(("encoded", "key"), EVENT_ENCODINGS)
def test_hand_written_event_encodings(encoded: str, key: str) -> None:
    job = _one(intake.parse_notification(record_body("inbox", encoded), settings_for()))
    assert job.audio.key == key


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_output_uris_parse_back(key: str) -> None:
    """What the consumer writes into events and manifests: ``s3://<results>/<prefix>/transcript.<ext>``."""
    settings = settings_for()
    prefix = intake.output_prefix_for(settings, key)
    for ext in ("json", "srt", "rttm"):
        key_out = join_key(prefix, f"transcript.{ext}")
        assert parse_s3_uri(f"s3://results/{key_out}").key == key_out
    assert parse_s3_uri(f"s3://results/{manifest_key(prefix)}").key == manifest_key(prefix)
    assert parse_s3_uri(f"s3://results/{prefix}", allow_empty_key=True).key == prefix


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_rttm_file_id_is_one_field(key: str) -> None:
    file_id = rttm_file_id(f"s3://fleet-inbox/{key}")
    assert file_id and not any(c.isspace() for c in file_id)


def _one(result: Any) -> JobRequest:
    assert isinstance(result, list) and len(result) == 1, result
    return result[0]


# --- real S3, real consumer ------------------------------------------------------------------------
SUBMIT_KEYS = ["calls/take#2 (final)?.wav", "calls/100% + more.wav", "calls/q?x=1&y=%2F.wav", "会议/录音 一#1.wav"]
EVENT_KEYS = ["drops/a+b c#d?.wav", "drops/%41 literal.wav", "émoji/🎙️ take.wav", "drops/semi;colon,eq=@$!'.wav"]
CLI_KEY = "cli/take#2 (final)?.wav"
CUSTOM_OUTPUT = "custom #1?/a+b%20c"


def _check_outputs(storage: Storage, data: Any, audio: S3Location, output_prefix: S3Location) -> None:
    assert parse_s3_uri(data.input) == audio
    outputs = [parse_s3_uri(u) for u in data.outputs]
    assert outputs[-1] == S3Location(bucket=output_prefix.bucket, key=manifest_key(output_prefix.key))
    assert parse_s3_uri(data.output_prefix, allow_empty_key=True) == output_prefix
    for loc in outputs:
        assert loc.bucket == output_prefix.bucket and loc.key.startswith(output_prefix.key + "/")
        assert storage.head(loc.bucket, loc.key).size > 0
    manifest = storage.get_json(outputs[-1].bucket, outputs[-1].key)
    assert manifest is not None and manifest["input"]["key"] == audio.key
    assert [parse_s3_uri(u) for u in manifest["outputs"]] == outputs


def test_awkward_keys_end_to_end(
    fleet_settings: Callable[..., Settings],
    engine_env: dict[str, str],
    storage: Storage,
    audio_dir: Path,
    tmp_path: Path,
) -> None:
    from funasr_fleet.client import Client
    from funasr_fleet.waiting import EventWatcher
    from tests.fixtures.services import subprocess_env
    from tests.test_consumer import consumer_thread

    s = fleet_settings(
        with_engine=True,
        consumer={"heartbeat_file": str(tmp_path / "hb.json"), "retry_base_delay_s": 0.5, "retry_max_attempts": 2},
        intake={"formats": ["json", "srt", "rttm"]},
    )
    inbox, results = s.s3.inbox_bucket, s.s3.results_bucket
    wav = (audio_dir / "dialogue.wav").read_bytes()
    etags = {}
    for key in [*SUBMIT_KEYS, *EVENT_KEYS, CLI_KEY]:
        info = storage.put_bytes(inbox, key, wav, content_type="audio/wav")
        etags[key] = info.etag
        assert storage.head(inbox, key).key == key

    with consumer_thread(s), Client(s) as client, EventWatcher(s) as watcher:
        # 1. Client.submit with s3:// URIs (default output prefix; one with an awkward explicit prefix)
        submitted = {key: client.submit(f"s3://{inbox}/{key}", formats=["json", "rttm"]) for key in SUBMIT_KEYS}
        custom = client.submit(
            f"s3://{inbox}/{SUBMIT_KEYS[0]}", output=f"s3://{results}/{CUSTOM_OUTPUT}", formats=["srt"]
        )
        # 2. one MinIO-format notification announcing every EVENT_KEY (form-encoded, "/" as %2F)
        note = {"EventName": "s3:ObjectCreated:Put", "Records": []}
        for key in EVENT_KEYS:
            note["Records"] += record_body(inbox, quote_plus(key, safe=""), etags[key])["Records"]
        jobs = intake.parse_notification(note, s)
        assert isinstance(jobs, list) and [j.audio.key for j in jobs] == EVENT_KEYS
        conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish(s.amqp.jobs_exchange, s.amqp.intake_routing_key, json.dumps(note).encode(),
                             pika.BasicProperties(content_type="application/json", delivery_mode=2), mandatory=True)  # fmt: skip
        finally:
            conn.close()
        # 3. the CLI, exactly as the issue typed it
        cli = subprocess.run(
            [sys.executable, "-m", "funasr_fleet", "submit", f"s3://{inbox}/{CLI_KEY}", "--wait", "--timeout", "300",
             "--no-progress", "--formats", "json"],
            env=subprocess_env(s), capture_output=True, text=True, timeout=360, check=False,
        )  # fmt: skip

        for key, job_id in submitted.items():
            result = client.wait(job_id, timeout_s=300)
            assert result.ok, (key, result.error_code, result.error_message)
            _check_outputs(storage, result.data, S3Location(bucket=inbox, key=key),
                           S3Location(bucket=results, key=f"{s.s3.results_prefix}/{job_id}"))  # fmt: skip
        result = client.wait(custom, timeout_s=300)
        assert result.ok, (result.error_code, result.error_message)
        _check_outputs(storage, result.data, S3Location(bucket=inbox, key=SUBMIT_KEYS[0]),
                       S3Location(bucket=results, key=CUSTOM_OUTPUT))  # fmt: skip
        for job in jobs:
            result = watcher.wait(str(job.job_id), timeout_s=300)
            assert result.ok, (job.audio.key, result.error_code, result.error_message)
            assert job.output is not None
            _check_outputs(storage, result.data, job.audio, job.output)
            assert job.output.key == f"{s.s3.results_prefix}/{job.audio.key}"
            rttm = next(u for u in result.outputs if u.endswith(".rttm"))
            lines = storage.get_bytes(*_split(rttm)).decode().splitlines()
            assert all(line.split()[1] == rttm_file_id(job.audio.uri) for line in lines)

    assert cli.returncode == 0, cli.stderr[-3000:]
    lines = cli.stdout.strip().splitlines()
    uris = [parse_s3_uri(line) for line in lines[1:]]  # first line: the job id
    assert uris and uris[-1].key.endswith("/manifest.json")
    manifest = storage.get_json(uris[-1].bucket, uris[-1].key)
    assert manifest is not None and manifest["input"] == {**manifest["input"], "bucket": inbox, "key": CLI_KEY}
    assert manifest["job_id"] == lines[0]


def _split(uri: str) -> tuple[str, str]:
    loc = parse_s3_uri(uri)
    return loc.bucket, loc.key


def test_long_keys_get_a_bounded_output_prefix() -> None:
    settings = settings_for()
    longest = "k" * 1020 + ".wav"  # S3's limit is 1,024 bytes
    prefix = intake.output_prefix_for(settings, longest)
    assert prefix.startswith(f"results/{intake.LONG_KEYS_DIR}/") and prefix == intake.output_prefix_for(
        settings, longest
    )
    assert len(join_key(prefix, "transcript.json").encode()) <= 1024
    assert intake.output_prefix_for(settings, longest[:-5] + "x.wav") != prefix
    mirrored = "é" * 400 + ".wav"  # 804 bytes: still mirrored
    assert intake.output_prefix_for(settings, mirrored) == f"results/{mirrored}"
