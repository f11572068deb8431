"""The dashboard in a real browser (Chromium): by mouse, by keyboard, in light and dark."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from conftest import PASSWORD, REQUIRE_SERVICES

from infer.simulator import SimulatorConfig, serve_simulator_in_thread

if (_problem := browser_problem()) is not None:
    if REQUIRE_SERVICES:  # CI must run these, not skip them
        pytest.fail(f"browser tests cannot run: {_problem}", pytrace=False)
    pytest.skip(f"browser tests cannot run: {_problem}", allow_module_level=True)

from playwright.sync_api import Browser, BrowserContext, Locator, Page, expect, sync_playwright

pytestmark = pytest.mark.timeout(240)
MODEL = "llama3.2:1b"
PROVIDER_NAME = "query($id: ID!) { provider(id: $id) { name } }"


@dataclass
class Operator:
    """A seller with one online simulator node: the provider buyers use and review."""

    key: str
    id: str
    name: str
    node_id: str


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Platform]:
    settings = platform_settings(tmp_path_factory.mktemp("browser"), sqlite_template)
    with serve_platform(settings) as served:
        yield served


@pytest.fixture(scope="module")
def simulator() -> Iterator[str]:
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=7)) as url:
        yield url


@pytest.fixture(scope="module")
def operator(platform: Platform, simulator: str) -> Operator:
    key = platform.sign_up("seller@example.com")
    node_id = platform.register_node(key, endpoint=simulator, name="seller-gpu", model=MODEL)
    provider_id = platform.user_id(key)
    name = platform.graphql(PROVIDER_NAME, {"id": provider_id})["provider"]["name"]
    return Operator(key=key, id=provider_id, name=name, node_id=node_id)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def complaints() -> Iterator[Complaints]:
    """Every console error or warning, CSP violation and server failure of one test."""
    found = Complaints()
    yield found
    found.assert_none()


@pytest.fixture
def new_page(browser: Browser, complaints: Complaints) -> Iterator[Callable[..., Page]]:
    """Opens a page in a fresh context (light or dark) whose complaints are collected."""
    contexts: list[BrowserContext] = []

    def open_page(scheme: Literal["light", "dark"] = "light") -> Page:
        context = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 900})
        contexts.append(context)
        context.add_init_script(REPORT_CSP)
        context.set_default_timeout(10_000)
        page = context.new_page()
        complaints.watch(page)
        return page

    yield open_page
    for context in contexts:  # before the complaints are counted: nothing more arrives
        context.close()


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True).click()


def test_a_buyer_and_seller_by_mouse(
    new_page: Callable[..., Page], platform: Platform, operator: Operator
) -> None:
    page = new_page()
    email = "mouse@example.com"

    page.goto(f"{platform.url}/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label(re.compile("^Password")).fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    platform.grant(email, 5_000_000)

    nav(page, "API keys")
    page.get_by_role("textbox", name=re.compile(r"^Name\b")).fill("mouse key")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret key").input_value()
    answer = platform.complete(secret, MODEL)
    assert answer["choices"][0]["message"]["content"]

    # The request shows where a buyer looks for it, with the seller that served it.
    nav(page, "Overview")
    recent = page.get_by_role("table", name="Recent requests")
    expect(recent.get_by_role("row").filter(has_text=MODEL)).to_have_count(1)
    expect(recent).to_contain_text(operator.name)
    nav(page, "Usage")
    expect(page.get_by_role("row").filter(has_text=MODEL).last).to_contain_text(operator.name)

    # A node of the buyer's own, through the form; its status block refreshes itself.
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=3)) as own:
        nav(page, "Nodes")
        page.get_by_role("textbox", name=re.compile(r"^Name\b")).fill("my <b>gpu</b>")
        page.get_by_role("combobox", name="Runtime").select_option("OLLAMA")
        page.get_by_role("textbox", name=re.compile("^Endpoint URL")).fill(own)
        page.get_by_role("button", name="Register node").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("my <b>gpu</b>")
        nav(page, "Nodes")
        row = page.get_by_role("row").filter(has_text="my <b>gpu</b>")
        expect(row.get_by_text("Online", exact=True)).to_be_visible()
        page.evaluate("window.notReloaded = true")
    # The runtime is gone: the block says so by itself, the page is never reloaded.
    expect(row.get_by_text(re.compile("^(Degraded|Offline)$"))).to_be_visible(timeout=30_000)
    assert page.evaluate("window.notReloaded === true")

    nav(page, "Marketplace")
    page.get_by_role("link", name="Providers", exact=True).click()
    page.get_by_role("link", name=operator.name, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(operator.name)
    page.get_by_role("radio", name=re.compile("4 stars")).check()
    page.get_by_label("Comment").fill("Fast and <script>cheap</script>.")
    page.get_by_role("button", name="Post review").click()
    review = page.locator("article.review").filter(has_text="Fast and")
    expect(review).to_contain_text("Fast and <script>cheap</script>.")
    expect(page.get_by_role("button", name="Save changes")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Log in")


def has_focus(locator: Locator) -> bool:
    return bool(locator.evaluate("e => e === document.activeElement"))


def tab_to(page: Page, locator: Locator, *, back: bool = False, limit: int = 80) -> None:
    """Presses Tab (or Shift+Tab) until the locator's element has the focus."""
    for _ in range(limit):
        if has_focus(locator):
            assert_focus_visible(page)
            return
        page.keyboard.press("Shift+Tab" if back else "Tab")
    raise AssertionError(f"{limit} presses of Tab never reached {locator}")


