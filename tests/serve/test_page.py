"""The page at ``/`` in a real browser (headless Chromium through selenium) against a
real ``modrec serve`` process: load a user, see the history and the recommendations,
click one and watch both change.

Skipped unless selenium, Chromium and chromedriver are installed (Debian: ``apt-get
install chromium chromium-driver``; elsewhere point MODREC_CHROME and
MODREC_CHROMEDRIVER at the two binaries). With MODREC_SCREENSHOT=file.png the page is
saved after the click (1280x900), e.g. for docs/serve-page.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modrec.config import build_config
from modrec.train import train
from support import free_port, start_serve

_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find(variable: str, names: tuple[str, ...]) -> str | None:
    given = os.environ.get(variable)
    if given:
        return given if Path(given).is_file() else None
    return next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome = _find("MODREC_CHROME", _BROWSERS)
    driver_path = _find("MODREC_CHROMEDRIVER", ("chromedriver",))
    if chrome is None or driver_path is None:
        pytest.skip("no Chromium/chromedriver found (apt-get install chromium chromium-driver, "
                    "or set MODREC_CHROME and MODREC_CHROMEDRIVER)")
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        options.add_argument(flag)
    # An explicit driver path: selenium never tries to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _ids(driver: Any, list_id: str) -> list[str]:
    """The item ids of a list, read in one script (no stale elements mid-redraw)."""
    return driver.execute_script(  # type: ignore[no-any-return]
        "return [...document.querySelectorAll(arguments[0])].map(li => li.dataset.itemId)",
        f"#{list_id} > li")


def _text(driver: Any, selector: str) -> list[str]:
    return driver.execute_script(  # type: ignore[no-any-return]
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)",
        selector)


@pytest.mark.slow
def test_page_shows_and_updates_recommendations(tmp_path: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = train(build_config("ml-100k", "sasrec", overrides=[
        "train.epochs=1", "model.max_len=30", "model.num_blocks=1"]), tmp_path / "run",
        progress=False)
    port = free_port()
    server = start_serve(run, tmp_path / "state.db", port, tmp_path / "serve.log")
    wait = WebDriverWait(browser, 20)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        # The model list comes from /readyz.
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        assert _text(browser, "#model option")[0].startswith("run (sasrec on ml-100k")

        browser.find_element(By.ID, "user").send_keys("196")
        browser.find_element(By.ID, "load").click()
        wait.until(lambda d: len(_ids(d, "recs")) == 10 and _ids(d, "history"))
        history, recs = _ids(browser, "history"), _ids(browser, "recs")
        assert len(history) == 39  # ml-100k's user 196, all shown, newest first
        assert all(_text(browser, "#recs .title")) and all(_text(browser, "#history .title"))
        assert browser.find_element(By.ID, "source").text == "user"
        assert not set(recs) & set(history)  # the seen items are left out
        assert not browser.find_element(By.ID, "error").is_displayed()

        # Title search answers, or (no text embeddings for ml-100k) says it cannot; an
        # item id looked up directly shows the item and its neighbours.
        browser.find_element(By.ID, "search-query").send_keys("star wars")
        browser.find_element(By.ID, "search-button").click()
        wait.until(lambda d: d.find_element(By.ID, "search-message").text)
        message = browser.find_element(By.ID, "search-message").text
        assert "not available" in message or _ids(browser, "search-results"), message
        browser.find_element(By.ID, "item-id").send_keys("50")
        browser.find_element(By.ID, "item-button").click()
        wait.until(lambda d: _ids(d, "search-results")[:1] == ["50"])
        assert _text(browser, "#search-results .title")[0] == "Star Wars"

        first = recs[0]
        title = _text(browser, "#recs > li:first-child .title")[0]
        browser.find_element(By.CSS_SELECTOR, "#recs > li:first-child button.watch").click()
        wait.until(lambda d: (_ids(d, "history") or [None])[0] == first)
        after = _ids(browser, "history")
        assert after[1:] == history and _text(browser, "#history .title")[0] == title
        new_recs = _ids(browser, "recs")
        assert len(new_recs) == 10 and first not in new_recs and new_recs != recs
        assert "Recorded" in browser.find_element(By.ID, "status").text
        # The event is on the server, not only on the page.
        stored = httpx.get(f"http://127.0.0.1:{port}/v1/users/196/history",
                           params={"limit": 1}).json()["items"]
        assert [h["item_id"] for h in stored] == [first]

        if screenshot := os.environ.get("MODREC_SCREENSHOT"):
            # The viewport itself 1280x900 (the window's would include its frame).
            browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(screenshot)

        # A 4xx shows its detail: an unknown item id.
        browser.find_element(By.ID, "item-id").clear()
        browser.find_element(By.ID, "item-id").send_keys("no-such-item")
        browser.find_element(By.ID, "item-button").click()
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "404" in browser.find_element(By.ID, "error").text
        assert "no-such-item" in browser.find_element(By.ID, "error").text
    finally:
        server.kill()
        server.wait(timeout=10)
