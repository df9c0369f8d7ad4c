"""Storage against a real SeaweedFS server: every method, multipart, error mapping, outages."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from funasr_fleet.errors import (
    EmptyObject,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
)
from funasr_fleet.settings import Settings
from funasr_fleet.storage import Storage
from funasr_fleet.streaming import PART_SIZE
from tests.fixtures.services import S3TestServer, fleet_env


def test_put_head_get_exists_delete(storage: Storage, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    info = storage.put_bytes(bucket, "a/b c/ü.txt", "héllo", content_type="text/plain", metadata={"job": "j1"})
    assert info.size == len("héllo".encode())
    head = storage.head(bucket, "a/b c/ü.txt")
    assert head.size == info.size
    assert head.etag == info.etag == hashlib.md5("héllo".encode()).hexdigest()
    assert head.metadata == {"job": "j1"}
    assert head.last_modified is not None
    assert storage.get_bytes(bucket, "a/b c/ü.txt") == "héllo".encode()
    assert storage.exists(bucket, "a/b c/ü.txt")
    storage.delete(bucket, "a/b c/ü.txt")
    assert not storage.exists(bucket, "a/b c/ü.txt")
    storage.delete(bucket, "a/b c/ü.txt")  # deleting a missing key is fine


def test_json_roundtrip_and_missing(storage: Storage, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    assert storage.get_json(bucket, "m/manifest.json") is None
    storage.put_json(bucket, "m/manifest.json", {"status": "succeeded", "text": "你好"})
    assert storage.get_json(bucket, "m/manifest.json") == {"status": "succeeded", "text": "你好"}
    assert storage.head(bucket, "m/manifest.json").size > 0
    storage.put_bytes(bucket, "m/list.json", b"[1, 2]", content_type="application/json")
    with pytest.raises(StorageError) as err:
        storage.get_json(bucket, "m/list.json")
    assert err.value.code == "storage_invalid_json"


def test_download_streams_and_hashes(storage: Storage, make_bucket: Callable[..., str], tmp_path: Path) -> None:
    bucket = make_bucket()
    data = os.urandom(3 * 1024 * 1024 + 17)
    storage.put_bytes(bucket, "in/audio.wav", data, content_type="audio/wav")
    got = storage.download(bucket, "in/audio.wav", tmp_path / "x" / "audio.wav", max_bytes=len(data))
    assert got.path.read_bytes() == data
    assert got.sha256 == hashlib.sha256(data).hexdigest()
    assert got.info.size == len(data)
    assert got.info.etag


def test_download_limits(storage: Storage, make_bucket: Callable[..., str], tmp_path: Path) -> None:
    bucket = make_bucket()
    storage.put_bytes(bucket, "big.wav", b"x" * 1000)
    storage.put_bytes(bucket, "empty.wav", b"")
    dest = tmp_path / "d.wav"
    with pytest.raises(ObjectTooLarge) as too_large:
        storage.download(bucket, "big.wav", dest, max_bytes=999)
    assert too_large.value.code == "object_too_large" and too_large.value.permanent
    assert not dest.exists()
    with pytest.raises(EmptyObject) as empty:
        storage.download(bucket, "empty.wav", dest, max_bytes=10)
    assert empty.value.code == "empty_object"
    with pytest.raises(ObjectNotFound):
        storage.download(bucket, "nope.wav", dest, max_bytes=10)
    assert not dest.exists()


def _chunks(total: int, piece: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        yield bytes([sent % 251]) * n
        sent += n


def test_upload_chunks_small_and_text(storage: Storage, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    info = storage.upload_chunks(
        bucket,
        "out/t.srt",
        ["1\n", "00:00:00,000 --> 00:00:01,000\n", "你好\n"],
        content_type="application/x-subrip",
        metadata={"job-id": "j"},
    )
    body = storage.get_bytes(bucket, "out/t.srt")
    assert body == "1\n00:00:00,000 --> 00:00:01,000\n你好\n".encode()
    assert info.size == len(body)
    assert storage.head(bucket, "out/t.srt").metadata == {"job-id": "j"}
    empty = storage.upload_chunks(bucket, "out/empty.txt", [], content_type="text/plain")
    assert empty.size == 0 and storage.get_bytes(bucket, "out/empty.txt") == b""


def test_upload_chunks_multipart(storage: Storage, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    total = 2 * PART_SIZE + 12345
    expected = hashlib.sha256(b"".join(_chunks(total, 700_001))).hexdigest()
    info = storage.upload_chunks(
        bucket, "out/big.bin", _chunks(total, 700_001), content_type="application/octet-stream"
    )
    assert info.size == total
    assert "-" in info.etag  # a multipart etag: md5-of-md5s + "-<parts>"
    assert storage.head(bucket, "out/big.bin").size == total
    assert hashlib.sha256(storage.get_bytes(bucket, "out/big.bin")).hexdigest() == expected


def test_upload_chunks_aborts_on_failure(storage: Storage, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()

    def failing() -> Iterator[bytes]:
        yield from _chunks(PART_SIZE + 10, 1 << 20)
        raise RuntimeError("writer broke")

    with pytest.raises(RuntimeError, match="writer broke"):
        storage.upload_chunks(bucket, "out/broken.bin", failing(), content_type="application/octet-stream")
    assert not storage.exists(bucket, "out/broken.bin")


def test_copy_list_delete_prefix(storage: Storage, make_bucket: Callable[..., str]) -> None:
    src, dst = make_bucket(), make_bucket()
    for key in ("p/1.json", "p/2.json", "p/sub/3.json", "q/4.json"):
        storage.put_bytes(src, key, key.encode())
    copied = storage.copy(src, "p/1.json", dst, "r/1.json")
    assert copied.size == len(b"p/1.json")
    assert storage.get_bytes(dst, "r/1.json") == b"p/1.json"
    assert sorted(o.key for o in storage.list_objects(src, "p/")) == ["p/1.json", "p/2.json", "p/sub/3.json"]
    assert [o.size for o in storage.list_objects(src, "q/")] == [len(b"q/4.json")]
    assert list(storage.list_objects(src, "zzz/")) == []
    assert storage.delete_prefix(src, "p/") == 3
    assert [o.key for o in storage.list_objects(src, "")] == ["q/4.json"]
    with pytest.raises(ObjectNotFound):
        storage.copy(src, "p/1.json", dst, "r/x.json")


def test_list_many_pages(storage: Storage, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    # list_objects_v2 pages at 1000 keys; a few more than that exercises the paginator.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: storage.put_bytes(bucket, f"k/{i:05d}", b"x"), range(1003)))
    assert sum(1 for _ in storage.list_objects(bucket, "k/")) == 1003
    assert storage.delete_prefix(bucket, "k/") == 1003


def test_missing_bucket_and_key(storage: Storage, unique: str) -> None:
    with pytest.raises(ObjectNotFound) as err:
        storage.head(f"no-such-{unique}", "x")
    assert err.value.code == "object_not_found" and err.value.permanent
    with pytest.raises(ObjectNotFound):
        storage.get_bytes(f"no-such-{unique}", "x")
    assert storage.get_json(f"no-such-{unique}", "x") is None
    with pytest.raises(ObjectNotFound):
        list(storage.list_objects(f"no-such-{unique}", ""))


def test_ensure_bucket_idempotent(storage: Storage, unique: str) -> None:
    name = f"t-{unique}-ensure"
    try:
        storage.ensure_bucket(name)
        storage.ensure_bucket(name)
        assert storage.bucket_exists(name)
    finally:
        storage.delete_bucket(name)
    assert not storage.bucket_exists(name)
    storage.delete_bucket(name)  # already gone: fine


def test_wrong_credentials_are_permanent(s3_server: S3TestServer, unique: str) -> None:
    bad = Storage(s3_server.settings(secret_key="not-the-secret"))
    with pytest.raises(StorageError) as err:
        bad.put_bytes(f"t-{unique}", "k", b"x")
    assert err.value.code == "storage_access_denied"
    assert err.value.permanent
    assert "not-the-secret" not in str(err.value)
    assert "not-the-secret" not in repr(bad)


def test_outage_is_transient_and_recovers(own_s3_server: S3TestServer, tmp_path: Path, unique: str) -> None:
    store = Storage(own_s3_server.settings(connect_timeout_s=1.0, read_timeout_s=2.0, max_attempts=1))
    bucket = f"t-{unique}"
    store.ensure_bucket(bucket)
    store.put_bytes(bucket, "k.wav", b"abc")
    own_s3_server.stop()
    for call in (
        lambda: store.head(bucket, "k.wav"),
        lambda: store.get_bytes(bucket, "k.wav"),
        lambda: store.put_bytes(bucket, "k2", b"x"),
        lambda: store.download(bucket, "k.wav", tmp_path / "k.wav", max_bytes=10),
        lambda: list(store.list_objects(bucket, "")),
        lambda: store.upload_chunks(bucket, "k3", [b"x"], content_type="text/plain"),
    ):
        with pytest.raises(StorageUnavailable) as err:
            call()
        assert err.value.code == "storage_unavailable" and not err.value.permanent
    own_s3_server.restart()
    # The first write after a restart can be slow (volume re-registration): normal timeouts/retries.
    patient = Storage(own_s3_server.settings())
    assert patient.get_bytes(bucket, "k.wav") == b"abc"
    patient.put_bytes(bucket, "k2", b"x")
    assert patient.exists(bucket, "k2")


def test_fleet_settings_and_env(fleet_settings: Callable[..., Settings], storage: Storage, unique: str) -> None:
    settings = fleet_settings(consumer={"retry_max_attempts": 2}, with_engine=False)
    assert settings.amqp.jobs_queue.startswith(f"t-{unique}.")
    assert settings.amqp.events_exchange.startswith(f"t-{unique}.")
    assert storage.bucket_exists(settings.s3.results_bucket)
    assert storage.bucket_exists(settings.s3.inbox_bucket)
    assert settings.consumer.retry_max_attempts == 2
    env = fleet_env(settings)
    assert env["FLEET_S3__SECRET_KEY"] == settings.s3.credential("secret_key")
    assert env["FLEET_AMQP__JOBS_QUEUE"] == settings.amqp.jobs_queue
    # The env round-trips into an equal Settings (what a consumer subprocess would see).
    saved = {k: v for k, v in os.environ.items() if k.startswith("FLEET_")}
    try:
        for k in saved:
            del os.environ[k]
        os.environ.update(env)
        again = Settings()
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)
    assert again.model_dump(mode="json") == settings.model_dump(mode="json")
    assert again.s3.credential("secret_key") == settings.s3.credential("secret_key")


def test_conditional_put_and_upload_file(storage: Storage, make_bucket: Callable[..., str], tmp_path: Path) -> None:
    from funasr_fleet.storage import WriteConflict

    bucket = make_bucket()
    first = storage.put_json(bucket, "_fleet/m.json", {"n": 1}, if_none_match=True)
    with pytest.raises(WriteConflict) as err:
        storage.put_json(bucket, "_fleet/m.json", {"n": 2}, if_none_match=True)
    assert err.value.code == "storage_write_conflict"
    with pytest.raises(WriteConflict):
        storage.put_json(bucket, "_fleet/m.json", {"n": 3}, if_match="0" * 32)
    storage.put_json(bucket, "_fleet/m.json", {"n": 4}, if_match=first.etag)
    assert storage.get_json(bucket, "_fleet/m.json") == {"n": 4}

    local = tmp_path / "clip.wav"
    local.write_bytes(b"RIFF" + os.urandom(5000))
    info = storage.upload_file(local, bucket, "in/clip.wav")
    assert info.size == 5004
    assert storage.get_bytes(bucket, "in/clip.wav") == local.read_bytes()


def test_seaweed_detached_up_status_down(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "FLEET_S3__ACCESS_KEY": "AKDETACHED", "FLEET_S3__SECRET_KEY": "detached-secret"}
    cmd = [sys.executable, "-m", "funasr_fleet.seaweed"]
    d = str(tmp_path / "s3")
    try:
        up = subprocess.run([*cmd, "up", "--dir", d], env=env, capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        url = up.stdout.strip()
        assert url.startswith("http://127.0.0.1:")
        status = subprocess.run([*cmd, "status", "--dir", d], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and status.stdout.strip() == url  # survived its launcher
        assert "detached-secret" not in (tmp_path / "s3" / "fleet-seaweed.json").read_text()
    finally:
        down = subprocess.run([*cmd, "down", "--dir", d], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    gone = subprocess.run([*cmd, "status", "--dir", d], capture_output=True, text=True, timeout=30)
    assert gone.returncode == 1 and gone.stdout.strip() == "stopped"


@pytest.mark.parametrize(
    ("status", "code", "expected", "permanent"),
    [
        (500, "InternalError", "storage_unavailable", False),
        (503, "SlowDown", "storage_unavailable", False),
        (503, "ServiceUnavailable", "storage_unavailable", False),
        (400, "RequestTimeout", "storage_unavailable", False),
        (404, "NoSuchKey", "object_not_found", True),
        (404, "NoSuchBucket", "object_not_found", True),
        (403, "AccessDenied", "storage_access_denied", True),
        (403, "SignatureDoesNotMatch", "storage_access_denied", True),
        (400, "InvalidArgument", "storage_request_failed", True),
    ],
)
def test_error_mapping_table(status: int, code: str, expected: str, permanent: bool) -> None:
    """The mapping for answers a healthy test server never gives (5xx, throttling)."""
    from botocore.exceptions import ClientError

    from funasr_fleet.s3errors import translate

    exc = ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject"
    )
    mapped = translate(exc, op="get", bucket="b", key="k")
    assert (mapped.code, mapped.permanent) == (expected, permanent)
