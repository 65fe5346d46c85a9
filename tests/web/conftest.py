"""Browser fixtures: a real headless Chromium (Debian's package) driven by
Playwright, against the shared local appliance (real vault, console and
PostgreSQL). ``as_role("MU")`` gives a page signed in as that role's test
user in a browser context of its own; ``shot(page, "name")`` saves a
screenshot under test-artifacts/web/<test>/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from kura.devserver import LocalAppliance
from tests.conftest import ARTIFACTS
from tests.support import Api

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 768}  # the office screen the console is made for


def chromium_path() -> str:
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    found = shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is missing: ./build.sh test installs Debian's chromium package")
    return found


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    b = playwright.chromium.launch(
        executable_path=chromium_path(),
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-background-networking", "--no-first-run"],
    )
    yield b
    b.close()


@pytest.fixture
def new_context(browser: Browser) -> Iterator[Callable[..., BrowserContext]]:
    """New browser contexts (each a separate cookie jar), closed after the test."""
    made: list[BrowserContext] = []

    def make(locale: str = "ja-JP") -> BrowserContext:
        context = browser.new_context(
            viewport=VIEWPORT, ignore_https_errors=True, locale=locale,  # type: ignore[arg-type]
            accept_downloads=True,
        )
        context.set_default_timeout(15_000)
        made.append(context)
        return context

    yield make
    for context in made:
        context.close()


def session_cookie(base: str, token: str) -> dict[str, object]:
    host = urlsplit(base).hostname
    return {"name": "kura_session", "value": token, "domain": host, "path": "/",
            "secure": True, "httpOnly": True, "sameSite": "Strict"}


@pytest.fixture(scope="session")
def web_tokens() -> dict[str, str]:
    """One browser session per role, shared by the tests (a second factor is
    good once per 30 s, so signing SA and DA in again and again is slow)."""
    return {}


@pytest.fixture
def as_role(
    appliance: LocalAppliance, users: dict[str, Api], web_tokens: dict[str, str],
    new_context: Callable[..., BrowserContext],
) -> Callable[..., Page]:
    """A page signed in as the test user of ``role``, in a browser context of
    its own. The session is shared with other tests unless ``fresh=True``
    (then signing out ends only this one); it is never the API client's."""

    def make(role: str, fresh: bool = False) -> Page:
        user = users[role]
        token = None if fresh else web_tokens.get(role)
        if token is not None:
            alive = user.anonymous().get("/session", token=token)
            token = token if alive.status == 200 else None
        if token is None:
            token = user.sign_in(user.username, user.password, user.totp_secret).token or ""
            if not fresh:
                web_tokens[role] = token
        context = new_context()
        context.add_cookies([session_cookie(appliance.url, token)])  # type: ignore[list-item]
        return context.new_page()

    return make


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Page, str], Path]:
    """Save a full-page screenshot as a test artefact; returns its path."""
    folder = ARTIFACTS / "web" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1, 1000))

    def take(page: Page, name: str) -> Path:
        path = folder / f"{next(counter):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def base_url(appliance: LocalAppliance) -> str:
    return appliance.url
