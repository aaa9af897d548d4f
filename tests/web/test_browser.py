"""The status page in a real browser (Debian's headless Chromium, driven by Selenium through its
chromium-driver) over the route sandbox relaying the demo model: progress moves, a blocked transfer
shows its hint, the throughput plot has points, the avoided bytes are listed, and a screenshot is
saved ($RELAYD_WEB_SCREENSHOT, e.g. docs/web.png, also gets a copy). Then every page and API answer,
and the page as the browser rendered it, is searched for the sandbox's secrets."""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
import requests

from relayd_sandbox._http import free_port
from relayd_sandbox.route import REPO, RouteSandbox
from relayd_sandbox.systools import require

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MiB = 1024 * 1024
TOKEN = "browser-test-token-" + "z" * 16
HOOK_SECRET = "T0001/B0002/hook-secret-path"
HINT = "the Hub (or mirror) serves content that does not match its own hash"
# The y of the plot's zero line (app.js: the plot's bottom margin).
BASELINE = 176


class Hooks(BaseHTTPRequestHandler):
    """A webhook receiver on loopback: its URL's path is the secret, as a chat service's would be."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium as root needs no sandbox, no GPU, and a profile of its own."""
    require(CHROMIUM, "chromium")
    require(CHROMEDRIVER, "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--lang=en-GB",
        "--window-size=1280,1000",
        f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def route(tmp_path: Path) -> Iterator[RouteSandbox]:
    """The demo route, its downloads and the VM's reads from the drive slowed to 1 MiB/s per file."""
    box = RouteSandbox(
        tmp_path / "route", shards=3, shard_size=12 * MiB, ssh=False, piece_size="512 KiB", connections=1
    )
    box.start()
    try:
        yield box
    finally:
        box.stop()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-4000:]}")


def reachable(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).ok
    except requests.ConnectionError:
        return False


def progress(driver: Any) -> int:
    return int(
        driver.execute_script(
            f"const bar = document.querySelector('details.repo[data-repo=\"{REPO}\"] > summary .bar');"
            "return bar ? bar.getAttribute('aria-valuenow') : -1;"
        )
    )


def plotted_points(driver: Any) -> int:
    """How many samples above zero the plot draws, over every hop's line."""
    return int(
        driver.execute_script(
            "let n = 0; for (const line of document.querySelectorAll('#plot polyline'))"
            "  for (const point of line.getAttribute('points').split(' '))"
            f"    if (parseFloat(point.split(',')[1]) < {BASELINE} - 0.5) n++;"
            "return n;"
        )
    )


