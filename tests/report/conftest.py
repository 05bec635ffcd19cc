"""Fixtures for the report and labelling pages: a synthetic run folder and a real headless Chromium.

The browser is Debian's ``chromium`` (``make browser`` installs it), driven by Playwright with
``executable_path``: ``playwright install`` is never run (it downloads a browser build).  Every
request the page makes is recorded and anything that leaves the machine is refused, so a test
also shows that the page needs no network.  Without chromium the browser tests skip, except in
CI (``CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "judging"))  # judge_standins

from run_folder import make_run_folder  # noqa: E402

CHROMIUM = os.environ.get("CAI_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@pytest.fixture
def run_folder(tmp_path) -> Path:
    return make_run_folder(tmp_path)


def _missing(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: `make test` installs it (make browser; pip install -e '.[dev]')")
    pytest.skip(f"{reason} (make browser installs it as root)")


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One Chromium per test module, with a fresh profile (closed before other modules' event loops run)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _missing(f"{CHROMIUM} is not installed")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900})
        yield context
        context.close()


class Browser:
    """A page, the requests it made, the requests refused, and screenshots in the test's tmp dir."""

    def __init__(self, page, folder: Path):
        self.page = page
        self.folder = folder
        self.requests: list[str] = []
        self.refused: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        path = self.folder / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def browser(chromium, tmp_path):
    page = chromium.new_page()
    seen = Browser(page, tmp_path)

    def route(route):
        url = route.request.url
        seen.requests.append(url)
        parsed = urlparse(url)
        if parsed.scheme in ("file", "data", "about") or parsed.hostname in LOCAL_HOSTS:
            route.continue_()
        else:
            seen.refused.append(url)
            route.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.on("dialog", lambda dialog: (seen.dialogs.append(dialog.message), dialog.dismiss()))
    yield seen
    page.close()
