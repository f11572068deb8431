"""Outbound URL guard: which node URLs and IP addresses the platform may call."""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from infer.errors import BadInput

IPAddress = IPv4Address | IPv6Address

MAX_URL_LENGTH = 2048
PRIVATE_HINT = "; set INFER_ALLOW_PRIVATE_ENDPOINTS=true for local development"

_NETLOC = re.compile(
    r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?"
)
_NUMERIC_LABEL = re.compile(r"0x[0-9a-f]*|[0-9]+")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REFUSED_CHARS = (
    ("\\", "contains a backslash"),
    ("@", "contains '@'; credentials in the URL are not allowed"),
    ("#", "has a fragment (#...)"),
    ("?", "has a query string; give the base URL of the runtime"),
)


def _nets(*groups: tuple[str, ...]) -> tuple[tuple[IPv4Network | IPv6Network, str], ...]:
    return tuple((ip_network(cidr), label) for label, *cidrs in groups for cidr in cidrs)


# Checked first, in order, and refused even with allow_private (metadata sits in private ranges).
_ALWAYS_REFUSED = _nets(
    ("a cloud metadata address", "169.254.169.254/32", "100.100.100.200/32", "fd00:ec2::254/128"),
    ("the unspecified address", "0.0.0.0/32", "::/128"),
    ("in 0.0.0.0/8 ('this network')", "0.0.0.0/8"),
    ("a link-local address", "169.254.0.0/16", "fe80::/10"),
    ("the broadcast address", "255.255.255.255/32"),
    ("a multicast address", "224.0.0.0/4", "ff00::/8"),
    ("a reserved address", "192.0.0.0/24", "192.88.99.0/24", "240.0.0.0/4", "fec0::/10"),
)
# Refused unless allow_private: addresses that only make sense inside one network.
_PRIVATE = _nets(
    ("a loopback address", "127.0.0.0/8", "::1/128"),
    ("a private address", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"),
    ("a shared (CGNAT) address", "100.64.0.0/10"),
    ("a benchmarking address", "198.18.0.0/15", "2001:2::/48"),
    ("a documentation address", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"),
    ("a documentation address", "2001:db8::/32"),
    ("a local-use NAT64 address", "64:ff9b:1::/48"),
)
_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A validated, normalised node URL; `addresses` is filled in once it has been resolved."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[IPAddress, ...] = ()

    @property
    def url(self) -> str:
        """The normalised URL: lowercase, no default port, no trailing slash."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = "" if _DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path}"


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which IP addresses a node may have; `allow_private` admits loopback and private ranges."""

    allow_private: bool = False

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` is refused, as text fit to show an operator, or None if it is admitted."""
        if isinstance(ip, IPv6Address):
            for embedded in _embedded_ipv4(ip):
                reason = self.refusal(embedded)
                if reason is not None:
                    return f"{ip}, which embeds {reason}"
        for network, label in _ALWAYS_REFUSED:
            if ip in network:
                return f"{ip}, {label}"
        for network, label in _PRIVATE:
            if ip in network:
                return None if self.allow_private else f"{ip}, {label}{PRIVATE_HINT}"
        if isinstance(ip, IPv6Address) and ip not in _GLOBAL_UNICAST and not _embedded_ipv4(ip):
            return f"{ip}, a reserved address"
        return None


def _embedded_ipv4(ip: IPv6Address) -> tuple[IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address stands for (mapped, 6to4, Teredo, NAT64, compatible)."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return (IPv4Address(int(ip) & 0xFFFFFFFF),)
    return ()


def _inet_aton(host: str) -> IPv4Address | None:
    """Read `host` the way libc's inet_aton does (`127.1`, `0x7f.1`, `2130706433`, octal)."""
    parts = host.split(".")
    if len(parts) > 4 or not all(_NUMERIC_LABEL.fullmatch(part) for part in parts):
        return None
    try:
        numbers = [
            int(p[2:], 16) if p.startswith("0x") else int(p, 8 if p.startswith("0") else 10)
            for p in parts
        ]
    except ValueError:  # "0x" alone, or 8 and 9 in an octal part
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    return IPv4Address(last + sum(n << (24 - 8 * i) for i, n in enumerate(head)))


def parse_endpoint(url: str) -> Endpoint:
    """Validate and normalise a node URL (syntax only, no resolution); raise BadInput if refused."""

    def refuse(reason: str) -> BadInput:
        return BadInput(f"endpoint {reason}", param="endpoint")

    if len(url) > MAX_URL_LENGTH:
        raise refuse(f"is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii():
        raise refuse("contains non-ASCII characters; write the host in its xn-- (punycode) form")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise refuse("contains whitespace or control characters")
    for char, reason in _REFUSED_CHARS:
        if char in url:
            raise refuse(reason)
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced brackets, for one
        raise refuse("is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise refuse(f"must start with http:// or https://, not {scheme or 'nothing'}")
    netloc = _NETLOC.fullmatch(parts.netloc.lower())
    if netloc is None:
        raise refuse(f"has a missing or malformed host: {parts.netloc!r}")
    port = int(netloc["port"]) if netloc["port"] else _DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise refuse(f"port {port} is outside 1-65535")
    if netloc["ip6"] is not None:
        try:
            host = str(IPv6Address(netloc["ip6"]))
        except ValueError:
            raise refuse(f"has a malformed IPv6 address: [{netloc['ip6']}]") from None
    else:
        name = netloc["name"].removesuffix(".")
        labels = name.split(".")
        ipv4 = _inet_aton(name)
        if ipv4 is not None:
            host = str(ipv4)
        elif _NUMERIC_LABEL.fullmatch(labels[-1]):
            raise refuse(f"host {name!r} is neither a valid IPv4 address nor a domain name")
        elif len(name) > 253 or not all(0 < len(label) <= 63 for label in labels):
            raise refuse(f"host {name!r} is not a valid domain name")
        else:
            host = name
    return Endpoint(scheme=scheme, host=host, port=port, path=parts.path.rstrip("/"))


async def resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to, in resolver order; an IP literal resolves to itself."""
    try:
        return (ip_address(host),)
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # An IPv6 sockaddr may carry a zone (fe80::1%eth0); the zone does not change the verdict.
    found = [ip_address(str(sockaddr[0]).split("%")[0]) for *_, sockaddr in infos]
    if not found:
        raise socket.gaierror(f"no addresses for {host}")
    return tuple(dict.fromkeys(found))


def vet_addresses(host: str, addresses: tuple[IPAddress, ...], policy: AddressPolicy) -> None:
    """Raise BadInput unless the policy admits every address `host` resolved to."""
    for ip in addresses:
        reason = policy.refusal(ip)
        if reason is not None:
            subject = "address" if host == str(ip) else f"{host} resolves to"
            raise BadInput(f"endpoint {subject} {reason}", param="endpoint")


async def check_endpoint(url: str, policy: AddressPolicy) -> Endpoint:
    """Validate, resolve and vet a node URL for registration; raise BadInput if refused."""
    endpoint = parse_endpoint(url)
    try:
        addresses = await resolve(endpoint.host, endpoint.port)
    except OSError as exc:
        raise BadInput(f"endpoint host {endpoint.host} does not resolve", param="endpoint") from exc
    vet_addresses(endpoint.host, addresses, policy)
    return replace(endpoint, addresses=addresses)
