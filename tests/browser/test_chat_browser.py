"""The chat demo's page in headless Chromium (Debian's, never a downloaded one), through Playwright.

Two browser contexts (two users, separate localStorage) open the page of one
chat server running two worker processes on one port (``--processes 2``)
that share one real redis-server. They chat through the UI, see each other's
messages and presence, and see HTML as literal text. Then one page's worker
is killed with SIGKILL while the other page sends numbered messages at a
steady rate: the page reconnects (to the surviving worker or its
replacement), resumes from the last offset it showed, and ends up showing
every numbered message once, in order. Every wait is a bounded Playwright
``expect`` (or a bounded poll); with ``CI`` set a missing Chromium or
Playwright fails.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_fixtures import REPO, Processes, missing, wait_until

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
NUMBERED = 60  # numbered messages sent across the kill
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


def serving_process(page: Any, nick: str) -> int:
    """The worker that serves ``nick``, as the page's presence list shows it."""
    from playwright.sync_api import expect

    item = page.locator("#users li", has_text=re.compile(f"^{re.escape(nick)}$"))
    expect(item).to_have_attribute("data-process", re.compile(r"^\d+$"))
    return int(item.get_attribute("data-process"))


def numbered_texts(page: Any) -> list[str]:
    texts: list[str] = page.eval_on_selector_all("#messages li .text", "items => items.map(i => i.textContent)")
    return [t for t in texts if re.fullmatch(r"n \d+", t)]


def test_pages_chat_and_a_killed_worker_loses_nothing(procs: Processes, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    JS_ERRORS.clear()
    redis = procs.redis()
    server = procs.chat(
        redis.url, "--processes", "2", "--rate", "50", "--burst", "50", "--history", "200", "--presence-ttl", "3"
    )
    alice = open_chat(browser, server.http_url, "alice")
    bob = open_chat(browser, server.http_url, "bob")
    for page in (alice, bob):
        expect(page.locator("#users li")).to_have_text(["alice", "bob"])
        expect(page.locator("#user-count")).to_have_text("2")

    # Put bob on the other worker: the kernel picks one per connection, so reconnect (bounded) until it differs.
    alice_pid = serving_process(alice, "alice")
    for _ in range(30):
        if serving_process(bob, "bob") != alice_pid:
            break
        connections = bob.evaluate("window.chatClient.connections")
        bob.evaluate("window.chatClient.reconnectNow()")
        # On "open" the page forgets its presence list; bob's own entry comes back with the new subscription.
        bob.wait_for_function(
            "n => window.chatClient.connections > n && window.chatClient.state === 'open'", arg=connections
        )
    bob_pid = serving_process(bob, "bob")
    assert bob_pid != alice_pid, "30 connections all went to one worker"
    expect(alice.locator("#users li", has_text="bob")).to_have_attribute("data-process", str(bob_pid))

    send(alice, "Hi Bob! Is the demo working? ✓")
    expect(bob.locator("#messages li .text").last).to_have_text("Hi Bob! Is the demo working? ✓")
    expect(bob.locator("#messages li .nick").last).to_have_text("alice")
    send(bob, "Loud and clear, Alice: you are on another process.", click=True)
    expect(alice.locator("#messages li .text").last).to_have_text("Loud and clear, Alice: you are on another process.")
    expect(alice.locator("#messages li .nick").last).to_have_text("bob")

    # HTML is shown as text: no <b> element anywhere in the list.
    send(alice, "<b>x</b>")
    for page in (alice, bob):
        expect(page.locator("#messages li .text").last).to_have_text("<b>x</b>")
        assert page.evaluate("document.querySelectorAll('#messages b, #messages script').length") == 0

    # Bob sends n 1 .. n 60, one every 50 ms; alice's worker is killed after n 20 reached her.
    bob.evaluate(
        """(count) => {
            let n = 0;
            const timer = setInterval(() => {
                if (n >= count) { clearInterval(timer); return; }
                if (window.chatClient.publish("room:lobby", {text: "n " + (n + 1)})) n += 1;
            }, 50);
        }""",
        NUMBERED,
    )
    expect(alice.locator("#messages li .text", has_text=re.compile(r"^n 20$"))).to_have_count(1)
    os.kill(alice_pid, signal.SIGKILL)
    expect(alice.locator("#status")).not_to_have_attribute("data-state", "open")
    expect(alice.locator("#status")).to_have_text("Connected as alice", timeout=RECONNECT_MS)
    last = f"n {NUMBERED}"
    for page in (alice, bob):
        expect(page.locator("#messages li .text", has_text=re.compile(f"^{last}$"))).to_have_count(
            1, timeout=RECONNECT_MS
        )
    expected = [f"n {k}" for k in range(1, NUMBERED + 1)]
    for page in (alice, bob):
        assert numbered_texts(page) == expected  # none missing, none twice, in order
    # She is served by another process now; her old entry goes once the dead worker's presence expires.
    alice_item = bob.locator("#users li", has_text=re.compile(r"^alice$"))
    expect(alice_item).to_have_attribute("data-process", re.compile(rf"^(?!{alice_pid}$)\d+$"), timeout=RECONNECT_MS)
    assert alice.locator("#messages li.system", has_text="reconnecting").count() >= 1
    assert alice.locator("#messages li.system", has_text="could not be recovered").count() == 0

    send(alice, "Back, and I missed nothing.")
    expect(bob.locator("#messages li .text").last).to_have_text("Back, and I missed nothing.")
    wait_until(lambda: server.running, 5, "the chat server's supervisor")
    # The README's screenshot is refreshed on request only, so a test run leaves the tree clean.
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path / "chat.png"
    alice.evaluate("document.querySelector('#messages li.system').scrollIntoView({block: 'center'})")
    alice.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000  # a real rendering, not an empty page
    assert JS_ERRORS == []


def test_a_restart_without_redis_is_reported_as_lost_history(procs: Processes, browser: Any) -> None:
    """One process, history in memory: a restart makes a new epoch, and the page says so instead of hiding it."""
    from playwright.sync_api import expect

    JS_ERRORS.clear()
    server = procs.chat()
    alice = open_chat(browser, server.http_url, "alice")
    assert alice.evaluate("window.chatClient.ws.url").endswith("/channels?batch=1")  # joined envelopes
    send(alice, "before the restart")
    expect(alice.locator("#messages li .text").last).to_have_text("before the restart")
    assert server.stop() == 0
    expect(alice.locator("#status")).not_to_have_attribute("data-state", "open")
    server.start()  # same port, empty history: a new epoch
    expect(alice.locator("#status")).to_have_text("Connected as alice", timeout=RECONNECT_MS)
    expect(alice.locator("#messages li.system", has_text="could not be recovered")).to_have_count(1)
    expect(alice.locator("#notice")).to_have_text("Reconnected, but some messages were lost.")
    send(alice, "after the restart")
    expect(alice.locator("#messages li .text")).to_have_text(["before the restart", "after the restart"])
    gaps = alice.evaluate("[...window.chatClient.subs.values()][0].gaps")
    assert gaps == 1
    assert JS_ERRORS == []
