"""The agent's local console over HTTP: token, Host, origin and CSRF checks, prices, pause."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from console import Served, serve_console

from infer.agent.console.server import DEFAULT_PORT, bind
from infer.agent.errors import PlatformError
from infer.agent.loop import LOG
from infer.errors import BadInput
from infer.middleware import CSP
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

XSS_MODEL = 'llama"><img src=x onerror=alert(1)>'
MODELS = ("llama3.2:1b", XSS_MODEL)


@pytest.fixture(scope="module")
def runtime() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=MODELS)) as url:
        yield url


@pytest.fixture
def served(runtime: str, tmp_path: Path) -> Iterator[Served]:
    with serve_console(runtime, tmp_path) as console:
        yield console


def csrf_of(served: Served) -> dict[str, str]:
    return {"X-CSRF-Token": served.access.csrf_token}


def test_the_console_serves_loopback_and_leaves_its_link_for_this_user_only(
    served: Served,
) -> None:
    assert served.access.url.startswith("http://127.0.0.1:")
    mode = stat.S_IMODE(served.address_file.stat().st_mode)
    assert mode == 0o600
    saved = json.loads(served.address_file.read_text())
    assert saved["url"] == served.access.url
    assert saved["token"] == served.access.token


def test_the_link_file_is_removed_when_the_console_stops(runtime: str, tmp_path: Path) -> None:
    with serve_console(runtime, tmp_path) as console:
        assert console.address_file.exists()
    assert not console.address_file.exists()


def test_a_request_without_the_token_is_refused(served: Served) -> None:
    page = httpx.get(served.base + "/")
    assert page.status_code == 403
    assert "link the agent printed" in page.text
    assert page.headers["content-security-policy"] == CSP
    api = httpx.get(served.base + "/api/status")
    assert api.status_code == 403
    assert "error" in api.json()


def test_a_wrong_token_is_refused_in_the_url_the_cookie_and_the_header(served: Served) -> None:
    wrong = served.access.token[:-2] + "xx"
    assert httpx.get(served.base + "/", params={"token": wrong}).status_code == 403
    cookies = {served.access.cookie: wrong}
    assert httpx.get(served.base + "/", cookies=cookies).status_code == 403
    bearer = {"Authorization": f"Bearer {wrong}"}
    assert httpx.get(served.base + "/api/status", headers=bearer).status_code == 403


def test_the_token_in_the_url_becomes_a_strict_cookie_and_leaves_the_url(served: Served) -> None:
    with httpx.Client(base_url=served.base) as client:
        entered = client.get("/", params={"token": served.access.token})
        assert entered.status_code == 303
        assert entered.headers["location"] == "/"
        cookie = entered.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=strict" in cookie
        assert "path=/" in cookie
        page = client.get("/")
    assert page.status_code == 200
    assert served.access.token not in page.text


def test_the_token_redirect_stays_on_the_console(served: Served) -> None:
    with httpx.Client(base_url=served.base) as client:
        for path in ("//evil.example/x", "/%5Cevil.example", "/%2F%2Fevil.example"):
            entered = client.get(path, params={"token": served.access.token, "a": "1"})
            assert entered.status_code == 303
            location = entered.headers["location"]
            assert location.startswith("/")
            assert not location.startswith(("//", "/\\"))
            assert location.endswith("?a=1")


def test_a_wrong_host_header_is_refused(served: Served) -> None:
    with served.browser() as client:
        for host in ("evil.example", f"evil.example:{served.access.port}", "127.0.0.1:1"):
            answer = client.get("/", headers={"Host": host})
            assert answer.status_code == 403, host
            assert "answers only at" in answer.text
        assert client.get("/", headers={"Host": f"localhost:{served.access.port}"}).is_success


def test_a_post_from_another_site_or_without_the_csrf_token_changes_nothing(
    served: Served,
) -> None:
    served.agent.step()
    with served.browser() as client:
        forged = [
            {"Origin": "http://evil.example", **csrf_of(served)},
            {"Sec-Fetch-Site": "cross-site", **csrf_of(served)},
            {"Origin": "null", **csrf_of(served)},
            {},  # no CSRF token
            {"X-CSRF-Token": "0" * 64},
        ]
        for headers in forged:
            answer = client.post("/pause", headers=headers)
            assert answer.status_code == 403, headers
        assert served.platform.pauses == []
        done = client.post("/pause", headers={"Origin": served.base, **csrf_of(served)})
    assert done.status_code == 303
    assert served.platform.pauses == [True]


def test_every_answer_carries_the_csp(served: Served) -> None:
    with served.browser() as client:
        for path in ("/", "/static/console.css", "/api/status"):
            assert client.get(path).headers["content-security-policy"] == CSP, path


def test_model_names_and_log_lines_are_escaped(served: Served) -> None:
    LOG.warning("runtime said <script>alert('log')</script>")
    with served.browser() as client:
        page = client.get("/").text
    assert "<img src=x" not in page
    assert "<script>alert" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "&lt;script&gt;alert(" in page


def test_prices_register_the_node_and_show_it_online(served: Served) -> None:
    with served.browser() as client:
        page = client.get("/")
        assert "Not registered" in page.text
        assert ">Register</button>" in page.text
        form = {"input-1": "0.1", "output-1": " 0.40 ", "csrf_token": served.access.csrf_token}
        saved = client.post("/prices", data=form)
        assert saved.status_code == 303
        page = client.get("/")
    (registration,) = served.platform.registrations
    assert [p.to_json() for p in registration.prices] == [
        {"model": "llama3.2:1b", "inputPerMillion": "0.10", "outputPerMillion": "0.40"}
    ]
    assert 'data-status="online"' in page.text
    assert "3 requests" in page.text
    assert "$0.000042" in page.text


def test_bad_prices_are_shown_beside_their_fields_and_nothing_is_registered(
    served: Served,
) -> None:
    with served.browser() as client:
        form = {"input-0": "ten", "output-0": "", "input-1": "2000", "output-1": "1"}
        answer = client.post(
            "/prices",
            data=form,
            headers={"HX-Request": "true", "HX-Target": "prices", **csrf_of(served)},
        )
    assert answer.status_code == 422
    assert answer.text.count('aria-invalid="true"') == 3
    assert "is not an amount in USD" in answer.text
    assert "Give both prices, or neither." in answer.text
    assert "0 to 1000 USD" in answer.text
    assert 'value="ten"' in answer.text
    assert served.platform.registrations == []


def test_a_refusal_of_the_platform_is_an_alert_and_keeps_the_old_prices(
    served: Served,
) -> None:
    served.platform.refuse = PlatformError("the platform refused: no (BAD_USER_INPUT)")
    with served.browser() as client:
        form = {"input-0": "1", "output-0": "2"}
        answer = client.post(
            "/prices",
            data=form,
            headers={"HX-Request": "true", "HX-Target": "prices", **csrf_of(served)},
        )
    assert answer.status_code == 502
    assert answer.headers["hx-retarget"] == "#alerts"  # where no poll replaces it
    assert answer.text.strip() == (
        '<div class="alert" role="alert"><p>the platform refused: no (BAD_USER_INPUT)</p></div>'
    )
    assert served.agent.options.prices == ()


def test_a_pause_the_platform_refuses_is_an_alert_on_the_page(served: Served) -> None:
    served.agent.step()
    served.platform.refuse = PlatformError("the platform refused: nope <b>x</b> (FORBIDDEN)")
    with served.browser() as client:
        answer = client.post("/pause", data={"csrf_token": served.access.csrf_token})
    assert answer.status_code == 502
    assert '<div id="alerts" aria-live="assertive"><div class="alert" role="alert">' in answer.text
    assert "nope &lt;b&gt;x&lt;/b&gt; (FORBIDDEN)" in answer.text
    assert "Traceback" not in answer.text
    assert served.platform.pauses == []


def test_the_tray_reads_status_and_pauses_with_the_bearer_token(served: Served) -> None:
    with served.tray() as tray:
        assert tray.get("/api/status").json()["state"] == "unknown"
        assert tray.post("/api/pause").status_code == 409
        served.agent.step()
        assert tray.get("/api/status").json()["state"] == "online"
        paused = tray.post("/api/pause").json()
        assert paused["state"] == "paused"
        assert paused["paused"] is True
        assert tray.post("/api/resume").json()["state"] == "online"
    assert served.platform.pauses == [True, False]


def test_an_unreachable_platform_is_an_alert_in_the_status(served: Served) -> None:
    served.agent.step()
    served.platform.refuse = PlatformError("cannot reach the platform at https://p.example")
    with served.browser() as client:
        block = client.get("/", headers={"HX-Request": "true", "HX-Target": "status"})
    assert block.status_code == 200
    assert block.text.lstrip().startswith('<section id="status"')
    assert 'data-status="unknown"' in block.text
    assert "cannot reach the platform at https://p.example" in block.text


def test_the_default_port_gives_way_but_a_chosen_one_does_not() -> None:
    with bind(0) as taken:
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(BadInput, match="--console-port"):
            bind(port)
    first = bind(DEFAULT_PORT)
    try:
        first.listen()
        second = bind(DEFAULT_PORT)
        assert second.getsockname()[1] != DEFAULT_PORT
        second.close()
    finally:
        first.close()


class _ConnectedTunnel:
    def start(self) -> None: ...

    def stop(self, timeout: float = 0) -> None: ...

    def describe(self) -> str:
        return "tunnel connected"


def test_the_console_shows_the_tunnel_as_it_is_now(served: Served) -> None:
    with served.browser() as client:
        assert "data-tunnel" not in client.get("/").text  # no --tunnel: no line about one
        served.agent.tunnel = _ConnectedTunnel()
        page = client.get("/").text
    assert "Now: tunnel connected" in page
