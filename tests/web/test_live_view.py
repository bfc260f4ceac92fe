"""The live web view in a real browser against a real `vap up` (two cameras on real RTSP servers, one of them
behind credentials): login with the API token, the camera list, the live view's changing image with tracked
boxes listed beside it, a screenshot as a test artifact; and without the token nothing is served.

Browser: Debian's chromium driven by selenium through /usr/bin/chromedriver (scripts/apt-packages.txt);
skipped with the reason when either is missing.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest

from vap_common.paths import sample_video
from vap_rtspcam import RtspCamera, unavailable_reason
from vap_stack.testing import running_stack

pytestmark = pytest.mark.integration

VIDEO = sample_video("vtest-576p25.mp4")
MODEL = "ssdlite-mbv2-person-300"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
T = TypeVar("T")


def _wait(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


def _snapshot(browser: Any, css: str, attribute: str = "") -> list[str]:
    """Texts (or one attribute) of the elements matching ``css``, read in one script call: the page
    re-renders its lists on every update, so element handles found earlier go stale between calls."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => arguments[1] ? (e.getAttribute(arguments[1]) || '') : e.textContent.trim())"
    )
    return list(browser.execute_script(script, css, attribute))


@pytest.fixture(scope="module")
def stack(
    nats_url: str,
    database_url: str,
    nats_credentials_file: Path | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    from vap_inference.testing import missing_model_reason
    from vap_models import catalogue as registry

    if reason := missing_model_reason(registry.SSDLITE):
        pytest.skip(reason)
    if reason := unavailable_reason():
        pytest.skip(reason)
    if not VIDEO.is_file():
        pytest.skip(f"test video {VIDEO} not found (set VAP_SAMPLE_DATA_DIR)")
    cams = {
        "door": RtspCamera(VIDEO, path="door", user="viewer", password=PASSWORD, shared=True).start(),
        "hall": RtspCamera(VIDEO, path="hall", shared=True).start(),
    }
    workdir = tmp_path_factory.mktemp("web")
    config = {
        "site": f"web-{uuid.uuid4().hex[:6]}",
        "data_dir": str(workdir / "data"),
        "ports": {"control": 0, "inference": 0, "metrics_base": 0, "web": 0},
        "cameras": [
            {
                "id": cid,
                "url": cam.url,
                "fps": 5,
                "model": MODEL,
                "confidence": 0.4,
                "count_interval_s": 5,
                "lines": [{"id": "middle", "points": [[0.5, 0.05], [0.5, 0.95]]}],
                "zones": [
                    {"id": "floor", "polygon": [[0.05, 0.55], [0.95, 0.55], [0.95, 0.98], [0.05, 0.98]]}
                ],
            }
            for cid, cam in cams.items()
        ],
        "inference": {"threads": 1, "default_model": MODEL},
        "tracker": {"reid": {"embedder": "hsv"}},
        "decoder": {"status_interval_s": 0.5},
        "control": {"stats_window_s": 5.0},
    }
    try:
        with running_stack(
            config,
            workdir,
            nats_url=nats_url,
            database_url=database_url,
            prefix="vap_web_test",
            nats_credentials=nats_credentials_file,
        ) as (proc, state):
            assert state.get("web"), f"stack.json names no web view: {state}"
            yield {"proc": proc, "state": state, "url": state["web"].rstrip("/"), "token": proc.token()}
    finally:
        for cam in cams.values():
            cam.close()


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """GET without following redirects."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=15)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        reply = conn.getresponse()
        return reply.status, dict(reply.getheaders()), reply.read()
    finally:
        conn.close()


def _metrics(stack: dict[str, Any]) -> dict[str, float]:
    """The gateway's Prometheus samples (its metrics port is in its log's start line)."""
    log = Path(stack["state"]["services"]["web"]["log"]).read_text().splitlines()
    port = next(json.loads(line)["metrics_port"] for line in log if '"service started"' in line)
    _, _, body = _get(f"http://127.0.0.1:{port}/metrics")
    samples = {}
    for line in body.decode().splitlines():
        if line.startswith("vap_web_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_without_token_nothing_is_served(stack: dict[str, Any]) -> None:
    base, token = stack["url"], stack["token"]
    status, _, body = _get(f"{base}/api/cameras")
    assert status == 401 and b"token" in body
    assert _get(f"{base}/api/cameras", {"Authorization": "Bearer wrong-token"})[0] == 401
    assert _get(f"{base}/api/cameras", {"Cookie": "vap_token=wrong-token"})[0] == 401
    status, headers, _ = _get(f"{base}/")
    assert status == 302 and headers["Location"].startswith("/login")
    sid = stack["state"]["scenarios"]["door"]
    assert _get(f"{base}/camera/{sid}")[0] == 302
    assert _get(f"{base}/api/cameras/{sid}/counts")[0] == 401

    async def websocket_status(headers: dict[str, str]) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"{base}/api/cameras/{sid}/live", headers=headers) as ws:
                    message = await ws.receive(timeout=30)
                    assert message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY)
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    assert asyncio.run(websocket_status({})) == 401
    assert asyncio.run(websocket_status({"Authorization": "Bearer wrong-token"})) == 401
    # Another site's page cannot use a logged-in browser's cookie for the socket.
    cross_site = {"Cookie": f"vap_token={token}", "Origin": "http://evil.example"}
    assert asyncio.run(websocket_status(cross_site)) == 401
    assert asyncio.run(websocket_status({"Authorization": f"Bearer {token}"})) == 101

    status, _, body = _get(f"{base}/api/cameras", {"Authorization": f"Bearer {token}"})
    assert status == 200
    cameras = json.loads(body)
    assert {c["camera"] for c in cameras} == {"door", "hall"}
    assert PASSWORD not in body.decode() and "viewer" not in body.decode()
    assert _get(f"{base}/api/cameras/not-a-uuid", {"Authorization": f"Bearer {token}"})[0] == 400
    assert _get(f"{base}/api/cameras/{uuid.uuid4()}", {"Authorization": f"Bearer {token}"})[0] == 404


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not CHROMIUM.is_file() or not CHROMEDRIVER.is_file():
        pytest.skip(
            f"{CHROMIUM} / {CHROMEDRIVER} not installed (Debian: apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1500,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _save_artifact(source: Path) -> None:
    target = os.environ.get("VAP_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, Path(target) / source.name)


def test_browser_list_and_live_view(stack: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    base = stack["url"]
    # Not logged in: the login page, then the list.
    browser.get(f"{base}/")
    _wait(lambda: "/login" in browser.current_url, 15, "the redirect to the login page")
    browser.find_element(By.ID, "token").send_keys(stack["token"])
    browser.find_element(By.ID, "submit").click()

    def listed() -> set[str]:
        return set(_snapshot(browser, "#cameras tbody tr", "data-camera"))

    _wait(lambda: listed() == {"door", "hall"}, 30, "both cameras listed")
    _wait(lambda: "STREAMING" in browser.find_element(By.ID, "cameras").text, 30, "a streaming channel")
    assert PASSWORD not in browser.page_source

    # The live view of the camera behind credentials.
    browser.find_element(By.CSS_SELECTOR, "tr[data-camera='door'] a.camera-link").click()
    canvas = browser.find_element(By.ID, "view")

    def frames() -> int:
        return int(canvas.get_attribute("data-frames") or 0)

    def picture() -> str:
        data = browser.execute_script("return document.getElementById('view').toDataURL('image/png')")
        return hashlib.sha256(str(data).encode()).hexdigest()

    _wait(lambda: frames() >= 1, 45, "the first live frame")
    first_seq, first_picture = canvas.get_attribute("data-seq"), picture()
    tracks = _wait(lambda: _snapshot(browser, "#tracks li[data-track]"), 30, "tracks listed")
    assert all(t.startswith("#") and "person" in t for t in tracks), tracks
    _wait(
        lambda: canvas.get_attribute("data-seq") != first_seq and picture() != first_picture,
        20,
        "a new frame",
    )
    assert "frame " in browser.find_element(By.ID, "frame-info").text
    assert set(_snapshot(browser, "#counts tr[data-rule]", "data-rule")) == {"middle", "floor"}
    assert PASSWORD not in browser.page_source

    # Frames are encoded only while somebody watches.
    assert _metrics(stack)["vap_web_watched_cameras"] == 1
    sent = _metrics(stack)['vap_web_frames_total{result="sent"}']
    assert sent >= 2

    shot = tmp_path / "live-view.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    _save_artifact(shot)

    browser.get(f"{base}/")
    _wait(lambda: _metrics(stack)["vap_web_watched_cameras"] == 0, 15, "the watch ending with its viewer")
    stopped = _metrics(stack)['vap_web_frames_total{result="sent"}']
    time.sleep(1.5)
    assert _metrics(stack)['vap_web_frames_total{result="sent"}'] == stopped


def test_logout_ends_the_session(stack: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{stack['url']}/")
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#cameras tbody tr"), 20, "the list")
    browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
    _wait(lambda: "/login" in browser.current_url, 15, "the login page after logging out")
    browser.get(f"{stack['url']}/api/cameras")
    assert "missing or invalid token" in browser.page_source
    assert _get(f"{stack['url']}/healthz")[0] == 200  # liveness needs no token
