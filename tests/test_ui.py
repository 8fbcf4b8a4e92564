"""The browser page's routes without a browser: files and headers, caching, which policies apply
to them, ``--no-ui``, and the files shipped as package data.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from gigastt.config import ConfigError, add_serve_arguments, serve_config
from gigastt.server import ui
from tests.serverproc import ROOT, ServerProcess, get, parse_response, raw_exchange, serving

FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/worklet.js": ("worklet.js", "text/javascript; charset=utf-8"),
    "/ui/style.css": ("style.css", "text/css; charset=utf-8"),
    "/ui/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
KEY = "k" * 32


def csp(connect: str) -> str:
    return ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            f"connect-src {connect}; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def shipped(name: str) -> bytes:
    return (resources.files("gigastt") / "ui" / name).read_bytes()


@pytest.fixture(scope="module")
def server(small_model: Path) -> Iterator[ServerProcess]:
    yield from serving(small_model)


# --- files and headers -------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(FILES))
def test_each_file_with_strict_headers(server: ServerProcess, path: str) -> None:
    name, content_type = FILES[path]
    reply = server.request("GET", path)
    assert reply.status == 200
    assert reply.body == shipped(name)
    host = f"{server.host}:{server.port}"
    assert reply.headers["content-type"] == content_type
    assert reply.headers["content-security-policy"] == csp(f"'self' ws://{host} wss://{host}")
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["permissions-policy"] == "microphone=(self), camera=(), geolocation=()"
    assert reply.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', reply.headers["etag"])
    # Public static files: no CORS headers, so no other site's script can read them.
    assert "access-control-allow-origin" not in reply.headers


def test_revalidation_head_and_other_methods(server: ServerProcess) -> None:
    etag = server.request("GET", "/ui/app.js").headers["etag"]
    cached = server.request("GET", "/ui/app.js", headers={"If-None-Match": etag})
    assert cached.status == 304 and cached.body == b"" and cached.headers["etag"] == etag
    assert "content-security-policy" in cached.headers
    for listed in (f'"other", {etag}', f"W/{etag}", "*"):
        assert server.request("GET", "/ui/app.js",
                              headers={"If-None-Match": listed}).status == 304, listed
    stale = server.request("GET", "/ui/app.js", headers={"If-None-Match": '"stale"'})
    assert stale.status == 200 and stale.body == shipped("app.js")
    head = server.request("HEAD", "/")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len(shipped("index.html")))
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        refused = server.request(method, "/", body=b"x" if method in ("POST", "PUT") else None)
        assert refused.status == 405 and refused.headers["allow"] == "GET,HEAD", method


@pytest.mark.parametrize("path", ["/ui/", "/ui", "/ui/nope.js", "/index.html", "/ui/../ui/app.js",
                                  "/favicon.ico", "/ui/app.js/"])
def test_nothing_else_is_served(server: ServerProcess, path: str) -> None:
    with server.connect() as sock:
        status, _, body = parse_response(raw_exchange(sock, get(path)))
    assert status == 404 and body == b""


def test_a_query_string_is_ignored(server: ServerProcess) -> None:
    assert server.request("GET", "/?lang=ru").body == shipped("index.html")


@pytest.mark.parametrize(("host", "connect"), [
    (b"127.0.0.1:9876", "'self' ws://127.0.0.1:9876 wss://127.0.0.1:9876"),
    (b"[::1]:9876", "'self' ws://[::1]:9876 wss://[::1]:9876"),
    (b"gigastt.example.com", "'self' ws://gigastt.example.com wss://gigastt.example.com"),
    (None, "'self'"),
    (b"", "'self'"),
    (b"evil.example; script-src *", "'self'"),
    (b"a b", "'self'"),
    (b"x:99999999", "'self'"),
    (b"user@host", "'self'"),
    (b"h\xc3\xa9.example", "'self'"),
])
def test_only_a_plain_host_joins_the_policy(host: bytes | None, connect: str) -> None:
    assert ui.content_security_policy(host).decode() == csp(connect)


def test_a_hostile_host_header_stays_out_of_the_policy(server: ServerProcess) -> None:
    with server.connect() as sock:
        status, headers, _ = parse_response(raw_exchange(sock, get(
            "/", host="evil.example; script-src 'unsafe-inline'")))
    assert status == 200 and headers["content-security-policy"] == csp("'self'")


# --- which policies apply -------------------------------------------------------------------


def test_no_origin_check_or_api_key_for_the_page(small_model: Path, tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text(KEY + "\n")
    proc = ServerProcess(small_model, "--api-key-file", str(key))
    try:
        for path in FILES:  # from a foreign origin, without the key
            reply = proc.request("GET", path, headers={"Origin": "https://elsewhere.example"})
            assert reply.status == 200, path
        # The API stays guarded; an unknown path under /ui/ is an unknown path (401, not 404).
        assert proc.request("GET", "/v1/models").status == 401
        assert proc.request("GET", "/ui/nope.js").status == 401
        assert proc.request("GET", "/v1/models",
                            headers={"Authorization": f"Bearer {KEY}"}).status == 200
    finally:
        proc.stop()
    assert KEY not in proc.log


def test_the_token_is_spent_by_the_api_not_the_page(small_model: Path) -> None:
    proc = ServerProcess(small_model, "--rate-limit-per-minute", "1", "--rate-limit-burst", "1")
    try:
        for _ in range(5):
            assert proc.request("GET", "/").status == 200
        assert proc.request("GET", "/v1/models").status == 200
        assert proc.request("GET", "/v1/models").status == 429
    finally:
        proc.stop()


# --- --no-ui ------------------------------------------------------------------------------------


def _config(*argv: str, env: dict[str, str] | None = None) -> bool:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return serve_config(parser.parse_args(list(argv)), env or {}).ui


def test_on_by_default_off_with_flag_or_environment() -> None:
    assert _config() is True
    assert _config("--no-ui") is False
    assert _config(env={"GIGASTT_UI": "0"}) is False
    assert _config(env={"GIGASTT_UI": "off"}) is False
    assert _config(env={"GIGASTT_UI": "1"}) is True
    assert _config("--no-ui", env={"GIGASTT_UI": "1"}) is False  # the flag wins (D12)
    with pytest.raises(ConfigError, match="GIGASTT_UI"):
        _config(env={"GIGASTT_UI": "maybe"})


@pytest.mark.parametrize(("args", "env"), [(("--no-ui",), {}), ((), {"GIGASTT_UI": "0"})])
def test_no_ui_serves_nothing(small_model: Path, args: tuple[str, ...],
                              env: dict[str, str]) -> None:
    proc = ServerProcess(small_model, *args, env=env)
    try:
        for path in FILES:
            assert proc.request("GET", path).status == 404, path
        assert proc.request("GET", "/health").status == 200
    finally:
        proc.stop()


# --- package data ------------------------------------------------------------------------------


def test_the_files_are_package_data_and_self_contained() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "ui/*" in project["tool"]["setuptools"]["package-data"]["gigastt"]
    folder = ROOT / "gigastt" / "ui"
    assert sorted(p.name for p in folder.iterdir()) == sorted(n for n, _ in FILES.values())
    assert frozenset(FILES) == ui.PATHS
    html = shipped("index.html").decode()
    # Every reference is to our own files (the CSP would block anything else anyway).
    references = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert references and all(r.startswith("/ui/") or r == "#" for r in references), references
    assert "<script>" not in html and "style=" not in html  # nothing inline: CSP allows none
    for name in ("style.css", "app.js", "worklet.js"):
        text = shipped(name).decode()
        assert "url(" not in text and "@import" not in text and "import " not in text, name
    script = shipped("app.js").decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "Function(", "DOMParser", "createContextualFragment", "srcdoc"):
        assert sink not in script, sink  # text is set as text, never as HTML or code