def assert_focus_visible(page: Page) -> None:
    """The focused element matches :focus-visible and draws an outline or a ring."""
    visible = page.evaluate(
        """() => {
          const e = document.activeElement;
          if (!e || e === document.body || !e.matches(":focus-visible")) return false;
          const s = getComputedStyle(e);
          return (s.outlineStyle !== "none" && parseFloat(s.outlineWidth) > 0)
            || s.boxShadow !== "none";
        }"""
    )
    tag = page.evaluate("document.activeElement && document.activeElement.outerHTML.slice(0, 120)")
    assert visible, f"the focus is not visible on {tag}"


def test_keys_by_keyboard_alone(
    new_page: Callable[..., Page], platform: Platform, complaints: Complaints
) -> None:
    email = "keyboard@example.com"
    platform.sign_up(email)
    complaints.expect_status(422)  # a wrong password, an empty key name
    page = new_page()
    page.goto(f"{platform.url}/login")

    # The email field has the focus on arrival; a wrong password brings it back there.
    email_field = page.get_by_label("Email")
    assert has_focus(email_field)
    page.keyboard.type(email)
    page.keyboard.press("Tab")
    page.keyboard.type("not the password")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_label("Email")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    tab_to(page, page.get_by_role("navigation", name="Main").get_by_role("link", name="API keys"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_have_text("API keys")

    # An empty name is refused beside the field, which gets the focus back.
    name = page.get_by_role("textbox", name=re.compile(r"^Name\b"))
    tab_to(page, name)
    page.keyboard.press("Enter")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(name).to_be_focused()
    assert_focus_visible(page)
    page.keyboard.type("keyboard key")
    page.keyboard.press("Enter")
    secret = page.get_by_label("Secret key")
    expect(secret).to_be_focused()
    issued = secret.input_value()
    assert platform.models(issued).status_code == 200

    key = page.get_by_role("article").filter(
        has=page.get_by_role("heading", name="keyboard key", exact=True)
    )
    revoke = key.get_by_role("button", name="Revoke…")
    tab_to(page, revoke)
    page.keyboard.press("Enter")
    confirm = key.get_by_role("button", name="Yes, revoke “keyboard key”")
    expect(confirm).to_be_visible()
    tab_to(page, confirm)
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("“keyboard key” is revoked")
    expect(key).to_have_count(0)
    assert platform.models(issued).status_code == 401

    tab_to(page, page.get_by_role("button", name="Log out"))
    page.keyboard.press("Space")
    expect(page).to_have_url(re.compile(r"/login$"))


def test_a_new_keys_secret_has_the_focus_when_it_comes_as_a_whole_page(
    platform: Platform, new_page: Callable[..., Page]
) -> None:
    """The form sent natively (before htmx took over a just-swapped form, or without htmx)."""
    email = "native@example.com"
    platform.sign_up(email)
    page = new_page()
    log_in(page, platform.url, email)
    page.goto(f"{platform.url}/keys")
    form = page.locator("form.key-create")
    form.evaluate("f => { f.removeAttribute('hx-post'); htmx.process(document.body); }")
    page.get_by_role("textbox", name=re.compile(r"^Name\b")).fill("native key")
    with page.expect_navigation():
        form.evaluate("f => f.submit()")
    expect(page.get_by_label("Secret key")).to_be_focused()


def test_every_page_in_light_and_dark(
    new_page: Callable[..., Page],
    platform: Platform,
    operator: Operator,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = artifact_dir(tmp_path_factory.getbasetemp() / "screenshots")
    with capsys.disabled():
        print(f"\nbrowser screenshots: {folder}")
    email = "shots@example.com"
    key = platform.sign_up(email)
    platform.grant(email, 5_000_000)
    platform.complete(key, MODEL)
    with serve_simulator_in_thread(SimulatorConfig(models=(MODEL,), seed=5)) as own:
        node_id = platform.register_node(key, endpoint=own, name="shots-gpu", model=MODEL)
        anonymous = {
            "login": "/login",
            "signup": "/signup",
            "models": "/marketplace",
            "providers": "/marketplace?view=providers",
            "model": f"/marketplace/models/{MODEL}",
            "provider": f"/marketplace/providers/{operator.id}",
        }
        signed_in = {
            "overview": "/",
            "usage": "/usage",
            "keys": "/keys",
            "models": "/marketplace",
            "provider": f"/marketplace/providers/{operator.id}",
            "nodes": "/nodes",
            "node": f"/nodes/{node_id}",
            "earnings": "/earnings",
            "notifications": "/notifications",
            "account": "/account",
        }
        seller = {"earnings": "/earnings", "node": f"/nodes/{operator.node_id}"}
        for scheme in ("light", "dark"):
            page = new_page(scheme)
            shoot(page, platform.url, anonymous, folder / f"{scheme}-anonymous")
            log_in(page, platform.url, email)
            shoot(page, platform.url, signed_in, folder / scheme)
            # The seller's own pages, with the requests its node has served.
            page = new_page(scheme)
            log_in(page, platform.url, "seller@example.com")
            shoot(page, platform.url, seller, folder / f"{scheme}-seller")


def log_in(page: Page, base: str, email: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")


def shoot(page: Page, base: str, paths: dict[str, str], prefix: Path) -> None:
    """A full-page screenshot of each path, which must answer 200 with a heading."""
    for name, path in paths.items():
        response = page.goto(base + path)
        assert response is not None, path
        assert response.status == 200, (path, response.status)
        expect(page.get_by_role("heading", level=1)).to_be_visible()
        page.wait_for_load_state("networkidle")
        page.screenshot(path=f"{prefix}-{name}.png", full_page=True)
