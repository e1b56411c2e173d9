"""The console in a real headless Chromium (issue 6), against the real server.

`flashguard serve` runs as a subprocess on a loopback port with a configuration whose activity
budget fills after three orders. Chromium (Debian's `chromium` and `chromium-driver`, driven by
Selenium) signs in with the admin token, watches the activity fuse while a scripted burst of
orders goes in over HTTP, edits the risk multiplier in the page, and saves a screenshot to
`$FLASHGUARD_SCREENSHOT` (default: the test's tmp_path).

Without Chromium the test is skipped, unless `CI` is set: there a missing browser is a failure
(`.ci/browser-deps.sh` installs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

TOKEN = "console-test-admin-token"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
WAIT = 20.0  # every explicit wait in the page is bounded by this
ROOT = Path(__file__).resolve().parent.parent
CHROMEDRIVER = "/usr/bin/chromedriver"

CONFIG: dict[str, Any] = {
    "settings": {"hold_ttl": "15m", "locale": "en", "risk_multiplier": "1.0"},
    "skus": [
        {"sku_id": "S1", "spu_id": "P1", "category": "phone", "brand": "acme", "cost_price": 300000,
         "original_price": 599900, "limits": {"user": 2}},
        {"sku_id": "S2", "spu_id": "P2", "category": "tablet", "brand": "acme", "cost_price": 150000,
         "original_price": 299900},
    ],
    "activities": [
        {"activity_id": "FLASH-618", "budget": 300000, "user_limit": 3, "disclose_limits": True},
        {"activity_id": "TABLET-WEEK", "budget": 5000000},
    ],
    "rules": [
        {"rule_id": "town-phones", "subject": "address:town", "scope": {"category": "phone"}, "window": "24h",
         "max_quantity": 20},
        {"rule_id": "device-burst", "subject": "device", "window": "1h", "max_quantity": 1, "mode": "shadow"},
    ],
    "lists": {
        "blacklist": {"user": ["u-bad"], "address": ["Guangdong/Dongguan/Humen"]},
        "whitelist": {"user": ["staff-1"], "discount": ["618-SUPER"]},
    },
}

XIHU = {"province": "Zhejiang", "city": "Hangzhou", "district": "Xihu", "town": "Lingyin", "detail": "1 Lake Rd"}
HUMEN = {"province": "Guangdong", "city": "Dongguan", "district": "Humen", "town": "Zhen", "detail": "8 Dock St"}
BINJIANG = {"province": "Zhejiang", "city": "Hangzhou", "district": "Binjiang", "town": "Xixing", "detail": "3 Hi Rd"}


def _order(n: int, user: str, sku: str, activity: str, amount: int, address: dict[str, str], device: str) -> dict[str, Any]:
    price = 599900 if sku == "S1" else 299900
    return {
        "order_id": f"burst-{n}",
        "user_id": user,
        "device_id": device,
        "receiver": {"name": f"Buyer {user}", "phone": "13900000000", "address": address},
        "items": [{"sku_id": sku, "quantity": 1, "unit_price": price,
                   "discounts": [{"id": activity, "kind": "activity", "activity_id": activity, "amount": amount}]}],
    }


# The scripted burst: the flash activity's budget (300000) is used up by the first three orders,
# then every order under it is refused; a scalper and blacklisted buyers add other reasons.
BURST: list[tuple[dict[str, Any], str]] = [
    (_order(1, "u1", "S1", "FLASH-618", 100000, XIHU, "d1"), "allow"),
    (_order(2, "u2", "S1", "FLASH-618", 100000, BINJIANG, "d2"), "allow"),
    (_order(3, "u3", "S1", "FLASH-618", 100000, XIHU, "d3"), "allow"),
    (_order(4, "u4", "S1", "FLASH-618", 100000, XIHU, "d4"), "deny"),
    (_order(5, "u5", "S1", "FLASH-618", 100000, BINJIANG, "d5"), "deny"),
    (_order(6, "scalper-7", "S2", "TABLET-WEEK", 50000, XIHU, "d7"), "allow"),
    (_order(7, "scalper-7", "S2", "TABLET-WEEK", 50000, XIHU, "d7"), "allow"),
    (_order(8, "scalper-7", "S1", "FLASH-618", 100000, XIHU, "d7"), "deny"),
    (_order(9, "scalper-7", "S1", "FLASH-618", 100000, XIHU, "d7"), "deny"),
    (_order(10, "scalper-7", "S1", "FLASH-618", 100000, XIHU, "d7"), "deny"),
    (_order(11, "u-bad", "S2", "TABLET-WEEK", 50000, HUMEN, "d8"), "deny"),  # user and address blacklisted
    (_order(12, "u-bad", "S2", "TABLET-WEEK", 50000, HUMEN, "d8"), "deny"),
    (_order(13, "u6", "S2", "TABLET-WEEK", 50000, HUMEN, "d9"), "deny"),  # address blacklisted
    (_order(14, "u7", "S2", "TABLET-WEEK", 50000, BINJIANG, "d10"), "allow"),
]


def _chromium() -> str | None:
    found = shutil.which("chromium")
    return found if found and os.path.exists(CHROMEDRIVER) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _call(base: str, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def _flashguard() -> list[str]:
    script = Path(sys.executable).parent / "flashguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture
def browser_needed() -> None:
    missing = []
    if _chromium() is None:
        missing.append("chromium and chromium-driver (.ci/browser-deps.sh installs them)")
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail("the browser test needs, under CI: " + "; ".join(missing))
        pytest.skip("not installed: " + "; ".join(missing))


@pytest.fixture
def server(tmp_path: Path, browser_needed: None) -> Iterator[str]:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(CONFIG))
    env = {**os.environ, "FLASHGUARD_ADMIN_TOKEN": TOKEN}
    log_path = tmp_path / "server.log"
    for attempt in range(3):  # a port picked free may be taken before the server binds it
        port = _free_port()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*_flashguard(), "serve", "--host", HOST, "--port", str(port), "--data", str(tmp_path / f"data{attempt}"),
                 "--config", str(cfg)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                if f"listening on http://{HOST}:{port}" in log_path.read_text(errors="replace"):
                    break
                time.sleep(0.05)
            else:
                output = log_path.read_text(errors="replace")
                if proc.poll() is not None and "address already in use" in output.lower() and attempt < 2:
                    continue
                pytest.fail(f"the server did not start (exit {proc.poll()}):\n{output}")
            yield f"http://{HOST}:{port}"
            return
        finally:
            _stop(proc)


@pytest.fixture
def driver(tmp_path: Path, browser_needed: None) -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _chromium() or "chromium"
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        "--disable-default-apps", "--window-size=1360,900", "--lang=en-US",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.set_page_load_timeout(WAIT)
        yield browser
    finally:
        browser.quit()


def test_console_in_chromium(server: str, driver: WebDriver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, WAIT, poll_frequency=0.1)

    def text(css: str) -> str:
        """An element's text ("" when absent), read in one call: the page re-renders its tables every 2 s."""
        return str(driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : ''", css))

    def attr(css: str, name: str) -> str | None:
        value = driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null", css, name)
        return None if value is None else str(value)

    def click(css: str) -> None:
        """Find and click in one call: between a find and a click, a re-render can replace the element."""
        driver.execute_script("document.querySelector(arguments[0]).click()", css)

    # The page loads without a token; no data until signed in, and a wrong token is refused.
    driver.get(server + "/console")
    token = wait.until(ec.visibility_of_element_located((By.ID, "token")))
    assert not driver.find_element(By.ID, "app").is_displayed()
    token.send_keys("not-the-token")
    driver.find_element(By.ID, "login-submit").click()
    wait.until(lambda d: "not the gateway's admin token" in text("#login-error"))

    token.clear()
    token.send_keys(TOKEN)
    driver.find_element(By.ID, "login-submit").click()
    wait.until(ec.visibility_of_element_located((By.ID, "app")))
    flash = 'tr[data-activity="FLASH-618"]'
    wait.until(lambda d: attr(flash, "data-fused") == "false")
    assert driver.execute_script("return sessionStorage.getItem('flashguard.console.token')") == TOKEN

    # The scripted burst, over HTTP, while the page polls.
    for body, expected in BURST:
        status, answer = _call(server, "POST", "/v1/orders/check", body)
        assert status == 200 and answer["decision"] == expected, (body["order_id"], answer)
    status, activity = _call(server, "GET", "/v1/admin/activities/FLASH-618", token=TOKEN)
    assert status == 200 and activity["fused"] is True

    wait.until(lambda d: attr(flash, "data-fused") == "true")
    assert text(flash + " .badge") == "fused"
    assert text('tr[data-activity="TABLET-WEEK"] .badge') == "open"
    wait.until(lambda d: text('#reasons tr[data-reason="ACTIVITY_BUDGET_EXHAUSTED"] td.num') == "5")
    assert text('#reasons tr[data-reason="BLACKLISTED"] td.num') == "5"
    assert text('#decision-cards [data-decision="deny"] .value') == "8"
    wait.until(lambda d: text("#top-users tbody tr:first-child td.mono") == "scalper-7")
    assert text("#top-addresses tbody tr:first-child td.mono") == "zhejiang/hangzhou/xihu/lingyin"
    assert text('#rules tr[data-rule="device-burst"] td:last-child') != "0"

    # The multiplier, edited in the page, is the gateway's.
    rule_limit = '#rules tr[data-rule="town-phones"] td:nth-child(7)'
    assert text(rule_limit) == "20"
    field = driver.find_element(By.ID, "multiplier")
    assert field.get_attribute("value") == "1.0"
    field.clear()
    field.send_keys("1.5")
    driver.find_element(By.ID, "multiplier-save").click()
    wait.until(lambda d: attr("#multiplier-status", "data-saved") == "1.5")
    status, config = _call(server, "GET", "/v1/admin/config", token=TOKEN)
    assert status == 200 and config["settings"]["risk_multiplier"] == "1.5"
    wait.until(lambda d: text(rule_limit) == "30")

    # A refused value is reported, not saved.
    field.clear()
    field.send_keys("lots")
    driver.find_element(By.ID, "multiplier-save").click()
    wait.until(lambda d: "not saved" in text("#multiplier-status"))
    assert _call(server, "GET", "/v1/admin/config", token=TOKEN)[1]["settings"]["risk_multiplier"] == "1.5"
    field.clear()
    field.send_keys("1.5")
    driver.find_element(By.ID, "multiplier-save").click()
    wait.until(lambda d: "saved: risk_multiplier = 1.5" in text("#multiplier-status"))

    # Blacklisted buyers and regions (a listed prefix covers the paths under it) show as such.
    assert text("#top-users tbody tr:nth-child(2) .badge") == "blacklisted"
    assert text("#top-addresses tbody tr:nth-child(2) .badge") == "blacklisted"

    # Lists: an entry added in the form, then removed with its chip's button (after a confirm).
    Select(driver.find_element(By.ID, "list-kind")).select_by_value("device")
    driver.find_element(By.ID, "list-value").send_keys("d-farm-01")
    driver.find_element(By.ID, "list-add").click()
    chip = '#list-blacklist .chip[data-value="d-farm-01"]'
    wait.until(lambda d: "d-farm-01" in text(chip))
    assert _call(server, "GET", "/v1/admin/lists", token=TOKEN)[1]["blacklist"]["device"] == ["d-farm-01"]
    click(chip + " button")
    wait.until(ec.alert_is_present()).accept()
    wait.until(lambda d: attr(chip, "data-value") is None)
    assert _call(server, "GET", "/v1/admin/lists", token=TOKEN)[1]["blacklist"].get("device", []) == []

    # The top scalper blacklisted from the top-refused table.
    click("#top-users tbody tr:first-child button")
    wait.until(ec.alert_is_present()).accept()
    wait.until(lambda d: text("#top-users tbody tr:first-child .badge") == "blacklisted")
    assert "scalper-7" in _call(server, "GET", "/v1/admin/lists", token=TOKEN)[1]["blacklist"]["user"]

    # The screenshot: the whole page, the viewport made as tall as the page.
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 1360, "height": min(height, 4000), "deviceScaleFactor": 1, "mobile": False}
    )
    driver.execute_script("window.scrollTo(0, 0)")
    shot = Path(os.environ.get("FLASHGUARD_SCREENSHOT") or tmp_path / "console.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(shot)), "the screenshot was not written"
    assert shot.stat().st_size > 10_000
