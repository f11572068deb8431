"""The agent's console in Chromium against a served platform and a simulator node."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
from browser import (
    CHROMIUM,
    REPORT_CSP,
    Complaints,
    Platform,
    artifact_dir,
    browser_problem,
    platform_settings,
    serve_platform,
)
from conftest import REQUIRE_SERVICES
from console import detections

from infer.agent.console.access import Access
from infer.agent.console.logbook import Logbook
from infer.agent.console.run import run_console
from infer.agent.loop import LOG, Agent
from infer.agent.platform import PlatformClient
from infer.agent.register import RegistrationOptions
from infer.simulator import SimulatorConfig, serve_simulator_in_thread

if (_problem := browser_problem()) is not None:
    if REQUIRE_SERVICES:
        pytest.fail(f"browser tests cannot run: {_problem}", pytrace=False)
    pytest.skip(f"browser tests cannot run: {_problem}", allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

pytestmark = pytest.mark.timeout(240)
MODEL = "llama3.2:1b"
NODE_STATUS = "query($id: ID!) { node(id: $id) { status paused } }"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Platform]:
    settings = platform_settings(tmp_path_factory.mktemp("console"), sqlite_template)
    with serve_platform(settings) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def complaints() -> Iterator[Complaints]:
    found = Complaints()
    yield found
    found.assert_none()


@pytest.fixture
def new_page(browser: Browser, complaints: Complaints) -> Iterator[Callable[..., Page]]:
    contexts: list[BrowserContext] = []

    def open_page(scheme: Literal["light", "dark"] = "light") -> Page:
        context = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 900})
        contexts.append(context)
        context.add_init_script(REPORT_CSP)
        context.set_default_timeout(15_000)
        page = context.new_page()
        complaints.watch(page)
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def console(platform: Platform, tmp_path: Path) -> Iterator[tuple[Access, Agent, str]]:
    """An operator's agent over a simulator, its console served; the agent has not run yet."""
    key = platform.sign_up(f"operator-{tmp_path.name}@example.com")
    logbook = Logbook()
    LOG.addHandler(logbook)
    LOG.setLevel(logging.INFO)
    with (
        serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=11)) as runtime,
        PlatformClient(platform.url, key) as client,
    ):
        agent = Agent(
            detect=lambda: detections(runtime),
            platform=client,
            options=RegistrationOptions(name=f"console-{tmp_path.name[-20:]}"),
        )
        try:
            with run_console(
                agent,
                client,
                platform_url=platform.url,
                port=0,
                logbook=logbook,
                address_file=tmp_path / "console.json",
            ) as access:
                yield access, agent, key
        finally:
            LOG.removeHandler(logbook)


def status_of(page: Page) -> object:
    return page.locator("#status .figure[data-status]").first


def test_register_go_online_pause_and_resume(
    new_page: Callable[..., Page],
    platform: Platform,
    console: tuple[Access, Agent, str],
    complaints: Complaints,
) -> None:
    access, agent, key = console
    page = new_page()
    page.goto(access.url_with_token)
    expect(page).to_have_url(access.url)  # the token left the address bar
    expect(page.get_by_role("heading", level=1)).to_have_text("This node")
    status = page.locator("#status .figure[data-status]")
    expect(status).to_have_text("Not registered")
    expect(page.get_by_role("table", name="Runtimes")).to_contain_text("ollama")

    # A bad price is refused beside its field; nothing is registered.
    complaints.expect_status(422)
    page.get_by_label(f"Input price of {MODEL}").fill("cheap")
    page.get_by_label(f"Output price of {MODEL}").fill("0.40")
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#input-0-error")).to_contain_text("is not an amount in USD")
    assert agent.node is None

    page.get_by_label(f"Input price of {MODEL}").fill("0.10")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("status").filter(has_text="Saved")).to_be_visible()
    expect(status).to_have_text("Online", timeout=30_000)
    assert agent.node is not None
    node_id = agent.node.id
    expect(page.locator("#log")).to_contain_text("prices saved", timeout=10_000)

    page.get_by_role("button", name="Pause").click()
    expect(status).to_have_text("Paused")
    assert platform.graphql(NODE_STATUS, {"id": node_id}, key=key)["node"] == {
        "status": "PAUSED",
        "paused": True,
    }
    page.get_by_role("button", name="Resume").click()
    expect(status).to_have_text("Online", timeout=30_000)
    answer = platform.graphql(NODE_STATUS, {"id": node_id}, key=key)["node"]
    assert answer == {"status": "ONLINE", "paused": False}


def test_screenshots_light_and_dark(
    new_page: Callable[..., Page],
    console: tuple[Access, Agent, str],
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    access, agent, _ = console
    agent.step()  # registered, without prices of its own
    LOG.warning("a runtime said <b>hello</b>")
    folder = artifact_dir(tmp_path_factory.getbasetemp() / "screenshots")
    with capsys.disabled():
        print(f"\nconsole screenshots: {folder}")
    for scheme in ("light", "dark"):
        page = new_page(scheme)
        page.goto(access.url_with_token)
        expect(page.locator("#status .figure[data-status]")).to_have_text(
            re.compile("Online|Pending")
        )
        expect(page.locator("#log")).to_contain_text("a runtime said <b>hello</b>")
        page.screenshot(path=str(folder / f"console-{scheme}.png"), full_page=True)
