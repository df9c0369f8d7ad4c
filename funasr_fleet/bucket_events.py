"""MinIO / AWS S3 bucket-notification records: their shape, what each event kind means, key decoding.

Pure (no I/O, no settings): ``parse_records`` turns a notification body into ``Record`` objects or
raises the FleetError that says what is wrong; ``intake`` decides which records become jobs.

Event kinds (``classify_event``):

- ``CONTENT`` — ``ObjectCreated:Put``, ``Post``, ``Copy``, ``CompleteMultipartUpload``: new bytes
  under a key (AWS's complete ObjectCreated list; MinIO sends the same four for uploads).
- ``METADATA`` — ``ObjectCreated:PutTagging``, ``DeleteTagging``, ``PutRetention``, ``PutLegalHold``:
  MinIO's ``put`` event class also fires these when someone labels or locks an EXISTING object
  (MinIO issue 21443); some servers send them with an empty eTag and size 0. Never a job.
- ``UNKNOWN_CREATED`` — any other ``ObjectCreated:*`` subtype. Not treated as an upload: every
  subtype added since AWS's original four has been a metadata change, and a real upload announced
  by a kind this version does not know is still found by the reconcile sweep, while a metadata
  change taken for an upload starts work and publishes events for nothing.
- ``OTHER`` — removals, accesses, restores, replication, lifecycle, AWS's ``ObjectTagging:*`` ...

Keys: MinIO and AWS form-encode object keys in records (``+`` is a space, ``%2B`` a plus, ``%23``
a hash, ``%25`` a percent; MinIO also encodes ``/`` as ``%2F``). ``decode_event_key`` undoes that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus

from funasr_fleet.errors import MalformedMessage, SchemaInvalid

CONTENT_EVENTS = frozenset({"Put", "Post", "Copy", "CompleteMultipartUpload"})
"""``ObjectCreated`` subtypes that write new object bytes."""
METADATA_EVENTS = frozenset({"PutTagging", "DeleteTagging", "PutRetention", "PutLegalHold"})
"""``ObjectCreated`` subtypes that change only the tags, retention or legal hold of existing bytes."""


class EventClass(StrEnum):
    """What one record's ``eventName`` means for intake."""

    CONTENT = "content"
    METADATA = "metadata"
    UNKNOWN_CREATED = "unknown_created"
    OTHER = "other"


def classify_event(event_name: str) -> EventClass:
    """``s3:ObjectCreated:Put`` (MinIO) or ``ObjectCreated:Put`` (AWS) → its EventClass (case-sensitive)."""
    family, _, subtype = event_name.removeprefix("s3:").partition(":")
    if family != "ObjectCreated":
        return EventClass.OTHER
    if subtype in CONTENT_EVENTS:
        return EventClass.CONTENT
    if subtype in METADATA_EVENTS:
        return EventClass.METADATA
    return EventClass.UNKNOWN_CREATED


def decode_event_key(raw: str) -> str:
    """A record's form-encoded object key → the key; SchemaInvalid when the escapes are not UTF-8."""
    try:
        return unquote_plus(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise SchemaInvalid(f"S3 event object key {raw[:200]!r} is not percent-encoded UTF-8") from None


@dataclass(frozen=True)
class Record:
    """One notification record, decoded. ``etag`` has its quotes stripped and is "" when the record
    has none; ``size``/``etag``/``version_id`` are validated for CONTENT records only."""

    event: str
    event_class: EventClass
    bucket: str
    key: str
    etag: str = ""
    size: int | None = None
    version_id: str | None = None
    event_time: str | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def _field(record: dict[str, Any], *path: str) -> Any:
    node: Any = record
    for name in path:
        if not isinstance(node, dict) or name not in node:
            raise SchemaInvalid(f"S3 event record has no {'.'.join(path)}")
        node = node[name]
    return node


def parse_records(body: dict[str, Any]) -> list[Record]:
    """A notification body (decoded JSON) → its records, in order.

    Raises MalformedMessage (not an object) or SchemaInvalid (no ``Records`` list; a record without
    ``eventName``, ``s3.bucket.name`` or ``s3.object.key``; a CONTENT record with a size that is not a
    non-negative integer or an eTag that is not a string; a key whose escapes are not UTF-8).
    """
    if not isinstance(body, dict):
        raise MalformedMessage(f"S3 event body must be a JSON object, not {type(body).__name__}")
    records = body.get("Records")
    if records is None:
        raise SchemaInvalid("S3 event body has no Records")
    if not isinstance(records, list):
        raise SchemaInvalid("S3 event Records must be a list")
    out: list[Record] = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise SchemaInvalid(f"S3 event record {i} is not an object")
        event_name = record.get("eventName")
        if not isinstance(event_name, str):
            raise SchemaInvalid(f"S3 event record {i} has no eventName")
        bucket = _field(record, "s3", "bucket", "name")
        raw_key = _field(record, "s3", "object", "key")
        if not isinstance(bucket, str) or not isinstance(raw_key, str):
            raise SchemaInvalid(f"S3 event record {i}: bucket name and object key must be strings")
        kind = classify_event(event_name)
        key = decode_event_key(raw_key) if kind is not EventClass.OTHER else raw_key
        if kind is not EventClass.CONTENT:
            out.append(Record(event_name, kind, bucket, key))
            continue
        obj = record["s3"]["object"]
        size = obj.get("size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise SchemaInvalid(f"S3 event record {i}: object size must be a non-negative integer")
        etag = obj.get("eTag", obj.get("etag")) or ""
        if not isinstance(etag, str):
            raise SchemaInvalid(f"S3 event record {i}: eTag must be a string")
        version = obj.get("versionId")
        when = record.get("eventTime")
        out.append(
            Record(
                event_name, kind, bucket, key, etag.strip('"'), size,
                version if isinstance(version, str) and version else None,
                when if isinstance(when, str) else None,
            )
        )  # fmt: skip
    return out
