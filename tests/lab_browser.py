"""A real headless Chromium (Debian's chromium + chromium-driver, through Selenium) for the Lab's
tests, offline: every host but the loopback address fails to resolve, and the browser's log is
kept so a test can assert that no request failed. Helpers to wait, click on the map at lon/lat,
read tiles the page shows, and save screenshots."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
FLAGS = " ".join(
    [
        "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run",
        "--disable-background-networking --disable-component-update --disable-sync",
        "--disable-default-apps --window-size=1280,800 --force-device-scale-factor=1",
    ]
).split() + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]


def start_chromium(profile: Path):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail(
            f"the Lab's browser tests need Debian's chromium and chromium-driver: {INSTALL}"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    # the page itself at 1280 x 800 (a window of that size has less room for the page)
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    return d


def wait(driver, script: str, timeout: float = 60, what: str = ""):
    """Run ``script`` (a JS expression) until it is truthy; returns its value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(f"return ({script})")
        if value:
            return value
        time.sleep(0.25)
    page = driver.execute_script("return document.querySelector('main').innerText")[-3000:]
    raise AssertionError(f"timed out waiting for {what or script}; the page says:\n{page}")


def click_map(driver, lon: float, lat: float) -> None:
    """A click on the map at lon/lat (through Leaflet's own projection of the point)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    x, y = driver.execute_script(
        "const p = geotuneLab.map.latLngToContainerPoint([arguments[1], arguments[0]]);"
        "return [p.x, p.y]",
        lon,
        lat,
    )
    el = driver.find_element(By.ID, "map")
    w, h = el.size["width"], el.size["height"]
    assert 0 < x < w and 0 < y < h, f"({lon}, {lat}) is off the map at ({x}, {y})"
    ActionChains(driver).move_to_element_with_offset(
        el, int(x - w / 2), int(y - h / 2)
    ).click().perform()
    time.sleep(0.15)


def tiles_shown(driver, pane: str) -> list[dict]:
    """The loaded tile images of a map pane: their size and count of non-transparent pixels."""
    return driver.execute_script(
        """
        const out = [];
        for (const img of document.querySelectorAll(`.leaflet-${arguments[0]}-pane img.leaflet-tile-loaded`)) {
          const c = document.createElement('canvas');
          c.width = img.naturalWidth; c.height = img.naturalHeight;
          const g = c.getContext('2d');
          g.drawImage(img, 0, 0);
          const d = g.getImageData(0, 0, c.width, c.height).data;
          let opaque = 0;
          for (let i = 3; i < d.length; i += 4) if (d[i] > 0) opaque++;
          out.push({w: img.naturalWidth, h: img.naturalHeight, opaque});
        }
        return out;""",
        pane,
    )


def screenshot(driver, folder: Path, name: str, keep: str | None = None) -> Path:
    """Save the page as ``folder/name.png`` and check it is not blank; with GEOTUNE_LAB_SHOTS
    set (a folder), pages with a ``keep`` name are also saved there (the README's pictures)."""
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    img = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
    assert img.shape[:2] == (800, 1280), img.shape
    colours = len(np.unique(img.reshape(-1, 3)[::7], axis=0))
    assert img.std() > 10 and colours > 50, f"{path} looks blank ({colours} colours)"
    out = os.environ.get("GEOTUNE_LAB_SHOTS")
    if out and keep:  # 256 colours: a third of the bytes for the README, legible all the same
        Path(out).mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").quantize(256).save(Path(out) / f"{keep}.png", optimize=True)
    return path


def failed_requests(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    """Entries of the browser log that report a failed request or an error, except those
    containing one of ``allowed`` (requests a test makes fail on purpose)."""
    bad = []
    for e in driver.get_log("browser"):
        if e["level"] != "SEVERE" and "net::" not in e["message"]:
            continue
        if not any(a in e["message"] for a in allowed):
            bad.append(e["message"])
    return bad


def point_on(driver, css: str) -> tuple[float, float]:
    """A point (map container pixels) where the topmost element is the first ``css`` match
    that has one: a place to hover or click on a polygon of the map."""
    xy = driver.execute_script(
        """
        const map = document.querySelector('#map').getBoundingClientRect();
        for (const el of document.querySelectorAll(arguments[0])) {
          const b = el.getBoundingClientRect();
          for (let i = 1; i < 10; i++) for (let j = 1; j < 10; j++) {
            const x = b.left + b.width * i / 10, y = b.top + b.height * j / 10;
            if (document.elementFromPoint(x, y) === el) return [x - map.left, y - map.top];
          }
        }
        return null;""",
        css,
    )
    assert xy, f"no visible {css} on the map"
    return xy


def hover(driver, x: float, y: float) -> None:
    """Move the mouse to map container pixel (x, y)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    el = driver.find_element(By.ID, "map")
    w, h = el.size["width"], el.size["height"]
    chain = ActionChains(driver).move_to_element_with_offset(el, int(x - w / 2), int(y - h / 2))
    chain.pause(0.3).perform()


def open_page(driver, url: str) -> None:
    """Load ``url``, keeping the timing entry of every request it makes (the browser keeps 250
    by default; the tests read them to see what was asked)."""
    driver.get(url)
    driver.execute_script("performance.setResourceTimingBufferSize(1000000)")


def requested(driver) -> list[str]:
    """The URLs the page has requested since it loaded (documents, scripts, fetches, images)."""
    return driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
