"""The tray icon on pystray's dummy backend: its menu calls a real console on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console import Served, serve_console, unused_url

from infer.agent.tray import AMBER, GREEN, GREY, RED, ConsoleClient, Tray, load_pystray
from infer.simulator import SimulatorConfig, serve_simulator_in_thread


@pytest.fixture
def pystray(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("PYSTRAY_BACKEND", "dummy")
    module, why = load_pystray()
    assert module is not None, why
    return module


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with (
        serve_simulator_in_thread(SimulatorConfig()) as runtime,
        serve_console(runtime, tmp_path) as console,
    ):
        yield console


@pytest.fixture
def tray(pystray: Any, served: Served) -> Iterator[Tray]:
    opened: list[str] = []
    quits: list[bool] = []
    client = ConsoleClient(served.access.url, served.access.token)
    icon = Tray(pystray, client, on_quit=lambda: quits.append(True), open_url=opened.append)
    icon.opened, icon.quits = opened, quits  # type: ignore[attr-defined]
    yield icon
    client.close()


def colour_of(tray: Tray) -> tuple[int, int, int]:
    red, green, blue, _ = tray.icon.icon.getpixel((32, 32))
    return red, green, blue


def rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def menu_item(tray: Tray, text: str) -> Any:
    (item,) = [item for item in tray.icon.menu.items if item.text == text]
    return item


def test_the_icon_is_grey_until_the_node_is_registered_then_green(
    tray: Tray, served: Served
) -> None:
    tray.refresh()
    assert colour_of(tray) == rgb(GREY)
    assert "not registered" in tray.icon.title
    served.agent.step()
    tray.refresh()
    assert colour_of(tray) == rgb(GREEN)
    assert tray.icon.title == "INFER node: online"


def test_pause_and_resume_from_the_menu_reach_the_platform_through_the_console(
    tray: Tray, served: Served
) -> None:
    served.agent.step()
    tray.refresh()
    assert not menu_item(tray, "Resume").enabled
    menu_item(tray, "Pause")(tray.icon)
    assert served.platform.pauses == [True]
    assert colour_of(tray) == rgb(AMBER)
    assert not menu_item(tray, "Pause").enabled
    assert menu_item(tray, "Resume").enabled
    menu_item(tray, "Resume")(tray.icon)
    assert served.platform.pauses == [True, False]
    assert colour_of(tray) == rgb(GREEN)


def test_open_console_opens_the_link_with_the_token(tray: Tray, served: Served) -> None:
    menu_item(tray, "Open console")(tray.icon)
    assert tray.opened == [served.access.url_with_token]  # type: ignore[attr-defined]


def test_a_console_that_stopped_turns_the_icon_grey(pystray: Any, tmp_path: Path) -> None:
    with (
        serve_simulator_in_thread(SimulatorConfig()) as runtime,
        serve_console(runtime, tmp_path) as served,
    ):
        served.agent.step()
        client = ConsoleClient(served.access.url, served.access.token)
        tray = Tray(pystray, client, on_quit=lambda: None)
        tray.refresh()
        assert colour_of(tray) == rgb(GREEN)
    tray.refresh()
    assert colour_of(tray) == rgb(GREY)
    assert "does not answer" in tray.icon.title
    client.close()


def test_an_offline_runtime_turns_the_icon_red(pystray: Any, tmp_path: Path) -> None:
    with serve_console(unused_url(), tmp_path) as served:  # no runtime answers there
        served.agent.step()
        client = ConsoleClient(served.access.url, served.access.token)
        tray = Tray(pystray, client, on_quit=lambda: None)
        tray.refresh()
        client.close()
    assert colour_of(tray) == rgb(RED)


def test_quit_stops_the_agent(tray: Tray) -> None:
    menu_item(tray, "Quit")(tray.icon)
    assert tray.quits == [True]  # type: ignore[attr-defined]


def test_without_a_desktop_there_is_no_tray_and_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSTRAY_BACKEND", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr("sys.platform", "linux")
    module, why = load_pystray()
    assert module is None
    assert why == "no desktop (DISPLAY is unset)"


def test_a_tray_of_the_link_file_follows_a_restarted_agent(pystray: Any, tmp_path: Path) -> None:
    with serve_simulator_in_thread(SimulatorConfig()) as runtime:
        with serve_console(runtime, tmp_path) as first:
            client = ConsoleClient.from_file(first.address_file)
            assert client is not None
            tray = Tray(pystray, client, on_quit=lambda: None)
            tray.refresh()
            assert "not registered" in tray.icon.title
        with serve_console(runtime, tmp_path) as second:  # a new port and a new token
            second.agent.step()
            tray.refresh()
            assert colour_of(tray) == rgb(GREEN)
            assert client.link == second.access.url_with_token
    client.close()


def test_no_link_file_means_no_client(tmp_path: Path) -> None:
    assert ConsoleClient.from_file(tmp_path / "console.json") is None
