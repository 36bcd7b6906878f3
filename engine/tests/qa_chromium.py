"""Headless Debian chromium driven by selenium through Debian's chromedriver: no browser download."""

import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1366,800")


def start_chromium():
    """A fresh headless chromium with its own profile folder; the caller quits it (and the folder goes)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip("Debian chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="medgen-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.medgen_profile = profile
    return driver


def quit_chromium(driver) -> None:
    profile = getattr(driver, "medgen_profile", None)
    driver.quit()
    if profile:
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[str]:
    """Console messages at SEVERE level (script errors, failed loads) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def save_screenshot(driver, path) -> None:
    """The window as a small PNG (256-colour palette): screenshots for the README stay tens of kB."""
    import io
    import os
    from pathlib import Path

    from PIL import Image

    folder = os.environ.get("MEDGEN_SCREENSHOT_DIR")  # set it to refresh Resources/Screenshots
    path = Path(folder) / Path(path).name if folder else Path(path)
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
