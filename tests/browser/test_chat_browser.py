"""The chat demo's page in headless Chromium (Debian's, never a downloaded one), through Playwright.

Two browser contexts (two users, separate localStorage) open the page
served by one chat process, chat through the UI, see each other's messages
and presence, see HTML as literal text, and reconnect by themselves when the
server process restarts on the same port. Every wait is a bounded Playwright
``expect``; with ``CI`` set a missing Chromium or Playwright fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_fixtures import REPO, Processes, missing

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = REPO / "docs" / "chat.png"
STEP_MS = 10_000  # one UI step
RECONNECT_MS = 30_000  # the page's backoff is 0.5 s doubling up to 10 s
JS_ERRORS: list[str] = []  # uncaught exceptions in the pages


@pytest.fixture
def procs() -> Iterator[Processes]:
    group = Processes()
    try:
        yield group
    finally:
        print(group.logs())  # shown by pytest for a failed test only
        group.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing(f"Playwright is not installed ({exc}); pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} not found; apt-get install chromium (never a downloaded browser)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            yield chromium
        finally:
            chromium.close()


def open_chat(browser: Any, url: str, nick: str) -> Any:
    """A new user (own context, so own localStorage) on the page, nickname set through the UI."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 980, "height": 620}, locale="en-GB", timezone_id="UTC")
    page = context.new_page()
    page.set_default_timeout(STEP_MS)
    page.on("pageerror", lambda exc: JS_ERRORS.append(f"{nick}: {exc}"))
    page.goto(url)
    expect(page.locator("#status")).to_have_attribute("data-state", "open")
    page.fill("#nick", nick)
    page.press("#nick", "Enter")
    expect(page.locator("#status")).to_have_text(f"Connected as {nick}")
    return page


def send(page: Any, text: str, *, click: bool = False) -> None:
    page.fill("#text", text)
    if click:
        page.click("#send")
    else:
        page.press("#text", "Enter")


def test_two_users_chat_through_the_page_and_survive_a_restart(procs: Processes, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    JS_ERRORS.clear()
    server = procs.chat()
    alice = open_chat(browser, server.http_url, "alice")
    bob = open_chat(browser, server.http_url, "bob")
    for page in (alice, bob):
        expect(page.locator("#users li")).to_have_text(["alice", "bob"])
        expect(page.locator("#user-count")).to_have_text("2")

    send(alice, "Hi Bob! Is the demo working? ✓")
    expect(bob.locator("#messages li .text").last).to_have_text("Hi Bob! Is the demo working? ✓")
    expect(bob.locator("#messages li .nick").last).to_have_text("alice")
    send(bob, "Loud and clear, Alice.", click=True)
    expect(alice.locator("#messages li .text").last).to_have_text("Loud and clear, Alice.")
    expect(alice.locator("#messages li .nick").last).to_have_text("bob")

    # HTML is shown as text: no <b> element anywhere in the list.
    send(alice, "<b>x</b>")
    for page in (alice, bob):
        expect(page.locator("#messages li .text").last).to_have_text("<b>x</b>")
        assert page.locator("#messages b").count() == 0
        assert page.evaluate("document.querySelectorAll('#messages b, #messages script').length") == 0

    send(bob, "Multi-process mode shares rooms, history and presence through Redis.")
    expect(alice.locator("#messages li .text").last).to_have_text(
        "Multi-process mode shares rooms, history and presence through Redis."
    )
    send(alice, "Nice. Restart the server and watch this page reconnect by itself, with exponential backoff.")
    expect(bob.locator("#messages li .text").last).to_contain_text("reconnect by itself")
    # The README's screenshot is refreshed on request only, so a test run leaves the tree clean.
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "chat.png"
    alice.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000  # a real rendering, not an empty page

    # Restart the server on the same port: both pages reconnect on their own.
    assert server.stop() == 0
    for page in (alice, bob):
        expect(page.locator("#status")).not_to_have_attribute("data-state", "open")
    server.start()
    for page, nick in ((alice, "alice"), (bob, "bob")):
        expect(page.locator("#status")).to_have_text(f"Connected as {nick}", timeout=RECONNECT_MS)
        expect(page.locator("#users li")).to_have_text(["alice", "bob"])
    send(alice, "Back after the restart")
    expect(bob.locator("#messages li .text").last).to_have_text("Back after the restart")
    send(bob, "Me too", click=True)
    expect(alice.locator("#messages li .text").last).to_have_text("Me too")
    # Earlier messages are still on the page (the restarted server's history is empty).
    expect(alice.locator("#messages li .text").first).to_have_text("Hi Bob! Is the demo working? ✓")
    assert JS_ERRORS == []
