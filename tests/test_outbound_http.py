"""The outbound guard in NodeHTTP, against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from infer.errors import UpstreamError
from infer.nodes.clients.base import Deadlines
from infer.nodes.http import create_http_client
from infer.nodes.transport import NodeHTTP, Response
from infer.security.outbound import AddressPolicy


@dataclass
class LoopbackServer:
    """Counts connections and keeps each request head; /redirect answers 302 to metadata."""

    port: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        self.requests.append(head)
        if head.startswith("GET /redirect "):
            status, extra = "302 Found", "Location: http://169.254.169.254/\r\n"
        else:
            status, extra = "200 OK", ""
        writer.write(
            f"HTTP/1.1 {status}\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\nok".encode()
        )
        await writer.drain()
        writer.close()

    def host_header(self) -> str:
        lines = self.requests[-1].split("\r\n")
        return next(
            line.split(":", 1)[1].strip() for line in lines if line.lower().startswith("host:")
        )


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    state = LoopbackServer()
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield state


@pytest.fixture
def localhost_cert(tmp_path: Path) -> Path:
    """A self-signed certificate (and key) valid for the name localhost only, not 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "localhost.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return path


def guarded_client(*, allow_private: bool) -> NodeHTTP:
    return create_http_client(allow_private=allow_private, deadlines=Deadlines(connect=5))


async def get(client: NodeHTTP, url: str) -> tuple[Response, bytes]:
    """GET `url`; the response and its whole body."""
    until = asyncio.get_running_loop().time() + 5
    async with await client.request("GET", url, until=until) as response:
        body = b""
        while chunk := await response.read(until):
            body += chunk
    return response, body


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Make the running loop resolve the given names to successive answers; return the log."""
    loop = asyncio.get_running_loop()
    real, asked = loop.getaddrinfo, []

    async def getaddrinfo(host: Any, port: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return await real(host, port, **kwargs)
        asked.append(host)
        ips = answers[host][min(len(asked), len(answers[host])) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return asked


async def test_strict_client_refuses_loopback_before_connecting(server: LoopbackServer) -> None:
    async with guarded_client(allow_private=False) as client:
        with pytest.raises(UpstreamError, match="not allowed") as caught:
            await get(client, f"http://127.0.0.1:{server.port}/")
    assert "127.0.0.1, a loopback address" in str(caught.value.__cause__)
    assert server.connections == 0


async def test_strict_client_refuses_name_resolving_to_loopback(server: LoopbackServer) -> None:
    async with guarded_client(allow_private=False) as client:
        with pytest.raises(UpstreamError, match="not allowed") as caught:
            await get(client, f"http://localhost:{server.port}/")
    assert "localhost resolves to" in str(caught.value.__cause__)
    assert server.connections == 0


async def test_metadata_address_is_refused_even_with_allow_private() -> None:
    async with guarded_client(allow_private=True) as client:
        with pytest.raises(UpstreamError, match="not allowed") as caught:
            await get(client, "http://169.254.169.254/latest/meta-data")
    assert "a cloud metadata address" in str(caught.value.__cause__)


async def test_allow_private_client_reaches_loopback(server: LoopbackServer) -> None:
    async with guarded_client(allow_private=True) as client:
        response, body = await get(client, f"http://127.0.0.1:{server.port}/")
    assert response.status == 200
    assert body == b"ok"


async def test_host_header_keeps_the_hostname(server: LoopbackServer) -> None:
    async with guarded_client(allow_private=True) as client:
        response, _ = await get(client, f"http://localhost:{server.port}/")
    assert response.status == 200
    assert server.host_header() == f"localhost:{server.port}"


async def test_redirect_is_returned_not_followed(server: LoopbackServer) -> None:
    async with guarded_client(allow_private=True) as client:
        response, _ = await get(client, f"http://127.0.0.1:{server.port}/redirect")
    assert response.status == 302
    assert response.is_redirect
    assert len(server.requests) == 1


async def test_every_resolved_address_is_checked(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns(monkeypatch, {"mixed.test": [["93.184.215.14", "127.0.0.1"]]})
    async with guarded_client(allow_private=False) as client:
        with pytest.raises(UpstreamError, match="not allowed") as caught:
            await get(client, f"http://mixed.test:{server.port}/")
    assert "mixed.test resolves to 127.0.0.1" in str(caught.value.__cause__)
    assert server.connections == 0


async def test_connection_goes_to_the_address_that_was_checked(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rebinding resolver: the first answer is the server, any later one a dead address.
    asked = fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    async with guarded_client(allow_private=True) as client:
        response, _ = await get(client, f"http://rebind.test:{server.port}/")
    assert response.status == 200
    assert asked == ["rebind.test"]
    assert server.host_header() == f"rebind.test:{server.port}"


async def test_unresolvable_host_is_an_upstream_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"empty.test": [[]]})
    async with guarded_client(allow_private=True) as client:
        with pytest.raises(UpstreamError, match="cannot connect"):
            await get(client, "http://empty.test:1/")


async def test_tls_uses_the_hostname_for_sni_and_verification(localhost_cert: Path) -> None:
    state, server_names = LoopbackServer(), list[str | None]()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(localhost_cert)

    def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        server_names.append(name)

    server_tls.sni_callback = remember_sni
    listener = await asyncio.start_server(state.handle, "127.0.0.1", 0, ssl=server_tls)
    port = listener.sockets[0].getsockname()[1]
    client = NodeHTTP(
        policy=AddressPolicy(allow_private=True),
        connect_timeout=5,
        user_agent="test",
        ssl_context=ssl.create_default_context(cafile=localhost_cert),
    )
    async with listener, client:
        response, body = await get(client, f"https://localhost:{port}/")
        with pytest.raises(UpstreamError, match="TLS handshake") as caught:
            await get(client, f"https://127.0.0.1:{port}/")  # the cert does not name the IP
    assert (response.status, body) == (200, b"ok")
    assert server_names[0] == "localhost"
    assert state.host_header() == f"localhost:{port}"
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value.__cause__)
