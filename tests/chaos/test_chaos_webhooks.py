"""Chaos with webhooks and the announcer on: the same run as test_chaos.py (consumers SIGKILLed, RabbitMQ
restarted, S3 away for ~10 s), every job carrying a ``callback`` to a real local HTTPS receiver, the webhook
relay (``funasr-fleet notify``) running as its own process, and the supervisor's announcer sidecar on.

Afterwards, on top of every test_chaos assertion: every job's callback received its ``job.succeeded`` (no
event lost), every POST is signed (verified with the ``standardwebhooks`` package), carries as
``webhook-id`` the id of a ``job.succeeded`` event of that job that went through the events exchange, and a
job's callback got nothing but its final succeeded event(s) (at-least-once: a redelivered job may answer
again from its manifest with a new event id; one event id may arrive twice only if the relay was cut off
mid-delivery); nothing is in the relay's dead-letter queue.

Restarts the broker: run only where that is allowed (``pytest tests/chaos``), never beside other suites.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pika
import pytest
from standardwebhooks import Webhook

from funasr_fleet.settings import Settings
from funasr_fleet.webhooks import relay
from tests.chaos import harness
from tests.chaos.test_chaos import CI_JOBS, run_chaos
from tests.fixtures.services import subprocess_env
from tests.supervisor_harness import wait_for
from tests.test_webhooks import Receiver, _serve

REPO = Path(__file__).resolve().parents[2]


class WebhookRig:
    """The receiver, the relay process, and what to check afterwards (see run_chaos's ``rig``)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self._serving = _serve(("localhost", "127.0.0.1"), tmp_path)
        self.receiver: Receiver = next(self._serving)
        self.relay: subprocess.Popen[bytes] | None = None
        self.settings: Settings | None = None
        self._log = open(tmp_path / "notify.log", "wb")  # noqa: SIM115 - closed in stop()

    # --- run_chaos hooks ---
    def settings_overrides(self) -> dict[str, Any]:
        return {"webhooks": {"secret": self.secret, "ca_file": str(self.receiver.ca_file),
                             "allow_private_networks": True, "timeout_s": 5.0, "connect_timeout_s": 2.0,
                             "retry_schedule_s": [1.0, 2.0, 5.0, 10.0, 30.0], "concurrency": 2}}  # fmt: skip

    def env(self) -> dict[str, str]:
        return {"FLEET_SUPERVISOR__ANNOUNCER": "true"}

    def job_extra(self, job_id: str) -> dict[str, Any]:
        return {"callback": self.receiver.url(f"/cb/{job_id}")}

    def start(self, settings: Settings) -> None:
        self.settings = settings
        conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
        try:
            relay.declare(conn.channel(), settings)  # the relay's queue exists before the first event
        finally:
            conn.close()
        self.relay = subprocess.Popen([sys.executable, "-m", "funasr_fleet", "notify"], cwd=REPO,
                                      env=subprocess_env(settings), stdout=self._log, stderr=subprocess.STDOUT)  # fmt: skip

    def check(self, settings: Settings, ids: list[str], log: harness.EventLog) -> dict[str, Any]:
        finals = log.finals()
        succeeded_ids = {j: {e["id"] for e in finals.get(j, []) if harness.kind_of(e) == "succeeded"} for j in ids}
        wait_for(lambda: all(self.receiver.got(f"/cb/{j}") for j in ids) or None, 120,
                 what="a callback delivery for every job")  # fmt: skip
        hook = Webhook(self.secret)
        per_id: Counter[str] = Counter()
        for j in ids:
            for headers, body in self.receiver.got(f"/cb/{j}"):
                event = hook.verify(body, headers)  # raises unless signed with our secret and recent
                assert headers["webhook-id"] == event["id"]
                assert event["subject"] == j and event["type"].endswith("job.succeeded"), (j, event["type"])
                assert event["id"] in succeeded_ids[j], f"{j}: delivered an event the exchange never carried"
                assert "callback" not in json.dumps(event["data"]), "the callback URL leaked into the body"
                per_id[event["id"]] += 1
        conn = pika.BlockingConnection(pika.URLParameters(settings.amqp.url.get_secret_value()))
        try:
            dead = conn.channel().queue_declare(relay.Names.of(settings.webhooks).dlq, passive=True)
            assert dead.method.message_count == 0, "webhook deliveries dead-lettered"
        finally:
            conn.close()
        return {"webhook_posts": sum(per_id.values()), "webhook_events": len(per_id),
                "webhook_same_id_twice": sum(1 for n in per_id.values() if n > 1)}  # fmt: skip

    def stop(self) -> None:
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.relay.wait(30)
            if self.relay.poll() is None:
                self.relay.kill()
        self._log.close()
        with contextlib.suppress(StopIteration):
            next(self._serving)  # shuts the receiver down
        if self.settings is not None:
            with contextlib.suppress(Exception):
                conn = pika.BlockingConnection(pika.URLParameters(self.settings.amqp.url.get_secret_value()))
                relay.delete(conn.channel(), self.settings)
                conn.close()


@pytest.mark.timeout(900)
def test_chaos_with_webhooks(fleet_settings, own_s3_server, amqp_url, audio_dir, engine_env, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    rig = WebhookRig(tmp_path)
    summary = run_chaos(CI_JOBS, fleet_settings, own_s3_server, amqp_url, audio_dir, tmp_path, capsys, rig=rig)
    assert summary["kills"] >= 1 and summary["broker_restarts"] == 1 and summary["s3_outages"] == 1
    assert summary["webhook_events"] >= CI_JOBS
