"""The browser page driven by a real headless Chromium (Selenium): live dictation from a fake
microphone, file upload and downloads, error messages, console and CSP; direct and through the
shipped nginx.conf and Caddyfile (HTTPS, basic auth).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gigastt.testing.audio import silence, tone_sequence, wav_bytes
from tests.serverproc import ServerProcess, pool_idle, serving
from tests.test_deploy import (  # the proxy fixtures, shared with the deployment tests
    KINDS,
    PASSWORD,
    SITE,
    USER,
    Proxy,
    Secrets,
    _free_port,
    secrets,  # noqa: F401 (a fixture)
    workdir,  # noqa: F401 (a fixture)
)
from tests.wsclient import open_session

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (the `test` extra)")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HELLO = ["▁При", "вет", ",", "▁мир", "."]
HOW = ["▁как", "▁де", "ла", "?"]
# The AudioContext's rate under the fake capture (Chromium's default output rate here).
CONTEXT_RATE = 44100
WORD_TITLE = re.compile(r"^\d+\.\d\d–\d+\.\d\d s, confidence \d{1,3}%$")


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (Debian package listed in .ci/apt-packages)")
    return path


# --- audio, server, browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ui-media")
    # What the fake microphone plays (in a loop): the tone phrase at the context's rate.
    microphone = folder / "microphone.wav"
    microphone.write_bytes(wav_bytes(np.concatenate([
        silence(0.5, CONTEXT_RATE), tone_sequence(HELLO, rate=CONTEXT_RATE),
        silence(2.0, CONTEXT_RATE)]), CONTEXT_RATE))
    upload = folder / "two phrases.wav"
    upload.write_bytes(wav_bytes(np.concatenate([
        tone_sequence(HELLO), silence(1.2), tone_sequence(HOW), silence(0.5)])))
    return {"microphone": microphone, "upload": upload}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots: under $GIGASTT_TEST_ARTIFACTS when set (CI keeps them), else a tmp dir."""
    chosen = os.environ.get("GIGASTT_TEST_ARTIFACTS")
    if chosen:
        path = Path(chosen)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("ui-artifacts")


@pytest.fixture(scope="module")
def server(tone_model: Path) -> Iterator[ServerProcess]:
    # One slot, given up after 1 s: a second session meets a busy server at once.
    yield from serving(tone_model, "--pool-size", "1", "--pool-checkout-timeout-secs", "1")


@pytest.fixture(scope="module")
def downloads() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gigastt-ui-downloads-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(media: dict[str, Path], downloads: Path) -> Iterator[WebDriver]:
    """One headless Chromium for the module (starting one takes seconds)."""
    binary, driver_path = _which("chromium"), _which("chromedriver")
    profile = tempfile.mkdtemp(prefix="gigastt-ui-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-default-apps", f"--user-data-dir={profile}", "--window-size=1000,900",
        # The microphone: allowed without asking, fed from the WAV (looped).
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={media['microphone']}",
        # The proxied site: its name on loopback, its self-signed certificate accepted.
        f"--host-resolver-rules=MAP {SITE} 127.0.0.1", "--ignore-certificate-errors",
    ]:
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                               {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 20,
         what: str = "") -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except TimeoutException:
        status = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[role=status]")]
        raise AssertionError(f"timed out waiting for {what}; status lines: {status}") from None


def text_of(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The console's errors since the last call (the log is drained by reading it)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


# Installed before the page's own code acts (WebDriver's scripts are not subject to the page's
# CSP): records what the page asks of the microphone and sends on the WebSocket, and whether a
# tentative partial was ever on screen.
SPY = """
window.__spy = {constraints: null, texts: [], frames: [], tentative: false};
const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = (c) => {
  window.__spy.constraints = c;
  return getUserMedia(c);
};
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
  if (typeof data === "string") { window.__spy.texts.push(data); }
  else if (window.__spy.frames.length < 5) { window.__spy.frames.push(data.byteLength); }
  return send.call(this, data);
};
new MutationObserver(() => {
  if (document.getElementById("tentative").textContent) { window.__spy.tentative = true; }
}).observe(document.getElementById("partial"),
            {subtree: true, childList: true, characterData: true});
"""


def record_until_final(driver: WebDriver) -> list[str]:
    driver.execute_script(SPY)
    driver.find_element(By.ID, "record").click()
    finals = wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#finals .final"),
                  what="a final")
    return [str(element.text) for element in finals]


