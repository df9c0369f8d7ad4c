"""How an S3 failure becomes a fleet error, so callers decide retry vs dead-letter by ``permanent`` alone.

Missing key/bucket → ObjectNotFound; 5xx, throttling, timeouts, refused/reset connections →
StorageUnavailable (transient); access denied, bad keys and other 4xx → StorageError (permanent).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import urllib3.exceptions
from botocore.exceptions import BotoCoreError, ClientError

from funasr_fleet.errors import ObjectNotFound, StorageError, StorageUnavailable

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion"})
_TRANSIENT = frozenset(
    {
        "500",
        "502",
        "503",
        "504",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "OperationAborted",
    }
)
_DENIED = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidToken",
        "ExpiredToken",
    }
)


def translate(exc: BaseException, *, op: str, bucket: str, key: str | None = None) -> StorageError:
    """Map a boto/urllib3/socket failure onto the fleet's error tree."""
    where = f"s3://{bucket}/{key}" if key is not None else f"s3://{bucket}"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND or status == 404:
            what = "bucket" if code == "NoSuchBucket" else "object"
            return ObjectNotFound(f"{op}: {what} not found: {where}")
        if code in _TRANSIENT or status >= 500 or status == 429:
            return StorageUnavailable(f"{op} {where}: S3 answered {status} {code}")
        if code in _DENIED or status == 403:
            return StorageError(f"{op} {where}: access denied ({code or status})", code="storage_access_denied")
        if code == "PreconditionFailed" or status == 412:
            return StorageUnavailable(f"{op} {where}: object changed while reading ({code})")
        return StorageError(f"{op} {where}: S3 error {status} {code}", code="storage_request_failed")
    if isinstance(exc, (BotoCoreError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)):
        # EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError,
        # ResponseStreamingError, IncompleteReadError, ProtocolError, socket errors...
        return StorageUnavailable(f"{op} {where}: S3 unreachable ({type(exc).__name__}: {exc})")
    return StorageError(f"{op} {where}: {type(exc).__name__}: {exc}")


@contextmanager
def s3_errors(op: str, bucket: str, key: str | None = None) -> Iterator[None]:
    """Inside this block any boto/urllib3/socket failure leaves as ``translate``'s StorageError (its cause kept)."""
    try:
        yield
    except StorageError:
        raise
    except (ClientError, BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise translate(exc, op=op, bucket=bucket, key=key) from exc
