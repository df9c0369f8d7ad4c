"""Webhooks against a REAL local HTTPS server (trustme CA), the real broker, and the standardwebhooks verifier.

The receiver is a ThreadingHTTPServer behind TLS whose certificate comes from a throw-away CA; the
fleet trusts that CA through ``webhooks.ca_file``. Signatures are checked with the ``standardwebhooks``
package's own ``Webhook.verify`` (a client this project did not write).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pika
import pytest
import trustme
from standardwebhooks import Webhook

from funasr_fleet import events
from funasr_fleet.settings import Settings, WebhookSettings
from funasr_fleet.webhooks import relay
from funasr_fleet.webhooks.sender import Outcome, Sender, classify_status

SLOW_S = 2.5


@dataclass
class Receiver:
    """A real HTTPS receiver: records every request; behaviour by path."""

    port: int
    ca_file: Path
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, host: str = "localhost") -> str:
        return f"https://{host}:{self.port}{path}"

    def got(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for p, h, b in self.requests if p == path]


def _serve(cert_names: tuple[str, ...], tmp: Path, ca: trustme.CA | None = None) -> Iterator[Receiver]:
    ca = ca or trustme.CA()
    cert = ca.issue_cert(*cert_names)
    ca_file = tmp / f"ca-{secrets.token_hex(4)}.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rec = state["r"]
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            with rec.lock:
                rec.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                n = rec.hits[self.path] = rec.hits.get(self.path, 0) + 1
            if self.path == "/slow":
                time.sleep(SLOW_S)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("location", rec.url("/ok"))
            elif self.path == "/flaky" and n == 1:
                self.send_response(500)
            elif self.path == "/gone":
                self.send_response(404)
            else:
                self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state["r"] = Receiver(server.server_address[1], ca_file)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    yield from _serve(("localhost", "hooks.test", "127.0.0.1"), tmp_path)


@pytest.fixture
def wrong_name_receiver(tmp_path: Path) -> Iterator[Receiver]:
    yield from _serve(("other.example",), tmp_path)


@pytest.fixture
def secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def hooks(secret: str, ca_file: Path, **kw: Any) -> WebhookSettings:
    values: dict[str, Any] = {"secret": secret, "ca_file": str(ca_file), "allow_private_networks": True,
                              "timeout_s": 1.0, "connect_timeout_s": 1.0}  # fmt: skip
    values.update(kw)
    return WebhookSettings(**values)


def event_body(kind: str = "succeeded", job_id: str = "j-1", event_id: str | None = None) -> tuple[str, bytes]:
    data = events.EventData(job_id=job_id, status="succeeded" if kind == "succeeded" else "running",
                            outputs=["s3://r/p/manifest.json"] if kind == "succeeded" else None)  # fmt: skip
    ev = events.build(kind, data, "/test", event_id=event_id)  # type: ignore[arg-type]
    return ev.id, events.encode(ev)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- one delivery (Sender) ----------------------------------------------------------------------------
def test_signed_post_verified_by_the_standardwebhooks_package(receiver: Receiver, secret: str) -> None:
    sender = Sender(hooks(secret, receiver.ca_file))
    event_id, body = event_body()
    result = sender.send(receiver.url("/ok?token=abc"), event_id, body)
    assert result.outcome is Outcome.DELIVERED and result.status_code == 200
    ((headers, got),) = receiver.got("/ok?token=abc")
    assert got == body and headers["webhook-id"] == event_id and headers["content-type"] == "application/json"
    assert Webhook(secret).verify(got, headers) == json.loads(body)
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(got, headers)


def test_receiver_500_then_200_slow_gone_down(receiver: Receiver, secret: str) -> None:
    sender = Sender(hooks(secret, receiver.ca_file))
    event_id, body = event_body()
    assert sender.send(receiver.url("/flaky"), event_id, body).outcome is Outcome.RETRY
    assert sender.send(receiver.url("/flaky"), event_id, body).outcome is Outcome.DELIVERED
    assert [h["webhook-id"] for h, _ in receiver.got("/flaky")] == [event_id, event_id]
    slow = sender.send(receiver.url("/slow"), event_id, body)
    assert slow.outcome is Outcome.RETRY and "timeout" in slow.reason
    assert sender.send(receiver.url("/gone"), event_id, body).outcome is Outcome.GIVE_UP
    down = sender.send(f"https://localhost:{closed_port()}/ok", event_id, body)
    assert down.outcome is Outcome.RETRY and "connect" in down.reason


def test_redirect_is_not_followed(receiver: Receiver, secret: str) -> None:
    result = Sender(hooks(secret, receiver.ca_file)).send(receiver.url("/redirect"), "id-1", b"{}")
    assert result.outcome is Outcome.GIVE_UP and result.status_code == 302 and "not followed" in result.reason
    assert receiver.got("/ok") == []


def test_wrong_hostname_and_wrong_ca_never_reach_the_receiver(
    wrong_name_receiver: Receiver, receiver: Receiver, secret: str
) -> None:
    bad_name = Sender(hooks(secret, wrong_name_receiver.ca_file)).send(wrong_name_receiver.url("/ok"), "id", b"{}")
    assert bad_name.outcome is Outcome.RETRY and "certificate" in bad_name.reason.lower()
    other_ca = Sender(hooks(secret, wrong_name_receiver.ca_file)).send(receiver.url("/ok"), "id", b"{}")
    assert other_ca.outcome is Outcome.RETRY and "certificate" in other_ca.reason.lower()
    assert wrong_name_receiver.requests == [] and receiver.requests == []


def test_connects_to_the_checked_address_with_the_name_for_tls(receiver: Receiver, secret: str) -> None:
    """``hooks.test`` is not in any DNS: the sender resolves it once (here: our resolver), checks the
    address, connects to it, and verifies the certificate for the NAME (SNI + Host)."""
    asked: list[str] = []

    def resolver(host: str, port: int) -> list[Any]:
        asked.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    sender = Sender(hooks(secret, receiver.ca_file), resolver=resolver)
    assert sender.send(receiver.url("/ok", host="hooks.test"), "id", b"{}").outcome is Outcome.DELIVERED
    assert asked == ["hooks.test"]
    ((headers, _),) = receiver.got("/ok")
    assert headers["host"] == f"hooks.test:{receiver.port}"


@pytest.mark.parametrize(
    ("url", "kw", "code"),
    [
        ("https://localhost:{port}/ok", {"allow_private_networks": False}, "callback_not_allowed"),
        ("https://127.0.0.1:{port}/ok", {"allow_private_networks": False}, "callback_not_allowed"),
        ("https://169.254.169.254/latest/meta-data", {"allow_private_networks": False}, "callback_not_allowed"),
        ("https://10.0.0.1/x", {"allow_private_networks": False}, "callback_not_allowed"),
        ("https://[fe80::1]/x", {"allow_private_networks": False}, "callback_not_allowed"),
        ("http://localhost:{port}/ok", {}, "callback_invalid"),
        ("https://localhost:{port}/ok", {"allowed_hosts": ["hooks.example.com"]}, "callback_not_allowed"),
    ],
)
def test_refused_destinations(receiver: Receiver, secret: str, url: str, kw: dict[str, Any], code: str) -> None:
    result = Sender(hooks(secret, receiver.ca_file, **kw)).send(url.format(port=receiver.port), "id", b"{}")
    assert result.outcome is Outcome.GIVE_UP and result.reason.startswith(code)
    assert receiver.requests == []


def test_dns_answer_with_a_private_address_is_refused(receiver: Receiver, secret: str) -> None:
    def public_then_private(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.7")]

    sender = Sender(hooks(secret, receiver.ca_file, allow_private_networks=False), resolver=public_then_private)
    result = sender.send("https://rebind.example.com/x", "id", b"{}")
    assert result.outcome is Outcome.GIVE_UP and "non-public" in result.reason


def test_no_secret_is_a_config_error() -> None:
    from funasr_fleet.errors import ConfigError

    with pytest.raises(ConfigError, match="secret"):
        Sender(WebhookSettings())


def test_status_classification() -> None:
    assert [classify_status(c) for c in (200, 204, 301, 400, 401, 404, 408, 409, 425, 429, 500, 503)] == [
        Outcome.DELIVERED, Outcome.DELIVERED, Outcome.GIVE_UP, Outcome.GIVE_UP, Outcome.GIVE_UP, Outcome.GIVE_UP,
        Outcome.RETRY, Outcome.RETRY, Outcome.RETRY, Outcome.RETRY, Outcome.RETRY, Outcome.RETRY,
    ]  # fmt: skip


def test_routing_and_schedule_rules() -> None:
    h = WebhookSettings(subscriptions=[{"url": "https://a.example/1", "events": ["job.*"]},
                                       {"url": "https://b.example/2", "events": ["job.succeeded"]}],
                        retry_schedule_s=[5, 300])  # fmt: skip
    assert relay.destinations(h, "job.progress", None) == [("subscription", "https://a.example/1")]
    assert relay.destinations(h, "job.succeeded", "https://c.example/cb") == [
        ("subscription", "https://a.example/1"), ("subscription", "https://b.example/2"), ("callback", "https://c.example/cb")
    ]  # fmt: skip
    assert relay.destinations(h, "job.progress", "https://c.example/cb") == [("subscription", "https://a.example/1")]
    assert relay.destinations(h, "job.failed", "https://a.example/1") == [("subscription", "https://a.example/1")]
    assert [relay.delay_ms(h, a) for a in (1, 2, 3)] == [5000, 300000, None]
    assert relay.topic_matches("job.#", "job.a.b") and not relay.topic_matches("job.*", "job.a.b")


# --- the relay (real broker) --------------------------------------------------------------------------
@pytest.fixture
def relay_settings(fleet_settings: Callable[..., Settings], receiver: Receiver, secret: str) -> Iterator[Settings]:
    s = fleet_settings(with_engine=False, webhooks={
        "secret": secret, "ca_file": str(receiver.ca_file), "allow_private_networks": True, "timeout_s": 1.0,
        "connect_timeout_s": 1.0, "retry_schedule_s": [0.3, 0.6], "concurrency": 2,
        "subscriptions": [{"url": receiver.url("/ok"), "events": ["job.succeeded", "job.failed"]}],
    })  # fmt: skip
    yield s
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    relay.delete(conn.channel(), s)
    conn.close()


@pytest.fixture
def running_relay(relay_settings: Settings) -> Iterator[Settings]:
    conn = pika.BlockingConnection(pika.URLParameters(relay_settings.amqp.url.get_secret_value()))
    relay.declare(conn.channel(), relay_settings)
    conn.close()
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(relay_settings, stop), daemon=True)
    thread.start()
    yield relay_settings
    stop.set()
    thread.join(15)


def publish_event(s: Settings, kind: str, body: bytes, callback: str | None = None) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    ch = conn.channel()
    ch.confirm_delivery()
    headers = {events.CALLBACK_HEADER: callback} if callback else None
    ch.basic_publish(s.amqp.events_exchange, f"job.{kind}", body, pika.BasicProperties(headers=headers))
    conn.close()


def dead_letters(s: Settings) -> list[dict[str, Any]]:
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp.url.get_secret_value()))
    ch = conn.channel()
    out = []
    while True:
        method, props, _ = ch.basic_get(relay.Names.of(s.webhooks).dlq, auto_ack=False)
        if method is None:
            break
        out.append({k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()})
    conn.close()  # unacked: back in the queue
    return out


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_relay_retries_with_the_same_webhook_id_and_never_duplicates(
    running_relay: Settings, receiver: Receiver, secret: str
) -> None:
    s = running_relay
    event_id, body = event_body("succeeded")
    publish_event(s, "succeeded", body, callback=receiver.url("/flaky"))
    publish_event(s, "succeeded", body, callback=receiver.url("/flaky"))  # the same event again (same id)
    _, progress = event_body("progress")
    publish_event(s, "progress", progress, callback=receiver.url("/flaky"))  # callbacks get final events only
    wait_for(lambda: len(receiver.got("/flaky")) >= 2 and len(receiver.got("/ok")) >= 1)
    time.sleep(2.0)  # anything more would be a duplicate or a retry too many
    flaky, ok = receiver.got("/flaky"), receiver.got("/ok")
    assert len(flaky) == 2 and len(ok) == 1
    for headers, got in flaky + ok:
        assert headers["webhook-id"] == event_id and got == body
        assert Webhook(secret).verify(got, headers)["id"] == event_id
    assert dead_letters(s) == []


def test_relay_gives_up_after_the_schedule_and_at_once_on_refusals(running_relay: Settings, receiver: Receiver) -> None:
    s = running_relay
    down_id, down = event_body("failed", job_id="j-down")
    publish_event(s, "failed", down, callback=f"https://localhost:{closed_port()}/hook")
    redirect_id, redirected = event_body("succeeded", job_id="j-redirect")
    publish_event(s, "succeeded", redirected, callback=receiver.url("/redirect"))
    wait_for(lambda: len(dead_letters(s)) >= 2)
    dead = {d[relay.ID_HEADER]: d for d in dead_letters(s)}
    assert dead[down_id][relay.ATTEMPT_HEADER] == 3  # first try + two retries
    assert "connect" in dead[down_id][relay.ERROR_HEADER]
    assert dead[redirect_id][relay.ATTEMPT_HEADER] == 1 and "302" in dead[redirect_id][relay.ERROR_HEADER]
    assert len(receiver.got("/redirect")) == 1
    wait_for(lambda: len(receiver.got("/ok")) >= 2)  # the subscription got both events all the same
    assert sorted(h["webhook-id"] for h, _ in receiver.got("/ok")) == sorted([down_id, redirect_id])
