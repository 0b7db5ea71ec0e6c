"""Headless Chromium for the console's test: Debian's ``chromium`` driven by its ``chromium-driver``
through Selenium, with flags that work as root in a container, and a screenshot helper.

Why Selenium with the system driver: the driver ships with the browser (same version, one apt
install in ``scripts/setup.sh``), nothing is downloaded at test time.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1360,900", "--lang=en-US")


def missing() -> str | None:
    """Why no browser test can run here, or None when it can."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} is missing: install Debian's {package} (bash scripts/setup.sh does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is missing: .venv/bin/pip install -e '.[dev]'"
    return None


class Browser:
    """One headless Chromium window: ``open``, ``find``, ``wait_for``, ``shot``."""

    def __init__(self, driver: Any, shots: list[Path], shot_dir: Path) -> None:
        self.driver = driver
        self.shots = shots
        self.shot_dir = shot_dir

    def open(self, url: str) -> None:
        self.driver.get(url)

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait_for(self, condition: Callable[[], Any], what: str, timeout: float = 10) -> Any:
        """Poll ``condition`` (a callable returning something truthy) until it holds."""
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
            WebDriverException,
        )
        from selenium.webdriver.support.ui import WebDriverWait

        def check(_: Any) -> Any:
            try:
                return condition()
            except (StaleElementReferenceException, NoSuchElementException, IndexError, KeyError):
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(check)
        except WebDriverException as exc:
            raise AssertionError(f"timed out waiting for {what}; page text:\n{self.text()[:2000]}") from exc

    def click(self, css: str) -> None:
        """Click the element once it is there and visible (the page may be re-rendering it)."""
        from selenium.common.exceptions import ElementNotInteractableException

        def attempt() -> bool:
            try:
                self.find(css).click()
            except ElementNotInteractableException:
                return False
            return True

        self.wait_for(attempt, f"{css} to be clickable")

    def text(self) -> str:
        return str(self.find("body").text)

    def shot(self, name: str) -> Path:
        """A screenshot of the whole page (the window grown to the page's height)."""
        height = int(self.driver.execute_script("return document.documentElement.scrollHeight"))
        self.driver.set_window_size(1360, max(900, min(height + 40, 4000)))
        path = self.shot_dir / f"{len(self.shots) + 1:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1360, 900)
        self.shots.append(path)
        return path


@contextmanager
def chromium(shot_dir: Path) -> Iterator[Browser]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="console-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield Browser(driver, [], shot_dir)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
