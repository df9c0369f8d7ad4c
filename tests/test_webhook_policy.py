"""Where a webhook may go (pure): URL syntax, the host allow-list, and the address rule."""

from __future__ import annotations

import ipaddress

import pytest

from funasr_fleet.errors import CallbackInvalid, CallbackNotAllowed
from funasr_fleet.webhooks.policy import address_allowed, check_addresses, check_host, check_url, host_allowed


def test_check_url_splits_a_good_url() -> None:
    t = check_url("https://Hooks.Example.com:8443/a/b?x=1")
    assert (t.host, t.port, t.path) == ("hooks.example.com", 8443, "/a/b?x=1")
    assert check_url("https://hooks.example.com").path == "/"
    assert check_url("https://[2606:4700::1111]/x").ip_literal == ipaddress.ip_address("2606:4700::1111")


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
     "::1", "fe80::1", "fc00::1", "::", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "198.18.0.1",
     "255.255.255.255", "192.0.2.1"],
)  # fmt: skip
def test_non_global_addresses_are_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not address_allowed(ip, allow_private=False)


@pytest.mark.parametrize("address", ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"])
def test_global_addresses_are_allowed(address: str) -> None:
    assert address_allowed(ipaddress.ip_address(address), allow_private=False)


def test_private_allowed_only_when_asked_and_never_multicast() -> None:
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), allow_private=True)
    assert address_allowed(ipaddress.ip_address("10.0.0.1"), allow_private=True)
    assert not address_allowed(ipaddress.ip_address("224.0.0.1"), allow_private=True)
    assert not address_allowed(ipaddress.ip_address("0.0.0.0"), allow_private=True)


def test_host_allow_list() -> None:
    assert host_allowed("anything.example", [])
    assert host_allowed("a.example.com", ["*.example.com"]) and host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("badexample.com", ["*.example.com"])
    assert host_allowed("hooks.example.com.", ["HOOKS.example.com"])
    assert not host_allowed("hooks.example.com.evil.net", ["hooks.example.com"])


def test_check_host_and_addresses() -> None:
    t = check_url("https://hooks.example.com/x")
    check_host(t, allowed_hosts=[], allow_private=False)
    with pytest.raises(CallbackNotAllowed):
        check_host(t, allowed_hosts=["other.example.com"], allow_private=False)
    public = [ipaddress.ip_address("93.184.216.34")]
    assert check_addresses(t, public, allow_private=False) == public
    with pytest.raises(CallbackNotAllowed, match="non-public"):  # DNS answering a private address: refused
        check_addresses(t, [*public, ipaddress.ip_address("10.0.0.1")], allow_private=False)
    with pytest.raises(CallbackNotAllowed):
        check_addresses(t, [], allow_private=True)


@pytest.mark.parametrize(
    "url", ["http://x.example/", "https://u@x.example/", "https://x.example/#f", "https://2130706433/"]
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(CallbackInvalid):
        check_url(url)
