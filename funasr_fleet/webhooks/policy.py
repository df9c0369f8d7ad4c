"""Where a webhook may go: URL syntax, the host allow-list, and which addresses are reachable (pure).

A job message is untrusted input, so a job's ``callback`` must never make the fleet call into its own
network. Three checks, each raising a FleetError with a stable code:

- :func:`check_url` (at job validation and at delivery): ``https`` only, a host, no user/password, no
  fragment, at most :data:`MAX_URL_LENGTH` characters → ``callback_invalid``;
- :func:`check_host` (at validation and at delivery): the host matches ``webhooks.allowed_hosts``
  (exact names or ``*.domain``; empty list = any) and an IP-literal host is a public address unless
  ``webhooks.allow_private_networks`` → ``callback_not_allowed``;
- :func:`check_addresses` (at delivery, on the addresses the name resolved to, which are then the ones
  connected to: no DNS-rebinding gap): every address must be global unless private networks are allowed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from funasr_fleet.errors import CallbackInvalid, CallbackNotAllowed

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A checked webhook URL, split for connecting to a resolved address while verifying TLS for ``host``."""

    url: str
    host: str  # lower-case name or IP literal, no brackets
    port: int
    path: str  # path + query, at least "/"

    @property
    def ip_literal(self) -> IPAddress | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def check_url(url: object) -> Target:
    """Syntax and scheme of a webhook URL → Target, or CallbackInvalid."""
    if not isinstance(url, str) or not url:
        raise CallbackInvalid("callback must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise CallbackInvalid(f"callback is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise CallbackInvalid("callback contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackInvalid(f"callback is not a valid URL: {exc}") from None
    if parts.scheme.lower() != "https":
        raise CallbackInvalid(f"callback must be an https:// URL, not {parts.scheme or 'scheme-less'}")
    if parts.username is not None or parts.password is not None:
        raise CallbackInvalid("callback must not carry a user name or password")
    if parts.fragment:
        raise CallbackInvalid("callback must not have a #fragment")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise CallbackInvalid("callback has no host")
    if _looks_numeric(host) and _ip(host) is None:
        raise CallbackInvalid(f"callback host {host!r} is neither a name nor a valid IP address")
    if _ip(host) is None:
        try:
            host.encode("idna")
        except UnicodeError:
            raise CallbackInvalid(f"callback host {host!r} is not a valid host name") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url=url, host=host, port=port or 443, path=path)


def host_allowed(host: str, allowed_hosts: list[str]) -> bool:
    """``host`` matches an entry of the allow-list (``name`` exactly, ``*.domain`` any sub-domain); empty = all."""
    if not allowed_hosts:
        return True
    host = host.rstrip(".").lower()
    for entry in allowed_hosts:
        entry = entry.strip().rstrip(".").lower()
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry:
            return True
    return False


def address_allowed(address: IPAddress, *, allow_private: bool) -> bool:
    """Only global unicast addresses, unless private networks are allowed (multicast/unspecified never).

    IPv4-mapped and 6to4/Teredo-embedded IPv4 addresses are judged by the IPv4 address they carry.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            return address_allowed(embedded, allow_private=allow_private)
    if address.is_multicast or address.is_unspecified:
        return False
    return allow_private or address.is_global


def check_host(target: Target, *, allowed_hosts: list[str], allow_private: bool) -> None:
    """The allow-list and, for an IP-literal host, the address rule; CallbackNotAllowed otherwise."""
    if not host_allowed(target.host, allowed_hosts):
        raise CallbackNotAllowed(f"callback host {target.host!r} is not in webhooks.allowed_hosts")
    literal = target.ip_literal
    if literal is not None and not address_allowed(literal, allow_private=allow_private):
        raise CallbackNotAllowed(f"callback address {literal} is not a public address")
    if (target.host == "localhost" or target.host.endswith(".localhost")) and not allow_private:
        raise CallbackNotAllowed("callback host localhost is not a public address")


def check_addresses(target: Target, addresses: list[IPAddress], *, allow_private: bool) -> list[IPAddress]:
    """The resolved addresses to connect to; CallbackNotAllowed when any is not allowed (or there are none)."""
    if not addresses:
        raise CallbackNotAllowed(f"callback host {target.host!r} has no address")
    refused = [a for a in addresses if not address_allowed(a, allow_private=allow_private)]
    if refused:
        raise CallbackNotAllowed(f"callback host {target.host!r} resolves to a non-public address ({refused[0]})")
    return addresses


def _ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _looks_numeric(host: str) -> bool:
    """Hosts like ``0x7f.1`` or ``2130706433``: numeric forms resolvers read as IPv4; refused unless canonical."""
    last = host.rsplit(".", 1)[-1]
    return bool(last) and (last.isdigit() or last.startswith("0x"))