def stop_recording(driver: WebDriver) -> None:
    driver.find_element(By.ID, "record").click()
    wait(driver, lambda d: text_of(d, "live-status") == "Stopped.", what="the stop")
    assert text_of(driver, "record") == "Record"


def file_transcript(server: ServerProcess, path: Path, fmt: str = "json") -> Any:
    reply = server.request("POST", f"/v1/transcribe?format={fmt}", path.read_bytes())
    assert reply.status == 200, reply.body[:200]
    return reply.json() if fmt == "json" else reply.body.decode()


@pytest.fixture(scope="module")
def expected(server: ServerProcess, media: dict[str, Path]) -> dict[str, Any]:
    """The file transcripts, asked for while the server's one slot is free."""
    return {"microphone": file_transcript(server, media["microphone"]),
            "upload": file_transcript(server, media["upload"]),
            "srt": file_transcript(server, media["upload"], "srt"),
            "vtt": file_transcript(server, media["upload"], "vtt")}


def page_url(server: ServerProcess) -> str:
    return f"http://{server.host}:{server.port}/"


# --- direct --------------------------------------------------------------------------------------


def test_live_dictation_shows_the_file_transcript(browser: WebDriver, server: ServerProcess,
                                                  expected: dict[str, Any],
                                                  artifacts: Path) -> None:
    browser.get(page_url(server))
    assert browser.title == "gigastt — speech to text"
    finals = record_until_final(browser)
    assert expected["microphone"]["text"] == "Привет, мир."
    assert finals[0] == expected["microphone"]["text"]
    spy = browser.execute_script("return window.__spy")
    # The raw signal, at the context's rate, in 100 ms PCM16 frames, protocol 1.2.
    assert spy["constraints"] == {"audio": {"echoCancellation": False, "noiseSuppression": False,
                                            "autoGainControl": False, "channelCount": 1}}
    assert spy["texts"][0] == ('{"type":"configure","sample_rate":44100,'
                               '"protocol_version":"1.2"}')
    assert spy["frames"][1:] == [CONTEXT_RATE // 10 * 2] * (len(spy["frames"]) - 1)
    assert spy["tentative"], "no partial was shown while the phrase was spoken"
    # Word timings on hover: each word's title.
    titles = [w.get_attribute("title")
              for w in browser.find_elements(By.CSS_SELECTOR, "#finals .final:first-child .word")]
    assert len(titles) == 2 and all(WORD_TITLE.match(t or "") for t in titles), titles
    browser.save_screenshot(str(artifacts / "ui-after-final.png"))
    stop_recording(browser)
    assert '{"type":"stop"}' in browser.execute_script("return window.__spy.texts")
    assert pool_idle(server)
    assert console_errors(browser) == []


def test_file_upload_and_downloads(browser: WebDriver, server: ServerProcess,
                                   media: dict[str, Path], expected: dict[str, Any],
                                   downloads: Path, artifacts: Path) -> None:
    browser.find_element(By.ID, "file-input").send_keys(str(media["upload"]))
    wait(browser, lambda d: text_of(d, "file-status").startswith("Done"), what="the transcript")
    text = expected["upload"]["text"]
    assert text_of(browser, "file-text") == text == "Привет, мир. как дела?"
    browser.save_screenshot(str(artifacts / "ui.png"))
    for link, name, body in [("download-srt", "two phrases.srt", expected["srt"]),
                             ("download-vtt", "two phrases.vtt", expected["vtt"]),
                             ("download-text", "two phrases.txt", text + "\n")]:
        browser.find_element(By.ID, link).click()
        target = downloads / name
        wait(browser, lambda d, target=target: target.is_file() and target.stat().st_size > 0,
             what=f"the download {name}")
        assert target.read_text(encoding="utf-8") == body, name
    assert body.startswith("Привет") and console_errors(browser) == []


def test_clear_messages_for_a_busy_server_and_an_unreadable_file(
        browser: WebDriver, server: ServerProcess, tmp_path: Path) -> None:
    async def with_the_slot_held() -> None:
        ws, _ = await open_session(server)  # `ready`: this session holds the only slot
        try:
            browser.find_element(By.ID, "record").click()
            await asyncio.to_thread(
                wait, browser, lambda d: "busy" in text_of(d, "live-status"), 20, "busy")
        finally:
            await ws.close()

    browser.get(page_url(server))
    asyncio.run(with_the_slot_held())
    assert text_of(browser, "live-status") == (
        "The server is busy: no recognition slot is free. Try again in a moment.")
    assert text_of(browser, "record") == "Record"
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    browser.find_element(By.ID, "file-input").send_keys(str(bad))
    wait(browser, lambda d: "could not read" in text_of(d, "file-status"), what="the 422")
    assert text_of(browser, "file-status").startswith("The server could not read this audio")
    # The 422 itself is the one console error (Chromium logs every failed request).
    errors = console_errors(browser)
    assert len(errors) == 1 and "422" in errors[0]["message"], errors


def test_a_refused_microphone_and_a_lost_connection(browser: WebDriver, tone_model: Path) -> None:
    doomed = ServerProcess(tone_model)
    try:
        browser.get(page_url(doomed))
        # The fake-media switch grants every request, so the refusal is the browser's own
        # answer to a denied prompt, raised in its place: a NotAllowedError DOMException.
        browser.execute_script("""
            const real = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
            navigator.mediaDevices.getUserMedia = (c) => {
              navigator.mediaDevices.getUserMedia = real;  // once
              return Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
            };""")
        browser.find_element(By.ID, "record").click()
        wait(browser, lambda d: "refused" in text_of(d, "live-status"), what="the refusal")
        assert text_of(browser, "live-status").startswith("Microphone access was refused.")
        assert text_of(browser, "record") == "Record"
        browser.find_element(By.ID, "record").click()
        wait(browser, lambda d: "Listening" in text_of(d, "live-status"), what="the session")
        doomed.proc.kill()  # no Close frame: the connection just ends
        wait(browser, lambda d: "lost" in text_of(d, "live-status"), what="the loss")
        assert text_of(browser, "live-status") == "The connection to the server was lost."
        assert text_of(browser, "record") == "Record"
    finally:
        doomed.stop()
    assert console_errors(browser) == []


def test_with_the_servers_api_key_typed_into_the_page(browser: WebDriver, tone_model: Path,
                                                     media: dict[str, Path],
                                                     tmp_path: Path) -> None:
    key = "k3y-" + "x" * 28
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    keyed = ServerProcess(tone_model, "--api-key-file", str(key_file))
    try:
        browser.get(page_url(keyed))  # the page itself needs no key
        browser.find_element(By.ID, "record").click()
        wait(browser, lambda d: "Could not connect" in text_of(d, "live-status"), what="401")
        browser.find_element(By.ID, "file-input").send_keys(str(media["upload"]))
        wait(browser, lambda d: "API key" in text_of(d, "file-status"), what="the upload's 401")
        assert text_of(browser, "file-status") == (
            "The server needs an API key: enter it under “API key”.")
        # Chromium logs the refused upgrade and the 401 itself.
        assert len(console_errors(browser)) == 2
        browser.find_element(By.ID, "key-title").click()
        browser.find_element(By.ID, "api-key").send_keys(key)
        finals = record_until_final(browser)
        assert finals == ["Привет, мир."]
        stop_recording(browser)
        browser.find_element(By.ID, "file-input").send_keys(str(media["upload"]))
        wait(browser, lambda d: text_of(d, "file-status").startswith("Done"), what="upload")
        assert text_of(browser, "file-text") == "Привет, мир. как дела?"
        assert console_errors(browser) == []
        # In memory only: nothing of it in the page's storage, and a reload forgets it.
        assert browser.execute_script(
            "return localStorage.length + sessionStorage.length + document.cookie.length") == 0
        browser.refresh()
        assert browser.find_element(By.ID, "api-key").get_attribute("value") == ""
    finally:
        keyed.stop()
    assert key not in keyed.log


def test_the_csp_blocks_an_injected_inline_script(browser: WebDriver,
                                                  server: ServerProcess) -> None:
    browser.get(page_url(server))
    assert console_errors(browser) == []
    blocked = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        document.addEventListener("securitypolicyviolation",
            (e) => done({directive: e.effectiveDirective, injected: window.__injected || null}));
        const script = document.createElement("script");
        script.textContent = "window.__injected = 'ran'";
        document.body.append(script);
        setTimeout(() => done({directive: null, injected: window.__injected || null}), 2000);
    """)
    assert blocked == {"directive": "script-src-elem", "injected": None}
    assert browser.execute_script("return window.__injected === undefined")
    errors = console_errors(browser)
    assert len(errors) == 1 and "Content Security Policy" in errors[0]["message"], errors


# --- through the shipped proxies ---------------------------------------------------------------


@contextlib.contextmanager
def proxied(kind: str, keys: Secrets, model: Path) -> Iterator[tuple[Proxy, ServerProcess]]:
    """The proxy in front of gigastt, which allows the site's origin (docs/deployment.md)."""
    upstream = _free_port()
    proxy = Proxy(kind, keys, upstream)
    server: ServerProcess | None = None
    try:
        server = ServerProcess(model, "--port", str(upstream),
                               "--allow-origin", f"https://{SITE}:{proxy.https_port}")
        yield proxy, server
    finally:
        proxy.stop()
        if server is not None:
            server.stop()
            assert "Traceback" not in server.log


@pytest.mark.parametrize("kind", KINDS)
def test_the_page_through_the_proxy_over_https_with_basic_auth(
        kind: str, browser: WebDriver, secrets: Secrets,  # noqa: F811 (the imported fixture)
        tone_model: Path, media: dict[str, Path]) -> None:
    with proxied(kind, secrets, tone_model) as (proxy, server):
        # The password as if typed into the browser's prompt once: every later request of the
        # page (scripts, the wss:// upgrade, the upload) reuses it.
        browser.get(f"https://{USER}:{PASSWORD}@{SITE}:{proxy.https_port}/")
        assert browser.execute_script("return window.isSecureContext")
        assert browser.current_url.startswith("https://")
        finals = record_until_final(browser)
        assert finals[0] == file_transcript(server, media["microphone"])["text"]
        spy = browser.execute_script("return window.__spy")
        assert spy["texts"][0].startswith('{"type":"configure","sample_rate":44100')
        stop_recording(browser)
        browser.find_element(By.ID, "file-input").send_keys(str(media["upload"]))
        wait(browser, lambda d: text_of(d, "file-status").startswith("Done"), what="upload")
        assert text_of(browser, "file-text") == file_transcript(server, media["upload"])["text"]
        assert console_errors(browser) == []
        # The session and the upload went through the proxy, as the authenticated user.
        if kind == "nginx":
            access = (proxy.dir / "gigastt.access.log").read_text()
            assert re.search(rf"- {USER} \[[^]]+\] \"GET /v1/ws HTTP/1.1\" 101 ", access), access
            assert re.search(rf"- {USER} \[[^]]+\] \"POST /v1/transcribe HTTP/1.1\" 200 ",
                             access), access
        browser.get("about:blank")  # leave the page before the proxy goes