def test_the_page_follows_the_relay_live(route: RouteSandbox, browser: Any, tmp_path: Path) -> None:
    hub, drive = route.hub, route.drive
    assert hub is not None and drive is not None
    # The Hub always serves the shards' index corrupted (its download blocks after a second mismatch in
    # a row), and the drive already has the first shard (its upload is a rapid one).
    corrupted = hub.file(REPO, "model.safetensors.index.json", route.head)
    hub.faults.flip_bytes(where="resolve", times=None, match=corrupted.path)
    drive.seed_content(hub.blob_path(hub.file(REPO, "model-00001-of-00003.safetensors", route.head).sha256))
    hub.bandwidth_cap = 1 * MiB
    drive.settings.download_bandwidth = 1 * MiB

    hooks = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    Thread(target=hooks.serve_forever, daemon=True).start()
    hook_url = f"http://127.0.0.1:{hooks.server_address[1]}/services/{HOOK_SECRET}"
    token_file = tmp_path / "web-token"
    token_file.write_text(TOKEN)
    port = free_port()
    route.write_config(
        extra=f'[web]\nlisten = "127.0.0.1:{port}"\ntoken_file = "{token_file}"\n'
        f'[notify]\nwebhooks = ["{hook_url}/all"]\n'
    )
    daemon = route.start_daemon()
    page = f"http://127.0.0.1:{port}/"
    try:
        added = route.relayctl("add", REPO, "--every", "10s", "--webhook", hook_url)
        assert added.returncode == 0, added.stderr
        wait_until(lambda: reachable(page), 60, "the page", route.log_path)

        browser.get(page)
        first = wait_until(
            lambda: progress(browser) > 0 and progress(browser), 60, "progress", route.log_path
        )
        wait_until(lambda: progress(browser) > first, 90, f"progress beyond {first}%", route.log_path)
        blocked = wait_until(
            lambda: (
                HINT in browser.find_element("id", "blocked").text
                and browser.find_element("id", "blocked").text
            ),
            120,
            "the blocked shard and its hint",
            route.log_path,
        )
        assert corrupted.path in blocked
        assert "[integrity]" in blocked
        assert progress(browser) < 100  # the shards are still on their way
        wait_until(lambda: plotted_points(browser) > 0, 60, "points on the plot", route.log_path)
        legend = browser.find_element("id", "legend").text
        assert "download" in legend
        wait_until(
            lambda: "rapid upload" in browser.find_element("id", "avoided").text,
            90,
            "a rapid upload",
            route.log_path,
        )

        browser.find_element("css selector", f'details.repo[data-repo="{REPO}"] > summary').click()
        files = wait_until(
            lambda: browser.find_elements("css selector", "table.files tr[data-path]"),
            30,
            "the files",
            route.log_path,
        )
        assert len(files) == len(hub.files(REPO, route.head))
        row = browser.find_element("css selector", f'table.files tr[data-path="{corrupted.path}"]')
        assert row.get_attribute("data-state") == "blocked"
        assert HINT in browser.find_element("css selector", "table.files").text

        shot = tmp_path / "web.png"
        browser.save_screenshot(str(shot))
        width, height = struct.unpack(">II", shot.read_bytes()[16:24])
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (width, height) >= (1000, 600)
        if os.environ.get("RELAYD_WEB_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["RELAYD_WEB_SCREENSHOT"])

        answers = every_answer(page, browser)
    finally:
        route.stop_daemon(daemon)
        hooks.shutdown()
    secrets = {
        "the web token": TOKEN,
        "the Hub token": route.hub_token,
        "the ModelScope token": route.ms_token,
        "the drive's first refresh token": (route.root / "drive-refresh-token").read_text().strip(),
        "a webhook's secret path": HOOK_SECRET,
    }
    for where, text in answers.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} is in {where}"
        for marker in ("Signature=", "Key-Pair-Id=", "X-Amz-", "sig="):
            assert marker not in text, f"a signed URL ({marker}) is in {where}"


def every_answer(page: str, browser: Any) -> dict[str, str]:
    """Return every page and API answer, by what was asked, and the page as the browser rendered it."""
    api = f"{page}api/v1/"
    owner = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    answers = {
        path: requests.get(page + path, timeout=30).text for path in ("", "app.js", "style.css", "icon.svg")
    }
    for path in ("status", f"status/{REPO}", "repos", "throughput", "avoided", "nothing"):
        answers[path] = requests.get(api + path, timeout=30).text
        answers[f"{path} as text"] = requests.get(api + path, params={"view": "text"}, timeout=30).text
    for verb, body in (
        (
            "add",
            {"repo": "demo/other", "route": "download", "webhooks": [f"http://127.0.0.1:9/{HOOK_SECRET}"]},
        ),
        ("pause", {"repo": "demo/other"}),
        ("resume", {"repo": "demo/other"}),
        ("retry", {"repo": REPO}),
        ("remove", {"repo": "demo/other"}),
        ("pause", {"repo": "demo/none"}),
    ):
        answer = requests.post(api + verb, json=body, headers=owner, timeout=30)
        answers[f"POST {verb} {body['repo']}"] = answer.text
    answers["POST without the token"] = requests.post(api + "pause", json={"repo": REPO}, timeout=30).text
    answers["the rendered page"] = browser.page_source
    return answers
