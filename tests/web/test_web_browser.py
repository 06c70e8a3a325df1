"""The subscriber pages in a real headless Chromium, as a reader uses them.

Sign up through the form, confirm with the button on the mailed link's page, unsubscribe with
the button of a real issue's link; the sign-up page on a phone (no sideways scrolling, usable by keyboard alone).
The service runs under uvicorn on 127.0.0.1 (see test_web.py); every request to anywhere else
is aborted and fails the test, and so does any Content-Security-Policy violation: the pages
must work with no script and nothing fetched.

Needs Debian's ``/usr/bin/chromium``; Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from pipeline.audience.subscribers import add
from tests.conftest import Newsletter
from tests.support.browser import launched_chromium, require_chromium
from tests.web.test_web import link_in, list_unsubscribe, running_site, send_issue_one

require_chromium()  # the one thing a clone may lack (apt, not pip): skip, saying how to get it
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.xdist_group("chromium"),
]  # one chromium per run

HEIGHT = 740
BUTTON_BLUE = "rgb(10, 88, 202)"  # page.css: the button colour, proof the stylesheet was applied


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as chromium:
        yield chromium


class Tab:
    """One page in its own browser context; remembers what it was refused and what it complained about."""

    def __init__(self, browser: Any, width: int, phone: bool) -> None:
        self.context = browser.new_context(
            viewport={"width": width, "height": HEIGHT},
            device_scale_factor=1,
            is_mobile=phone,
            has_touch=phone,
        )
        self.blocked: list[str] = []
        self.console: list[str] = []
        self.context.route("**/*", self._only_local)
        self.page = self.context.new_page()
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))

    def _only_local(self, route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def heading(self) -> str:
        return str(self.page.locator("h1").inner_text())

    def check_clean(self) -> None:
        assert not self.blocked, f"requests left 127.0.0.1: {self.blocked}"
        # A blocked style or form action shows up as a console error; favicon.ico's 404 is fine.
        problems = [line for line in self.console if "favicon" not in line and "404" not in line]
        assert not problems, problems
        button = self.page.locator("button")
        if button.count():
            assert button.first.evaluate("b => getComputedStyle(b).backgroundColor") == BUTTON_BLUE


@pytest.fixture
def open_tab(browser: Any) -> Iterator[Callable[..., Tab]]:
    tabs: list[Tab] = []

    def open_(width: int = 1024, phone: bool = False) -> Tab:
        tab = Tab(browser, width, phone)
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        tab.context.close()


def test_sign_up_then_confirm_from_the_mailed_link(
    newsletter: Newsletter, open_tab: Callable[..., Tab]
) -> None:
    tab = open_tab()
    with running_site(newsletter) as site:
        tab.page.goto(f"{site.url}/")
        tab.check_clean()
        tab.page.get_by_label("Email address").fill("ada@example.org")
        tab.page.locator("#name").fill("Ada Lovelace")
        with tab.page.expect_navigation():
            tab.page.get_by_role("button", name="Subscribe").click()
        assert tab.heading() == "Check your inbox"
        site.wait_handled(1)
        assert site.status("ada@example.org") == "pending"

        [message] = site.mails()
        assert message["To"] == "ada@example.org"  # the name typed in the form is not mailed
        tab.page.goto(link_in(message, "confirm"))
        assert tab.heading() == "Confirm your subscription to Crate Notes"
        assert site.status("ada@example.org") == "pending"  # opening the link changed nothing
        tab.check_clean()
        with tab.page.expect_navigation():
            tab.page.get_by_role("button", name="Confirm my subscription").click()
        assert tab.heading() == "You're subscribed"
        assert site.status("ada@example.org") == "active"
        assert site.changes("ada@example.org")[-1] == ("pending", "active", "confirmed by link")
        tab.check_clean()


def test_unsubscribe_with_the_button_of_a_real_issue(
    newsletter: Newsletter, open_tab: Callable[..., Tab], monkeypatch: pytest.MonkeyPatch
) -> None:
    tab = open_tab()
    with running_site(newsletter) as site:
        add(site.db(), "reader@example.org", status="active")
        send_issue_one(newsletter, monkeypatch)
        [message] = site.mails()
        html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]
        # The footer link a reader clicks is the one the headers give mail providers.
        [url] = re.findall(r'<a href="([^"]+)"[^>]*>Unsubscribe</a>', html)
        assert url == list_unsubscribe(message)

        tab.page.goto(url)
        assert tab.heading() == "Unsubscribe from Crate Notes?"
        assert site.status("reader@example.org") == "active"  # opening the link changed nothing
        tab.check_clean()
        with tab.page.expect_navigation():
            tab.page.get_by_role("button", name="Unsubscribe").click()
        assert tab.heading() == "You're unsubscribed"
        assert site.status("reader@example.org") == "unsubscribed"
        assert site.changes("reader@example.org")[-1] == ("active", "unsubscribed", "unsubscribe page")
        tab.check_clean()


_OVERFLOW_JS = """
() => {
  const vw = window.innerWidth;
  const wide = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.width && (r.right > vw + 0.5 || r.left < -0.5)) wide.push(el.tagName + '#' + el.id + ' ' + r.left + '..' + r.right);
  }
  return {vw, screen: screen.width, scroll: document.documentElement.scrollWidth, wide};
}
"""

_FOCUS_JS = """
() => {
  const el = document.activeElement;
  const style = getComputedStyle(el);
  return {id: el.id || el.tagName.toLowerCase(), outline: style.outlineStyle + ' ' + style.outlineWidth};
}
"""


@pytest.mark.parametrize("width", [320, 375])
def test_sign_up_page_fits_a_phone_and_works_by_keyboard(
    newsletter: Newsletter, open_tab: Callable[..., Tab], width: int
) -> None:
    tab = open_tab(width, phone=True)
    with running_site(newsletter) as site:
        tab.page.goto(f"{site.url}/subscribe")
        layout = tab.page.evaluate(_OVERFLOW_JS)
        # The meta viewport is honoured (no zoomed-out 980 px layout) and nothing sticks out sideways.
        assert layout["screen"] == width and layout["vw"] == width, layout
        assert layout["scroll"] <= width and not layout["wide"], layout

        focused = []
        for _ in range(5):
            tab.page.keyboard.press("Tab")
            focused.append(tab.page.evaluate(_FOCUS_JS))
        order = [f["id"] for f in focused]
        assert order[:3] == ["email", "name", "button"], order
        assert "website" not in order  # the honeypot is out of reach, and out of sight
        assert not tab.page.locator("#website").is_visible()
        # Keyboard focus is visible on each stop.
        assert all(f["outline"] == "solid 3px" for f in focused[:3]), focused

        # And the form can be sent from the keyboard alone.
        tab.page.goto(f"{site.url}/subscribe")
        tab.page.keyboard.press("Tab")
        tab.page.keyboard.type("thumbs@example.org")
        with tab.page.expect_navigation():
            tab.page.keyboard.press("Enter")
        assert tab.heading() == "Check your inbox"
        assert tab.page.evaluate(_OVERFLOW_JS)["scroll"] <= width
        site.wait_handled(1)
        assert site.status("thumbs@example.org") == "pending"
        tab.check_clean()
