"""The outbound URL guard's rules, without the network (IP literals never reach a resolver)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from infer.errors import BadInput
from infer.security.outbound import AddressPolicy, check_endpoint, parse_endpoint

STRICT = AddressPolicy(allow_private=False)
LENIENT = AddressPolicy(allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1",
        "http://2130706433/",
        "http://0x7f000001",
        "http://0x7f.1",
        "http://017700000001",
        "http://[::ffff:127.0.0.1]",
        "http://[::1]",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]",
        "http://0.0.0.0",
        "http://10.0.0.1",
        "http://100.64.0.1",
        "http://[2002:7f00:1::]",
        "http://user:pass@example.com",
        "ftp://x",
        "http://exa mple.com",
        "file:///etc/passwd",
        "http://example.com\\@127.0.0.1",
        "http://example.com/#frag",
        "http://example.com:0",
        "http://example.com:65536",
        "http://[::1",
        "http:///path-only",
        "http://1.2.3.4.5",
        "http://example.com/" + "a" * 2100,
    ],
)
async def test_strict_policy_refuses_url(url: str) -> None:
    with pytest.raises(BadInput):
        await check_endpoint(url, STRICT)


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("HTTP://Example.COM:11434/", "http://example.com:11434"),
        ("https://node.example.com:443/v1/", "https://node.example.com/v1"),
        ("http://127.1:11434", "http://127.0.0.1:11434"),
        ("http://0x7f.1", "http://127.0.0.1"),
        ("http://017700000001", "http://127.0.0.1"),
        ("http://2130706433", "http://127.0.0.1"),
        ("http://[::FFFF:127.0.0.1]:52415", "http://[::ffff:7f00:1]:52415"),
        ("http://example.com:65535", "http://example.com:65535"),
    ],
)
def test_parse_endpoint_normalises_url(url: str, normalised: str) -> None:
    assert parse_endpoint(url).url == normalised


@pytest.mark.parametrize("url", ["http://127.0.0.1:11434", "http://10.0.0.1", "http://[::1]:8080"])
async def test_allow_private_admits_loopback_and_private(url: str) -> None:
    endpoint = await check_endpoint(url, LENIENT)
    assert len(endpoint.addresses) == 1


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254", "http://[fe80::1]", "http://[fd00:ec2::254]"]
)
async def test_allow_private_still_refuses_link_local_and_metadata(url: str) -> None:
    with pytest.raises(BadInput):
        await check_endpoint(url, LENIENT)


@pytest.mark.parametrize("url", ["http://93.184.215.14", "https://[2606:4700::1]:8443/v1"])
async def test_public_addresses_are_admitted(url: str) -> None:
    endpoint = await check_endpoint(url, STRICT)
    assert endpoint.addresses == (ip_address(endpoint.host),)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "100.100.100.200",
        "fd00:ec2::254",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::",
        "ff02::1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "100::1",
    ],
)
def test_always_refused_addresses(address: str) -> None:
    assert STRICT.refusal(ip_address(address)) is not None
    assert LENIENT.refusal(ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.2",
        "172.16.5.4",
        "192.168.1.1",
        "198.18.0.1",
        "192.0.2.1",
        "fc00::1",
        "2001:db8::1",
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo, client 127.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::ffff:10.0.0.1",
    ],
)
def test_private_addresses_are_refused_unless_allowed(address: str) -> None:
    assert STRICT.refusal(ip_address(address)) is not None
    assert LENIENT.refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "2606:4700::1", "::ffff:8.8.8.8", "2002:808:808::1"]
)
def test_public_addresses_pass_the_policy(address: str) -> None:
    assert STRICT.refusal(ip_address(address)) is None


async def test_refusal_message_names_the_reason_and_the_setting() -> None:
    with pytest.raises(BadInput, match=r"10\.0\.0\.1, a private address.*ALLOW_PRIVATE"):
        await check_endpoint("http://10.0.0.1:11434", STRICT)


async def test_embedded_ipv4_is_named_in_the_refusal() -> None:
    with pytest.raises(BadInput, match=r"embeds 127\.0\.0\.1, a loopback address"):
        await check_endpoint("http://[2002:7f00:1::]", STRICT)
