"""One webhook delivery: a Standard Webhooks signed POST to a checked, resolved address.

Signing (https://www.standardwebhooks.com): ``webhook-id`` (the CloudEvent id: the same on every retry,
so receivers de-duplicate), ``webhook-timestamp`` (seconds, the time of THIS attempt) and
``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with the secret, computed
by the ``standardwebhooks`` package. The body is the CloudEvent JSON as published on the events exchange.

Connecting: the URL is checked (:mod:`.policy`), the host name resolved ONCE, every address checked, and
the connection made to a checked address (the name is kept for SNI, the Host header and certificate
verification), so a second DNS answer cannot send the request elsewhere. TLS is verified (system CAs
plus ``webhooks.ca_file``); redirects are not followed; environment proxies are ignored; at most
:data:`MAX_RESPONSE_BYTES` of a response are read.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import certifi
import httpx
from standardwebhooks import Webhook

from funasr_fleet import __version__
from funasr_fleet.errors import CallbackInvalid, CallbackNotAllowed, ConfigError
from funasr_fleet.settings import WebhookSettings
from funasr_fleet.webhooks.policy import IPAddress, Target, check_addresses, check_host, check_url

MAX_RESPONSE_BYTES = 64 * 1024
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
Resolver = Callable[[str, int], list[IPAddress]]


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # network error, timeout, TLS failure, 5xx, 408/409/425/429: try again later
    GIVE_UP = "give_up"  # refused destination, redirect, other 4xx: retrying cannot help


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    reason: str
    status_code: int | None = None


def classify_status(code: int) -> Outcome:
    """What an HTTP status means for a delivery (pure)."""
    if 200 <= code < 300:
        return Outcome.DELIVERED
    if code >= 500 or code in RETRYABLE_STATUS:
        return Outcome.RETRY
    return Outcome.GIVE_UP  # 1xx/3xx (redirects are refused) and the other 4xx


def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (A and AAAA), in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in out:
            out.append(address)
    return out


def load_signer(hooks: WebhookSettings) -> Webhook:
    """The Standard Webhooks signer for the configured secret; ConfigError when there is none or it is bad."""
    secret = hooks.signing_secret()
    if not secret:
        raise ConfigError(
            "webhooks need a signing secret: set webhooks.secret or webhooks.secret_file (whsec_<base64>)"
        )
    try:
        signer = Webhook(secret)
    except Exception as exc:  # noqa: BLE001 - the package raises several kinds for a bad secret
        raise ConfigError(f"webhooks.secret is not a valid whsec_<base64> secret ({type(exc).__name__})") from None
    return signer


class Sender:
    """Thread-safe: one HTTP connection pool shared by the relay's workers."""

    def __init__(self, hooks: WebhookSettings, *, resolver: Resolver = system_resolver) -> None:
        self.hooks = hooks
        self.signer = load_signer(hooks)
        self.resolver = resolver
        context = ssl.create_default_context(cafile=certifi.where())
        if hooks.ca_file is not None:
            context.load_verify_locations(cafile=str(hooks.ca_file))
        self.client = httpx.Client(
            verify=context,
            trust_env=False,  # a proxy would connect by name, around the address check
            follow_redirects=False,
            timeout=httpx.Timeout(hooks.timeout_s, connect=hooks.connect_timeout_s),
            # pools are keyed by the connected address: a kept-alive connection verified for one name
            # must never carry a request for another name on the same address
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=0),
            headers={"user-agent": f"funasr-fleet-webhooks/{__version__}"},
        )

    def close(self) -> None:
        self.client.close()

    def headers(self, webhook_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
        """Standard Webhooks headers for one attempt (``now``: the attempt's time)."""
        when = now or datetime.now(UTC)
        return {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": self.signer.sign(webhook_id, when, body.decode()),
        }

    def target(self, url: str) -> tuple[Target, list[IPAddress]]:
        """The checked target and the checked addresses to connect to (CallbackInvalid / CallbackNotAllowed)."""
        t = check_url(url)
        allow_private = self.hooks.allow_private_networks
        check_host(t, allowed_hosts=self.hooks.allowed_hosts, allow_private=allow_private)
        literal = t.ip_literal
        addresses = [literal] if literal is not None else self.resolver(t.host, t.port)
        return t, check_addresses(t, addresses, allow_private=allow_private)

    def send(self, url: str, webhook_id: str, body: bytes) -> Result:
        """POST ``body`` to ``url``, signed; never raises for what the receiver or the network does."""
        try:
            t, addresses = self.target(url)
        except (CallbackInvalid, CallbackNotAllowed) as exc:
            return Result(Outcome.GIVE_UP, f"{exc.code}: {exc.message}")
        except (OSError, UnicodeError) as exc:  # socket.gaierror: the name does not resolve (now)
            return Result(Outcome.RETRY, f"dns: {exc}")
        headers = self.headers(webhook_id, body)
        literal = t.ip_literal
        host = f"[{t.host}]" if literal is not None and literal.version == 6 else t.host
        headers["host"] = host if t.port == 443 else f"{host}:{t.port}"
        last = Result(Outcome.RETRY, "no address tried")
        for address in addresses[:3]:
            netloc = f"[{address}]" if address.version == 6 else str(address)
            extensions = {} if t.ip_literal is not None else {"sni_hostname": t.host}
            try:
                with self.client.stream(
                    "POST", f"https://{netloc}:{t.port}{t.path}", content=body, headers=headers, extensions=extensions
                ) as response:
                    _drain(response)
                    outcome = classify_status(response.status_code)
                    reason = f"HTTP {response.status_code}"
                    if 300 <= response.status_code < 400:
                        reason += " (redirects are not followed)"
                    return Result(outcome, reason, response.status_code)
            except httpx.TimeoutException as exc:
                return Result(Outcome.RETRY, f"timeout: {type(exc).__name__}")
            except httpx.ConnectError as exc:
                last = Result(Outcome.RETRY, f"connect {address}: {_short(exc)}")
                if "CERTIFICATE" in str(exc).upper() or "SSL" in str(exc).upper():
                    return last  # TLS: another address of the same name will show the same certificate
            except httpx.HTTPError as exc:
                return Result(Outcome.RETRY, f"{type(exc).__name__}: {_short(exc)}")
        return last


def _drain(response: httpx.Response) -> None:
    read = 0
    for chunk in response.iter_raw():
        read += len(chunk)
        if read >= MAX_RESPONSE_BYTES:
            break


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
