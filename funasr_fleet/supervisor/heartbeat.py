"""Reading a consumer's heartbeat file (contract: docs/internals.md).

The file's mtime proves liveness (the consumer rewrites it at least once a second from the loop
that services its AMQP connection); its JSON says the state. The supervisor only reads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

READY_STATES = frozenset({"ready", "busy"})


class HeartbeatBody(BaseModel):
    """The JSON a consumer writes. Unknown fields are ignored so the contract can grow."""

    model_config = ConfigDict(extra="ignore")

    pid: int | None = None
    state: Literal["booting", "ready", "busy", "draining"] | str = "booting"
    job_id: str | None = None
    ts: float | None = None
    error: str | None = None  # set by a consumer that fails to boot: the cause, one line


@dataclass(frozen=True)
class Beat:
    mtime: float  # wall clock (time.time()) of the last rewrite
    body: HeartbeatBody | None  # None when the content could not be parsed

    @property
    def state(self) -> str | None:
        return self.body.state if self.body else None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


def read(path: Path) -> Beat | None:
    """The latest beat, or None if the file does not exist yet."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    try:
        body: HeartbeatBody | None = HeartbeatBody.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError):
        body = None
    return Beat(mtime=mtime, body=body)
